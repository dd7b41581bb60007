"""Numerical cross-check of lliejax against the official PyTorch code of Entropy-SDE / Refusion (IR-SDE).

Nothing is downloaded: point ``--official`` at a local checkout (a ``git clone``) of
``shermanlian/spatial-entropy-loss`` (Entropy-SDE) or ``Algolzw/image-restoration-sde`` (Refusion / IR-SDE)::

    git clone <spatial-entropy-loss> /tmp/official-sel
    lliejax crosscheck --official /tmp/official-sel              # small NAFNet, SDE tables/steps, KDE losses
    lliejax crosscheck --official /tmp/official-sel --full       # the 288M-parameter low-light NAFNet too
    lliejax crosscheck --official /tmp/image-restoration-sde --task deraining

Official files imported (found by searching the checkout; ``--task`` picks ``codes/config/<task>``, default
``low-light`` when present, else the first task folder in sorted order):

* ``codes/config/<task>/models/modules/DenoisingNAFNet_arch.py`` and its sibling ``module_util.py``
  (``ConditionalNAFNet``), imported as submodules of a synthetic package whose ``__path__`` is that folder, so
  their relative imports work and the folder's ``__init__.py`` (which pulls in the UNet) is not run;
* ``codes/utils/sde_utils.py`` (``IRSDE``), loaded on its own (the ``utils/__init__.py`` beside it imports
  OpenCV-based helpers that are not needed);
* ``codes/config/<task>/models/modules/kde_utils.py`` and ``loss.py`` (Entropy-SDE only; the KDE rows are
  skipped for an upstream IR-SDE checkout that has none).

The official modules import ``torchvision.utils``/``torchvision.transforms``, ``cv2``, ``tqdm`` and ``scipy`` at
module level but only use them in code paths that are not exercised here (saving images, an RK45 ODE sampler,
an ``if __name__ == '__main__'`` demo). torchvision is deliberately not a dependency (its wheels pull CUDA
builds of torch), so for the duration of the import every such package that is *not installed* is replaced by
a stub module in ``sys.modules`` whose attributes raise when called; installed packages are used as they are.
The stubs are removed again after the import. Python bytecode is not written into the checkout.

Components compared (each row of the printed table; ``max-abs`` = max |lliejax - official|, ``rel`` as
noted):

* **NAFNet** (official ``ConditionalNAFNet`` built with ``torch.manual_seed(seed)``; ``beta``/``gamma``/``g``
  randomised so every branch matters; weights imported with :data:`lliejax.interop.nafnet.KEYMAP`):
  forward outputs for several input sizes (default 64x64 and 37x53: not multiples of the padding size 32) and
  timesteps (a scalar int, as the official samplers pass, and a per-sample batch of timesteps). Tolerance:
  **max-abs <= 1e-5** (float32). Plus: the official ``state_dict`` keys, order and shapes equal
  ``KEYMAP.state_dict_shapes``; a Flax -> PyTorch export loads into a fresh official
  module with ``load_state_dict(strict=True)`` and reproduces the weights bitwise.
* **SDE** (official ``IRSDE(max_sigma=50, T=100, schedule, eps=0.005)`` vs :func:`lliejax.diffusion.irsde.make_sde`) for
  the cosine, linear and constant schedules: tables ``thetas, sigmas, thetas_cumsum, sigma_bars, dt`` and
  ``reverse_optimum_std(1..T)`` (element-wise relative error ``|a-b|/|b|``, exact zeros must match), and the
  step functions ``mu_bar, get_score_from_noise, reverse_sde_step_mean, reverse_sde_step, reverse_ode_step,
  reverse_optimum_step, get_init_state_from_noise, reverse_posterior_step`` on random NCHW tensors for scalar
  timesteps 1, 2, 50, 100 and a per-sample timestep batch (``rel`` = max-abs / max |official|). The random
  steps share their noise ``z``: the official call draws ``torch.randn_like`` right after
  ``torch.manual_seed(k)`` and the same ``z`` is drawn the same way and passed to lliejax. Tolerance:
  **rel <= 1e-6**, widened only where the official float32 formula itself cancels (rows marked ``+k``:
  the tables and the score ``-noise / sigma_bar_t``): there the per-element tolerance is
  ``1e-6 + 4 * eps32 * k`` with ``k`` the first-order condition number of :func:`sde_condition_numbers`
  (e.g. ``sigma_bar_2 = lambda sqrt(1 - exp(-2 thetas_cumsum_2 dt))`` has ``k ~ 500``: one ulp of ``exp``,
  which numpy and torch round differently, moves it by ~3e-5 relative; both implementations are that far
  from a float64 evaluation). ``err/tol`` in the note is the worst error / tolerance (PASS iff <= 1).
* **KDE** (Entropy-SDE checkouts): :func:`official_kde_reference` evaluates the official ``kde`` densities,
  ``relative_entropy``, ``cross_entropy``, ``hellinger`` (its ``torch.sqrt(2)`` on a Python int, a TypeError, is
  bypassed by a proxy ``sqrt`` for this call only) and ``loss.smooth_loss`` on the cases of
  :data:`KDE_CASES` (a linear ramp against its mirror with ``w = ones``, random inputs with shared ``N(0,1)``
  neighbour weights, no weights); :func:`lliejax_kde_values` computes the same quantities with
  :mod:`lliejax.losses.entropy` on the same inputs (transposed to NHWC) and the same explicit 3x3 weight array:
  ``kde_density`` for both densities (official layout, max-abs / max|official|), and ``spatial_entropy_loss``
  with ``kind='kl'`` (KL(P=target || Q=pred), as ``r_entropy_loss``), ``'cross'`` (P = prediction, as
  ``c_entropy_loss``), ``'hellinger'`` (P = target), ``'hellinger_smooth'`` (vs official Hellinger +
  ``smooth_loss``) and ``smoothness_loss`` (scalars: ``|a-b|/|b|``). Tolerance **rel <= 1e-5**; for the
  densities plus ``4 * eps32 * k`` (rows marked ``+k``), ``k`` the condition number of the density w.r.t. the
  float32 neighbour map (:func:`kde_density_condition_number`): with N(0,1) weights the normaliser ``sum w``
  cancels (0.68 against ``sum |w|`` = 6.6 for seed 0), the official float32 neighbour map is ~2e-5 off and the
  official densities ~1.1e-5 relative from a float64 evaluation (lliejax: ~4e-6); given the same neighbour map
  the densities agree to ~3e-7. The official
  cross entropy has no epsilon and is NaN (``0 * ln 0``) wherever a bin is empty in both densities, which
  happens in float32 for L >= 10; such rows check that lliejax is NaN as well, and the case is repeated at
  L = 8 for a numerical comparison where that is finite (rows ``@L=8``).

The exit status is 0 when every row passes, 1 when any fails, 2 for usage errors (no checkout found, torch
missing). torch runs in float32 with deterministic algorithms and ``torch.set_num_threads(<cores>)``; the JAX
forward runs under ``jax.default_matmul_precision("highest")`` so accelerators do not drop to TF32/bf16.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import importlib.util
import io
import json
import math
import os
import sys
import types
import uuid
from typing import Any, Callable, Iterable, Sequence

import numpy as np

NAFNET_ABS_TOL = 1e-5
SDE_REL_TOL = 1e-6
KDE_REL_TOL = 1e-5
EPS32 = float(np.finfo(np.float32).eps)  # 2**-23
COND_ULPS = 4  # allowed float32 ulps of the ill-conditioned intermediate (times its condition number)
SMALL_MODEL = {"img_channel": 3, "width": 8, "enc_blk_nums": [1, 1, 1, 1, 2], "middle_blk_num": 1,
               "dec_blk_nums": [1, 1, 1, 1, 1]}
FULL_CONFIG = "entropy_sde:lolv1"
DEFAULT_SIZES = ((64, 64), (37, 53))
DEFAULT_TIMESTEPS = (1, 2, 50, 100)
SCHEDULES = ("cosine", "linear", "constant")
# Third-party modules imported at module level by the official files but only used in paths we do not run.
STUB_IF_MISSING = ("torchvision", "torchvision.utils", "torchvision.transforms", "cv2", "tqdm", "scipy",
                   "scipy.integrate")


# ------------------------------------------------------------------------------------------------ results
@dataclasses.dataclass
class Row:
  """One compared component."""

  component: str
  max_abs: float
  rel: float
  tol: float
  metric: str  # "abs" | "rel" | "exact"
  note: str = ""
  skipped: bool = False
  ratio: float | None = None  # max over elements of error / per-element tolerance (conditioned comparisons)

  @property
  def passed(self) -> bool:
    if self.skipped:
      return True
    if self.ratio is not None:
      return bool(np.isfinite(self.ratio)) and self.ratio <= 1.0
    value = {"abs": self.max_abs, "rel": self.rel, "exact": self.max_abs}[self.metric]
    return bool(np.isfinite(value)) and value <= self.tol

  @property
  def status(self) -> str:
    return "SKIP" if self.skipped else ("PASS" if self.passed else "FAIL")


def compare(component: str, got, ref, *, tol: float, metric: str = "abs", elementwise: bool = False,
            cond=None, note: str = "") -> Row:
  """Compare two arrays.

  ``rel`` is max-abs / max|ref| (normwise) or, with ``elementwise``, max |a-b|/|b| (where ``b == 0`` the values
  must be equal, else ``rel`` is inf). ``cond`` (an array broadcastable to ``ref``, or a scalar) makes the
  relative tolerance per element ``tol + COND_ULPS * eps32 * cond``: the float32 condition number of the
  official formula at that element (see :func:`sde_condition_numbers`); ``ratio`` then reports the worst
  error / tolerance and decides PASS/FAIL.
  """
  got = np.asarray(got, np.float64)
  ref = np.asarray(ref, np.float64)
  if got.shape != ref.shape:
    return Row(component, math.inf, math.inf, tol, metric, f"shape {got.shape} vs official {ref.shape}")
  diff = np.abs(got - ref)
  max_abs = float(diff.max()) if diff.size else 0.0
  if elementwise:
    with np.errstate(divide="ignore", invalid="ignore"):
      r = np.where(ref != 0, diff / np.abs(ref), np.where(diff == 0, 0.0, np.inf))
    rel = float(r.max()) if r.size else 0.0
  else:
    scale = float(np.abs(ref).max()) if ref.size else 0.0
    rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
  if not np.all(np.isfinite(got)):
    return Row(component, math.inf, math.inf, tol, metric, "non-finite lliejax values")
  ratio = None
  if cond is not None:
    rtol = tol + COND_ULPS * EPS32 * np.broadcast_to(np.asarray(cond, np.float64), ref.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
      allowed = rtol * (np.abs(ref) if elementwise else np.abs(ref).max(initial=0.0))
      q = np.where(allowed > 0, diff / allowed, np.where(diff == 0, 0.0, np.inf))
    ratio = float(q.max()) if q.size else 0.0
  return Row(component, max_abs, rel, tol, metric, note, ratio=ratio)


def format_table(rows: Sequence[Row]) -> str:
  """Fixed-width table: component, max-abs, rel, tolerance, status."""
  width = max([len(r.component) for r in rows] + [9])
  head = f"{'component':<{width}}  {'max-abs':>10}  {'rel':>10}  {'tolerance':>15}  status"
  lines = [head, "-" * len(head)]
  for r in rows:
    if r.skipped:
      lines.append(f"{r.component:<{width}}  {'-':>10}  {'-':>10}  {'-':>15}  SKIP  {r.note}")
      continue
    tol = f"{r.metric} <= {r.tol:.0e}" if r.metric != "exact" else "bitwise"
    note = r.note
    if r.ratio is not None:
      tol = f"{r.metric} <= {r.tol:.0e}+k"
      note = f"err/tol {r.ratio:.2g}" + (f"; {note}" if note else "")
    lines.append(f"{r.component:<{width}}  {r.max_abs:10.3e}  {r.rel:10.3e}  {tol:>15}  {r.status}"
                 + (f"  {note}" if note else ""))
  n_fail = sum(not r.passed for r in rows)
  n_skip = sum(r.skipped for r in rows)
  lines.append("-" * len(head))
  lines.append(f"{len(rows) - n_fail - n_skip} passed, {n_fail} failed" + (f", {n_skip} skipped" if n_skip else ""))
  return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ official code
@dataclasses.dataclass
class OfficialFiles:
  """Paths of the official sources used by the cross-check."""

  modules_dir: str
  arch: str
  module_util: str
  sde_utils: str | None
  kde_utils: str | None
  loss: str | None
  task: str | None


def find_official_files(root: str, task: str | None = None) -> OfficialFiles:
  """Locate the official sources in a checkout (either repository layout; ``root`` may also be ``codes/``).

  Raises:
    FileNotFoundError: with what was searched, when no ``DenoisingNAFNet_arch.py`` (for ``task``) exists.
  """
  root = os.path.abspath(os.path.expanduser(root))
  if not os.path.isdir(root):
    raise FileNotFoundError(f"--official {root}: not a directory")
  archs = []
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in (".git", "__pycache__", "node_modules"))
    if "DenoisingNAFNet_arch.py" in filenames and "module_util.py" in filenames:
      archs.append(dirpath)
  if not archs:
    raise FileNotFoundError(f"no DenoisingNAFNet_arch.py (with module_util.py beside it) under {root}; expected "
                            "a checkout of shermanlian/spatial-entropy-loss or Algolzw/image-restoration-sde")

  def task_of(d: str) -> str | None:
    parts = os.path.relpath(d, root).split(os.sep)
    return parts[parts.index("config") + 1] if "config" in parts[:-1] else None

  if task is not None:
    chosen = [d for d in archs if task_of(d) == task]
    if not chosen:
      raise FileNotFoundError(f"no DenoisingNAFNet_arch.py for task {task!r} under {root}; tasks found: "
                              f"{sorted({t for t in map(task_of, archs) if t})}")
    modules_dir = chosen[0]
  else:
    low = [d for d in archs if task_of(d) == "low-light"]
    modules_dir = (low or archs)[0]
  # sde_utils.py: the nearest <ancestor>/utils/sde_utils.py walking up from the modules folder, else any.
  sde = None
  d = modules_dir
  while True:
    cand = os.path.join(d, "utils", "sde_utils.py")
    if os.path.isfile(cand):
      sde = cand
      break
    parent = os.path.dirname(d)
    if parent == d or not parent.startswith(root):
      break
    d = parent
  if sde is None:
    for dirpath, dirnames, filenames in os.walk(root):
      dirnames[:] = sorted(x for x in dirnames if x not in (".git", "__pycache__"))
      if "sde_utils.py" in filenames:
        sde = os.path.join(dirpath, "sde_utils.py")
        break

  def opt(name: str) -> str | None:
    p = os.path.join(modules_dir, name)
    return p if os.path.isfile(p) else None

  return OfficialFiles(modules_dir=modules_dir, arch=os.path.join(modules_dir, "DenoisingNAFNet_arch.py"),
                       module_util=os.path.join(modules_dir, "module_util.py"), sde_utils=sde,
                       kde_utils=opt("kde_utils.py"), loss=opt("loss.py") if opt("kde_utils.py") else None,
                       task=task_of(modules_dir))


class _Stub(types.ModuleType):
  """Placeholder for an uninstalled package: importable, but any use raises."""

  def __getattr__(self, attr):
    if attr.startswith("__"):
      raise AttributeError(attr)
    name = self.__name__

    def unavailable(*args, **kwargs):
      raise RuntimeError(f"{name}.{attr} is a lliejax crosscheck stub: {name} is not installed and this "
                         "code path of the official repository is not supported by the cross-check")

    return unavailable


def _installed(name: str) -> bool:
  try:
    return importlib.util.find_spec(name) is not None
  except (ImportError, ValueError):
    return False


def _torchvision_pure_python() -> None:
  """Let a torchvision whose compiled operators do not load against this torch (a CPU torch next to a CUDA
  torchvision, or mismatched versions) import its pure-Python parts, which is all the official modules use
  (``torchvision.utils``, ``transforms``): its ``_meta_registrations`` module, which registers fake kernels for the
  compiled operators and raises ``operator torchvision::nms does not exist`` when they are missing, is replaced by
  an empty module before torchvision is first imported."""
  if "torchvision" not in sys.modules and _installed("torchvision"):
    sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))


@contextlib.contextmanager
def _stubbed_imports(names: Iterable[str] = STUB_IF_MISSING, stub_cls: type | None = None):
  """Temporarily put :class:`_Stub` modules (or ``stub_cls`` ones) in ``sys.modules`` for packages that are not
  installed."""
  added = []
  for name in names:
    if name in sys.modules or _installed(name):
      continue
    stub = (stub_cls or _Stub)(name)
    stub.__path__ = []  # a package, so "import a.b" works
    sys.modules[name] = stub
    added.append(name)
    parent, _, child = name.rpartition(".")
    if parent and parent in sys.modules:
      setattr(sys.modules[parent], child, stub)
  dont_write = sys.dont_write_bytecode
  sys.dont_write_bytecode = True
  try:
    yield added
  finally:
    sys.dont_write_bytecode = dont_write
    for name in added:
      sys.modules.pop(name, None)


def import_official(files: OfficialFiles) -> types.SimpleNamespace:
  """Import the official modules from a checkout; returns ``SimpleNamespace(arch, sde_utils, kde_utils, loss,
  stubbed, files)`` (missing optional modules are ``None``)."""
  _torchvision_pure_python()  # the official modules import torchvision: its pure-Python parts must load
  pkg_name = f"_lliejax_official_{uuid.uuid4().hex[:8]}"
  pkg = types.ModuleType(pkg_name)
  pkg.__path__ = [files.modules_dir]  # no __init__.py is executed
  sys.modules[pkg_name] = pkg
  ns = types.SimpleNamespace(files=files, arch=None, sde_utils=None, kde_utils=None, loss=None, stubbed=[])
  with _stubbed_imports() as stubbed, contextlib.redirect_stdout(io.StringIO()):
    ns.stubbed = list(stubbed)
    ns.arch = importlib.import_module(f"{pkg_name}.DenoisingNAFNet_arch")
    if files.kde_utils:
      ns.kde_utils = importlib.import_module(f"{pkg_name}.kde_utils")
    if files.loss:
      ns.loss = importlib.import_module(f"{pkg_name}.loss")
    if files.sde_utils:
      spec = importlib.util.spec_from_file_location(f"{pkg_name}_sde_utils", files.sde_utils)
      mod = importlib.util.module_from_spec(spec)
      sys.modules[spec.name] = mod
      spec.loader.exec_module(mod)
      ns.sde_utils = mod
  return ns


def setup_torch(threads: int | None = None):
  """float32, deterministic algorithms, ``threads`` (default: all cores) intra-op threads; torchvision importable
  (:func:`_torchvision_pure_python`)."""
  import torch  # pylint: disable=import-outside-toplevel
  _torchvision_pure_python()
  torch.set_default_dtype(torch.float32)
  torch.use_deterministic_algorithms(True)
  torch.set_num_threads(threads or os.cpu_count() or 1)
  return torch


def _setup_jax():
  import jax  # pylint: disable=import-outside-toplevel
  return jax


def requested_checks(only: Iterable[str], checks: Sequence[str]) -> set[str]:
  """``set(only)`` after checking that every name is one of ``checks`` and that PyTorch is installed.

  Raises:
    ValueError: unknown check names. ImportError: no PyTorch.
  """
  only = set(only)
  if not only <= set(checks):
    raise ValueError(f"unknown checks {sorted(only - set(checks))}: choose from {', '.join(checks)}")
  if not _installed("torch"):
    raise ImportError("PyTorch is required: pip install 'lliejax[torch]'")
  return only


def highest_precision(fn: Callable) -> Callable:
  """``fn`` run under ``jax.default_matmul_precision('highest')`` (float32 matmuls and convolutions, as torch's)."""
  jax = _setup_jax()

  def run(*args):
    with jax.default_matmul_precision("highest"):
      return fn(*args)
  return run


def to_nhwc(a) -> np.ndarray:
  """An NCHW array or torch tensor -> a contiguous NHWC numpy array."""
  a = a.detach().numpy() if hasattr(a, "detach") else np.asarray(a)
  return np.ascontiguousarray(a.transpose(0, 2, 3, 1))


def to_nchw(a) -> np.ndarray:
  """An NHWC array -> a contiguous NCHW numpy array."""
  return np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2))


# ------------------------------------------------------------------------------------------------ NAFNet
def randomise_norm_params(module, seed: int, scale: float = 0.3) -> None:
  """``beta``/``gamma`` ~ N(0, scale^2) and LayerNorm ``g`` ~ 1 + N(0, 0.2^2) (official init: 0 and 1)."""
  import torch  # pylint: disable=import-outside-toplevel
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      leaf = name.rsplit(".", 1)[-1]
      if leaf in ("beta", "gamma"):
        p.copy_(torch.randn(p.shape, generator=gen) * scale)
      elif leaf == "g":
        p.copy_(1 + 0.2 * torch.randn(p.shape, generator=gen))


def check_nafnet(build_torch: Callable[[dict], Any], model: dict, *, sizes=DEFAULT_SIZES,
                 timesteps=DEFAULT_TIMESTEPS, seed: int = 0, batch: int = 2, label: str = "nafnet",
                 tol: float = NAFNET_ABS_TOL, log: Callable[[str], None] = lambda s: None) -> list[Row]:
  """Forward of a PyTorch ConditionalNAFNet (``build_torch(model_dict)``) vs lliejax after conversion.

  For each size: one row per scalar timestep (an ``int`` passed to the torch module, as the samplers do) and
  one row for a batch with a different timestep per sample.
  """
  torch = setup_torch()
  jax = _setup_jax()
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from lliejax.interop.nafnet import KEYMAP  # pylint: disable=import-outside-toplevel
  from lliejax.models.nafnet import ConditionalNAFNet  # pylint: disable=import-outside-toplevel

  model = KEYMAP.arch(model)
  rows = []
  torch.manual_seed(seed)
  net = build_torch(model)
  randomise_norm_params(net, seed + 1)
  net.eval()
  sd = {k: v.detach() for k, v in net.state_dict().items()}
  expected = KEYMAP.state_dict_shapes(model)
  got_keys = [(k, tuple(v.shape)) for k, v in sd.items()]
  same = got_keys == list(expected.items())
  rows.append(Row(f"{label} state_dict keys/order/shapes", 0.0 if same else math.inf, 0.0 if same else math.inf,
                  0.0, "exact", f"{len(sd)} tensors" if same else "differs from KEYMAP.state_dict_shapes"))
  log(f"{label}: {KEYMAP.format_arch(model)}, {sum(v.numel() for v in sd.values()):,} parameters")
  result = KEYMAP.import_state_dict({k: v.numpy() for k, v in sd.items()}, model)
  params = jax.tree_util.tree_map(jnp.asarray, result.params)
  flax_model = ConditionalNAFNet(img_channel=model["img_channel"], width=model["width"],
                                 enc_blk_nums=tuple(model["enc_blk_nums"]), middle_blk_num=model["middle_blk_num"],
                                 dec_blk_nums=tuple(model["dec_blk_nums"]))
  jitted = jax.jit(lambda p, x, mu, t: flax_model.apply({"params": p}, x, mu, t))

  def apply(*args):
    with jax.default_matmul_precision("highest"):  # no TF32/bf16 passes on accelerators
      return jitted(*args)

  rng = np.random.default_rng(seed)
  for h, w in sizes:
    mu = rng.uniform(0, 1, (batch, model["img_channel"], h, w)).astype(np.float32)
    x = (mu + 0.2 * rng.standard_normal(mu.shape)).astype(np.float32)
    cases = [(f"t={t}", int(t)) for t in timesteps]
    per_sample = np.resize(np.asarray(timesteps, np.int64), batch)
    if batch > 1:
      per_sample[-1] = timesteps[-1]
    cases.append((f"t={per_sample.tolist()}", per_sample))
    nhwc = lambda a: jnp.asarray(a.transpose(0, 2, 3, 1))
    for name, t in cases:
      with torch.no_grad():
        t_torch = t if isinstance(t, int) else torch.from_numpy(t)
        ref = net(torch.from_numpy(x), torch.from_numpy(mu), t_torch).numpy()
      t_jax = jnp.full((batch,), t, jnp.int32) if isinstance(t, int) else jnp.asarray(t, jnp.int32)
      out = np.asarray(apply(params, nhwc(x), nhwc(mu), t_jax)).transpose(0, 3, 1, 2)
      row = compare(f"{label} forward {h}x{w} {name}", out, ref, tol=tol, metric="abs",
                    note=f"max|out|={np.abs(ref).max():.3g}")
      log(format_table([row]).splitlines()[2])
      rows.append(row)
  # Export back and load strictly into a fresh torch module: bitwise equal weights.
  back = KEYMAP.export_params(jax.tree_util.tree_map(np.asarray, params), model, as_torch=True)
  fresh = build_torch(model)
  try:
    fresh.load_state_dict(back, strict=True)
    diff = max(float((fresh.state_dict()[k] - v).abs().max()) if v.numel() else 0.0 for k, v in sd.items())
    bitwise = all(torch.equal(fresh.state_dict()[k], v) for k, v in sd.items())
    rows.append(Row(f"{label} export -> load_state_dict(strict)", 0.0 if bitwise else max(diff, 1e-45),
                    0.0, 0.0, "exact"))
  except RuntimeError as e:
    rows.append(Row(f"{label} export -> load_state_dict(strict)", math.inf, math.inf, 0.0, "exact",
                    str(e).splitlines()[0]))
  return rows


def official_nafnet_builder(official) -> Callable[[dict], Any]:
  def build(m: dict):
    return official.arch.ConditionalNAFNet(img_channel=m["img_channel"], width=m["width"],
                                           middle_blk_num=m["middle_blk_num"],
                                           enc_blk_nums=list(m["enc_blk_nums"]), dec_blk_nums=list(m["dec_blk_nums"]))
  return build


# ------------------------------------------------------------------------------------------------ SDE
def sde_condition_numbers(ref, schedule: str) -> dict[str, np.ndarray]:
  """First-order float32 condition numbers of the official ``IRSDE`` tables (float64, from its own tables).

  A float32 implementation of the same formula can differ from the official one by a few ulps of each
  intermediate (numpy/XLA and torch round ``exp``/``cos`` differently by up to one ulp); the relative error of
  the result is that times the condition number ``k``. Large ``k`` occur where the formula cancels:
  ``theta = 1 - a`` of the cosine schedule (``k = (1 - theta) / theta``), ``sigma_bar = lambda sqrt(1 - E)``
  with ``E = exp(-2 thetas_cumsum dt)`` near 1 at small t (``k ~ E / (2 (1 - E))``: about 500 at t = 2 of
  the cosine schedule), the posterior variance ``(1 - A)(1 - C)/(1 - B)``, and ``thetas_cumsum`` (a
  running float32 sum, ``k ~ index``).
  """
  th = ref.thetas.double().numpy()
  cs = ref.thetas_cumsum.double().numpy()
  dt = float(ref.dt)
  n = len(th)
  k_th = (1 - th) / th if schedule == "cosine" else np.zeros(n)
  idx = np.arange(n, dtype=np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    k_cs = np.where(cs > 0, idx * (cs + th[0]) / cs, 0.0)

    def inv1m(e):  # e / (1 - e), 0 where e == 1 exactly (then both sides are exact: 1 - 1 = 0)
      return np.where(e < 1, e / (1 - e), 0.0)

    e_bar = np.exp(-2 * cs * dt)
    k_sb = 0.5 * inv1m(e_bar) * (1 + 2 * cs * dt * k_cs) + 1
    a = np.exp(-2 * th[1:] * dt)
    b = np.exp(-2 * cs[1:] * dt)
    c = np.exp(-2 * cs[:-1] * dt)
    k_std = 0.5 * (inv1m(a) * (1 + k_th[1:]) + inv1m(b) * (1 + k_cs[1:]) + inv1m(c) * (1 + k_cs[:-1])) + 1
  return {"thetas": k_th, "sigmas": 0.5 * k_th + 1, "thetas_cumsum": k_cs, "sigma_bars": k_sb,
          "dt": np.asarray(k_cs[-1] + 1), "reverse_optimum_std": k_std}


def check_sde(irsde_cls, *, schedules=SCHEDULES, timesteps=DEFAULT_TIMESTEPS, max_sigma: float = 50.0,
              T: int = 100, eps: float = 0.005, seed: int = 0, shape=(4, 3, 37, 53),
              tol: float = SDE_REL_TOL) -> list[Row]:
  """Official ``IRSDE`` tables and step functions vs :mod:`lliejax.diffusion.irsde` (see the module docstring)."""
  torch = setup_torch()
  _setup_jax()
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from lliejax.diffusion import irsde as lsde  # pylint: disable=import-outside-toplevel
  rows = []
  rng = np.random.default_rng(seed)
  for schedule in schedules:
    with contextlib.redirect_stdout(io.StringIO()):
      ref = irsde_cls(max_sigma=max_sigma, T=T, schedule=schedule, eps=eps, device=torch.device("cpu"))
    mine = lsde.make_sde(max_sigma=max_sigma, T=T, schedule=schedule, eps=eps)
    ts = torch.arange(1, T + 1)
    tables = {"thetas": (mine.thetas, ref.thetas), "sigmas": (mine.sigmas, ref.sigmas),
              "thetas_cumsum": (mine.thetas_cumsum, ref.thetas_cumsum), "sigma_bars": (mine.sigma_bars, ref.sigma_bars),
              "dt": (np.float32(mine.dt), ref.dt), "reverse_optimum_std": (mine.posterior_stds[1:],
                                                                           ref.reverse_optimum_std(ts))}
    kappa = sde_condition_numbers(ref, schedule)
    for name, (a, b) in tables.items():
      b = b.numpy() if hasattr(b, "numpy") else np.asarray(b)
      rows.append(compare(f"sde {schedule} {name}", a, b, tol=tol, metric="rel", elementwise=True,
                          cond=kappa[name]))
    # Step functions: same inputs (NCHW; the lliejax functions are layout-agnostic), several timesteps.
    errs: dict[str, list[Row]] = {}
    cases = [int(t) for t in timesteps] + [np.resize(np.asarray(timesteps), shape[0])]
    for k, t in enumerate(cases):
      mu = rng.uniform(0, 1, shape).astype(np.float32)
      x0 = rng.uniform(0, 1, shape).astype(np.float32)
      xt = (mu + 0.2 * rng.standard_normal(shape)).astype(np.float32)
      noise = rng.standard_normal(shape).astype(np.float32)
      tt = t if isinstance(t, int) else torch.from_numpy(t.astype(np.int64)).reshape(-1, 1, 1, 1)
      tj = jnp.asarray(t, jnp.int32)
      T_ = {n: torch.from_numpy(v) for n, v in dict(mu=mu, x0=x0, xt=xt, noise=noise).items()}
      ref.set_mu(T_["mu"])
      score_ref = ref.get_score_from_noise(T_["noise"], tt)
      score = score_ref.numpy()
      torch.manual_seed(1000 + k)
      z = torch.randn_like(T_["xt"])

      def with_noise(fn, *args, _k=k):
        torch.manual_seed(1000 + _k)  # the official step draws torch.randn_like(x) once: exactly z
        return fn(*args)

      pairs = {
          "mu_bar": (mine.mu_bar(x0, mu, tj), ref.mu_bar(T_["x0"], tt)),
          "get_score_from_noise": (mine.score_from_noise(noise, tj), score_ref),
          "reverse_sde_step_mean": (mine.reverse_sde_step_mean(xt, mu, score, tj),
                                    ref.reverse_sde_step_mean(T_["xt"], score_ref, tt)),
          "reverse_sde_step": (mine.reverse_sde_step(xt, mu, score, tj, z.numpy()),
                               with_noise(ref.reverse_sde_step, T_["xt"], score_ref, tt)),
          "reverse_ode_step": (mine.reverse_ode_step(xt, mu, score, tj),
                               ref.reverse_ode_step(T_["xt"], score_ref, tt)),
          "reverse_optimum_step": (mine.reverse_optimum_step(xt, x0, mu, tj),
                                   ref.reverse_optimum_step(T_["xt"], T_["x0"], tt)),
          "get_init_state_from_noise": (mine.x0_from_noise(xt, noise, mu, tj),
                                        ref.get_init_state_from_noise(T_["xt"], T_["noise"], tt)),
          "reverse_posterior_step": (mine.reverse_posterior_step(xt, noise, mu, tj, z.numpy()),
                                     with_noise(ref.reverse_posterior_step, T_["xt"], T_["noise"], tt)),
      }
      # The score -noise / sigma_bar_t inherits the conditioning of sigma_bar_t (a per-sample scale).
      k_score = kappa["sigma_bars"][np.asarray(t).reshape(-1)].reshape(-1, 1, 1, 1)
      for name, (a, b) in pairs.items():
        cond = k_score if name == "get_score_from_noise" else None
        errs.setdefault(name, []).append(compare(name, np.asarray(a), b.numpy(), tol=tol, metric="rel",
                                                 elementwise=cond is not None, cond=cond))
    for name, rs in errs.items():
      worst = max(rs, key=lambda r: r.rel)
      ratio = max(r.ratio for r in rs) if rs[0].ratio is not None else None
      rows.append(Row(f"sde {schedule} {name}", max(r.max_abs for r in rs), worst.rel, tol, "rel",
                      f"t in {list(timesteps)} + batch" + (f"; {worst.note}" if worst.note else ""), ratio=ratio))
  return rows


# ------------------------------------------------------------------------------------------------ KDE
def check_kde(official, *, seed: int = 0, tol: float = KDE_REL_TOL) -> list[Row]:
  """KDE spatial-entropy densities and losses vs ``kde_utils.py``/``loss.py`` with shared neighbour weights.

  Returns SKIP rows when ``lliejax.losses.entropy`` or the official ``kde_utils.py`` is not available.
  """
  if official.kde_utils is None:
    return [Row("kde", math.nan, math.nan, tol, "rel", "no kde_utils.py in this checkout (upstream IR-SDE)",
                skipped=True)]
  try:
    from lliejax.losses import entropy  # pylint: disable=import-outside-toplevel,unused-import
  except ImportError as e:
    return [Row("kde", math.nan, math.nan, tol, "rel", f"lliejax.losses.entropy not importable ({e})",
                skipped=True)]
  return _kde_rows(official, entropy, seed=seed, tol=tol)


KDE_CASES = (  # (name, shape, bins L, weights) -- "ones": a ramp against its mirror; "normal": the training path
    ("ref-vector L=8 w=ones", (2, 3, 5, 7), 8, "ones"),
    ("random 2x3x16x16 L=32 w~N(0,1)", (2, 3, 16, 16), 32, "normal"),
    ("random 1x3x13x19 L=16 w=None", (1, 3, 13, 19), 16, None),
)


@contextlib.contextmanager
def _official_sqrt_of_int(kde_utils):
  """The official ``hellinger`` evaluates ``torch.sqrt(2)`` on a Python int, a TypeError in every PyTorch
  (``kde_utils.py: hellinger``). For the comparison only, the module's ``torch`` name is swapped for a proxy whose ``sqrt``
  also accepts numbers; everything else is the official code unchanged."""
  import torch  # pylint: disable=import-outside-toplevel
  proxy = types.SimpleNamespace(**{k: getattr(torch, k) for k in dir(torch) if not k.startswith("__")})
  proxy.sqrt = lambda v: torch.sqrt(v if isinstance(v, torch.Tensor) else torch.tensor(float(v)))
  saved = kde_utils.torch
  kde_utils.torch = proxy
  try:
    yield
  finally:
    kde_utils.torch = saved


def official_kde_reference(official, pred: np.ndarray, target: np.ndarray, *, bins: int, weight,
                           bandwidth: float = 0.5) -> dict[str, np.ndarray]:
  """Official densities and divergences (NCHW float32 inputs; ``weight`` a 3x3 array or ``None``).

  Keys: ``density_pred``/``density_target`` (``kde``, shape (B, L*L, C, H, 3W)), ``relative`` =
  ``relative_entropy(P=target, Q=pred)`` (as ``r_entropy_loss``), ``cross`` = ``cross_entropy(P=pred,
  Q=target)`` (as ``c_entropy_loss``, which passes no weights), ``hellinger`` = ``hellinger(P=target, Q=pred)``
  (as ``hellinger_loss``), ``smooth`` = ``loss.smooth_loss(pred, target)`` (the extra term of ``helsmooth``),
  ``hellinger+smooth`` = the sum of the two (``EntropyLoss(name='helsmooth')``). All use the same ``weight``.
  """
  import torch  # pylint: disable=import-outside-toplevel
  ku = official.kde_utils
  x, y = torch.from_numpy(pred), torch.from_numpy(target)
  w = None if weight is None else torch.from_numpy(np.asarray(weight, np.float32).reshape(1, 1, 3, 3))
  with torch.no_grad():
    px = ku.kde(x, bins, weight=w, h=bandwidth)
    py = ku.kde(y, bins, weight=w, h=bandwidth)
    out = {"density_pred": px.numpy(), "density_target": py.numpy(),
           "relative": ku.relative_entropy(py, px).numpy()}
    out["cross"] = ku.cross_entropy(px, py).numpy()
    with _official_sqrt_of_int(ku):
      out["hellinger"] = ku.hellinger(py, px).numpy()
    if official.loss is not None:
      out["smooth"] = official.loss.smooth_loss(x, y, win_size=3).numpy()
      out["hellinger+smooth"] = out["hellinger"] + out["smooth"]  # EntropyLoss(name='helsmooth')
  return out


def _kde_inputs(name: str, shape, bins: int, weights, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
  if name.startswith("ref-vector"):
    x = np.linspace(0, 1, int(np.prod(shape)), dtype=np.float32).reshape(shape)
    y = np.ascontiguousarray(x[..., ::-1])
  else:
    y = rng.uniform(-0.05, 1.05, shape).astype(np.float32)  # a little outside [0, 1]: exercises the clamp
    x = np.clip(y + 0.05 * rng.standard_normal(shape), -0.1, 1.1).astype(np.float32)
  w = {"ones": np.ones((3, 3), np.float32), "normal": rng.standard_normal((3, 3)).astype(np.float32),
       None: None}[weights]
  return x, y, w


# What each KDE row compares: lliejax call vs official call (P/Q as passed to the official divergence).
KDE_QUANTITIES = {
    "density_pred": "kde_density(pred) vs kde(pred)",
    "density_target": "kde_density(target) vs kde(target)",
    "relative": "kind=kl vs relative_entropy(P=target,Q=pred)",
    "cross": "kind=cross vs cross_entropy(P=pred,Q=target)",
    "hellinger": "kind=hellinger vs hellinger(P=target,Q=pred)",
    "smooth": "smoothness_loss vs smooth_loss",
    "hellinger+smooth": "kind=hellinger_smooth vs hellinger+smooth_loss",
}
KDE_CROSS_FINITE_BINS = 8  # sigmoid-derivative kernels of all bins stay > 0 in float32 for L <= 9


def kde_density_condition_number(bins: int, weight, *, channels: int = 3, bandwidth: float = 0.5) -> float:
  """Normwise float32 condition number ``k`` of the official ``kde`` density w.r.t. its neighbour map.

  The neighbour map ``x~ = sum_k w_k x_k / (C sum_k w_k)`` (8 neighbours, ``x`` in ``[0, L-1]``) is where the two
  float32 implementations round differently: its normaliser ``sum_k w_k`` has relative rounding error
  ``~ eps * kw`` with ``kw = sum|w| / |sum w|``, and the 8-term sum an absolute error ``~ eps * m`` with
  ``m = (L-1) sum|w| / (C |sum w|)`` (the largest possible ``|x~|``), so ``|delta x~| <~ eps * m * (1 + kw)``.
  A density moves by at most ``max|kappa'| / (h kappa(0))`` times ``|delta x~|`` relative to its maximum (sigmoid
  derivative: ``max|kappa'| = 1/(6 sqrt 3)``, ``kappa(0) = 1/4``). Hence
  ``k = (2 / (3 sqrt 3 h)) * m * (1 + kw)``: ~4 for ``w = ones``, L = 8, but ~800 for the N(0,1) draw of seed 0
  at L = 32 (``sum w = 0.68`` against ``sum|w| = 6.6``: the official normaliser alone is 3.8e-7 off in float32,
  which moves neighbour values of up to 44 by ~2e-5). ``weight=None`` means all ones.
  """
  w = np.ones((3, 3)) if weight is None else np.asarray(weight, np.float64).reshape(3, 3)
  mask = np.ones((3, 3), bool)
  mask[1, 1] = False
  s, a = abs(float(w[mask].sum())), float(np.abs(w[mask]).sum())
  if s == 0:
    return math.inf
  m = (bins - 1) * a / (channels * s)
  return 2.0 / (3.0 * math.sqrt(3.0) * bandwidth) * m * (1.0 + a / s)


def _kde_rows(official, entropy, *, seed: int, tol: float) -> list[Row]:
  """One row per (case, quantity): the lliejax values from :func:`lliejax_kde_values` vs the official ones.

  Scalars are compared by ``|a - b| / |b|``, densities by max-abs / max |official| with the tolerance widened by
  ``COND_ULPS * eps32 * k`` (rows marked ``+k``; ``k`` from :func:`kde_density_condition_number`: both sides
  round the ill-conditioned neighbour map differently, all else agrees to ~1e-7). The official cross entropy has
  no epsilon: at L >= 10 the kernel ``s(1-s)`` is exactly 0 in float32 for bins more than ~8 units away, so bins
  that are empty in both densities give ``0 * ln 0 = NaN``. Where the official value is NaN the row checks that
  lliejax is NaN too (PASS iff both are NaN), and the case is re-evaluated at
  L = :data:`KDE_CROSS_FINITE_BINS` (same inputs and weights) for a numerical comparison when that is finite
  (a row marked ``@L=8``; when it is NaN as well, again NaN agreement).
  """
  rng = np.random.default_rng(seed)
  rows = []
  for name, shape, bins, weights in KDE_CASES:
    x, y, w = _kde_inputs(name, shape, bins, weights, rng)
    ref = official_kde_reference(official, x, y, bins=bins, weight=w)
    mine = lliejax_kde_values(entropy, x, y, bins=bins, weight=w)
    for q, r in ref.items():
      if q not in mine:
        continue
      label = f"kde {name}: {KDE_QUANTITIES.get(q, q)}"
      if q == "cross" and not np.all(np.isfinite(r)):
        rows.append(_nan_agreement(label, mine[q], r, tol))
        if bins != KDE_CROSS_FINITE_BINS:
          lf = KDE_CROSS_FINITE_BINS
          r8 = official_kde_reference(official, x, y, bins=lf, weight=w)["cross"]
          m8 = lliejax_kde_values(entropy, x, y, bins=lf, weight=w, quantities=("cross",))["cross"]
          label8 = f"{label} @L={lf}"
          rows.append(compare(label8, m8, r8, tol=tol, metric="rel", note=f"finite at L={lf}")
                      if np.all(np.isfinite(r8)) else _nan_agreement(label8, m8, r8, tol))
        continue
      cond = kde_density_condition_number(bins, w, channels=shape[1]) if q.startswith("density") else None
      rows.append(compare(label, mine[q], r, tol=tol, metric="rel", cond=cond,
                          note=f"k={cond:.3g}" if cond is not None else ""))
  return rows


def _nan_agreement(label: str, got, ref, tol: float) -> Row:
  """Row for an official value that is not finite: PASS iff lliejax gives the same non-finite value."""
  got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
  same = got.shape == ref.shape and bool(np.all((np.isnan(got) & np.isnan(ref)) | (got == ref)))
  official = "NaN" if np.all(np.isnan(ref)) else "non-finite"
  return Row(label, 0.0 if same else math.inf, 0.0 if same else math.inf, tol, "rel",
             f"official {official} (0*ln 0, no eps): lliejax {'too' if same else f'= {got.ravel()[:3]}'}")


def lliejax_kde_values(entropy, pred: np.ndarray, target: np.ndarray, *, bins: int, weight,
                       bandwidth: float = 0.5, quantities: Sequence[str] | None = None) -> dict[str, np.ndarray]:
  """The lliejax counterparts of :func:`official_kde_reference` (same keys, NCHW in -> same layouts out).

  Inputs are transposed to NHWC; the explicit 3x3 ``weight`` (or ``'mean'``, i.e. no weights, for ``None``) is
  passed to every call, so prediction and target share it as in the official loss wrappers. Densities come from
  :func:`lliejax.losses.entropy.kde_density` (already in the official layout ``(B, L*L, C, H, 3W)``); the losses from
  :func:`lliejax.losses.entropy.spatial_entropy_loss` with ``kind='kl'`` (KL(target || pred)), ``'cross'``
  (``cross_order='official'``: P = prediction, no epsilon), ``'hellinger'``, ``'hellinger_smooth'``, and
  :func:`lliejax.losses.entropy.smoothness_loss`. ``quantities`` restricts the keys computed.
  """
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  nhwc = lambda a: jnp.asarray(np.ascontiguousarray(np.asarray(a, np.float32).transpose(0, 2, 3, 1)))
  xp, yt = nhwc(pred), nhwc(target)
  w = None if weight is None else jnp.asarray(np.asarray(weight, np.float32).reshape(3, 3))
  lw = "mean" if w is None else w
  common = dict(bins=bins, bandwidth=bandwidth, kernel="sigmoid", windows=(1, 3, 5), neighbour_norm="official",
                clamp=True)
  calls = {
      "density_pred": lambda: entropy.kde_density(xp, weights=w, **common),
      "density_target": lambda: entropy.kde_density(yt, weights=w, **common),
      "relative": lambda: entropy.spatial_entropy_loss(xp, yt, kind="kl", weights=lw, **common),
      "cross": lambda: entropy.spatial_entropy_loss(xp, yt, kind="cross", weights=lw, cross_order="official",
                                                    **common),
      "hellinger": lambda: entropy.spatial_entropy_loss(xp, yt, kind="hellinger", weights=lw, **common),
      "smooth": lambda: entropy.smoothness_loss(xp, yt),
      "hellinger+smooth": lambda: entropy.spatial_entropy_loss(xp, yt, kind="hellinger_smooth", weights=lw,
                                                               **common),
  }
  keys = list(calls) if quantities is None else list(quantities)
  return {k: np.asarray(calls[k]()) for k in keys}


# ------------------------------------------------------------------------------------------------ running
CHECKS = ("nafnet", "sde", "kde")


def run_checks(official_dir: str, *, task: str | None = None, only=CHECKS, full: bool = False,
               config_spec: str | None = None, sizes=DEFAULT_SIZES, timesteps=DEFAULT_TIMESTEPS, batch: int = 2,
               seed: int = 0, threads: int | None = None, log: Callable[[str], None] = print) -> list[Row]:
  """Every comparison of ``only`` against the official checkout ``official_dir`` (``lliejax crosscheck``).

  Raises:
    ValueError: unknown check names. ImportError: torch or an official module cannot be imported.
    FileNotFoundError: no official sources in ``official_dir`` (for ``task``).
  """
  from lliejax import config_utils  # pylint: disable=import-outside-toplevel

  only = requested_checks(only, CHECKS)
  files = find_official_files(official_dir, task)
  official = import_official(files)
  setup_torch(threads)
  log(f"official modules: {files.arch}" + (f", {files.sde_utils}" if files.sde_utils else "")
      + (f", {files.kde_utils}, {files.loss}" if files.kde_utils else ""))
  if official.stubbed:
    log(f"stubbed (not installed, unused code paths): {', '.join(official.stubbed)}")
  rows: list[Row] = []
  if "nafnet" in only:
    build = official_nafnet_builder(official)
    models = [("nafnet", config_utils.load_config(config_spec).model) if config_spec
              else ("nafnet(small)", SMALL_MODEL)]
    if full:
      models.append(("nafnet(full)", config_utils.load_config(FULL_CONFIG).model))
    for label, model in models:
      rows += check_nafnet(build, model, sizes=sizes, timesteps=timesteps, seed=seed, batch=batch, label=label,
                           log=log)
  if "sde" in only:
    if official.sde_utils is None:
      rows.append(Row("sde", math.nan, math.nan, SDE_REL_TOL, "rel", "no sde_utils.py found", skipped=True))
    else:
      rows += check_sde(official.sde_utils.IRSDE, timesteps=timesteps, seed=seed)
  if "kde" in only:
    rows += check_kde(official, seed=seed)
  return rows


def rows_to_json(rows: Sequence[Row], path: str) -> None:
  with open(path, "w") as f:
    json.dump([dict(dataclasses.asdict(r), status=r.status) for r in rows], f, indent=2, default=str)
