"""ConditionalNAFNet (Refusion / Entropy-SDE noise network) in flax.linen, NHWC.

Architecture exactly as ``DenoisingNAFNet_arch.py`` of the official code (REFERENCE.md section 1.8):

* input ``concat([x_t - mu, mu])`` (6 channels for RGB), zero-padded at the bottom/right to a multiple of
  ``2 ** len(enc_blk_nums)`` and cropped back at the end; **no global residual**: the output is the noise;
* sinusoidal time embedding of the raw integer timestep (``width`` dims, sin first), ``Linear -> SimpleGate ->
  Linear`` to ``4 * width``;
* NAFBlocks with time-conditioned shift/scale (chunk order shift_att, scale_att, shift_ffn, scale_ffn), the
  channel LayerNorm with biased variance and eps 1e-5, simplified channel attention, zero-initialised
  ``beta``/``gamma``;
* encoder ``Conv 2x2 stride 2`` downsampling, decoder ``Conv1x1 (no bias) + PixelShuffle(2)`` upsampling with
  additive skips.

Parameter names mirror the PyTorch ``state_dict`` keys (``encoders.4.27.conv2.weight`` becomes
``params['encoders_4_27']['conv2']['kernel']``): dots between a module name and a list index become ``_``;
``weight`` becomes ``kernel`` (conv ``(kH, kW, in/groups, out)``, dense ``(in, out)``); LayerNorm keeps ``g``
and NAFBlock keeps ``beta``/``gamma``, all stored as vectors of length ``c``. See :mod:`lliejax.convert`.

Initialisation follows PyTorch's defaults (``kaiming_uniform(a=sqrt(5))`` kernels and ``U(+-1/sqrt(fan_in))``
biases) so training from scratch starts from the same distribution as the official code.
"""
from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

Dtype = Any


def torch_kernel_init():
  """PyTorch's default ``kaiming_uniform_(a=sqrt(5))``: ``U(+-1/sqrt(fan_in))`` (Flax kernels are (..., in, out))."""
  return nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def torch_bias_init(fan_in: int):
  bound = 1.0 / math.sqrt(fan_in) if fan_in > 0 else 0.0

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init


def _matmul(x, k):
  """``x @ k`` over the last axis, computed as one 2-D matrix product."""
  return (x.reshape(-1, x.shape[-1]) @ k).reshape(*x.shape[:-1], k.shape[-1])


class Conv1x1(nn.Module):
  """1x1 convolution as a matrix product (kernel stored as ``(1, 1, in, out)`` like ``nn.Conv``)."""

  features: int
  use_bias: bool = True
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    cin = x.shape[-1]
    k = self.param("kernel", torch_kernel_init(), (1, 1, cin, self.features), jnp.float32)
    # A 2-D matmul: its kernel gradient contracts one axis (XLA:CPU is ~4x slower with three).
    y = _matmul(x, k[0, 0].astype(self.dtype))
    if self.use_bias:
      y = y + self.param("bias", torch_bias_init(cin), (self.features,), jnp.float32).astype(self.dtype)
    return y


def _dw3x3(x, k):
  h, w = x.shape[1], x.shape[2]
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  y = xp[:, 0:h, 0:w, :] * k[0, 0, 0]
  for i in range(3):
    for j in range(3):
      if i or j:
        y = y + xp[:, i:i + h, j:j + w, :] * k[i, j, 0]
  return y


@jax.custom_vjp
def depthwise3x3(x, k):
  """Depthwise 3x3 cross-correlation, zero padding 1; ``x`` (B, H, W, C), ``k`` (3, 3, 1, C)."""
  return _dw3x3(x, k)


def _dw_fwd(x, k):
  return _dw3x3(x, k), (x, k)


def _dw_bwd(res, g):
  x, k = res
  h, w, c = x.shape[1], x.shape[2], x.shape[3]
  gx = _dw3x3(g, k[::-1, ::-1])  # correlation with the flipped kernel
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  g2 = g.reshape(-1, c)
  gk = jnp.stack([jnp.sum(xp[:, i:i + h, j:j + w, :].reshape(-1, c) * g2, axis=0)
                  for i in range(3) for j in range(3)])
  return gx, gk.reshape(3, 3, 1, c).astype(k.dtype)


depthwise3x3.defvjp(_dw_fwd, _dw_bwd)


def _loop_identity(x, n):
  """``x`` unchanged, passed through a ``while`` loop of ``n`` iterations (``n`` is 0 at run time).

  XLA cannot fuse across a loop whose trip count it does not know, so the value is materialised once here and its
  producers are not duplicated into consumers downstream. The body adds ``0 * i`` (not simplified away for
  floats), so XLA cannot prove the loop is an identity and remove it either.
  """
  def body(carry):
    i, v = carry
    return i + 1, v + jnp.zeros((), v.dtype) * i.astype(v.dtype)

  return jax.lax.while_loop(lambda carry: carry[0] < n, body, (jnp.zeros((), jnp.int32), x))[1]


def _cpu_barrier(x, n):
  # Only XLA:CPU needs it; elsewhere (GPU/TPU) a while loop would cost a host round trip per block.
  return jax.lax.platform_dependent(x, n, cpu=_loop_identity, default=lambda x, n: x)


@jax.custom_vjp
def fusion_barrier(x, token):
  """Identity on ``x`` in both passes that XLA:CPU cannot fuse across (``token``: any finite scalar).

  On other platforms it is a plain identity. Why: a stack of NAFBlocks is, between its matrix products, one long
  chain of elementwise ops (the residual stream forward, its cotangent backward). XLA:CPU's fusion duplicates cheap
  elementwise producers into every consumer, so in the backward pass each block recomputes the residual chain of
  all the blocks after it: quadratic in depth. Measured on the 28-block low-light network (batch 2, 128x128,
  2-core CPU): value-and-grad 5.09 s and 199 s compile without barriers, 2.45 s and 25 s with one barrier after
  each block. ``lax.optimization_barrier`` does not help: XLA:CPU removes it before fusion.

  ``token`` sets the loop's trip count (``isnan(token)``, so 0 for any finite value): pass a replicated scalar
  (a parameter) so that no device needs another device's data to evaluate it. The result is bit-identical.
  """
  return _cpu_barrier(x, jnp.isnan(token).astype(jnp.int32))


def _barrier_fwd(x, token):
  n = jnp.isnan(token).astype(jnp.int32)
  return _cpu_barrier(x, n), (n, token)


def _barrier_bwd(res, g):
  n, token = res
  return _cpu_barrier(g, n), jnp.zeros_like(token)


fusion_barrier.defvjp(_barrier_fwd, _barrier_bwd)


class DepthwiseConv3x3(nn.Module):
  """Depthwise 3x3 convolution (``groups = channels``, zero padding 1) as nine shifted multiply-adds.

  Kernel ``(3, 3, 1, C)`` as ``nn.Conv(feature_group_count=C)``. On XLA:CPU a grouped ``conv_general_dilated``
  is ~40x slower forward; the custom VJP keeps the backward pass to shifted sums and flat reductions too.
  Same numbers up to float32 summation order.
  """

  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    c = x.shape[-1]
    k = self.param("kernel", torch_kernel_init(), (3, 3, 1, c), jnp.float32).astype(self.dtype)
    b = self.param("bias", torch_bias_init(9), (c,), jnp.float32).astype(self.dtype)
    return depthwise3x3(x, k) + b


class Down2x2(nn.Module):
  """``Conv2d(c, 2c, 2, stride=2)`` as space-to-depth + matrix product (kernel ``(2, 2, c, 2c)``)."""

  features: int
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    k = self.param("kernel", torch_kernel_init(), (2, 2, c, self.features), jnp.float32)
    bias = self.param("bias", torch_bias_init(4 * c), (self.features,), jnp.float32)
    x = x.reshape(b, h // 2, 2, w // 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, h // 2, w // 2, 4 * c)
    return _matmul(x, k.reshape(4 * c, self.features).astype(self.dtype)) + bias.astype(self.dtype)


def conv(features: int, kernel: int, fan_in: int, *, name: str, stride: int = 1, groups: int = 1,
         use_bias: bool = True, dtype: Dtype = jnp.float32) -> nn.Module:
  """A PyTorch-style ``Conv2d`` (zero padding ``kernel // 2``), dispatched to the fastest equivalent form.

  All forms store ``kernel`` as ``(kH, kW, in/groups, out)`` and ``bias`` as ``(out,)``.
  """
  if kernel == 1 and stride == 1 and groups == 1:
    return Conv1x1(features, use_bias=use_bias, dtype=dtype, name=name)
  if kernel == 3 and stride == 1 and groups == features and groups > 1 and use_bias:
    return DepthwiseConv3x3(features, dtype=dtype, name=name)
  if kernel == 2 and stride == 2 and groups == 1 and use_bias:
    return Down2x2(features, dtype=dtype, name=name)
  pad = kernel // 2 if kernel % 2 == 1 else 0
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride), padding=((pad, pad), (pad, pad)),
                 feature_group_count=groups, use_bias=use_bias, kernel_init=torch_kernel_init(),
                 bias_init=torch_bias_init(fan_in), dtype=dtype, name=name)


def dense(features: int, fan_in: int, *, name: str, dtype: Dtype = jnp.float32) -> nn.Dense:
  return nn.Dense(features, kernel_init=torch_kernel_init(), bias_init=torch_bias_init(fan_in), dtype=dtype,
                  name=name)


def simple_gate(x: jax.Array) -> jax.Array:
  """Split the channel axis in two halves and multiply them."""
  x1, x2 = jnp.split(x, 2, axis=-1)
  return x1 * x2


def sinusoidal_embedding(t: jax.Array, dim: int) -> jax.Array:
  """``[sin(t f_k), cos(t f_k)]`` with ``f_k = exp(-k ln(10000) / (dim/2 - 1))`` (``SinusoidalPosEmb``)."""
  half = dim // 2
  scale = math.log(10000) / (half - 1)
  freqs = jnp.exp(jnp.arange(half, dtype=jnp.float32) * jnp.float32(-scale))
  args = jnp.asarray(t, jnp.float32)[:, None] * freqs[None, :]
  return jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)


def pixel_shuffle(x: jax.Array, r: int = 2) -> jax.Array:
  """``torch.nn.PixelShuffle(r)`` in NHWC: input channel ``c * r*r + i * r + j`` goes to pixel offset (i, j)."""
  b, h, w, c = x.shape
  oc = c // (r * r)
  x = x.reshape(b, h, w, oc, r, r)
  x = x.transpose(0, 1, 4, 2, 5, 3)
  return x.reshape(b, h * r, w * r, oc)


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


def nafnet_from_config(cfg, dtype: Dtype = jnp.float32) -> ConditionalNAFNet:
  """Build from a ``config.model`` ConfigDict."""
  return ConditionalNAFNet(img_channel=cfg.img_channel, width=cfg.width, enc_blk_nums=tuple(cfg.enc_blk_nums),
                           middle_blk_num=cfg.middle_blk_num, dec_blk_nums=tuple(cfg.dec_blk_nums),
                           dtype=jnp.dtype(cfg.get("dtype", "float32")), remat=cfg.get("remat", False),
                           fusion_barriers=cfg.get("fusion_barriers", True))


def count_params(params) -> int:
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))
