"""Flax building blocks shared by the networks of lliejax (NHWC, PyTorch parameter layouts and initialisers).

* PyTorch's default initialisers (:func:`torch_kernel_init`, :func:`torch_bias_init`), so that training from scratch
  starts from the distribution of the official PyTorch code;
* :func:`conv`: a ``torch.nn.Conv2d`` dispatched to the fastest equivalent form on every backend (1x1 and 2x2/stride-2
  convolutions as 2-D matrix products, depthwise 3x3 as shifted multiply-adds with a custom VJP), all storing
  ``kernel`` as ``(kH, kW, in/groups, out)`` and ``bias`` as ``(out,)``; :func:`dense`: ``torch.nn.Linear``;
* :func:`conv3x3`: a full 3x3 stride-1 convolution ('same' or on a pre-padded input) whose kernel gradient is nine
  row-shifted matrix products (:func:`kernel_grad3x3`; XLA:CPU's own is several times slower on large images);
* :func:`fusion_barrier`: an identity XLA:CPU cannot fuse across (see its docstring);
* :func:`sinusoidal_embedding` (``SinusoidalPosEmb``) and :func:`pixel_shuffle` (``torch.nn.PixelShuffle``).

Parameter names follow the PyTorch ``state_dict`` keys of the official networks (dots before a list index become
``_``, ``weight`` becomes ``kernel``), so that :mod:`lliejax.interop` maps them by rule.
"""
from __future__ import annotations

import functools
import math
from typing import Any

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


#: Row chunks of the kernel gradient's matrix products in :func:`conv3x3` (a batched product of this many chunks).
KERNEL_GRAD_CHUNKS = 8


def _conv3x3_xla(x, w, padding):
  if padding not in ("same", "valid"):
    raise ValueError(f"conv3x3: padding must be 'same' or 'valid', got {padding!r}")
  pad = ((1, 1), (1, 1))
  y = jax.lax.conv_general_dilated(x, w, (1, 1), pad, dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y if padding == "same" else y[:, 1:-1, 1:-1]


def kernel_grad3x3(xp, g, chunks: int = KERNEL_GRAD_CHUNKS):
  """``dW[a, b] = sum_{n, i, j} xp[n, i + a, j + b]^T g[n, i, j]``: the kernel gradient of a 3x3 'VALID'
  cross-correlation of the padded ``xp`` (B, H + 2, W + 2, C) with output cotangent ``g`` (B, H, W, C').

  Nine matrix products over the flattened rows: with ``g`` zero-padded to the width of ``xp``, tap ``(a, b)`` is
  row ``q`` of ``g`` against row ``q + a (W + 2) + b`` of ``xp`` (a contiguous slice; the zero columns of ``g`` drop
  the pairs that wrap across a row or an image), each split into ``chunks`` row blocks (a batched product, summed).
  XLA:CPU's own kernel gradient of a large-image convolution contracts over the pixels inside its convolution
  emitter: measured 4.6x slower at (4, 160, 160, 64 -> 64) (1.28 s against 0.28 s) and 2x at (4, 80, 80, 128 ->
  128), and ~25x less accurate (1.1e-5 against 2.3e-7 of the largest element, from a float64 reference).
  """
  b, hp, wp, c = xp.shape
  co = g.shape[-1]
  n = b * hp * wp
  rows = n - 2 * wp - 2  # the last valid output pixel is row n - 2 wp - 3
  extra = (-rows) % chunks
  blocks = lambda a, k: jnp.pad(a, ((0, extra), (0, 0))).reshape(chunks, -1, k)
  gf = blocks(jnp.pad(g, ((0, 0), (0, 2), (0, 2), (0, 0))).reshape(n, co)[:rows], co)
  xf = xp.reshape(n, c)
  taps = []
  for a in range(3):
    for bb in range(3):
      off = a * wp + bb
      xs = blocks(xf[off:off + rows], c)
      taps.append(jax.lax.dot_general(xs, gf, (((1,), (1,)), ((0,), (0,)))))  # (chunks, C, C')
  return jnp.sum(jnp.stack(taps), axis=1).reshape(3, 3, c, co)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def conv3x3(x, w, padding: str = "same"):
  """3x3 stride-1 cross-correlation, NHWC input, HWIO kernel: ``padding="same"`` (zero padding 1,
  ``torch.nn.Conv2d(..., 3, padding=1)``) or ``"valid"`` (on an input its caller already padded, e.g. reflect).

  The forward pass and the input gradient are XLA's (a 'valid' one runs as a zero-padded convolution cropped by one
  pixel: XLA:CPU is 2.5-4x faster on padded convolutions); the kernel gradient is :func:`kernel_grad3x3` (same
  values up to float32 summation order).
  """
  return _conv3x3_xla(x, w, padding)


def _conv3x3_fwd(x, w, padding):
  return _conv3x3_xla(x, w, padding), (x, w)


def _conv3x3_bwd(padding, res, g):
  x, w = res
  gx = jax.linear_transpose(lambda v: _conv3x3_xla(v, w, padding), x)(g)[0]
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))) if padding == "same" else x
  return gx, kernel_grad3x3(xp, g).astype(w.dtype)


conv3x3.defvjp(_conv3x3_fwd, _conv3x3_bwd)


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
