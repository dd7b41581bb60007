"""A small PyTorch restatement of the official ConditionalNAFNet, written from REFERENCE.md section 1.8.

Used only by the tests as an independent PyTorch implementation with the official ``state_dict`` key names
(``time_mlp.1.weight``, ``encoders.0.0.conv2.weight``, ``ups.0.0.weight`` ...) and the official registration
order (so ``state_dict()`` lists keys in the same order as a real checkpoint). NCHW, float32.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F


def _gate(x: torch.Tensor) -> torch.Tensor:
  a, b = torch.chunk(x, 2, dim=1)
  return a * b


class Gate(nn.Module):
  """Channel split and product (parameter free)."""

  def forward(self, x):
    return _gate(x)


class TimeEmbedding(nn.Module):
  """``[sin(t f), cos(t f)]`` with ``f_k = exp(-k ln(1e4) / (dim/2 - 1))``."""

  def __init__(self, dim: int):
    super().__init__()
    self.dim = dim

  def forward(self, t):
    half = self.dim // 2
    f = torch.exp(torch.arange(half, device=t.device) * (-math.log(10000) / (half - 1)))
    a = t.float()[:, None] * f[None, :]
    return torch.cat([a.sin(), a.cos()], dim=-1)


class ChannelNorm(nn.Module):
  """LayerNorm over channels of an NCHW map, biased variance, scale ``g`` only."""

  def __init__(self, c: int):
    super().__init__()
    self.g = nn.Parameter(torch.ones(1, c, 1, 1))

  def forward(self, x):
    mean = x.mean(dim=1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * self.g


class Block(nn.Module):
  """NAFBlock with time-conditioned shift/scale; registration order matches the official module."""

  def __init__(self, c: int, time_dim: int):
    super().__init__()
    self.beta = nn.Parameter(torch.zeros(1, c, 1, 1))
    self.gamma = nn.Parameter(torch.zeros(1, c, 1, 1))
    self.mlp = nn.Sequential(Gate(), nn.Linear(time_dim // 2, 4 * c))
    self.conv1 = nn.Conv2d(c, 2 * c, 1)
    self.conv2 = nn.Conv2d(2 * c, 2 * c, 3, padding=1, groups=2 * c)
    self.conv3 = nn.Conv2d(c, c, 1)
    self.sca = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(c, c, 1))
    self.conv4 = nn.Conv2d(c, 2 * c, 1)
    self.conv5 = nn.Conv2d(c, c, 1)
    self.norm1 = ChannelNorm(c)
    self.norm2 = ChannelNorm(c)

  def forward(self, x, temb):
    shift1, scale1, shift2, scale2 = self.mlp(temb)[:, :, None, None].chunk(4, dim=1)
    h = self.norm1(x) * (1 + scale1) + shift1
    h = _gate(self.conv2(self.conv1(h)))
    h = self.conv3(h * self.sca(h))
    y = x + self.beta * h
    h = self.norm2(y) * (1 + scale2) + shift2
    h = self.conv5(_gate(self.conv4(h)))
    return y + self.gamma * h


class TorchConditionalNAFNet(nn.Module):
  """``f(x_t, mu, t) -> eps`` (NCHW); pads bottom/right to ``2**levels`` and crops back; no residual."""

  def __init__(self, img_channel=3, width=16, middle_blk_num=1, enc_blk_nums=(1, 1), dec_blk_nums=(1, 1)):
    super().__init__()
    time_dim = 4 * width
    self.time_mlp = nn.Sequential(TimeEmbedding(width), nn.Linear(width, 2 * time_dim), Gate(),
                                  nn.Linear(time_dim, time_dim))
    self.intro = nn.Conv2d(2 * img_channel, width, 3, padding=1)
    self.ending = nn.Conv2d(width, img_channel, 3, padding=1)
    self.encoders, self.decoders, self.middle_blks = nn.ModuleList(), nn.ModuleList(), nn.ModuleList()
    self.ups, self.downs = nn.ModuleList(), nn.ModuleList()
    c = width
    for n in enc_blk_nums:
      self.encoders.append(nn.ModuleList([Block(c, time_dim) for _ in range(n)]))
      self.downs.append(nn.Conv2d(c, 2 * c, 2, stride=2))
      c *= 2
    self.middle_blks.extend(Block(c, time_dim) for _ in range(middle_blk_num))
    for n in dec_blk_nums:
      self.ups.append(nn.Sequential(nn.Conv2d(c, 2 * c, 1, bias=False), nn.PixelShuffle(2)))
      c //= 2
      self.decoders.append(nn.ModuleList([Block(c, time_dim) for _ in range(n)]))
    self.multiple = 2 ** len(enc_blk_nums)

  def forward(self, x, mu, t):
    b, _, h, w = x.shape
    t = torch.as_tensor(t).reshape(-1).expand(b)
    temb = self.time_mlp(t)
    y = torch.cat([x - mu, mu], dim=1)
    y = F.pad(y, (0, (-w) % self.multiple, 0, (-h) % self.multiple))
    y = self.intro(y)
    skips = []
    for blocks, down in zip(self.encoders, self.downs):
      for blk in blocks:
        y = blk(y, temb)
      skips.append(y)
      y = down(y)
    for blk in self.middle_blks:
      y = blk(y, temb)
    for blocks, up, skip in zip(self.decoders, self.ups, reversed(skips)):
      y = up(y) + skip
      for blk in blocks:
        y = blk(y, temb)
    return self.ending(y)[:, :, :h, :w]


def randomise_(model: nn.Module, seed: int = 0, scale: float = 0.5) -> nn.Module:
  """Give ``beta``/``gamma``/``g`` non-default values so every path contributes to the output."""
  from lliejax.interop.crosscheck import randomise_norm_params  # pylint: disable=import-outside-toplevel
  randomise_norm_params(model, seed, scale)
  return model
