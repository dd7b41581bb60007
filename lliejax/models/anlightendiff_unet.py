"""The three networks of AnlightenDiff (TIP 2024) in flax.linen, NHWC: denoiser, conditioning encoder, HE refiner.

Reproduces, from the official repository allanchan339/AnlightenDiff (identical in ``FS/`` and ``TS/``; REFERENCE
§2.7-2.8):

* :class:`Unet`: the denoiser ``Unet`` of ``model.py``, ``eps_hat = Unet(x_t, t, cond, feats_cond)`` on
  ``concat[x_t, cond]``; with ``stronger_cond`` (FS) the encoder feature map of each level is concatenated before
  that level's second residual block; TS has ``stronger_cond=False``;
* :class:`UnetCond`: the conditioning encoder ``Unet_cond`` of ``cond.py`` (12-channel hand-crafted input), time-free,
  returning ``(out, feats)``: FS (``cond_on_res``) ``out = conv + input[..., 3:6]`` (the HE image), TS
  ``out = sigmoid(conv)``; ``feats`` = the 6 down-level maps then the 5 up-level maps;
* :class:`UnetHE`: the histogram-equalisation refiner ``Unet_he`` of ``TS/cond.py`` (TS only), time-free,
  ``out = clip(conv + input[..., 0:3], 0, 1)`` (``on_res``) or ``sigmoid(conv)``, also returning ``(out, feats)``.

Building blocks (``commons.py``), with the released configuration (``unet_dim 64, dim_mults (1, 2, 2, 4, 4, 8),
use_attn False, use_wn True, use_instance_norm True, weight_init True, groups 0``):

* every ``nn.Conv2d`` is weight-normalised (legacy ``torch.nn.utils.weight_norm``, ``dim=0``): parameters
  ``weight_g`` (stored here as ``(1, 1, 1, out)``) and ``weight_v`` (``(kH, kW, in, out)``), kernel
  ``v * (g / ||v||)`` with the norm over everything but the output channel, plus ``bias``;
  ``ConvTranspose2d`` and ``Linear`` are not;
* ``Block`` = ReflectionPad2d(1) -> Conv3x3 (no padding) -> Mish (``x tanh(softplus(x))``), no normalisation;
* ``ResnetBlock`` = Block1 -> InstanceNorm -> (denoiser only) ``+ Linear(Mish(tau))`` per channel -> Block2 ->
  InstanceNorm, plus the input (through a weight-normalised 1x1 ``res_conv`` when the width changes);
  ``ResnetBlockCond`` (encoder, refiner) is the same without the time term. InstanceNorm2d: affine False,
  eps 1e-5, no running statistics (per sample and channel over H x W, biased variance);
* ``Downsample`` = ReflectionPad2d(1) -> Conv3x3 stride 2; ``Upsample`` = ``ConvTranspose2d(C, C, 4, 2, 1)``
  (:func:`conv_transpose_torch`, PyTorch's semantics including the kernel flip);
* time (denoiser): ``SinusoidalPosEmb(64)`` of the integer step -> Linear(64, 256) -> Mish -> Linear(256, 64).

Level structure: 6 levels (widths 64, 128, 128, 256, 256, 512), a stride-2 ``Downsample`` after all but the last;
two residual blocks per level, the output of the second is the skip (and, in the encoder/refiner, a feature);
middle: two residual blocks (``mid_attn`` is the identity); 5 up levels, each ``concat[x, skip]`` -> ResnetBlock
(2 d' -> d) -> ResnetBlock -> Upsample, *every* up level upsampling (so the level-0 skip is never used); head
``final_conv`` = Block(64 -> 64) -> Conv1x1(64 -> 3). Inputs: H, W multiples of ``2**(levels-1)`` and at least
``2**levels`` (the last level must have 2 pixels for ReflectionPad2d(1); the official code raises otherwise).

Dead parameters (declared so that the official ``state_dict`` maps one to one and the counts are the official
ones, never computed, zero gradients): in :class:`UnetCond` and :class:`UnetHE` the time MLP ``mlp.0``/``mlp.2``
and every block's ``mlp.1`` Linear.

Parameter counts (weight-norm ``g`` and ``v`` included): FS ``Unet`` 42,503,366; TS ``Unet`` 37,769,798;
``Unet_cond`` 37,773,638; ``Unet_he`` 37,769,798.

Parameter names mirror the PyTorch keys by the rule of :mod:`lliejax.interop.keymap`
(``downs.0.1.block1.block.1.weight_v`` -> ``params['downs_0_1']['block1']['block_1']['weight_v']``,
``ups.3.2.conv.0.weight`` -> ``params['ups_3_2']['conv_0']['kernel']``); :mod:`lliejax.interop.anlightendiff` holds
the maps (Lightning checkpoints included).

Initialisation (``weight_init``): ``True`` is the official one (``weight_init: True`` of every config). The
official code applies ``initialize_weights`` (kaiming-normal x 0.1, zero bias) *after* weight norm, where a
Conv2d's ``weight`` is only a derived tensor recomputed from ``g, v`` at every forward, so it effectively gives:
``v`` PyTorch's default ``U(+-1/sqrt(fan_in))``, ``g = ||v||`` (``weight_norm`` of a default-initialised conv), conv
biases 0; Linear weights ``N(0, (0.1 sqrt(2 / fan_in))^2)``, biases 0; ConvTranspose2d PyTorch defaults (it is not
an ``nn.Conv2d``). ``False`` gives PyTorch's layer defaults everywhere (``g = ||v||`` still).
"""
from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from lliejax.models import layers
from lliejax.models.layers import sinusoidal_embedding, torch_bias_init, torch_kernel_init

#: Instance-norm epsilon (``nn.InstanceNorm2d`` default).
IN_EPS = 1e-5
#: The released widths (``dim_mults`` of every config).
DIM_MULTS = (1, 2, 2, 4, 4, 8)


def param_count(params) -> int:
  """Number of scalars in a params pytree (arrays or ``jax.ShapeDtypeStruct`` s, e.g. from ``jax.eval_shape``)."""
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(params))


#: Above this input :func:`mish` is the identity in float32 (``tanh(softplus(20)) = 1 - 8e-18``); its exponential
#: is clamped there.
_MISH_CLAMP = 20.0


@jax.custom_jvp
def mish(x):
  """``Mish`` of commons.py: ``x * tanh(softplus(x))``, computed from one exponential.

  With ``e = exp(x)`` and ``n = e (e + 2)``, ``tanh(log(1 + e)) = n / (n + 2)`` exactly; ``e`` is clamped at
  ``exp(20)`` (no overflow; the factor is 1 in float32 there). Its derivative (the custom JVP) is
  ``n / (n + 2) + 4 x e (1 + e) / (n + 2)^2`` (``tanh(sp) + x sech^2(sp) sigmoid(x)``), evaluated in the forward
  pass, so the backward pass is one product. Same values to float rounding (within 1e-6 absolute of
  ``x * tanh(softplus(x))``, closer to the float64 value: 7e-7 vs 2e-6 on [-100, 100]; the derivative 2e-7 vs 4e-6
  off). XLA:CPU evaluates ``tanh`` and ``softplus`` (``log1p``, ``exp``, a select) and their autodiff derivative
  slowly: forward plus backward on a 4x160x160x64 map takes 38 ms instead of 55 ms (~275 ms of Mish in the FS
  training step).
  """
  e = jnp.exp(jnp.minimum(x, _MISH_CLAMP))
  n = e * (e + 2.0)
  return x * (n / (n + 2.0))


@mish.defjvp
def _mish_jvp(primals, tangents):
  (x,), (x_dot,) = primals, tangents
  e = jnp.exp(jnp.minimum(x, _MISH_CLAMP))
  n = e * (e + 2.0)
  w = n + 2.0
  th = n / w
  return x * th, (th + 4.0 * x * e * (1.0 + e) / (w * w)) * x_dot


def instance_norm(x, eps: float = IN_EPS):
  """``nn.InstanceNorm2d(C)`` (affine False, no running stats): per sample and channel over H, W, biased variance."""
  mean = jnp.mean(x, axis=(1, 2), keepdims=True)
  xc = x - mean
  var = jnp.mean(jnp.square(xc), axis=(1, 2), keepdims=True)
  return xc * jax.lax.rsqrt(var + eps)


def reflect_pad(x, p: int = 1):
  """``nn.ReflectionPad2d(p)`` (mirror without repeating the edge) on H, W of NHWC."""
  return jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")


def weight_norm_kernel(v, g):
  """``torch.nn.utils.weight_norm`` (dim 0): ``v * (g / ||v||)``, the norm over (kH, kW, in) per output channel."""
  norm = jnp.sqrt(jnp.sum(jnp.square(v), axis=(0, 1, 2), keepdims=True))
  return v * (g / norm)


def conv_transpose_torch(x, kernel, bias, stride: int = 2, padding: int = 1):
  """``torch.nn.ConvTranspose2d(in, out, k, stride, padding)`` (output_padding 0, dilation 1, groups 1) in NHWC.

  ``kernel`` is ``(k, k, out, in)`` = ``W_pt.transpose(2, 3, 1, 0)`` of the PyTorch weight ``(in, out, k, k)``
  (the layout of ``flax.linen.ConvTranspose(transpose_kernel=True)``). PyTorch's transposed convolution is the
  input dilated by ``stride`` (zeros between pixels), zero-padded ``k - 1 - padding`` on every side and
  cross-correlated with the spatially flipped, in/out-swapped kernel ``K[a, b, i, o] = W_pt[i, o, k-1-a, k-1-b]``;
  output side ``(H - 1) stride - 2 padding + k`` (``2 H`` for 4/2/1).
  """
  k = kernel.shape[0]
  flipped = jnp.swapaxes(kernel[::-1, ::-1], 2, 3)  # (k, k, in, out), HWIO
  if (k, stride, padding) == (4, 2, 1):
    return _conv_transpose_4_2_1(x, flipped) + bias
  pad = k - 1 - padding
  y = jax.lax.conv_general_dilated(x, flipped, (1, 1), ((pad, pad), (pad, pad)), lhs_dilation=(stride, stride),
                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  return y + bias


def _conv_transpose_4_2_1(x, flipped):
  """The 4/2/1 transposed convolution (every ``Upsample``) without the dilated input: output row ``2m + r`` (column
  ``2n + c``) only meets the taps ``r, r + 2`` (``c, c + 2``) of the flipped kernel, so each of the four output
  phases is a 2x2 VALID convolution of the zero-padded input, and the phases interleave. Same values (to float
  rounding); XLA:CPU computes the kernel gradient of an ``lhs_dilation`` convolution about 35x slower."""
  n, h, w, _ = x.shape
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  rows = []
  for r in (0, 1):
    cols = [jax.lax.conv_general_dilated(xp[:, r:r + h + 1, c:c + w + 1], flipped[r::2, c::2], (1, 1), "VALID",
                                         dimension_numbers=("NHWC", "HWIO", "NHWC")) for c in (0, 1)]
    rows.append(jnp.stack(cols, axis=3))  # (n, h, w, 2 [c], out)
  return jnp.stack(rows, axis=2).reshape(n, 2 * h, 2 * w, -1)  # (n, h, 2 [r], w, 2 [c], out) -> (n, 2h, 2w, out)


#: Output pixels per image up to which :func:`conv3x3_valid` multiplies 3x3 patches instead of convolving.
IM2COL_MAX_PIXELS = 1024


def conv3x3_valid(x, w):
  """``conv_general_dilated(x, w, (1, 1), 'VALID')`` for an (already reflect-padded) NHWC ``x`` and an HWIO 3x3 ``w``,
  computed the way XLA:CPU runs fastest (same values up to float rounding):

  * at most :data:`IM2COL_MAX_PIXELS` output pixels per image (the deep levels): the 9 shifted views concatenated on
    the channel axis times ``w`` as a ``(9 C, C')`` matrix. XLA:CPU computes the kernel gradient of a convolution
    on a few pixels and many channels about 100x slower than this matrix product (0.77 s for one 3x3 512->1024
    gradient on a 4x2x2 batch);
  * larger: :func:`lliejax.models.layers.conv3x3` (``padding="valid"``): a convolution with zero padding 1 whose
    one-pixel output frame is cropped (XLA:CPU runs padded 3x3 convolutions 2.5-4x faster than unpadded ones,
    forward and input gradient), its kernel gradient nine row-shifted matrix products (4.6x faster than XLA's at
    the top level of the FS U-Net).
  """
  ho, wo = x.shape[1] - 2, x.shape[2] - 2
  if ho * wo <= IM2COL_MAX_PIXELS:
    patches = jnp.concatenate([x[:, a:a + ho, b:b + wo] for a in range(3) for b in range(3)], axis=-1)
    return patches @ w.reshape(-1, w.shape[-1])
  return layers.conv3x3(x, w, "valid")


def _zeros_or_torch_bias(official: bool, fan_in: int):
  return nn.initializers.zeros if official else torch_bias_init(fan_in)


def _linear_kernel_init(official: bool):
  # initialize_weights: kaiming_normal_(a=0, fan_in) * 0.1 -> N(0, 0.01 * 2 / fan_in) ("normal" is not truncated).
  return nn.initializers.variance_scaling(0.02, "fan_in", "normal") if official else torch_kernel_init()


class WNConv2d(nn.Module):
  """``weight_norm(nn.Conv2d(in, features, kernel, stride))`` with no padding (callers reflect-pad).

  Params: ``bias`` ``(features,)``, ``weight_g`` ``(1, 1, 1, features)``, ``weight_v`` ``(k, k, in, features)``.
  A 1x1 stride-1 convolution runs as one matrix product.
  """

  features: int
  kernel: int = 3
  stride: int = 1
  weight_init: bool = True

  @nn.compact
  def __call__(self, x):
    cin, k = x.shape[-1], self.kernel
    bias = self.param("bias", _zeros_or_torch_bias(self.weight_init, cin * k * k), (self.features,), jnp.float32)
    v = self.param("weight_v", torch_kernel_init(), (k, k, cin, self.features), jnp.float32)
    # weight_norm initialises g to the norm of the (default-initialised) weight, so the kernel starts equal to it.
    g = self.param("weight_g", lambda _, shape: jnp.sqrt(jnp.sum(jnp.square(v), axis=(0, 1, 2), keepdims=True)),
                   (1, 1, 1, self.features))
    w = weight_norm_kernel(v, g)
    if k == 1 and self.stride == 1:
      y = (x.reshape(-1, cin) @ w[0, 0]).reshape(*x.shape[:-1], self.features)
    elif k == 3 and self.stride == 1:
      y = conv3x3_valid(x, w)
    else:
      y = jax.lax.conv_general_dilated(x, w, (self.stride, self.stride), "VALID",
                                       dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return y + bias


class ConvTranspose2d(nn.Module):
  """``nn.ConvTranspose2d(C, features, kernel, stride, padding)`` with PyTorch's default initialisation.

  Params ``kernel`` ``(k, k, features, C)`` (see :func:`conv_transpose_torch`) and ``bias``; PyTorch's fan-in of
  the ``(C, features, k, k)`` weight is ``features * k * k``, which is also Flax's fan-in of this layout.
  """

  features: int
  kernel: int = 4
  stride: int = 2
  padding: int = 1

  @nn.compact
  def __call__(self, x):
    k = self.kernel
    kernel = self.param("kernel", torch_kernel_init(), (k, k, self.features, x.shape[-1]), jnp.float32)
    bias = self.param("bias", torch_bias_init(self.features * k * k), (self.features,), jnp.float32)
    return conv_transpose_torch(x, kernel, bias, self.stride, self.padding)


class Linear(nn.Module):
  """``nn.Linear(in, features)``: kernel ``(in, features)``, bias; official or PyTorch-default initialisation."""

  features: int
  weight_init: bool = True

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1]
    kernel = self.param("kernel", _linear_kernel_init(self.weight_init), (fan_in, self.features), jnp.float32)
    bias = self.param("bias", _zeros_or_torch_bias(self.weight_init, fan_in), (self.features,), jnp.float32)
    return x @ kernel + bias


class DeadLinear(nn.Module):
  """The parameters of an official ``nn.Linear(in_features, features)`` that the forward pass never uses.

  Calling it only declares ``kernel`` and ``bias`` (so that checkpoints map one to one); it computes nothing.
  """

  in_features: int
  features: int
  weight_init: bool = True

  @nn.compact
  def __call__(self):
    self.param("kernel", _linear_kernel_init(self.weight_init), (self.in_features, self.features), jnp.float32)
    self.param("bias", _zeros_or_torch_bias(self.weight_init, self.in_features), (self.features,), jnp.float32)


class Block(nn.Module):
  """``Block(dim, dim_out, groups=0)``: ReflectionPad2d(1) -> weight-normalised Conv3x3 (``block_1``) -> Mish."""

  features: int
  weight_init: bool = True

  @nn.compact
  def __call__(self, x):
    return mish(WNConv2d(self.features, 3, weight_init=self.weight_init, name="block_1")(reflect_pad(x)))


class ResnetBlock(nn.Module):
  """``ResnetBlock`` (``time_emb`` given) / ``ResnetBlockCond`` (``time_emb`` None) of commons.py.

  ``h = IN(Block1(x))``; ``h += Linear(Mish(time_emb))`` (``mlp_1``, per channel; declared but unused when
  ``time_emb`` is None); ``h = IN(Block2(h))``; ``h + res_conv(x)`` (weight-normalised 1x1 when the width changes,
  else the identity). ``time_dim`` is the width of the time embedding (``unet_dim``), for the dead ``mlp_1``.
  """

  features: int
  time_dim: int
  use_instance_norm: bool = True
  weight_init: bool = True

  @nn.compact
  def __call__(self, x, time_emb=None):
    norm = instance_norm if self.use_instance_norm else (lambda h: h)
    h = norm(Block(self.features, self.weight_init, name="block1")(x))
    if time_emb is None:
      DeadLinear(self.time_dim, self.features, self.weight_init, name="mlp_1")()
    else:
      h = h + Linear(self.features, self.weight_init, name="mlp_1")(mish(time_emb))[:, None, None, :]
    h = norm(Block(self.features, self.weight_init, name="block2")(h))
    if x.shape[-1] != self.features:
      x = WNConv2d(self.features, 1, weight_init=self.weight_init, name="res_conv")(x)
    return h + x


class Downsample(nn.Module):
  """``Downsample``: ReflectionPad2d(1) -> weight-normalised Conv3x3 stride 2 (``conv_1``)."""

  weight_init: bool = True

  @nn.compact
  def __call__(self, x):
    return WNConv2d(x.shape[-1], 3, stride=2, weight_init=self.weight_init, name="conv_1")(reflect_pad(x))


class Upsample(nn.Module):
  """``Upsample``: ``ConvTranspose2d(C, C, 4, 2, 1)`` (``conv_0``), doubling H and W."""

  @nn.compact
  def __call__(self, x):
    return ConvTranspose2d(x.shape[-1], 4, 2, 1, name="conv_0")(x)


def _check_input(name: str, x, in_dim: int, levels: int):
  b, h, w, c = x.shape
  if c != in_dim:
    raise ValueError(f"{name} expects {in_dim} input channels, got {c} (input shape {x.shape})")
  m = 2 ** (levels - 1)
  if h % m or w % m or h < 2 * m or w < 2 * m:
    raise ValueError(f"{name} input height and width must be multiples of {m} and at least {2 * m} (the last "
                     f"level needs 2 pixels for ReflectionPad2d(1)), got {h}x{w}")


def _unet_body(x, time_emb, feats_cond, *, dim: int, out_dim: int, dim_mults: Sequence[int], inject: bool,
               use_instance_norm: bool, weight_init: bool):
  """The skeleton shared by ``Unet``, ``Unet_cond`` and ``Unet_he``; called inside a compact ``__call__`` (its
  submodules belong to the caller). Returns ``(final_conv output, [down-level maps] + [up-level maps])``."""
  if int(dim_mults[0]) != 1:
    raise ValueError(f"dim_mults[0] must be 1 (the official final_conv takes unet_dim={dim} channels from the last "
                     f"up level), got dim_mults={tuple(dim_mults)}")
  dims = [dim * m for m in dim_mults]
  levels = len(dims)
  res = lambda f, n: ResnetBlock(f, dim, use_instance_norm, weight_init, name=n)  # noqa: E731
  skips, feats = [], []
  for i, d in enumerate(dims):
    x = res(d, f"downs_{i}_0")(x, time_emb)
    if inject:
      x = jnp.concatenate([x, feats_cond[i]], axis=-1)
    x = res(d, f"downs_{i}_1")(x, time_emb)
    skips.append(x)
    feats.append(x)
    if i < levels - 1:
      x = Downsample(weight_init, name=f"downs_{i}_2")(x)
  x = res(dims[-1], "mid_block1")(x, time_emb)
  x = res(dims[-1], "mid_block2")(x, time_emb)  # mid_attn (between them) is the identity: use_attn False
  # Up level j works at width dims[-2-j] (``reversed(in_out[1:])``) and always upsamples.
  for j in range(levels - 1):
    d = dims[levels - 2 - j]
    x = jnp.concatenate([x, skips.pop()], axis=-1)
    x = res(d, f"ups_{j}_0")(x, time_emb)
    x = res(d, f"ups_{j}_1")(x, time_emb)
    feats.append(x)
    x = Upsample(name=f"ups_{j}_2")(x)
  x = Block(dim, weight_init, name="final_conv_0")(x)
  return WNConv2d(out_dim, 1, weight_init=weight_init, name="final_conv_1")(x), feats


class Unet(nn.Module):
  """The AnlightenDiff denoiser (``Unet`` of ``model.py``), NHWC; see the module docstring.

  Attributes:
    in_dim: channels of ``concat[x_t, cond]`` (6).
    unet_dim: width of the first level and of the time embedding (64).
    unet_outdim: output channels (3).
    dim_mults: width multiplier per level; ``dim_mults[0]`` must be 1 (``final_conv`` takes ``unet_dim``).
    stronger_cond: concatenate ``feats_cond[i]`` (width ``unet_dim * dim_mults[i]``) after the first residual block
      of down level ``i`` (FS: True; TS: False).
    use_instance_norm: InstanceNorm after both blocks of every residual block (True in every config).
    weight_init: official initialisation (True) or PyTorch's layer defaults (False).
  """

  in_dim: int = 6
  unet_dim: int = 64
  unet_outdim: int = 3
  dim_mults: Sequence[int] = DIM_MULTS
  stronger_cond: bool = True
  use_instance_norm: bool = True
  weight_init: bool = True

  @property
  def padder_size(self) -> int:
    """Input sides must be multiples of this (``2 ** (levels - 1)``; 32)."""
    return 2 ** (len(self.dim_mults) - 1)

  @nn.compact
  def __call__(self, x, time, cond, feats_cond: Sequence[jax.Array] | None = None):
    """``eps_hat`` (B, H, W, unet_outdim) of ``x`` (B, H, W, c) and ``cond`` (B, H, W, in_dim - c) at integer
    steps ``time`` (B,); ``feats_cond``: the encoder's feature list (its first ``levels`` entries are used), needed
    with ``stronger_cond``."""
    x = jnp.concatenate([x, cond], axis=-1)
    levels = len(self.dim_mults)
    _check_input("AnlightenDiff Unet", x, self.in_dim, levels)
    if self.stronger_cond:
      if feats_cond is None or len(feats_cond) < levels:
        raise ValueError(f"AnlightenDiff Unet with stronger_cond needs feats_cond with at least {levels} maps "
                         f"(the encoder's feature list), got {None if feats_cond is None else len(feats_cond)}")
    b = x.shape[0]
    time = jnp.broadcast_to(jnp.reshape(jnp.asarray(time), (-1,)), (b,))
    t = sinusoidal_embedding(time, self.unet_dim)
    t = Linear(4 * self.unet_dim, self.weight_init, name="mlp_0")(t)
    t = Linear(self.unet_dim, self.weight_init, name="mlp_2")(mish(t))
    out, _ = _unet_body(x, t, feats_cond, dim=self.unet_dim, out_dim=self.unet_outdim, dim_mults=self.dim_mults,
                        inject=self.stronger_cond, use_instance_norm=self.use_instance_norm,
                        weight_init=self.weight_init)
    return out


def _dead_time_mlp(dim: int, weight_init: bool):
  DeadLinear(dim, 4 * dim, weight_init, name="mlp_0")()
  DeadLinear(4 * dim, dim, weight_init, name="mlp_2")()


class _TimeFreeUnet(nn.Module):
  """The time-free U-Nets of ``cond.py`` (:class:`UnetCond`, :class:`UnetHE`): the shared body (no time input, no
  feature injection, the dead time MLP declared) and a head of the subclass (:meth:`head`); returns ``(out, feats)``."""

  in_dim: int = 12
  unet_dim: int = 64
  unet_outdim: int = 3
  dim_mults: Sequence[int] = DIM_MULTS
  on_res: bool = True
  use_instance_norm: bool = True
  weight_init: bool = True
  official_name = ""

  @property
  def padder_size(self) -> int:
    return 2 ** (len(self.dim_mults) - 1)

  def head(self, out, x):
    raise NotImplementedError

  @nn.compact
  def __call__(self, x):
    _check_input(f"AnlightenDiff {self.official_name}", x, self.in_dim, len(self.dim_mults))
    _dead_time_mlp(self.unet_dim, self.weight_init)
    out, feats = _unet_body(x, None, None, dim=self.unet_dim, out_dim=self.unet_outdim, dim_mults=self.dim_mults,
                            inject=False, use_instance_norm=self.use_instance_norm, weight_init=self.weight_init)
    return self.head(out, x), feats


class UnetCond(_TimeFreeUnet):
  """The conditioning encoder (``Unet_cond`` of ``cond.py``), NHWC, time-free; returns ``(out, feats)``.

  ``out``: with ``on_res`` (FS, ``cond_on_res: True``) the final conv plus input channels 3..5 (the HE image of the
  12-channel input), no clamp and no sigmoid (the official comment says it must lie in [0, 1]; it is not forced);
  otherwise (TS) ``sigmoid(final conv)`` = ``img_c``. ``feats``: 6 down-level maps (widths ``unet_dim * dim_mults``
  at scales 1 .. 1/32) then 5 up-level maps (before their upsampling), as the official ``get_feats=True``.

  Attributes: as :class:`Unet` (``in_dim`` = ``cond_in_dim`` = 12), and ``on_res`` (FS True, TS False).
  """

  official_name = "Unet_cond"

  def head(self, out, x):
    if self.on_res and self.in_dim < 6:
      raise ValueError(f"Unet_cond with on_res adds input channels 3..5, so in_dim must be >= 6, got {self.in_dim}")
    return out + x[..., 3:6] if self.on_res else jax.nn.sigmoid(out)


class UnetHE(_TimeFreeUnet):
  """The TS histogram-equalisation refiner (``Unet_he`` of ``TS/cond.py``), NHWC, time-free; returns ``(out, feats)``.

  Input ``concat[HE(LQ), img_c]`` (``in_dim`` 6). ``out``: with ``on_res`` (the diffusion config's ``on_res: True``)
  ``clip(final conv + input[..., 0:3], 0, 1)`` (the whole input when ``in_dim <= 3``) = zeta; otherwise
  ``sigmoid(final conv)``. ``feats`` as :class:`UnetCond` (unused by the official callers).
  """

  in_dim: int = 6
  official_name = "Unet_he"

  def head(self, out, x):
    if self.on_res:
      return jnp.clip(out + (x[..., 0:3] if self.in_dim > 3 else x), 0.0, 1.0)
    return jax.nn.sigmoid(out)
