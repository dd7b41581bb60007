"""The SR3-style UNet of ReDDiT (and GSAD) in flax.linen, NHWC: ``eps_hat = UNet(concat[LQ, x_t], gamma)``.

Architecture exactly as ``UNet`` of the official ``model/ddpm_modules/unet.py`` (lgz-0713/ReDDiT; REFERENCE §3.2),
with the LOL configuration as defaults (``in_channel 6, out_channel 3, inner_channel 64, channel_mults
(1, 1, 2, 2, 4), attn_res (16,), res_blocks 2, dropout 0, norm_groups 32, image_size 128``):

* noise-level embedding ``PositionalEncoding(inner)`` of the continuous ``gamma`` (``[sin, cos]`` of
  ``gamma * 1e4 ** (-k / (inner/2))``) -> ``Linear(inner, 4 inner)`` -> Swish -> ``Linear(4 inner, inner)``;
* ``Block`` = GroupNorm(32, eps 1e-5) -> Swish -> Conv3x3; ``ResnetBlock`` = Block1 -> ``+ Linear(emb)`` per
  channel (``FeatureWiseAffine`` without affine level) -> Block2, plus the input (through a 1x1 conv when the width
  changes); ``SelfAttention`` = one head over all pixels, ``softmax(q k / sqrt(C)) v``, 1x1 out conv, residual;
* encoder: input Conv3x3, ``res_blocks`` ResnetBlocks per level (with attention where the *nominal* resolution
  ``image_size / 2**level`` is in ``attn_res``, independent of the input size), a stride-2 Conv3x3 after every level
  but the last; every output is a skip; middle ResnetBlock + attention, ResnetBlock; decoder ``res_blocks + 1``
  ResnetBlocks per level on ``concat[x, skip]`` and a nearest x2 upsample + Conv3x3 after every level but the
  first; head ``final_conv`` = Block(inner -> out).

Dead parameters: every ResnetBlock's ``mlp`` (Swish + Linear) and the ``var_conv`` head (three Conv3x3 + ELU, computed
and discarded by every official caller) are declared as parameters, so the official ``state_dict`` maps one to one
and the count is the official 17,434,182, but they are never computed (their gradients are zero).

Parameter names mirror the PyTorch keys by the rule of :mod:`lliejax.interop.keymap` (``downs.10.attn.qkv.weight``
-> ``params['downs_10']['attn']['qkv']['kernel']``), except GroupNorm, which keeps Flax's ``scale`` / ``bias``
(``block.0.weight`` -> ``block_0/scale``); :mod:`lliejax.interop.reddit` holds the map.

Initialisation (``weight_init``, config key ``model.init``): ``orthogonal`` is the official training initialisation
(``init_weights(netG, 'orthogonal')`` of ``model/networks.py``: orthogonal gain 1 for every Conv/Linear, zero
biases); ``torch`` gives PyTorch's layer defaults. GroupNorms start at scale 1, bias 0.
"""
from __future__ import annotations

import math
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lliejax import models
from lliejax.models import layers
from lliejax.models.layers import torch_bias_init, torch_kernel_init

INITS = ("orthogonal", "torch")


def _inits(init: str, fan_in: int):
  if init == "orthogonal":
    return nn.initializers.orthogonal(1.0), nn.initializers.zeros
  if init == "torch":
    return torch_kernel_init(), torch_bias_init(fan_in)
  raise ValueError(f"unknown init {init!r}; expected one of {', '.join(INITS)}")


def swish(x):
  """``x * sigmoid(x)`` (``Swish`` of unet.py)."""
  return x * jax.nn.sigmoid(x)


def positional_encoding(gamma: jax.Array, dim: int) -> jax.Array:
  """``PositionalEncoding(dim)`` (WaveGrad): ``[sin(g f_k), cos(g f_k)]``, ``f_k = exp(-ln(1e4) k / (dim/2))``."""
  count = dim // 2
  step = jnp.arange(count, dtype=jnp.float32) / count
  enc = jnp.asarray(gamma, jnp.float32)[:, None] * jnp.exp(-math.log(1e4) * step)[None, :]
  return jnp.concatenate([jnp.sin(enc), jnp.cos(enc)], axis=-1)


class Conv(nn.Module):
  """``torch.nn.Conv2d(in, features, k, stride, padding=k // 2)``; kernel ``(k, k, in, out)``.

  1x1 convolutions run as one matrix product and 3x3 stride-1 ones through :func:`lliejax.models.layers.conv3x3`
  (its kernel gradient as row-shifted matrix products): faster on XLA:CPU, same numbers up to summation order.
  """

  features: int
  kernel: int = 3
  stride: int = 1
  use_bias: bool = True
  weight_init: str = "orthogonal"

  @nn.compact
  def __call__(self, x):
    cin = x.shape[-1]
    k_init, b_init = _inits(self.weight_init, cin * self.kernel**2)
    kernel = self.param("kernel", k_init, (self.kernel, self.kernel, cin, self.features), jnp.float32)
    if self.kernel == 1 and self.stride == 1:
      y = (x.reshape(-1, cin) @ kernel[0, 0]).reshape(*x.shape[:-1], self.features)
    elif self.kernel == 3 and self.stride == 1:
      y = layers.conv3x3(x, kernel, "same")
    else:
      p = self.kernel // 2
      y = jax.lax.conv_general_dilated(x, kernel, (self.stride, self.stride), ((p, p), (p, p)),
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    if self.use_bias:
      y = y + self.param("bias", b_init, (self.features,), jnp.float32)
    return y


class Dense(nn.Module):
  """``torch.nn.Linear(in, features)``; kernel ``(in, out)``."""

  features: int
  weight_init: str = "orthogonal"

  @nn.compact
  def __call__(self, x):
    k_init, b_init = _inits(self.weight_init, x.shape[-1])
    kernel = self.param("kernel", k_init, (x.shape[-1], self.features), jnp.float32)
    return x @ kernel + self.param("bias", b_init, (self.features,), jnp.float32)


class DeadParams(nn.Module):
  """The parameters of an official layer the forward pass never uses (``kernel`` of ``shape``, ``bias``).

  Calling it only declares them (so that checkpoints map one to one); it computes nothing.
  """

  shape: tuple
  weight_init: str = "orthogonal"

  @nn.compact
  def __call__(self):
    fan_in = math.prod(self.shape[:-1])
    k_init, b_init = _inits(self.weight_init, fan_in)
    self.param("kernel", k_init, tuple(self.shape), jnp.float32)
    self.param("bias", b_init, (self.shape[-1],), jnp.float32)


def group_norm(groups: int, name: str) -> nn.GroupNorm:
  """``torch.nn.GroupNorm(groups, C)`` (eps 1e-5, affine; biased variance computed in two passes)."""
  return nn.GroupNorm(num_groups=groups, epsilon=1e-5, use_fast_variance=False, name=name)


class Block(nn.Module):
  """GroupNorm -> Swish -> (Dropout 0) -> Conv3x3 (``Block``; params ``block_0`` norm, ``block_3`` conv)."""

  features: int
  groups: int = 32
  weight_init: str = "orthogonal"

  @nn.compact
  def __call__(self, x):
    h = swish(group_norm(self.groups, "block_0")(x))
    return Conv(self.features, 3, weight_init=self.weight_init, name="block_3")(h)


class ResnetBlock(nn.Module):
  """``ResnetBlock``: Block1, ``+ noise_func(emb)``, Block2, residual (1x1 ``res_conv`` when widths differ)."""

  features: int
  groups: int = 32
  weight_init: str = "orthogonal"

  @nn.compact
  def __call__(self, x, emb):
    DeadParams((emb.shape[-1], self.features), self.weight_init, name="mlp_1")()  # constructed, never used
    h = Block(self.features, self.groups, self.weight_init, name="block1")(x)
    shift = FeatureWiseAffine(self.features, self.weight_init, name="noise_func")(emb)
    h = Block(self.features, self.groups, self.weight_init, name="block2")(h + shift[:, None, None, :])
    if x.shape[-1] != self.features:
      x = Conv(self.features, 1, weight_init=self.weight_init, name="res_conv")(x)
    return h + x


class FeatureWiseAffine(nn.Module):
  """``FeatureWiseAffine(use_affine_level=False)``: the per-channel shift ``Linear(emb)`` (``noise_func_0``)."""

  features: int
  weight_init: str = "orthogonal"

  @nn.compact
  def __call__(self, emb):
    return Dense(self.features, self.weight_init, name="noise_func_0")(emb)


class SelfAttention(nn.Module):
  """``SelfAttention(C, n_head=1)``: ``x + out(softmax(q k^T / sqrt(C)) v)`` over all H*W positions."""

  groups: int = 32
  weight_init: str = "orthogonal"

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    n = group_norm(self.groups, "norm")(x)
    qkv = Conv(3 * c, 1, use_bias=False, weight_init=self.weight_init, name="qkv")(n).reshape(b, h * w, 3 * c)
    q, k, v = jnp.split(qkv, 3, axis=-1)
    logits = jnp.einsum("bqc,bkc->bqk", q, k) / math.sqrt(c)
    out = jnp.einsum("bqk,bkc->bqc", jax.nn.softmax(logits, axis=-1), v).reshape(b, h, w, c)
    return Conv(c, 1, weight_init=self.weight_init, name="out")(out) + x


class ResnetBlocWithAttn(nn.Module):
  """``ResnetBlocWithAttn``: ``res_block`` then, with ``with_attn``, ``attn``."""

  features: int
  with_attn: bool = False
  groups: int = 32
  weight_init: str = "orthogonal"

  @nn.compact
  def __call__(self, x, emb):
    x = ResnetBlock(self.features, self.groups, self.weight_init, name="res_block")(x, emb)
    if self.with_attn:
      x = SelfAttention(self.groups, self.weight_init, name="attn")(x)
    return x


class Downsample(nn.Module):
  """``Conv2d(C, C, 3, stride 2, padding 1)`` (param ``conv``)."""

  weight_init: str = "orthogonal"

  @nn.compact
  def __call__(self, x):
    return Conv(x.shape[-1], 3, stride=2, weight_init=self.weight_init, name="conv")(x)


class Upsample(nn.Module):
  """Nearest x2 upsampling, then ``Conv2d(C, C, 3, padding 1)`` (param ``conv``)."""

  weight_init: str = "orthogonal"

  @nn.compact
  def __call__(self, x):
    x = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return Conv(x.shape[-1], 3, weight_init=self.weight_init, name="conv")(x)


class SR3UNet(nn.Module):
  """``eps_hat = UNet(x, gamma)`` of ReDDiT / GSAD (NHWC in, NHWC out; see the module docstring).

  Attributes:
    in_channel: input channels (6: ``concat[LQ, x_t]``, condition first).
    out_channel: output channels (3).
    inner_channel: width of the first level and of the noise embedding.
    channel_mults: width multiplier per level (``channel_multiplier``).
    attn_res: nominal resolutions with self-attention.
    res_blocks: ResnetBlocks per encoder level (the decoder has one more).
    norm_groups: GroupNorm groups (every width must be a multiple).
    image_size: the nominal input size that places attention (``diffusion.image_size``), not the real input size.
    dropout: must be 0 (every released config; dropout is not implemented).
    weight_init: ``orthogonal`` (official training init) or ``torch`` (PyTorch layer defaults).
    mid_attn: the middle block's self-attention (``mid.0.attn``). True in the official network; False (not an
      official option) drops it, so that with an empty ``attn_res`` the network is fully convolutional (used to test
      whether few-step sampling learned on crops carries over to whole images).
  """

  in_channel: int = 6
  out_channel: int = 3
  inner_channel: int = 64
  channel_mults: Sequence[int] = (1, 1, 2, 2, 4)
  attn_res: Sequence[int] = (16,)
  res_blocks: int = 2
  norm_groups: int = 32
  image_size: int = 128
  dropout: float = 0.0
  weight_init: str = "orthogonal"
  mid_attn: bool = True

  @property
  def padder_size(self) -> int:
    """Input sides must be multiples of this (``2 ** (levels - 1)``)."""
    return 2 ** (len(self.channel_mults) - 1)

  def attention_levels(self) -> tuple[bool, ...]:
    """Per level, whether its blocks have attention (nominal resolution ``image_size / 2**level`` in attn_res)."""
    return tuple((self.image_size // 2**i) in tuple(self.attn_res) for i in range(len(self.channel_mults)))

  @nn.compact
  def __call__(self, x, gamma):
    """``x``: (B, H, W, in_channel) with H, W multiples of :attr:`padder_size`; ``gamma``: (B,) or (B, 1)."""
    if self.dropout:
      raise NotImplementedError(f"SR3UNet: dropout={self.dropout} is not implemented (every ReDDiT config uses 0)")
    b, h, w, c = x.shape
    if c != self.in_channel:
      raise ValueError(f"SR3UNet expects {self.in_channel} input channels, got {c} (input shape {x.shape})")
    m = self.padder_size
    if h % m or w % m:
      raise ValueError(f"SR3UNet input height and width must be multiples of {m}, got {h}x{w}")
    gamma = jnp.reshape(jnp.asarray(gamma, jnp.float32), (b,))
    inner, g, init = self.inner_channel, self.norm_groups, self.weight_init
    attn = self.attention_levels()

    emb = positional_encoding(gamma, inner)
    emb = Dense(4 * inner, init, name="noise_level_mlp_1")(emb)
    emb = Dense(inner, init, name="noise_level_mlp_3")(swish(emb))

    y = Conv(inner, 3, weight_init=init, name="downs_0")(x)
    feats, idx = [y], 1
    levels = len(self.channel_mults)
    for level, mult in enumerate(self.channel_mults):
      for _ in range(self.res_blocks):
        y = ResnetBlocWithAttn(inner * mult, attn[level], g, init, name=f"downs_{idx}")(y, emb)
        feats.append(y)
        idx += 1
      if level != levels - 1:
        y = Downsample(init, name=f"downs_{idx}")(y)
        feats.append(y)
        idx += 1

    y = ResnetBlocWithAttn(y.shape[-1], self.mid_attn, g, init, name="mid_0")(y, emb)
    y = ResnetBlocWithAttn(y.shape[-1], False, g, init, name="mid_1")(y, emb)

    idx = 0
    for level in reversed(range(levels)):
      for _ in range(self.res_blocks + 1):
        y = jnp.concatenate([y, feats.pop()], axis=-1)
        y = ResnetBlocWithAttn(inner * self.channel_mults[level], attn[level], g, init, name=f"ups_{idx}")(y, emb)
        idx += 1
      if level != 0:
        y = Upsample(init, name=f"ups_{idx}")(y)
        idx += 1

    out = Block(self.out_channel, g, init, name="final_conv")(y)
    # var_conv: Conv3x3 -> ELU -> Conv3x3 -> ELU -> Conv3x3(-> 3) -> ELU, computed and discarded officially.
    top = y.shape[-1]
    DeadParams((3, 3, top, top), init, name="var_conv_0")()
    DeadParams((3, 3, top, top), init, name="var_conv_2")()
    DeadParams((3, 3, top, 3), init, name="var_conv_4")()
    return out


def sr3_unet_from_config(cfg) -> SR3UNet:
  """Build from a ``config.model`` ConfigDict (``name: sr3_unet``; ``init`` optional)."""
  return SR3UNet(in_channel=int(cfg.in_channel), out_channel=int(cfg.out_channel),
                 inner_channel=int(cfg.inner_channel), channel_mults=tuple(int(v) for v in cfg.channel_mults),
                 attn_res=tuple(int(v) for v in cfg.attn_res), res_blocks=int(cfg.res_blocks),
                 norm_groups=int(cfg.get("norm_groups", 32)), image_size=int(cfg.image_size),
                 dropout=float(cfg.get("dropout", 0.0)), weight_init=cfg.get("init", "orthogonal"),
                 mid_attn=bool(cfg.get("mid_attn", models.CONFIG_DEFAULTS["sr3_unet"]["mid_attn"])))
