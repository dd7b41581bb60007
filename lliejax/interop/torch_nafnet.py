"""A PyTorch transcription of the official ConditionalNAFNet, for cross-checks without the official checkout.

:mod:`lliejax.interop.crosscheck` compares lliejax with the official code imported from a local clone of
shermanlian/spatial-entropy-loss (or Algolzw/image-restoration-sde). Where no clone is at hand (CI, a notebook
offline), :class:`TorchConditionalNAFNet` stands in for the official ``ConditionalNAFNet`` of
``codes/config/low-light/models/modules/DenoisingNAFNet_arch.py``: written from REFERENCE.md section 1.8, with the
official ``state_dict`` key names (``time_mlp.1.weight``, ``encoders.0.0.conv2.weight``, ``ups.0.0.weight`` ...)
and registration order (``state_dict()`` lists keys in the order of a real checkpoint), NCHW, float32. It is a
second, independent implementation of the same network (PyTorch layers, not the Flax module), so agreement
checks the Flax network and the key map; it cannot check that both read the paper the same way the official
code does: only the official checkout can (``lliejax crosscheck --official DIR``).

* :func:`build` / :func:`random_network`: the module for a ``config.model``-style architecture, with random
  official-style weights (PyTorch initialisers, then non-default ``beta``/``gamma``/``g`` so every branch counts);
* :func:`reference_builder`: the official class when a checkout is given and present, else the transcription;
* :func:`run_available_checks`: :func:`lliejax.interop.crosscheck.run_checks` with a checkout, else the NAFNet rows
  against the transcription (the SDE and KDE rows need the official code and are reported as skipped);
* :func:`compare_forward`: both networks' outputs on the same NHWC inputs, for a difference image.

Importing this module imports torch (``pip install 'lliejax[torch]'``).
"""
from __future__ import annotations

import math
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from lliejax.interop import crosscheck

TRANSCRIPTION = "lliejax's PyTorch transcription (lliejax.interop.torch_nafnet)"


def _gate(x: torch.Tensor) -> torch.Tensor:
  a, b = torch.chunk(x, 2, dim=1)
  return a * b


class Gate(nn.Module):
  """Channel split and product (``SimpleGate``; parameter free)."""

  def forward(self, x):
    return _gate(x)


class TimeEmbedding(nn.Module):
  """``[sin(t f), cos(t f)]`` with ``f_k = exp(-k ln(1e4) / (dim/2 - 1))`` (``SinusoidalPosEmb``)."""

  def __init__(self, dim: int):
    super().__init__()
    self.dim = dim

  def forward(self, t):
    half = self.dim // 2
    f = torch.exp(torch.arange(half, device=t.device) * (-math.log(10000) / (half - 1)))
    a = t.float()[:, None] * f[None, :]
    return torch.cat([a.sin(), a.cos()], dim=-1)


class ChannelNorm(nn.Module):
  """LayerNorm over the channels of an NCHW map, biased variance, eps 1e-5, scale ``g`` only (``LayerNorm``)."""

  def __init__(self, c: int):
    super().__init__()
    self.g = nn.Parameter(torch.ones(1, c, 1, 1))

  def forward(self, x):
    mean = x.mean(dim=1, keepdim=True)
    var = ((x - mean) ** 2).mean(dim=1, keepdim=True)
    return (x - mean) / torch.sqrt(var + 1e-5) * self.g


class Block(nn.Module):
  """NAFBlock with time-conditioned shift / scale; parameters registered in the official order."""

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
  """``f(x_t, mu, t) -> noise`` (NCHW); pads bottom / right to ``2**levels`` and crops back; no residual."""

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


def build(model: Mapping[str, Any]) -> TorchConditionalNAFNet:
  """The transcription for an architecture (``img_channel, width, enc_blk_nums, middle_blk_num, dec_blk_nums``).

  ``model`` is a ``config.model`` section or a plain dict; the signature of the builders
  :func:`lliejax.interop.crosscheck.check_nafnet` takes.
  """
  return TorchConditionalNAFNet(img_channel=int(model["img_channel"]), width=int(model["width"]),
                                middle_blk_num=int(model["middle_blk_num"]),
                                enc_blk_nums=tuple(model["enc_blk_nums"]), dec_blk_nums=tuple(model["dec_blk_nums"]))


def random_network(build_fn: Callable[[Mapping[str, Any]], nn.Module], model: Mapping[str, Any], *,
                   seed: int = 0) -> nn.Module:
  """A network of ``build_fn(model)`` with random weights, in eval mode, as the cross-check makes them.

  ``torch.manual_seed(seed)`` before construction (the official PyTorch initialisers), then
  :func:`lliejax.interop.crosscheck.randomise_norm_params` with ``seed + 1`` (``beta``/``gamma``, zero in the
  official initialisation, and the norm scales ``g`` get random values, so that every branch affects the output).
  """
  from lliejax.interop.nafnet import KEYMAP  # pylint: disable=import-outside-toplevel

  torch.manual_seed(seed)
  net = build_fn(KEYMAP.arch(model))
  crosscheck.randomise_norm_params(net, seed + 1)
  return net.eval()


def reference_builder(official_dir: str | None = None, *,
                      task: str | None = None) -> tuple[Callable[[Mapping[str, Any]], nn.Module], str]:
  """``(build(model) -> torch module, description)``: the official ``ConditionalNAFNet`` or the transcription.

  Args:
    official_dir: a local checkout of the official code; None, or a path that does not exist, selects
      :class:`TorchConditionalNAFNet`.
    task: ``codes/config/<task>`` of the checkout (:func:`lliejax.interop.crosscheck.find_official_files`).

  Raises:
    FileNotFoundError: ``official_dir`` exists but holds no official sources.
  """
  if official_dir is None or not os.path.exists(os.path.expanduser(official_dir)):
    return build, TRANSCRIPTION
  files = crosscheck.find_official_files(official_dir, task)
  official = crosscheck.import_official(files)
  return crosscheck.official_nafnet_builder(official), f"the official code ({files.arch})"


def run_available_checks(official_dir: str | None = None, *, task: str | None = None,
                         model: Mapping[str, Any] | None = None,
                         sizes: Sequence[tuple[int, int]] = crosscheck.DEFAULT_SIZES,
                         timesteps: Sequence[int] = crosscheck.DEFAULT_TIMESTEPS, batch: int = 2, seed: int = 0,
                         log: Callable[[str], None] = print) -> list[crosscheck.Row]:
  """The cross-check rows that can run here.

  With an official checkout at ``official_dir``: :func:`lliejax.interop.crosscheck.run_checks` (NAFNet, SDE, KDE).
  Without one: :func:`lliejax.interop.crosscheck.check_nafnet` against :class:`TorchConditionalNAFNet` (the
  forward after conversion, the ``state_dict`` layout, the export round trip), plus one skipped row each for the
  SDE and KDE checks, which compare with the official functions themselves.

  Args:
    official_dir: checkout path, or None / a missing path for the transcription.
    task: ``codes/config/<task>`` of the checkout.
    model: the NAFNet architecture (default :data:`lliejax.interop.crosscheck.SMALL_MODEL`).
    sizes, timesteps, batch, seed: as ``lliejax crosscheck``.
    log: where progress lines go.
  """
  model = dict(crosscheck.SMALL_MODEL if model is None else model)
  if official_dir is not None and os.path.exists(os.path.expanduser(official_dir)):
    build_fn, _ = reference_builder(official_dir, task=task)
    rows = crosscheck.check_nafnet(build_fn, model, sizes=sizes, timesteps=timesteps, seed=seed, batch=batch,
                                   label="nafnet", log=log)
    return rows + crosscheck.run_checks(official_dir, task=task, only=("sde", "kde"), timesteps=timesteps,
                                        seed=seed, log=log)
  crosscheck.setup_torch()
  rows = crosscheck.check_nafnet(build, model, sizes=sizes, timesteps=timesteps, seed=seed, batch=batch,
                                 label="nafnet (transcription)", log=log)
  note = "needs the official checkout (lliejax crosscheck --official DIR)"
  rows.append(crosscheck.Row("sde (official IRSDE)", math.nan, math.nan, crosscheck.SDE_REL_TOL, "rel", note,
                             skipped=True))
  rows.append(crosscheck.Row("kde (official kde_utils / loss)", math.nan, math.nan, crosscheck.KDE_REL_TOL, "rel",
                             note, skipped=True))
  return rows


def compare_forward(net: nn.Module, make_noise_fn: Callable[[Any], Callable], params: Any, x: np.ndarray,
                    mu: np.ndarray, t: int | Sequence[int]) -> dict[str, np.ndarray]:
  """Both networks on the same inputs: ``{'torch', 'lliejax'}`` outputs, NHWC float32 numpy.

  Args:
    net: a PyTorch ConditionalNAFNet (NCHW), e.g. :func:`random_network`.
    make_noise_fn: ``params -> (x_t, mu, t) -> noise`` of the lliejax network on NHWC arrays, e.g.
      ``enhancer.method.noise_fn`` of the converted weights (:func:`lliejax.inference.load`).
    params: its parameters (``enhancer.params``); an argument of the jitted forward, not a constant of it.
    x, mu: ``(H, W, C)`` or ``(B, H, W, C)`` state and condition in the same layout.
    t: one timestep for the batch or one per image.

  The lliejax forward runs under ``jax.default_matmul_precision('highest')`` (no TF32 / bf16 passes on
  accelerators), the PyTorch one under ``torch.no_grad()``.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  x, mu = np.asarray(x, np.float32), np.asarray(mu, np.float32)
  single = x.ndim == 3
  if single:
    x, mu = x[None], mu[None]
  ts = np.broadcast_to(np.asarray(t, np.int64).reshape(-1), (x.shape[0],)).copy()
  with torch.no_grad():
    ref = net(torch.from_numpy(x.transpose(0, 3, 1, 2).copy()), torch.from_numpy(mu.transpose(0, 3, 1, 2).copy()),
              torch.from_numpy(ts)).numpy().transpose(0, 2, 3, 1)
  forward = jax.jit(lambda p, x_, mu_, t_: make_noise_fn(p)(x_, mu_, t_))
  with jax.default_matmul_precision("highest"):
    out = np.asarray(forward(params, jnp.asarray(x), jnp.asarray(mu), jnp.asarray(ts, jnp.int32)))
  if single:
    ref, out = ref[0], out[0]
  return {"torch": np.ascontiguousarray(ref, np.float32), "lliejax": np.ascontiguousarray(out, np.float32)}
