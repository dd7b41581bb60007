"""PyTorch references of AnlightenDiff's three networks for the tests: the official modules, or a transcription.

* :func:`load_official`: the real ``model.py`` / ``commons.py`` / ``cond.py`` (and the rest of ``FS/`` and ``TS/``)
  of allanchan339/AnlightenDiff, executed unmodified from a checkout or a bare git mirror (:data:`OFFICIAL_ENV`,
  else :data:`DEFAULT_MIRROR`) by :func:`lliejax.interop.crosscheck_anlightendiff.import_official` (the loader of
  ``lliejax crosscheck anlightendiff``: ``pytorch_lightning`` and the uninstalled training packages stubbed, nothing
  left in ``sys.modules``). ``None`` when no copy is available.
* :class:`TorchAnlightenUNet`: an independent transcription written from REFERENCE.md §2.7-2.8 and the key list of
  STATE_DICT_KEYS.md §2a-2d (same key names and registration order, so ``state_dict()`` lists keys as the
  official modules do), with weight norm written out (``bias``, ``weight_g``, ``weight_v``; kernel
  ``v * g / ||v||``) rather than ``torch.nn.utils.weight_norm``.

:func:`build` makes either, with one calling convention: denoiser ``net(x, t, cond, feats)``; encoder and refiner
``net(x) -> (out, feats)``. NCHW, float32. :func:`randomise_` is the library's
(:func:`lliejax.interop.crosscheck_anlightendiff.randomise_`).
"""
from __future__ import annotations

import math
import os

import torch
from torch import nn
from torch.nn import functional as F

from lliejax.interop import crosscheck_anlightendiff as ca

OFFICIAL_ENV = "LLIEJAX_ANLIGHTENDIFF_OFFICIAL"
DEFAULT_MIRROR = ca.DEFAULT_MIRROR
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
_OFFICIAL: dict = {}


def official_root() -> str | None:
  """The official copy (:data:`OFFICIAL_ENV`, else :data:`DEFAULT_MIRROR`) if its sources can be read, else None."""
  if "root" not in _OFFICIAL:
    root = os.environ.get(OFFICIAL_ENV) or DEFAULT_MIRROR
    _OFFICIAL["root"] = root if ca.is_official(root) else None
  return _OFFICIAL["root"]


def official_code():
  """The executed official modules (:class:`lliejax.interop.crosscheck_anlightendiff.OfficialCode`), or None."""
  if "code" not in _OFFICIAL:
    root = official_root()
    _OFFICIAL["code"] = ca.import_official(root) if root is not None else None
  return _OFFICIAL["code"]


def load_official():
  """``{'FS': (model, cond), 'TS': (model, cond)}`` of the official modules, or ``None`` without a copy."""
  code = official_code()
  if code is None:
    return None
  return {f: (code.folder(f).model, code.folder(f).cond) for f in ca.FOLDERS}


def build(kind: str, source: str, *, in_dim: int, unet_dim: int = 64, unet_outdim: int = 3,
          dim_mults=(1, 2, 2, 4, 4, 8), stronger_cond: bool = False, on_res: bool = True) -> nn.Module:
  """A network of ``kind`` (``unet``, ``cond``, ``he``) from ``source`` (``official`` or ``transcription``).

  Official folders: the denoiser from ``FS/model.py`` with ``stronger_cond`` else ``TS/model.py``; the encoder
  from ``FS/cond.py`` with ``on_res`` (``cond_on_res``) else ``TS/cond.py``; the refiner from ``TS/cond.py``
  (:func:`lliejax.interop.crosscheck_anlightendiff.official_network`).
  """
  if source == "transcription":
    return TorchAnlightenUNet(kind, in_dim, unet_dim, unet_outdim, dim_mults, stronger_cond, on_res)
  code = official_code()
  if code is None:
    raise FileNotFoundError(f"no official AnlightenDiff copy (set {OFFICIAL_ENV})")
  return ca.official_network(code, kind, in_dim=in_dim, unet_dim=unet_dim, unet_outdim=unet_outdim,
                             dim_mults=dim_mults, stronger_cond=stronger_cond, on_res=on_res)


randomise_ = ca.randomise_
