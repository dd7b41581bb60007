"""A small PyTorch restatement of ReDDiT's SR3 UNet, written from REFERENCE.md section 3.2.

Used only by the tests as an independent PyTorch implementation with the official ``state_dict`` key names
(``noise_level_mlp.1.weight``, ``downs.1.res_block.noise_func.noise_func.0.weight``, ``ups.3.conv.weight`` ...)
in the official registration order, so ``state_dict()`` lists keys as a real ``*_gen.pth`` (less the
``denoise_fn.`` prefix and the schedule buffers). NCHW, float32. The dead ``mlp`` of every residual block and the
``var_conv`` head are registered; ``forward`` returns ``(eps, var)`` like the official module.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


class NoiseLevelEncoding(nn.Module):
  """``[sin(g w_k), cos(g w_k)]`` with ``w_k = 1e4 ** (-k / (dim / 2))``, ``k = 0 .. dim/2 - 1``."""

  def __init__(self, dim: int):
    super().__init__()
    self.dim = dim

  def forward(self, gamma):
    half = self.dim // 2
    w = torch.pow(torch.tensor(1e4), -torch.arange(half, dtype=torch.float32) / half)
    a = gamma.reshape(-1, 1).float() * w[None, :]
    return torch.cat([torch.sin(a), torch.cos(a)], dim=1)


class Silu(nn.Module):
  def forward(self, x):
    return x * torch.sigmoid(x)


class NormActConv(nn.Module):
  """GroupNorm -> x*sigmoid(x) -> identity -> Conv3x3, as a Sequential named ``block`` (indices 0..3)."""

  def __init__(self, cin: int, cout: int, groups: int):
    super().__init__()
    self.block = nn.Sequential(nn.GroupNorm(groups, cin, eps=1e-5), Silu(), nn.Identity(),
                               nn.Conv2d(cin, cout, 3, padding=1))

  def forward(self, x):
    return self.block(x)


class Shift(nn.Module):
  """The additive per-channel noise-level shift: ``noise_func`` = Sequential(Linear)."""

  def __init__(self, emb: int, cout: int):
    super().__init__()
    self.noise_func = nn.Sequential(nn.Linear(emb, cout))

  def forward(self, h, e):
    return h + self.noise_func(e)[:, :, None, None]


class ResBlock(nn.Module):
  def __init__(self, cin: int, cout: int, emb: int, groups: int):
    super().__init__()
    self.mlp = nn.Sequential(Silu(), nn.Linear(emb, cout))  # registered, never called
    self.noise_func = Shift(emb, cout)
    self.block1 = NormActConv(cin, cout, groups)
    self.block2 = NormActConv(cout, cout, groups)
    self.res_conv = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

  def forward(self, x, e):
    return self.block2(self.noise_func(self.block1(x), e)) + self.res_conv(x)


class Attention(nn.Module):
  def __init__(self, c: int, groups: int):
    super().__init__()
    self.norm = nn.GroupNorm(groups, c, eps=1e-5)
    self.qkv = nn.Conv2d(c, 3 * c, 1, bias=False)
    self.out = nn.Conv2d(c, c, 1)

  def forward(self, x):
    b, c, h, w = x.shape
    q, k, v = self.qkv(self.norm(x)).reshape(b, 3 * c, h * w).split(c, dim=1)  # (b, c, hw) each
    weights = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(c), dim=-1)  # (b, hw_q, hw_k)
    y = (v @ weights.transpose(1, 2)).reshape(b, c, h, w)
    return self.out(y) + x


class Stage(nn.Module):
  """A residual block and, optionally, attention (``res_block``, ``attn``)."""

  def __init__(self, cin, cout, emb, groups, attn):
    super().__init__()
    self.res_block = ResBlock(cin, cout, emb, groups)
    self.use_attn = attn
    if attn:
      self.attn = Attention(cout, groups)

  def forward(self, x, e):
    x = self.res_block(x, e)
    return self.attn(x) if self.use_attn else x


class Down(nn.Module):
  def __init__(self, c):
    super().__init__()
    self.conv = nn.Conv2d(c, c, 3, stride=2, padding=1)

  def forward(self, x):
    return self.conv(x)


class Up(nn.Module):
  def __init__(self, c):
    super().__init__()
    self.conv = nn.Conv2d(c, c, 3, padding=1)

  def forward(self, x):
    return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class TorchSR3UNet(nn.Module):
  """SR3 UNet, NCHW: ``forward(concat[LQ, x_t], gamma) -> (eps, var)``."""

  def __init__(self, in_channel=6, out_channel=3, inner_channel=64, channel_mults=(1, 1, 2, 2, 4), attn_res=(16,),
               res_blocks=2, norm_groups=32, image_size=128):
    super().__init__()
    c0 = inner_channel
    self.noise_level_mlp = nn.Sequential(NoiseLevelEncoding(c0), nn.Linear(c0, 4 * c0), Silu(),
                                         nn.Linear(4 * c0, c0))
    downs, skips, c, res = [nn.Conv2d(in_channel, c0, 3, padding=1)], [c0], c0, image_size
    n = len(channel_mults)
    for i, mult in enumerate(channel_mults):
      for _ in range(res_blocks):
        downs.append(Stage(c, c0 * mult, c0, norm_groups, res in attn_res))
        c = c0 * mult
        skips.append(c)
      if i < n - 1:
        downs.append(Down(c))
        skips.append(c)
        res //= 2
    self.downs = nn.ModuleList(downs)
    self.mid = nn.ModuleList([Stage(c, c, c0, norm_groups, True), Stage(c, c, c0, norm_groups, False)])
    ups = []
    for i in range(n - 1, -1, -1):
      for _ in range(res_blocks + 1):
        ups.append(Stage(c + skips.pop(), c0 * channel_mults[i], c0, norm_groups, res in attn_res))
        c = c0 * channel_mults[i]
      if i > 0:
        ups.append(Up(c))
        res *= 2
    self.ups = nn.ModuleList(ups)
    self.final_conv = NormActConv(c, out_channel, norm_groups)
    self.var_conv = nn.Sequential(nn.Conv2d(c, c, 3, padding=1), nn.ELU(), nn.Conv2d(c, c, 3, padding=1), nn.ELU(),
                                  nn.Conv2d(c, 3, 3, padding=1), nn.ELU())

  def forward(self, x, gamma):
    e = self.noise_level_mlp(gamma)
    feats = []
    for layer in self.downs:
      x = layer(x, e) if isinstance(layer, Stage) else layer(x)
      feats.append(x)
    for layer in self.mid:
      x = layer(x, e)
    for layer in self.ups:
      x = layer(torch.cat([x, feats.pop()], dim=1), e) if isinstance(layer, Stage) else layer(x)
    return self.final_conv(x), self.var_conv(x)


def randomise_(module: nn.Module, seed: int = 0, scale: float = 0.2) -> nn.Module:
  """Every parameter set to ``scale * N(0, 1)`` (GroupNorm scales around 1), so no part of the net is trivial."""
  g = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for name, p in module.named_parameters():
      v = torch.randn(p.shape, generator=g) * scale
      is_norm_scale = p.ndim == 1 and name.endswith("weight") and (".block.0." in name or ".norm." in name)
      p.copy_(v + 1.0 if is_norm_scale else v)
  return module
