"""PyTorch references of AnlightenDiff's three networks for the tests: the official modules, or a transcription.

* :func:`load_official`: the real ``model.py`` / ``commons.py`` / ``cond.py`` / ``utils/module_util.py`` of
  allanchan339/AnlightenDiff (``FS/`` and ``TS/`` separately), executed unmodified from a checkout or a bare git
  mirror (:data:`OFFICIAL_ENV`, else :data:`DEFAULT_MIRROR`); the packages that only their training code needs
  (``pytorch_lightning``, ``lion_pytorch``, ``torchmetrics``, ``utils.cond_utils``) are replaced by inert stubs
  while they are imported, and nothing is left in ``sys.modules``. ``None`` when no copy is available.
* :class:`TorchAnlightenUNet`: an independent transcription written from REFERENCE.md §2.7-2.8 and the key list of
  STATE_DICT_KEYS.md §2a-2d (same key names and registration order, so ``state_dict()`` lists keys as the
  official modules do), with weight norm written out (``bias``, ``weight_g``, ``weight_v``; kernel
  ``v * g / ||v||``) rather than ``torch.nn.utils.weight_norm``.

:func:`build` makes either, with one calling convention: denoiser ``net(x, t, cond, feats)``; encoder and refiner
``net(x) -> (out, feats)``. NCHW, float32.
"""
from __future__ import annotations

import contextlib
import math
import os
import subprocess
import sys
import types
import warnings

import torch
from torch import nn
from torch.nn import functional as F

OFFICIAL_ENV = "LLIEJAX_ANLIGHTENDIFF_OFFICIAL"
DEFAULT_MIRROR = "/work/.mirror/allanchan339+AnlightenDiff/repo"
KINDS = ("unet", "cond", "he")


# ------------------------------------------------------------------------------------------------ transcription
class Mish(nn.Module):
  def forward(self, x):
    return x * torch.tanh(F.softplus(x))


class WNConv2d(nn.Module):
  """A weight-normalised Conv2d without padding: parameters registered as ``bias``, ``weight_g``, ``weight_v``."""

  def __init__(self, cin: int, cout: int, k: int, stride: int = 1):
    super().__init__()
    self.stride = stride
    self.bias = nn.Parameter(torch.zeros(cout))
    v = torch.empty(cout, cin, k, k).uniform_(-1 / math.sqrt(cin * k * k), 1 / math.sqrt(cin * k * k))
    self.weight_g = nn.Parameter(v.flatten(1).norm(dim=1).reshape(cout, 1, 1, 1))
    self.weight_v = nn.Parameter(v)

  def forward(self, x):
    norm = self.weight_v.flatten(1).norm(dim=1).reshape(-1, 1, 1, 1)
    return F.conv2d(x, self.weight_v * (self.weight_g / norm), self.bias, self.stride)


class ConvBlock(nn.Module):
  """Reflection pad 1, 3x3 weight-normalised conv, Mish (``block.0`` .. ``block.2``)."""

  def __init__(self, cin: int, cout: int):
    super().__init__()
    self.block = nn.Sequential(nn.ReflectionPad2d(1), WNConv2d(cin, cout, 3), Mish())

  def forward(self, x):
    return self.block(x)


class ResBlock(nn.Module):
  """Two conv blocks with instance norm after each, the time shift between them (when given), residual."""

  def __init__(self, cin: int, cout: int, tdim: int):
    super().__init__()
    self.mlp = nn.Sequential(Mish(), nn.Linear(tdim, cout))
    self.block1 = ConvBlock(cin, cout)
    self.block2 = ConvBlock(cout, cout)
    self.res_conv = WNConv2d(cin, cout, 1) if cin != cout else nn.Identity()

  def forward(self, x, temb=None):
    h = F.instance_norm(self.block1(x), eps=1e-5)
    if temb is not None:
      h = h + self.mlp(temb)[:, :, None, None]
    h = F.instance_norm(self.block2(h), eps=1e-5)
    return h + self.res_conv(x)


class Down(nn.Module):
  def __init__(self, c: int):
    super().__init__()
    self.conv = nn.Sequential(nn.ReflectionPad2d(1), WNConv2d(c, c, 3, stride=2))

  def forward(self, x):
    return self.conv(x)


class Up(nn.Module):
  def __init__(self, c: int):
    super().__init__()
    self.conv = nn.Sequential(nn.ConvTranspose2d(c, c, 4, 2, 1))

  def forward(self, x):
    return self.conv(x)


def time_embedding(t, dim: int):
  """``[sin(t f), cos(t f)]``, ``f_k = exp(-k ln(1e4) / (dim/2 - 1))``."""
  half = dim // 2
  f = torch.exp(torch.arange(half, dtype=torch.float32) * (-math.log(10000) / (half - 1)))
  a = t.float()[:, None] * f[None, :]
  return torch.cat([a.sin(), a.cos()], dim=-1)


class TorchAnlightenUNet(nn.Module):
  """``kind='unet'``: denoiser ``(x, t, cond, feats) -> eps``; ``'cond'``/``'he'``: ``x -> (out, feats)``."""

  def __init__(self, kind: str, in_dim: int, unet_dim: int = 64, unet_outdim: int = 3,
               dim_mults=(1, 2, 2, 4, 4, 8), stronger_cond: bool = False, on_res: bool = True):
    super().__init__()
    assert kind in KINDS
    self.kind, self.dim, self.on_res = kind, unet_dim, on_res
    self.stronger = stronger_cond and kind == "unet"
    d = unet_dim
    dims = [d * m for m in dim_mults]
    self.mlp = nn.Sequential(nn.Linear(d, 4 * d), Mish(), nn.Linear(4 * d, d))
    self.downs = nn.ModuleList()
    cin = in_dim
    for i, c in enumerate(dims):
      last = i == len(dims) - 1
      self.downs.append(nn.ModuleList([ResBlock(cin, c, d), ResBlock(2 * c if self.stronger else c, c, d),
                                       nn.Identity() if last else Down(c)]))
      cin = c
    self.ups = nn.ModuleList()
    for j in range(len(dims) - 1):
      c = dims[-2 - j]
      self.ups.append(nn.ModuleList([ResBlock(2 * dims[-1 - j], c, d), ResBlock(c, c, d), Up(c)]))
    self.mid_block1 = ResBlock(dims[-1], dims[-1], d)
    self.mid_block2 = ResBlock(dims[-1], dims[-1], d)
    self.final_conv = nn.Sequential(ConvBlock(d, d), WNConv2d(d, unet_outdim, 1))
    with torch.no_grad():  # the official initialisation: Linear kaiming-normal x 0.1, zero Linear / conv biases
      for m in self.modules():
        if isinstance(m, nn.Linear):
          m.weight.normal_(0.0, 0.1 * math.sqrt(2.0 / m.in_features))
          m.bias.zero_()

  def forward(self, x, t=None, cond=None, feats_cond=None):
    inp = x
    temb = None
    if self.kind == "unet":
      x = torch.cat([x, cond], dim=1)
      temb = self.mlp(time_embedding(t, self.dim))
    skips, feats = [], []
    for i, (r1, r2, down) in enumerate(self.downs):
      x = r1(x, temb)
      if self.stronger:
        x = torch.cat([x, feats_cond[i]], dim=1)
      x = r2(x, temb)
      skips.append(x)
      feats.append(x)
      x = down(x)
    x = self.mid_block2(self.mid_block1(x, temb), temb)
    for r1, r2, up in self.ups:
      x = r2(r1(torch.cat([x, skips.pop()], dim=1), temb), temb)
      feats.append(x)
      x = up(x)
    x = self.final_conv(x)
    if self.kind == "unet":
      return x
    if self.kind == "cond":
      x = x + inp[:, 3:6] if self.on_res else torch.sigmoid(x)
    else:
      x = torch.clamp(x + (inp[:, 0:3] if inp.shape[1] > 3 else inp), 0, 1) if self.on_res else torch.sigmoid(x)
    return x, feats


# ------------------------------------------------------------------------------------------------ official code
def _reader(root: str):
  """``read(relative path) -> source text`` for a checkout (``FS/model.py`` under ``root``) or a bare git dir."""
  if os.path.isfile(os.path.join(root, "FS", "model.py")):
    return lambda rel: open(os.path.join(root, rel), encoding="utf-8").read()
  if os.path.isfile(os.path.join(root, "HEAD")) and os.path.isdir(os.path.join(root, "objects")):
    def read(rel):
      return subprocess.run(["git", f"--git-dir={root}", "show", f"HEAD:{rel}"], check=True, capture_output=True,
                            text=True).stdout
    return read
  return None


class _Stub(types.ModuleType):
  """An uninstalled package: every attribute is an inert class (usable as a base class or an imported name)."""

  def __getattr__(self, attr):
    if attr.startswith("__"):
      raise AttributeError(attr)
    return type(attr, (), {})


_STUBS = ("pytorch_lightning", "lion_pytorch", "torchmetrics", "torchmetrics.image", "torchmetrics.image.lpip",
          "torchmetrics.functional")


@contextlib.contextmanager
def _official_modules(read, folder: str):
  """Execute ``folder``'s ``commons.py``, ``utils/module_util.py``, ``model.py`` and ``cond.py`` as modules; yield
  ``(model, cond)``; restore ``sys.modules``."""
  names = ("commons", "utils", "utils.module_util", "utils.cond_utils") + _STUBS
  saved = {n: sys.modules.get(n) for n in names}

  def module(name, rel=None, package=False):
    m = _Stub(name) if rel is None else types.ModuleType(name)
    if package:
      m.__path__ = []
    sys.modules[name] = m
    if rel is not None:
      m.__file__ = f"<official {folder}/{rel}>"
      exec(compile(read(f"{folder}/{rel}"), m.__file__, "exec"), m.__dict__)  # pylint: disable=exec-used
    return m

  try:
    for n in _STUBS:
      module(n, package=True)
    utils = module("utils", package=True)
    utils.cond_utils = module("utils.cond_utils")
    utils.module_util = module("utils.module_util", "utils/module_util.py")
    module("commons", "commons.py")
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      yield module(f"_official_{folder}_model", "model.py"), module(f"_official_{folder}_cond", "cond.py")
  finally:
    for n in names + (f"_official_{folder}_model", f"_official_{folder}_cond"):
      if saved.get(n) is not None:
        sys.modules[n] = saved[n]
      else:
        sys.modules.pop(n, None)


_OFFICIAL: dict = {}


def official_root() -> str | None:
  """The official copy (:data:`OFFICIAL_ENV`, else :data:`DEFAULT_MIRROR`) if its sources can be read, else None."""
  if "root" not in _OFFICIAL:
    root = os.environ.get(OFFICIAL_ENV) or DEFAULT_MIRROR
    read = _reader(root)
    try:
      ok = read is not None and "class Unet" in read("FS/model.py")
    except (OSError, subprocess.CalledProcessError):
      ok = False
    _OFFICIAL["root"] = root if ok else None
  return _OFFICIAL["root"]


def load_official():
  """``{'FS': (model, cond), 'TS': (model, cond)}`` of the official modules, or ``None`` without a copy."""
  if "mods" not in _OFFICIAL:
    root = official_root()
    mods = None
    if root is not None:
      read = _reader(root)
      mods = {}
      for folder in ("FS", "TS"):
        with _official_modules(read, folder) as (model, cond):
          mods[folder] = (model, cond)
    _OFFICIAL["mods"] = mods
  return _OFFICIAL["mods"]


def _official_config(unet_dim, unet_outdim, dim_mults, stronger_cond, on_res):
  return types.SimpleNamespace(unet_dim=unet_dim, unet_outdim=unet_outdim, dim_mults=tuple(dim_mults),
                               use_attn=False, use_wn=True, use_instance_norm=True, weight_init=True,
                               stronger_cond=stronger_cond, cond_use_wn=True, cond_on_res=on_res, on_res=on_res)


def build(kind: str, source: str, *, in_dim: int, unet_dim: int = 64, unet_outdim: int = 3,
          dim_mults=(1, 2, 2, 4, 4, 8), stronger_cond: bool = False, on_res: bool = True) -> nn.Module:
  """A network of ``kind`` (``unet``, ``cond``, ``he``) from ``source`` (``official`` or ``transcription``).

  Official folders: the denoiser from ``FS/model.py`` with ``stronger_cond`` else ``TS/model.py``; the encoder
  from ``FS/cond.py`` with ``on_res`` (``cond_on_res``) else ``TS/cond.py``; the refiner from ``TS/cond.py``.
  """
  if source == "transcription":
    return TorchAnlightenUNet(kind, in_dim, unet_dim, unet_outdim, dim_mults, stronger_cond, on_res)
  mods = load_official()
  if mods is None:
    raise FileNotFoundError(f"no official AnlightenDiff copy (set {OFFICIAL_ENV})")
  cfg = _official_config(unet_dim, unet_outdim, dim_mults, stronger_cond, on_res)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # torch.nn.utils.weight_norm is deprecated
    if kind == "unet":
      return mods["FS" if stronger_cond else "TS"][0].Unet(cfg, in_dim=in_dim)
    if kind == "cond":
      return mods["FS" if on_res else "TS"][1].Unet_cond(cfg, in_dim, True)
    return mods["TS"][1].Unet_he(cfg, in_dim, True)


def randomise_(module: nn.Module, seed: int = 0) -> nn.Module:
  """Every parameter random (official layout), scaled so activations stay O(1): ``weight_g`` in [0.4, 1.0],
  ``weight_v`` N(0, 1) (its scale cancels), biases N(0, 0.1^2), Linear / ConvTranspose weights N(0, 1/fan_in)."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.state_dict(keep_vars=True).items():
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
