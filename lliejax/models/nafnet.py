"""ConditionalNAFNet (Refusion / Entropy-SDE noise network) in flax.linen, NHWC.

Architecture exactly as ``ConditionalNAFNet`` of the official
``codes/config/low-light/models/modules/DenoisingNAFNet_arch.py`` (shermanlian/spatial-entropy-loss; the same file in
Algolzw/image-restoration-sde):

* input ``concat([x_t - mu, mu])`` (6 channels for RGB), zero-padded at the bottom/right to a multiple of
  ``2 ** len(enc_blk_nums)`` and cropped back at the end (``check_image_size``); **no global residual**: the output
  is the noise;
* sinusoidal time embedding of the raw integer timestep (``width`` dims, sin first), ``Linear -> SimpleGate ->
  Linear`` to ``4 * width``;
* NAFBlocks with time-conditioned shift/scale (chunk order shift_att, scale_att, shift_ffn, scale_ffn), the
  channel LayerNorm with biased variance and eps 1e-5 (``LayerNorm2d`` of ``module_util.py``), simplified channel
  attention, zero-initialised ``beta``/``gamma``;
* encoder ``Conv 2x2 stride 2`` downsampling, decoder ``Conv1x1 (no bias) + PixelShuffle(2)`` upsampling with
  additive skips.

Parameter names mirror the PyTorch ``state_dict`` keys (``encoders.4.27.conv2.weight`` becomes
``params['encoders_4_27']['conv2']['kernel']``): dots between a module name and a list index become ``_``;
``weight`` becomes ``kernel`` (conv ``(kH, kW, in/groups, out)``, dense ``(in, out)``); LayerNorm keeps ``g``
and NAFBlock keeps ``beta``/``gamma``, all stored as vectors of length ``c``. See :mod:`lliejax.interop.nafnet`.

Initialisation follows PyTorch's defaults (:mod:`lliejax.models.layers`) so training from scratch starts from the
same distribution as the official code.
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lliejax.models.layers import Dtype, conv, dense, fusion_barrier, pixel_shuffle, sinusoidal_embedding


def simple_gate(x: jax.Array) -> jax.Array:
  """Split the channel axis in two halves and multiply them."""
  x1, x2 = jnp.split(x, 2, axis=-1)
  return x1 * x2


class LayerNorm2d(nn.Module):
  """Channel LayerNorm per pixel: ``(x - mean) / sqrt(var + eps) * g`` with biased variance, no bias.

  ``eps`` is 1e-5 for float32 inputs and 1e-3 otherwise, as the reference.
  """

  features: int

  @nn.compact
  def __call__(self, x):
    g = self.param("g", nn.initializers.ones, (self.features,), jnp.float32)
    eps = 1e-5 if x.dtype == jnp.float32 else 1e-3
    mean = jnp.mean(x, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True)
    return (x - mean) * jax.lax.rsqrt(var + eps) * g.astype(x.dtype)


class NAFBlock(nn.Module):
  """NAFBlock with time-conditioned shift/scale (``NAFBlock`` of ``DenoisingNAFNet_arch.py``)."""

  c: int
  time_dim: int
  dw_expand: int = 2
  ffn_expand: int = 2
  dtype: Dtype = jnp.float32
  fusion_barrier: bool = True

  @nn.compact
  def __call__(self, inp, temb):
    c, dw, ffn = self.c, self.c * self.dw_expand, self.c * self.ffn_expand
    kw = dict(dtype=self.dtype)
    t = dense(4 * c, self.time_dim // 2, name="mlp_1", **kw)(simple_gate(temb))
    t = t[:, None, None, :].astype(inp.dtype)
    shift_att, scale_att, shift_ffn, scale_ffn = jnp.split(t, 4, axis=-1)

    x = LayerNorm2d(c, name="norm1")(inp)
    x = x * (scale_att + 1) + shift_att
    x = conv(dw, 1, c, name="conv1", **kw)(x)
    x = conv(dw, 3, 9, groups=dw, name="conv2", **kw)(x)
    x = simple_gate(x)
    x = x * conv(dw // 2, 1, dw // 2, name="sca_1", **kw)(jnp.mean(x, axis=(1, 2), keepdims=True))
    x = conv(c, 1, dw // 2, name="conv3", **kw)(x)
    beta = self.param("beta", nn.initializers.zeros, (c,), jnp.float32)
    y = inp + x * beta.astype(x.dtype)

    x = LayerNorm2d(c, name="norm2")(y)
    x = x * (scale_ffn + 1) + shift_ffn
    x = conv(ffn, 1, c, name="conv4", **kw)(x)
    x = simple_gate(x)
    x = conv(c, 1, ffn // 2, name="conv5", **kw)(x)
    gamma = self.param("gamma", nn.initializers.zeros, (c,), jnp.float32)
    out = y + x * gamma.astype(x.dtype)
    # The output is the next block's input: see fusion_barrier (gamma is replicated, finite).
    return fusion_barrier(out, gamma[0]) if self.fusion_barrier else out


class ConditionalNAFNet(nn.Module):
  """Noise network ``f(x_t, mu, t) -> eps_hat`` of Refusion / Entropy-SDE (NHWC in, NHWC out).

  Attributes:
    img_channel: image channels (3).
    width: channels of the first level; time embedding size is ``width`` and its MLP output ``4 * width``.
    enc_blk_nums: NAFBlocks per encoder level (the number of levels sets the padding multiple ``2**levels``).
    middle_blk_num: NAFBlocks at the bottleneck.
    dec_blk_nums: NAFBlocks per decoder level (must have as many levels as the encoder).
    dtype: computation dtype (params stay float32). ``bfloat16`` halves activation memory on accelerators.
    remat: rematerialise every NAFBlock in the backward pass (less memory, ~30% more compute).
    fusion_barriers: end every NAFBlock with :func:`fusion_barrier` (XLA:CPU only; same numbers, 2x faster
      training of the 28-block low-light network on CPU). Turn off only to use forward-mode autodiff (``jax.jvp``)
      through the network, which a ``custom_vjp`` does not support.
  """

  img_channel: int = 3
  width: int = 64
  enc_blk_nums: Sequence[int] = (1, 1, 1, 1, 28)
  middle_blk_num: int = 1
  dec_blk_nums: Sequence[int] = (1, 1, 1, 1, 1)
  dtype: Dtype = jnp.float32
  remat: bool = False
  fusion_barriers: bool = True

  @property
  def padder_size(self) -> int:
    return 2 ** len(self.enc_blk_nums)

  @nn.compact
  def __call__(self, x, mu, t):
    """``x``, ``mu``: (B, H, W, C) float; ``t``: int/float array of shape (B,) or a scalar (broadcast)."""
    if len(self.enc_blk_nums) != len(self.dec_blk_nums):
      raise ValueError(f"enc_blk_nums {list(self.enc_blk_nums)} and dec_blk_nums {list(self.dec_blk_nums)} "
                       "must have the same number of levels")
    if x.ndim != 4 or x.shape != mu.shape:
      raise ValueError(f"expected NHWC x and mu of equal shape, got {x.shape} and {mu.shape}")
    b, h, w, _ = x.shape
    t = jnp.broadcast_to(jnp.asarray(t), (b,))
    width, time_dim, kw = self.width, 4 * self.width, dict(dtype=self.dtype)
    block = nn.remat(NAFBlock) if self.remat else NAFBlock

    def nafblock(chan, name):
      return block(chan, time_dim, dtype=self.dtype, fusion_barrier=self.fusion_barriers, name=name)

    temb = sinusoidal_embedding(t, width)
    temb = dense(2 * time_dim, width, name="time_mlp_1", **kw)(temb)
    temb = dense(time_dim, time_dim, name="time_mlp_3", **kw)(simple_gate(temb))

    inp = jnp.concatenate([x - mu, mu], axis=-1).astype(self.dtype)
    p = self.padder_size
    ph, pw = (-h) % p, (-w) % p
    inp = jnp.pad(inp, ((0, 0), (0, ph), (0, pw), (0, 0)))

    y = conv(width, 3, 2 * self.img_channel * 9, name="intro", **kw)(inp)
    chan, skips = width, []
    for i, num in enumerate(self.enc_blk_nums):
      for j in range(num):
        y = nafblock(chan, f"encoders_{i}_{j}")(y, temb)
      skips.append(y)
      y = conv(2 * chan, 2, chan * 4, stride=2, name=f"downs_{i}", **kw)(y)
      chan *= 2
    for j in range(self.middle_blk_num):
      y = nafblock(chan, f"middle_blks_{j}")(y, temb)
    for i, num in enumerate(self.dec_blk_nums):
      y = pixel_shuffle(conv(2 * chan, 1, chan, use_bias=False, name=f"ups_{i}_0", **kw)(y))
      chan //= 2
      y = y + skips[-1 - i]
      for j in range(num):
        y = nafblock(chan, f"decoders_{i}_{j}")(y, temb)
    y = conv(self.img_channel, 3, width * 9, name="ending", **kw)(y)
    return y[:, :h, :w, :].astype(jnp.float32)


def nafnet_from_config(cfg) -> ConditionalNAFNet:
  """Build from a ``config.model`` ConfigDict (``dtype``, ``remat``, ``fusion_barriers`` are optional keys)."""
  return ConditionalNAFNet(img_channel=cfg.img_channel, width=cfg.width, enc_blk_nums=tuple(cfg.enc_blk_nums),
                           middle_blk_num=cfg.middle_blk_num, dec_blk_nums=tuple(cfg.dec_blk_nums),
                           dtype=jnp.dtype(cfg.get("dtype", "float32")), remat=cfg.get("remat", False),
                           fusion_barriers=cfg.get("fusion_barriers", True))
