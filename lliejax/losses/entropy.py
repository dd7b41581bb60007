"""Differentiable spatial entropy (2-D KDE of pixel / neighbour values) and the Entropy-SDE losses.

Follows the official ``codes/config/low-light/models/modules/kde_utils.py`` (``kde``, ``prepare_elements``,
``neighbor``, ``kde_func``, ``relative_entropy``, ``cross_entropy``, ``hellinger``) and ``loss.py`` (``EntropyLoss``,
``r_entropy_loss``, ``c_entropy_loss``, ``hellinger_loss``, ``smooth_loss``) of shermanlian/spatial-entropy-loss
step by step:

1. inputs are clamped to ``[0, 1]`` (zero gradient outside, PyTorch ``clamp`` semantics: the boundary values
   themselves pass the gradient) and multiplied by ``L - 1`` (``L = bins``);
2. a neighbour map ``x~`` is the 3x3 neighbourhood without the centre, weighted by a 3x3 weight ``w`` and, in the
   official normalisation, divided by ``C * sum_8 w`` (the sum of the whole C x 1 x 3 x 3 kernel), zero padding 1;
3. every pixel / channel contributes the kernel product ``K[i, j] = kappa((i - x)/h) * kappa((j - x~)/h)`` to each bin
   pair ``(i, j)`` of an ``L x L`` grid of integer centres (official order ``q = i + L*j``);
4. local densities are box sums of ``K`` over windows (official: 1x1, 3x3, 5x5, zero padding) scaled by
   ``1 / (0.5 h |window|)``; the official code concatenates the windows along the width, so every reduction here is
   a mean over ``(windows, C, H, W)`` and over the batch (all windows have the same size, so the means agree);
5. a divergence is summed over the ``L*L`` bins, then averaged.

Faithful vs paper (options of :func:`spatial_entropy_loss`, defaults = official code unless stated):

* ``kind``: the paper trains with relative entropy (KL, default here); the released config hard-wires Hellinger,
  whose official function raises ``TypeError`` (``torch.sqrt(2)``), so ``'hellinger'`` is the evident intent
  (``(1/sqrt 2) sqrt(sum_q (sqrt P - sqrt Q)^2)``). ``'cross'`` reproduces ``c_entropy_loss``: the *prediction*
  density is the first argument (``-sum P_pred ln Q_target``), no epsilon and no neighbour weights;
  ``cross_order='target_first'`` gives the textbook ``-sum P_target ln Q_pred``.
* ``weights``: official = fresh N(0, 1) 3x3 draws per call (``'normal'``; shared by prediction and target) for
  KL / Hellinger, none for cross; the paper's "random weights" / the ``learn`` variant use a 3x3 sigma-1.5 Gaussian
  whose 9 entries are randomly permuted (``'shuffled_gaussian'``); ``'mean'`` = no weights; or an explicit array.
* ``neighbour_norm``: ``'official'`` divides by ``C * sum w`` (neighbour values are 1/C of a weighted mean; with
  N(0,1) weights the normaliser can be ~0 or negative); ``'mean'`` divides by ``sum w`` (a per-channel weighted
  mean; zero padding is kept at the borders).
* ``windows``: official ``(1, 3, 5)``; the paper states one 11x11 window (``windows=(11,)``); any odd sizes.
* ``kernel``: the official path always uses the derivative of the logistic sigmoid; ``'gaussian'`` is the other
  kernel defined (but unused) there.

Memory and speed: the ``(B, L*L, C, H, W)`` density is never materialised, in the forward or the backward pass.
Per-pixel bin sums come from :func:`_slab_pass`, a ``lax.scan`` over chunks of pixel-value bins ``i`` and, inside a
step, blocks of neighbour bins ``j``, sized together so that a tile's ``(batch, chunk, block, H, W)`` arrays stay
cache-sized and the tile is as square in bins as possible (:func:`_tile_values`, :func:`_default_chunk`; larger on
a GPU or TPU); it is
vectorised over the batch (so a batch sharded over devices stays data-parallel) and mapped over channels. Kernel
products are outer products of per-bin kernels (``L`` kernel evaluations per pixel and axis instead of ``L^2``) and
box windows are separable: shifted slices summed along the width (the products formed inside that fused sum),
shifted row slices of the materialised width sums along the height (:func:`_boxes`). The gradient is hand-written
(``jax.custom_vjp``): the zero-padded box is its own adjoint, so the cotangent of every density is box-summed back
and contracted with the kernels, again one bin chunk at a time. Term values and the two gradient contractions are
accumulated elementwise per neighbour bin and reduced over ``j`` once, after the scan.
KL, cross-entropy and the entropy metric (linear in the bin sums) keep only the sum over the windows and compute
value and gradient in one pass; Hellinger (a square root per window and pixel) needs the bin sums first, so its
gradient takes a second pass. Hellinger's 1x1 window (of the official ``(1, 3, 5)``) does not go through the tiles:
its densities are outer products, so its ``L^2`` sum has a closed form in ``O(L)`` per pixel
(:func:`_hellinger_point_window`, written with differences so that equal inputs still give exactly 0). The target's
gradient is computed only when something differentiates the target (``symbolic_zeros``). Each (bin chunk,
neighbour block) tile is one ``lax.cond``: besides skipping (below), running the tiles one after the other keeps
their arrays in cache (measured 17-35 % less CPU time than the same code without the conditionals, on the 2-core
development machine).

The loss is not a bilinear form of the kernels (each pixel's local density goes through a log or a square root
before the bins are summed), so it cannot be written as a matrix product over pixels; only :func:`joint_histogram`
(a plain average) is one (an ``einsum``).

Banded evaluation (what is skipped): a tile is skipped for a whole channel (all images of the batch, prediction and
target) when every kernel product ``kappa((i - x)/h) kappa((j - x~)/h)`` of each of its bin pairs, at every pixel,
is below ``2^-24`` (float32 resolution) of the largest possible product ``kappa(0)^2`` (:func:`_active_tiles`;
sigmoid derivative, h = 0.5: the pixel's ``(x, x~)`` is more than 9.7 bins away from the tile in city-block
distance; Gaussian: more than 2.9 bins in Euclidean distance). All densities of such a tile are below ``2^-24`` of
the largest possible density, and their terms and derivatives are negligible; measured changes are below 1e-6
relative (tests: dense reference to 1e-5 with tiles skipped; every skipped product checked against the bound).
With the official ``N(0, 1)`` neighbour weights the neighbour values spread over the whole grid and little is
skipped; with positive weights (``'mean'``, ``'shuffled_gaussian'``) the official ``C * sum w`` normalisation keeps
``x~`` below ``(L - 1)/C``, and the neighbour bins above ``(L - 1)/C + 9.7`` are skipped. Not skipped: the official
cross-entropy without epsilon (its ``0 * ln 0`` NaNs in empty bins are kept), and any input with a NaN.

Numerics (documented deviations that do not change values):

* Hellinger: ``sqrt`` has an infinite derivative at 0; the densities of far bins underflow to exactly 0 in float32
  and identical inputs give a zero bin sum, so the official code produces NaN gradients. Here both square roots use
  :func:`safe_sqrt`: the exact ``sqrt`` value with derivative ``0`` at ``x == 0`` (a subgradient).
* The sigmoid-derivative kernel is evaluated exactly as PyTorch (``s = 1/(1+exp(-v))``, ``s*(1-s)``) but has a
  custom JVP ``kappa * (1 - 2s)`` so that ``exp`` overflow far from the bin (large neighbour values from random
  weights) cannot produce ``inf/inf``.
* KL uses ``P * ln((P+eps)/(Q+eps))`` (one log instead of two; mathematically identical, more accurate when
  ``P ~ Q``); where ``P == Q`` the quotient is exactly 1 and its log exactly 0.
* Logarithms use :func:`_log` (a polynomial on the mantissa, 3.8e-7 relative error against ``jnp.log``'s 1.2e-7),
  which made the KL loss about 17 % faster on XLA:CPU.
* Cross-entropy keeps the official missing epsilon (``eps=None`` -> 0): ``0 * ln 0`` gives NaN exactly where the
  official code does (far bins that underflow, e.g. dark images at L = 32); pass ``eps=1e-10`` to avoid it.
"""
from __future__ import annotations

import functools
import math
from typing import Callable, Literal, NamedTuple, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

Kind = Literal["kl", "cross", "hellinger", "hellinger_smooth"]
KernelName = Literal["sigmoid", "gaussian"]
NeighbourNorm = Literal["official", "mean"]
Clamp = Union[bool, Literal["official", "straight_through", "none"]]
CLAMP_MODES = ("official", "straight_through", "none")
Weights = Union[None, str, jax.Array, np.ndarray]

_KL_EPS = 1e-10
# Bin tiles whose kernel products are all below 2^-_SKIP_LOG2 of the largest product are skipped (_active_tiles);
# float('inf') evaluates every bin.
_SKIP_LOG2 = 24.0
# Neighbour bins j per block (one lax.cond per bin chunk and block) are chosen so that a block's arrays
# (batch, block, H, W) hold about this many values (a power of two, at least 2 bins): cache-sized. Measured on the
# 2-core CPU (process CPU time, KL value and gradient): at (2, 3, 128, 128, 32) blocks of 4 or 8 bins (2^17-2^18
# values) were as fast as each other and 15-30 % faster than 16 or 32; at batch 8, blocks of 2 were 12-20 % faster
# than 4 or 8. With the sliced width sums (:func:`_boxes`), on a 2-core AMD EPYC: blocks of 4 bins (2^17) 0.48-0.53 s,
# 8 bins 0.52-0.65 s, 2 bins 0.51-0.67 s at (2, 3, 128, 128, 32). With the height sums as row slices, tiles of 2
# pixel-value x 2 neighbour bins (the same 2^17 values, :func:`_default_chunk`) were 7-8 % faster than 1 x 4 there
# (interleaved medians: KL 0.46 -> 0.43 s, Hellinger 0.48 -> 0.45 s); at batch 8, 1 x 2 stayed the faster.
_BLOCK_VALUES = 2**17
# The same on accelerators (any backend but 'cpu', see :func:`_tile_values`): tiles of about this many values. On an
# NVIDIA H200 (benchmarks/entropy.py, value and gradient, medians of 5; 2026-12-04) the CPU's 2^17 took 19 / 33 ms (KL
# / Hellinger) at (2, 3, 128, 128, 32) and 47 / 86 ms at (8, 3, 128, 128, 32): many small tiles, each a lax.cond. 2^20:
# 7 / 8 and 22 / 31 ms; 2^22: 6 / 6 and 20 / 21 ms (device peak 145 / 93 and 232 / 172 MiB); 2^24: 7 / 6 and 17 / 18
# ms, but 612 / 287 and 706 / 373 MiB. The official PyTorch code on the same GPU: 33 / 34 and 124 / 126 ms, 9.4 and
# 37.5 GiB.
_ACCELERATOR_BLOCK_VALUES = 2**22


def _tile_values() -> int:
  """Values per bin tile for the backend that runs the computation (``jax.default_backend()`` when the loss is
  traced): :data:`_BLOCK_VALUES` on the CPU (cache-sized), :data:`_ACCELERATOR_BLOCK_VALUES` on a GPU or TPU (tuned
  on an H200 only)."""
  return _BLOCK_VALUES if jax.default_backend() == "cpu" else _ACCELERATOR_BLOCK_VALUES


# ----------------------------------------------------------------------------------------------------------------
# Elementwise helpers.


@jax.custom_jvp
def safe_sqrt(x: jax.Array) -> jax.Array:
  """``sqrt(x)`` (exact value) whose derivative is ``0.5/sqrt(x)`` for ``x > 0`` and ``0`` at ``x == 0``."""
  return jnp.sqrt(x)


@safe_sqrt.defjvp
def _safe_sqrt_jvp(primals, tangents):
  (x,), (dx,) = primals, tangents
  y = jnp.sqrt(x)
  pos = x > 0
  deriv = jnp.where(pos, 0.5 / jnp.where(pos, y, 1.0), 0.0)
  return y, deriv * dx


@jax.custom_jvp
def _sigmoid_derivative(v: jax.Array) -> jax.Array:
  s = 1.0 / (1.0 + jnp.exp(-v))
  return s * (1.0 - s)


@_sigmoid_derivative.defjvp
def _sigmoid_derivative_jvp(primals, tangents):
  (v,), (dv,) = primals, tangents
  s = 1.0 / (1.0 + jnp.exp(-v))
  k = s * (1.0 - s)
  return k, k * (1.0 - 2.0 * s) * dv


# Coefficients of log1p(t) = t - t^2/2 + t^3 q(t) on t in [sqrt(1/2) - 1, sqrt(2) - 1] (q of degree 5, highest first):
# a weighted least-squares fit of the relative error on 4,000 Chebyshev nodes. Max relative error of :func:`_log` over
# float32 [1e-30, 1e30]: 3.8e-7 (jnp.log: 1.2e-7).
_LOG1P_Q = (-0.10069556534290314, 0.15987879037857056, -0.17155025899410248, 0.19928079843521118,
            -0.24982547760009766, 0.3333421051502228)


def _log(x: jax.Array) -> jax.Array:
  """Natural logarithm of float32 ``x``: ``jnp.log`` to 3.8e-7 relative, cheaper on XLA:CPU.

  ``x = 2^k m`` with ``m`` in ``[sqrt(1/2), sqrt(2))`` from the bits, then ``k ln 2 + log1p(m - 1)`` with the
  polynomial above (no table, no division). ``t = m - 1`` is exact, so the result keeps full relative accuracy near
  ``x = 1`` and ``_log(1) == 0`` exactly. ``0 -> -inf``, negative or NaN ``-> NaN``, ``inf -> inf`` as ``jnp.log``;
  XLA:CPU flushes subnormals to zero (``jnp.log(1e-45) == -inf`` there), and so does this.

  Alone it is about 12 % cheaper than ``jnp.log`` (0.33 against 0.375 ns per element on the 2-core CPU), but the
  divergence terms spend much of their time in logarithms (three per bin pair, pixel and window for KL), and inside
  the KL value fusion the difference is larger: the KL value and gradient at (2, 3, 128, 128, 32) took 0.317 instead
  of 0.385 s (interleaved medians of 9 runs, target and key as arguments), with the same value to 7 digits.
  """
  x = jnp.asarray(x, jnp.float32)
  bits = jax.lax.bitcast_convert_type(x, jnp.int32)
  k = (bits - np.int32(0x3F3504F3)) >> 23  # exponent such that the mantissa lands in [sqrt(1/2), sqrt(2))
  t = jax.lax.bitcast_convert_type(bits - (k << 23), jnp.float32) - np.float32(1.0)
  q = np.float32(_LOG1P_Q[0])
  for c in _LOG1P_Q[1:]:
    q = q * t + np.float32(c)
  z = t * t
  y = (t - np.float32(0.5) * z + q * (z * t)) + k.astype(jnp.float32) * np.float32(math.log(2.0))
  return jnp.where(x > 0, jnp.where(x < np.float32(np.inf), y, x), jnp.where(x == 0, -np.float32(np.inf), np.nan))


def _gaussian_kernel(v: jax.Array) -> jax.Array:
  return jnp.float32(1.0 / math.sqrt(2.0 * math.pi)) * jnp.exp(-0.5 * v * v)


_KERNELS = {"sigmoid": _sigmoid_derivative, "gaussian": _gaussian_kernel}


def _clamp01(x: jax.Array) -> jax.Array:
  # torch.clamp semantics: gradient 1 on the closed interval [0, 1], 0 outside.
  return jnp.where(x < 0, jnp.zeros_like(x), jnp.where(x > 1, jnp.ones_like(x), x))


def _clamp_mode(clamp: Clamp) -> str:
  mode = {True: "official", False: "none"}.get(clamp, clamp) if isinstance(clamp, bool) else clamp
  if mode not in CLAMP_MODES:
    raise ValueError(f"unknown clamp {clamp!r}; expected one of {', '.join(CLAMP_MODES)} (or True / False)")
  return mode


def clamp01(x: jax.Array, mode: Clamp = "official") -> jax.Array:
  """The KDE input clamp.

  ``'official'`` (``True``): ``torch.clamp`` to [0, 1] -- values outside get exactly zero gradient, which is why
  entropy-only training drifts (x_hat_0 below 0 receives no pull back; REFERENCE §6 item 5). ``'straight_through'``:
  the same *value*, but the gradient passes unchanged everywhere (``x + stop_gradient(clamp(x) - x)``), so pixels
  outside [0, 1] are still pushed towards the target's histogram. ``'none'`` (``False``): no clamp.
  """
  mode = _clamp_mode(mode)
  if mode == "official":
    return _clamp01(x)
  if mode == "straight_through":
    return x + jax.lax.stop_gradient(jnp.clip(x, 0.0, 1.0) - x)
  return x


def gaussian_window(size: int = 3, sigma: float = 1.5) -> np.ndarray:
  """Normalised separable 2-D Gaussian window (``create_window`` of the official code), float32 ``(size, size)``."""
  g = np.exp(-((np.arange(size) - size // 2) ** 2) / (2.0 * sigma**2)).astype(np.float32)
  g = g / g.sum()
  return np.outer(g, g).astype(np.float32)


# ----------------------------------------------------------------------------------------------------------------
# Neighbour map and weights.


def neighbour_weights(key: jax.Array, kind: str = "normal") -> jax.Array | None:
  """A 3x3 neighbour weight drawn from ``key``.

  ``'normal'``: i.i.d. N(0, 1) (official ``randn_weight()``, drawn once per loss call); ``'shuffled_gaussian'``: the
  3x3 sigma-1.5 Gaussian window with its 9 entries randomly permuted (``randn_weight(3, gaussian=True)``, paper);
  ``'mean'``: ``None`` (no weights).
  """
  if kind == "normal":
    return jax.random.normal(key, (3, 3), jnp.float32)
  if kind == "shuffled_gaussian":
    g = jnp.asarray(gaussian_window(3, 1.5)).reshape(-1)
    return g[jax.random.permutation(key, 9)].reshape(3, 3)
  if kind == "mean":
    return None
  raise ValueError(f"unknown neighbour weights {kind!r}; expected 'normal', 'shuffled_gaussian', 'mean' or an array")


def _neighbour_nchw(x: jax.Array, weights, norm: str) -> jax.Array:
  """Neighbour map of an NCHW array (already scaled)."""
  c = x.shape[1]
  mask = np.ones((3, 3), np.float32)
  mask[1, 1] = 0.0
  if weights is None:
    k = jnp.asarray(mask)
  else:
    w = jnp.asarray(weights, jnp.float32)
    if w.shape != (3, 3):
      raise ValueError(f"neighbour weights must have shape (3, 3), got {w.shape}")
    k = w * mask
  if norm == "official":
    k = k / (c * jnp.sum(k))
  elif norm == "mean":
    k = k / jnp.sum(k)
  else:
    raise ValueError(f"unknown neighbour_norm {norm!r}; expected 'official' or 'mean'")
  h, w_ = x.shape[2], x.shape[3]
  xp = jnp.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
  out = None
  for dy in range(3):
    for dx in range(3):
      if dy == 1 and dx == 1:
        continue
      term = k[dy, dx] * xp[:, :, dy:dy + h, dx:dx + w_]
      out = term if out is None else out + term
  return out


def neighbour_map(x: jax.Array, weights=None, *, norm: NeighbourNorm = "official") -> jax.Array:
  """Weighted 3x3 neighbourhood (centre excluded) of an NHWC array, zero padding.

  ``norm='official'``: ``sum_k w_k x_k / (C * sum_k w_k)`` (the official kernel normalisation by the whole
  C x 1 x 3 x 3 kernel); ``norm='mean'``: ``sum_k w_k x_k / sum_k w_k``. ``weights=None`` means all ones.
  """
  y = _neighbour_nchw(jnp.moveaxis(x, -1, 1), weights, norm)
  return jnp.moveaxis(y, 1, -1)


# ----------------------------------------------------------------------------------------------------------------
# KDE building blocks (internal layout: (B, C, ..., H, W) so the width is the vectorised minor axis).


def _check_windows(windows: Sequence[int]) -> tuple[int, ...]:
  windows = tuple(int(k) for k in windows)
  if not windows or any(k < 1 or k % 2 == 0 for k in windows):
    raise ValueError(f"windows must be a non-empty sequence of positive odd sizes, got {windows}")
  return windows


def _pad_width(a: jax.Array, r: int) -> jax.Array:
  """Zero padding of ``r`` columns on both sides of the last axis."""
  return jnp.pad(a, [(0, 0)] * (a.ndim - 1) + [(r, r)]) if r else a


def _width_sums(column, sizes: Sequence[int], rmax: int) -> tuple[jax.Array, ...]:
  """Per window size ``k``: ``sum_{d < k} column(rmax - k//2 + d)``, where ``column(o)`` is the unpadded-width slice
  at offset ``o`` of an array zero-padded by ``rmax`` columns (one fused loop per size)."""
  out = []
  for k in sizes:
    o = rmax - k // 2
    out.append(sum(column(o + d) for d in range(1, k)) + column(o))
  return tuple(out)


def _height_sums(sums: Sequence[jax.Array], sizes: Sequence[int]) -> tuple[jax.Array, ...]:
  """Per window size ``k``: the zero-padded 'same' ``k``-row sums of ``sums[n]`` over the second-to-last axis, as
  sums of ``k`` shifted row slices of a zero-padded copy.

  The padded copy is materialised (``optimization_barrier`` on the padded array: XLA:CPU then writes the padding
  from the fused loop that computes ``sums[n]``). Without it the producer is fused into the row slices and
  recomputed for every row offset. This replaced a 1-D ``reduce_window`` along the rows (XLA:CPU loops over the
  window for every output element there): on the 2-core CPU, KL value and gradient at (2, 3, 128, 128, 32)
  0.49 -> 0.43 s, Hellinger 0.58 -> 0.47 s (interleaved medians).
  """
  out = []
  for y, k in zip(sums, sizes):
    if k == 1:
      out.append(y)
      continue
    r, h = k // 2, y.shape[-2]
    yp = jax.lax.optimization_barrier(jnp.pad(y, [(0, 0)] * (y.ndim - 2) + [(r, r), (0, 0)]))
    out.append(sum(yp[..., d:d + h, :] for d in range(1, k)) + yp[..., 0:h, :])
  return tuple(out)


def _box(x: jax.Array, k: int) -> jax.Array:
  """Zero-padded 'same' k x k box sum over the last two axes (see :func:`_boxes`)."""
  return _boxes(x, (k,))[0]


def _boxes(x: jax.Array, sizes: Sequence[int]) -> tuple[jax.Array, ...]:
  """Zero-padded 'same' box sums of ``x`` over its last two axes, one per window size in ``sizes``. Separable: one
  zero-padded copy shared by all sizes; along the width (the minor axis) a sum of ``k`` shifted column slices (a
  fused loop per size), along the height a sum of ``k`` shifted row slices of the materialised width sums
  (:func:`_height_sums`).

  The same sums as two ``reduce_window`` passes up to float rounding, but XLA:CPU's ``reduce_window`` was the
  slowest pass of the KDE losses: slices along the width took the KL value-and-gradient at (2, 3, 128, 128, 32)
  from 0.58-0.63 s to 0.41-0.50 s on the 2-core CPU; along the height see :func:`_height_sums`.
  """
  rmax = max(k // 2 for k in sizes)
  xp = _pad_width(x, rmax)
  sums = _width_sums(lambda o: xp[..., o:o + x.shape[-1]], sizes, rmax)
  return _height_sums(sums, sizes)


def _product_boxes(up: jax.Array, vp: jax.Array, sizes: Sequence[int], w: int) -> tuple[jax.Array, ...]:
  """:func:`_boxes` of the outer product ``u[:, None] * v[None]`` ((ci, H, W) x (lj, H, W)) given its factors
  zero-padded along the width by ``max(sizes) // 2`` (``up``, ``vp``): each shifted column slice of the product is
  formed inside the fused width sum, so the padded product is never materialised."""
  rmax = (up.shape[-1] - w) // 2
  up, vp = up[:, None], vp[None]
  sums = _width_sums(lambda o: up[..., o:o + w] * vp[..., o:o + w], sizes, rmax)
  return _height_sums(sums, sizes)


def _prepare(image: jax.Array, weights, *, bins: int, norm: str, clamp: Clamp):
  """NHWC image -> scaled pixel values and neighbour map, both NCHW."""
  if image.ndim != 4:
    raise ValueError(f"expected an NHWC batch (B, H, W, C), got shape {image.shape}")
  x = clamp01(jnp.moveaxis(jnp.asarray(image, jnp.float32), -1, 1), clamp)
  x = x * jnp.float32(bins - 1)
  return x, _neighbour_nchw(x, weights, norm)


def _bin_kernels(x: jax.Array, *, bins: int, bandwidth: float, kernel: str) -> jax.Array:
  """``kappa((g - x) / h)`` for every bin centre ``g = 0..L-1``: (B, C, H, W) -> (B, C, L, H, W)."""
  try:
    kfn = _KERNELS[kernel]
  except KeyError:
    raise ValueError(f"unknown kernel {kernel!r}; expected 'sigmoid' or 'gaussian'") from None
  g = jnp.arange(bins, dtype=jnp.float32)[:, None, None]
  return kfn((g - x[:, :, None]) / jnp.float32(bandwidth))


def _window_scale(k: int, bandwidth: float) -> jax.Array:
  return jnp.float32(1.0 / (0.5 * bandwidth * k * k))


def kde_density(image: jax.Array, *, weights=None, bins: int = 32, bandwidth: float = 0.5,
                kernel: KernelName = "sigmoid", windows: Sequence[int] = (1, 3, 5),
                neighbour_norm: NeighbourNorm = "official", clamp: Clamp = True) -> jax.Array:
  """Dense local densities in the official layout ``(B, L*L, C, H, len(windows) * W)``.

  Bin pair ``q = i + L*j`` (``i``: pixel-value bin, ``j``: neighbour bin); windows concatenated along the width in
  the given order. This materialises ``B * L^2 * C * H * W * len(windows)`` values: meant for inspection and small
  images; the losses never build it. ``weights`` is an explicit 3x3 array or ``None`` (no weights).
  """
  windows = _check_windows(windows)
  x, xn = _prepare(image, weights, bins=bins, norm=neighbour_norm, clamp=clamp)
  u = _bin_kernels(x, bins=bins, bandwidth=bandwidth, kernel=kernel)
  v = _bin_kernels(xn, bins=bins, bandwidth=bandwidth, kernel=kernel)
  prod = u[:, :, :, None] * v[:, :, None, :]  # (B, C, Li, Lj, H, W)
  dens = jnp.concatenate([_window_scale(k, bandwidth) * _box(prod, k) for k in windows], axis=-1)
  b, c, _, _, h, w = dens.shape
  return jnp.transpose(dens, (0, 3, 2, 1, 4, 5)).reshape(b, bins * bins, c, h, w)


# ----------------------------------------------------------------------------------------------------------------
# The bin-sum engine: per-pixel sums over all L*L bins of an elementwise divergence term, with a hand-written
# gradient (custom VJP) so that neither pass stores anything of size L^2.


class _Term(NamedTuple):
  """An elementwise divergence term of the densities of one or two images and its partial derivatives.

  ``value(d)`` and ``grads(d)`` take the tuple ``d`` of densities (first the prediction, then the target); ``grads``
  returns one derivative per density. ``per_window``: the caller needs the bin sums of every window separately
  (Hellinger takes a square root per window and pixel); otherwise only their sum over the windows is kept.
  ``skippable``: bin tiles whose densities are all negligible (:func:`_active_tiles`) contribute nothing to the
  value or the gradient (false for the official cross-entropy without epsilon, whose ``0 * ln 0`` NaNs in empty bins
  are kept).
  """
  value: Callable
  grads: Callable
  per_window: bool = False
  skippable: bool = True


@functools.lru_cache(maxsize=None)
def _term(kind: str, eps: float | None, cross_order: str = "official") -> _Term:
  """The term of ``kind`` (cached, so that equal options give the same object: a static custom-VJP argument)."""
  if kind == "kl":  # P ln((P+e)/(Q+e)), Q prediction, P target; the log is exactly 0 where P == Q
    e = np.float32(eps)

    def log_ratio(d):  # exactly 0 where P == Q: the division gives exactly 1 and _log(1) == 0
      return _log((d[1] + e) / (d[0] + e))

    return _Term(lambda d: d[1] * log_ratio(d), lambda d: (-d[1] / (d[0] + e), log_ratio(d) + d[1] / (d[1] + e)))
  if kind == "cross":  # official: -P_pred ln(Q_target + e); target_first: -P_target ln(Q_pred + e)
    e = np.float32(eps or 0.0)
    skip = bool(eps)  # without an epsilon, empty bins give the official NaN: evaluate every bin
    if cross_order == "official":
      return _Term(lambda d: -d[0] * _log(d[1] + e), lambda d: (-_log(d[1] + e), -d[0] / (d[1] + e)),
                   skippable=skip)
    return _Term(lambda d: -d[1] * _log(d[0] + e), lambda d: (-d[1] / (d[0] + e), -_log(d[0] + e)),
                 skippable=skip)
  if kind == "hellinger":  # (sqrt P - sqrt Q)^2, derivative 0 where a density is exactly 0 (safe_sqrt)
    def grads(d):
      rq, rp = jnp.sqrt(d[0]), jnp.sqrt(d[1])
      diff = rp - rq
      return (jnp.where(rq > 0, -diff / jnp.where(rq > 0, rq, 1.0), 0.0),
              jnp.where(rp > 0, diff / jnp.where(rp > 0, rp, 1.0), 0.0))
    return _Term(lambda d: jnp.square(jnp.sqrt(d[1]) - jnp.sqrt(d[0])), grads, per_window=True)
  if kind == "entropy":  # -p ln(p + e) of one image (the metric)
    e = np.float32(eps)
    return _Term(lambda d: -d[0] * _log(d[0] + e), lambda d: (-_log(d[0] + e) - d[0] / (d[0] + e),))
  raise ValueError(f"unknown term {kind!r}")


class _KDE(NamedTuple):
  """Static options of the KDE (hashable)."""
  bins: int
  bandwidth: float
  kernel: str
  windows: tuple[int, ...]
  chunk: int


def _kernel_and_derivative(x: jax.Array, kde: _KDE, first=0, count: int | None = None) -> tuple[jax.Array, jax.Array]:
  """``kappa((g - x)/h)`` and its derivative with respect to ``x`` for the bins ``g = first .. first + count - 1``
  (default all ``L``; ``first`` may be traced): (F, H, W) -> 2 x (F, count, H, W)."""
  count = kde.bins if count is None else count
  g = (jnp.arange(count, dtype=jnp.float32) + jnp.asarray(first, jnp.float32))[:, None, None]
  v = (g - x[:, None]) / jnp.float32(kde.bandwidth)
  if kde.kernel == "sigmoid":
    s = 1.0 / (1.0 + jnp.exp(-v))  # as PyTorch's sigmoid; exp overflow gives s = 0, kappa = 0, derivative 0
    k = s * (1.0 - s)
    dk = k * (1.0 - 2.0 * s)
  else:
    k = _gaussian_kernel(v)
    dk = -v * k
  return k, dk * jnp.float32(-1.0 / kde.bandwidth)


def _sum_leading(x: jax.Array) -> jax.Array:
  """Sum over the leading axis, written as elementwise adds of its slices.

  ``jnp.sum`` over a major axis lowers to an XLA CPU reduction that was several times slower here (the whole loss
  up to 4x), and so was pairwise halving with concatenations.
  """
  return sum(x[i] for i in range(1, x.shape[0])) + x[0] if x.shape[0] > 1 else x[0]


def _slab_pass(fields, ct, active, *, term: _Term, kde: _KDE, blocks: tuple[tuple[int, int], ...], want_value: bool,
               want_grads: tuple[bool, ...]):
  """One image channel: per-pixel bin sums and/or the gradient of ``sum_k sum_p ct_k(p) S_k(p)``.

  ``fields``: tuple of ``(x, x_neighbour)`` (H, W) pairs, prediction first. ``S_k(p) = sum_{i,j} term(D_k(p, i, j))``
  is the bin sum of window ``k``; with ``term.per_window`` the result has one row per window, otherwise a single
  row ``sum_k S_k`` (then ``ct`` has one row too, applied to every window). ``ct``: (rows, H, W), ignored when no
  gradient is wanted. ``active``: ``None`` (every bin) or a boolean (chunks, blocks) table of the bin tiles to
  evaluate (:func:`_active_tiles`; the others are skipped with ``lax.cond``). Returns
  ``(S or None, ((dx, dx_neighbour) or None per field))``.

  Scans over chunks of ``kde.chunk`` pixel-value bins ``i`` (their kernels ``u_i`` are evaluated in the step; the
  neighbour kernels ``v_j`` once for all bins); per chunk and per block of neighbour bins ``j`` (one ``lax.cond``
  each) the kernel products ``u_i(p) v_j(p)``, their box sums, the term and, for the gradient, ``G = ct * dterm/dD``
  box-summed back (the zero-padded box is its own adjoint). Nothing is reduced over ``j`` inside the scan: the term
  values and the two gradient contractions ``sum_i G u_i`` (for ``dv_j``) and ``sum_i G du_i`` (for ``du``, later
  contracted with ``v_j``) are accumulated elementwise into per-``j`` carries ``(L, H, W)`` and reduced over ``j``
  once at the end (reductions over a major axis inside the loop were the slowest part of the previous version).
  Live memory: these carries, the ``v`` kernels and a few ``(chunk, block, H, W)`` arrays; nothing of size ``L^2``.
  """
  h, w = fields[0][0].shape
  bins, ci, windows = kde.bins, kde.chunk, kde.windows
  scales = [np.float32(1.0 / (0.5 * kde.bandwidth * k * k)) for k in windows]
  rows = len(windows) if term.per_window else 1
  # Neighbour-bin kernels for all bins (every step uses them); pixel-value kernels one chunk per step.
  v, dv = zip(*[(k[0], dk[0]) for k, dk in (_kernel_and_derivative(xn[None], kde) for _, xn in fields)])
  grad_idx = [f for f, g in enumerate(want_grads) if g]
  nv, ng = (rows if want_value else 0), len(grad_idx)
  rmax = max(windows) // 2
  vpad = [_pad_width(a, rmax) for a in v]
  # Each block's neighbour kernels are sliced once, outside the scan, and enter its tile's lax.cond as an operand, so
  # the tiles of equal-sized blocks are one computation and XLA compiles each of their fusions once, not once per
  # block (with the slice inside the branch every block had its own copies: at (2, 3, 128, 128, 32) 99 instead of
  # 160 compiled kernels for KL, peak RSS while compiling 461 -> 420 MiB, compile time 13 -> 10 s; and the smaller
  # code ran faster: interleaved medians KL 0.369 -> 0.346 s, Hellinger 0.505 -> 0.460 s on the 2-core CPU).
  vblocks = [[a[j0:j1] for a in vpad] for j0, j1 in blocks]

  def block(acc_in, ucp, duc, vb):
    """One (chunk, block) tile: its contributions added to the block's carries ``acc_in`` (nv + 2 ng arrays).
    ``ucp``: the chunk's pixel-value kernels per field, ``vb`` the block's neighbour kernels, both zero-padded along
    the width."""
    uc = [a[..., rmax:rmax + w] for a in ucp]
    accs = [None] * ng
    tvals = [None] * rows
    # per field, per window: box sums of the kernel products u_i v_j, (ci, lj, H, W)
    boxed = [_product_boxes(a, b, windows, w) for a, b in zip(ucp, vb)]
    for n, (k, s) in enumerate(zip(windows, scales)):
      dens = tuple(s * bx[n] for bx in boxed)
      r = n if term.per_window else 0
      if want_value:
        t = term.value(dens)
        tvals[r] = t if tvals[r] is None else tvals[r] + t
      if grad_idx:
        grads = term.grads(dens)
        for gi, f in enumerate(grad_idx):
          g = s * _box(ct[r] * grads[f], k)
          accs[gi] = g if accs[gi] is None else accs[gi] + g
    vals_in, gv_in, gt_in = acc_in[:nv], acc_in[nv:nv + ng], acc_in[nv + ng:]
    out = [a + _sum_leading(t) for a, t in zip(vals_in, tvals)]
    out += [a + _sum_leading(accs[gi] * uc[f][:, None]) for gi, (a, f) in enumerate(zip(gv_in, grad_idx))]
    out += [a + _sum_leading(accs[gi] * duc[gi][:, None]) for gi, a in enumerate(gt_in)]
    return tuple(out)

  def body(carry, xs):
    i0, act = xs  # first bin of the chunk; (blocks,) flags or None
    kernels = [_kernel_and_derivative(x[None], kde, first=i0, count=ci) for x, _ in fields]
    ucp = [_pad_width(k[0][0], rmax) for k in kernels]  # (ci, H, W + 2 rmax) per field
    duc = [kernels[f][1][0] for f in grad_idx]  # per gradient field
    new = []
    for bi, vb in enumerate(vblocks):
      acc_in = tuple(c[bi] for c in carry)
      if act is None:
        new.append(block(acc_in, ucp, duc, vb))
      else:
        new.append(jax.lax.cond(act[bi], block, lambda a, *_: a, acc_in, ucp, duc, vb))
    return tuple(tuple(n[c] for n in new) for c in range(len(carry))), None

  init = tuple(tuple(jnp.zeros((j1 - j0, h, w), jnp.float32) for j0, j1 in blocks) for _ in range(nv + 2 * ng))
  if ci == bins:
    out, _ = body(init, (0, None if active is None else active[0]))
  else:
    out, _ = jax.lax.scan(body, init, (jnp.arange(0, bins, ci), active))
  cat = lambda blks: jnp.concatenate(blks)  # (L, H, W)
  value = jnp.stack([_sum_leading(cat(a)) for a in out[:nv]]) if want_value else None
  out_grads = [None] * len(fields)
  for gi, f in enumerate(grad_idx):
    out_grads[f] = (_sum_leading(cat(out[nv + ng + gi]) * v[f]), _sum_leading(cat(out[nv + gi]) * dv[f]))
  return value, tuple(out_grads)


def _pow2_floor(n: int) -> int:
  return 1 << (max(int(n), 1).bit_length() - 1)


def _default_chunk(bins: int, pixels: int) -> int:
  """Pixel-value bins per scan step when ``chunk_size`` is not given: tiles of about :func:`_tile_values` values
  (``chunk * block * pixels``) as square in bins as possible, ``chunk <= block`` (on the CPU, at batch 2 of 128x128:
  2 x 2 bins; at batch 8: 1 x 2; at one 64x64 image: 4 x 8; on a GPU at batch 2: 8 x 16)."""
  pairs = _pow2_floor(_tile_values() // max(pixels, 1))
  return min(bins, 1 << ((pairs.bit_length() - 1) // 2))


def _j_blocks(bins: int, pixels: int, chunk: int = 1) -> list[tuple[int, int]]:
  """Neighbour-bin blocks ``[j0, j1)`` for ``pixels`` values per bin and ``chunk`` pixel-value bins per step: about
  :func:`_tile_values` values per (chunk, block) tile, a power of two, at least 2 bins (see there)."""
  size = min(bins, max(2, _pow2_floor(_tile_values() // max(pixels * chunk, 1))))
  return [(j0, min(j0 + size, bins)) for j0 in range(0, bins, size)]


def _axis_cost(d: jax.Array, kde: _KDE) -> jax.Array:
  """Lower bound of ``-ln(kappa(d / h) / kappa(0))`` for a distance ``d >= 0`` (in bins) to a bin centre.

  Sigmoid derivative: ``kappa(v) = e^-|v| / (1 + e^-|v|)^2 <= e^-|v|`` and ``kappa(0) = 1/4``, so the bound is
  ``|v| - ln 4``; Gaussian: exactly ``v^2 / 2``.
  """
  v = d / np.float32(kde.bandwidth)
  return v - np.float32(math.log(4.0)) if kde.kernel == "sigmoid" else 0.5 * v * v


def _active_tiles(fields, kde: _KDE, blocks) -> jax.Array:
  """Which bin tiles (chunk of pixel-value bins x block of neighbour bins) of each channel need evaluating.

  A tile is skipped when, for every pixel of every image of the batch and every field (prediction and target), the
  kernel product ``u_i(p) v_j(p)`` of each of its bin pairs is below ``2^-24`` of the largest possible product
  ``kappa(0)^2`` (float32 resolution): bound ``-ln(u v / kappa(0)^2) >= c(d_i) + c(d_j) > 24 ln 2`` with ``c`` from
  :func:`_axis_cost` and ``d`` the distance from the pixel's value to the tile's bins (sigmoid derivative, h = 0.5:
  ``d_i + d_j > 9.7`` bins; Gaussian: ``d_i^2 + d_j^2 > 2.9^2``). Every density of a skipped tile is then below
  ``2^-24`` of the largest possible density (a box sum of such products), and so are its terms (KL, cross-entropy
  with epsilon, Hellinger, entropy; see :class:`_Term`) and their derivatives. Pixels are binned to unit cells of
  ``(x, x~)`` (values beyond reach clipped to the grid's edge cells, which only makes tiles more active) and the
  distance is taken from the nearest point of the cell. A NaN anywhere marks every tile active (the loss stays NaN).

  ``fields``: ``(x, x_neighbour)`` pairs of (B, C, H, W). Returns (C, chunks, blocks) booleans.
  """
  bins, ci = kde.bins, kde.chunk
  limit = _SKIP_LOG2 * math.log(2.0)
  # Largest distance along one axis still within the limit (the other axis at distance 0, cost c(0)).
  c0 = float(_axis_cost(np.float32(0.0), kde))
  dmax = kde.bandwidth * ((limit - 2 * c0) if kde.kernel == "sigmoid" else math.sqrt(2.0 * limit))
  margin = int(math.ceil(dmax)) + 2
  lo, n = -margin, bins + 2 * margin  # cells [lo, lo + n)
  b, c = fields[0][0].shape[:2]

  def cells(a):  # (B, C, H, W) -> (B, C, H*W) int32 cell indices in [0, n)
    return (jnp.clip(jnp.floor(a), lo, lo + n - 1) - lo).astype(jnp.int32).reshape(b, c, -1)

  occ = jnp.zeros((b, c, n * n), jnp.bool_)
  bad = jnp.zeros((), jnp.bool_)
  scatter = jax.vmap(jax.vmap(lambda o, i: o.at[i].set(True)))
  for x, xn in fields:
    occ = scatter(occ, cells(x) * n + cells(xn))
    bad = bad | jnp.any(jnp.isnan(x)) | jnp.any(jnp.isnan(xn))
  occ = jnp.any(occ, axis=0).reshape(c, n, n)  # (C, x cell, x~ cell)
  centre = np.arange(lo, lo + n, dtype=np.float32)  # cell [a, a + 1)

  def cost(first, last):  # (n, tiles): bound of the cost from each cell to each bin range [first, last]
    first, last = np.asarray(first, np.float32), np.asarray(last, np.float32)
    d = np.maximum(0.0, np.maximum(first[None] - centre[:, None] - 1.0, centre[:, None] - last[None]))
    return np.asarray(_axis_cost(d.astype(np.float32), kde), np.float32)

  chunk_first = np.arange(0, bins, ci, dtype=np.float32)
  ci_cost = cost(chunk_first, chunk_first + ci - 1)  # (n, chunks)
  bj_cost = cost([j0 for j0, _ in blocks], [j1 - 1 for _, j1 in blocks])  # (n, blocks)
  # Cheapest neighbour-axis cost per (channel, x cell, block) over the occupied cells, then add the x-axis cost.
  inf = np.float32(np.inf)
  best_j = jnp.min(jnp.where(occ[..., None], bj_cost[None, None], inf), axis=2)  # (C, n, blocks)
  total = jnp.min(best_j[:, :, None, :] + ci_cost[None, :, :, None], axis=1)  # (C, chunks, blocks)
  return (total <= np.float32(limit)) | bad


def _pass(fields, ct, *, term: _Term, kde: _KDE, want_value: bool, want_grads: tuple[bool, ...]):
  """:func:`_slab_pass` over (B, C, H, W) fields: vectorised over the batch (which may be sharded), a sequential
  ``lax.map`` over channels. ``ct``: (rows, B, C, H, W) or ``None``; values come back as (rows, B, C, H, W), with
  ``rows = len(windows)`` for a ``per_window`` term, else 1 (the sum over the windows)."""
  rows = _rows(term, kde)
  b, c, h, w = fields[0][0].shape
  if ct is None:
    ct = jnp.zeros((rows, b, c, h, w), jnp.float32)
  blocks = tuple(_j_blocks(kde.bins, b * h * w, kde.chunk))
  slab = functools.partial(_slab_pass, term=term, kde=kde, blocks=blocks, want_value=want_value,
                           want_grads=want_grads)
  if term.skippable and math.isfinite(_SKIP_LOG2):
    active = _active_tiles(fields, kde, blocks)  # (C, chunks, blocks), shared by the batch
  else:  # every tile; still one lax.cond per tile (see _slab_pass)
    active = jnp.ones((c, kde.bins // kde.chunk, len(blocks)), jnp.bool_)

  def per_channel(args):  # leaves (B, H, W); the tile table is not batched (lax.cond stays a branch)
    flds, cts, act = args
    return jax.vmap(slab, in_axes=(0, 0, None))(flds, cts, act)

  to_c = lambda a: jnp.moveaxis(a, 1, 0)  # (B, C, ...) -> (C, B, ...)
  flds = jax.tree.map(to_c, fields)
  cts = jnp.transpose(ct, (2, 1, 0, 3, 4))  # (C, B, rows, H, W)
  value, grads = jax.lax.map(per_channel, (flds, cts, active))
  if want_value:
    value = jnp.transpose(value, (2, 1, 0, 3, 4))  # (C, B, rows, H, W) -> (rows, B, C, H, W)
  grads = tuple(None if g is None else tuple(to_c(a) for a in g) for g in grads)
  return value, grads


def _rows(term: _Term, kde: _KDE) -> int:
  """Leading size of the bin sums of ``term``: one per window, or 1 (their sum)."""
  return len(kde.windows) if term.per_window else 1


def _window_mean(sums: jax.Array, kde: _KDE, axis: tuple[int, ...] | None = None) -> jax.Array:
  """Mean over ``axis`` (default all; must include the leading one) of bin sums whose leading axis is per window
  or already their sum: the mean over the windows and the other reduced axes."""
  axes = tuple(range(sums.ndim)) if axis is None else axis
  return jnp.sum(sums, axis=axes) / (math.prod(sums.shape[a] for a in axes if a != 0) * len(kde.windows))


def _zeros_like_fields(fields):
  return tuple((jnp.zeros(x.shape, x.dtype), jnp.zeros(xn.shape, xn.dtype)) for x, xn in fields)


def _perturbed(fields):
  """Values and per-field 'is differentiated' flags of symbolic-zero custom-VJP primals."""
  values = tuple((x.value, xn.value) for x, xn in fields)
  return values, tuple(bool(x.perturbed or xn.perturbed) for x, xn in fields)


def _point_roots(z: jax.Array, kde: _KDE) -> tuple[jax.Array, jax.Array]:
  """``sqrt(kappa((g - z)/h))`` for every bin ``g`` (bins last: (B, H, W) -> (B, H, W, L)) and its derivative with
  respect to ``z`` (0 where the kernel is exactly 0)."""
  k, dk = _kernel_and_derivative(z.reshape((-1,) + z.shape[-2:]), kde)  # (F, H, W) -> (F, L, H, W)
  k, dk = (jnp.moveaxis(a, 1, -1).reshape(z.shape + (kde.bins,)) for a in (k, dk))
  r = jnp.sqrt(k)
  return r, jnp.where(k > 0, dk / (2.0 * jnp.where(k > 0, r, 1.0)), 0.0)


def _point_moments(fields, kde: _KDE) -> tuple[jax.Array, ...]:
  """The six per-pixel sums over the bins of :func:`_hellinger_point_window` (``A, B, C, D, E, F``)."""
  (x, xn), (xt, xnt) = fields
  a, b, at, bt = (_point_roots(z, kde)[0] for z in (x, xn, xt, xnt))
  da, db = at - a, bt - b
  return tuple(jnp.sum(v, axis=-1) for v in (da * da, bt * bt, a * a, db * db, a * da, bt * db))


def _point_value(m, kde: _KDE) -> jax.Array:
  a_, b_, c_, d_, e_, f_ = m
  return jnp.maximum(a_ * b_ + c_ * d_ + 2.0 * e_ * f_, 0.0) * jnp.float32(1.0 / (0.5 * kde.bandwidth))


def _per_channel(fn, fields, *rest):
  """``fn(fields, *rest)`` on one channel at a time (``lax.map`` over C of (B, C, H, W) leaves; the batch stays
  vectorised, so a batch sharded over devices stays data-parallel): the per-bin (B, H, W, L) arrays of one channel
  only are live at once (XLA temp 43 MiB instead of 128 MiB at (2, 3, 128, 128, 32))."""
  to_c = lambda a: jnp.moveaxis(a, 1, 0)
  out = jax.lax.map(lambda args: fn(*args), (jax.tree.map(to_c, fields),) + tuple(jax.tree.map(to_c, r) for r in rest))
  return jax.tree.map(to_c, out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _hellinger_point_window(fields, kde: _KDE) -> jax.Array:
  """The Hellinger bin sum of the 1x1 window, ``S_1(p) = sum_{i,j} (sqrt P_ij - sqrt Q_ij)^2``, in O(L) per pixel:
  (B, C, H, W).

  With a 1x1 window the densities are outer products, ``P_ij = s a'_i^2 b'_j^2`` (target) and ``Q_ij = s a_i^2 b_j^2``
  (prediction), ``a = sqrt(kappa_i(x))``, ``b = sqrt(kappa_j(x~))``, ``s`` the window's scale. Writing ``a'_i b'_j -
  a_i b_j = (a'_i - a_i) b'_j + a_i (b'_j - b_j)``, the ``L^2`` sum is ``s [A B + C D + 2 E F]`` with ``A = sum
  (a' - a)^2``, ``B = sum b'^2``, ``C = sum a^2``, ``D = sum (b' - b)^2``, ``E = sum a (a' - a)``, ``F = sum b' (b' -
  b)``: the same value up to float rounding (every term is built from the differences, so equal inputs give exactly
  0 and nearly equal ones keep their relative accuracy), clipped at 0 against rounding. The gradient is written out
  (custom VJP; only the inputs and the six sums are kept, one channel at a time): with the derivative of
  ``sqrt(kappa)`` taken as 0 where the kernel is exactly 0, it is the gradient of :func:`_term` ``('hellinger')``
  (0 wherever ``P`` or ``Q`` is exactly 0).
  """
  return _point_value(_per_channel(lambda f: _point_moments(f, kde), fields), kde)


def _hellinger_point_fwd(fields, kde):
  m = _per_channel(lambda f: _point_moments(f, kde), fields)
  return _point_value(m, kde), (fields, m)


def _point_grads(fields, m, ct, kde: _KDE):
  a_, b_, c_, d_, e_, f_ = (v[..., None] for v in m)
  (x, xn), (xt, xnt) = fields
  (a, ga), (b, gb), (at, gat), (bt, gbt) = (_point_roots(z, kde) for z in (x, xn, xt, xnt))
  da, db = at - a, bt - b
  # halved derivatives of A B + C D + 2 E F with respect to a, b, a', b' (the 2 is in ct)
  dsa = -da * b_ + a * d_ + (at - 2.0 * a) * f_
  dsb = -c_ * db - e_ * bt
  dsat = da * b_ + a * f_
  dsbt = bt * a_ + c_ * db + e_ * (2.0 * bt - b)
  g = [ct * jnp.sum(d * gz, axis=-1) for d, gz in ((dsa, ga), (dsb, gb), (dsat, gat), (dsbt, gbt))]
  return ((g[0], g[1]), (g[2], g[3]))


def _hellinger_point_bwd(kde, res, ct):
  fields, m = res
  live = (m[0] * m[1] + m[2] * m[3] + 2.0 * m[4] * m[5]) > 0
  ct = jnp.where(live, ct, 0.0) * jnp.float32(2.0 / (0.5 * kde.bandwidth))  # the factor 2 of every derivative
  return (_per_channel(lambda f, mm, c: _point_grads(f, mm, c, kde), fields, m, ct),)


_hellinger_point_window.defvjp(_hellinger_point_fwd, _hellinger_point_bwd)


def _hellinger_sums(fields, kde: _KDE) -> jax.Array:
  """Per-window Hellinger bin sums ``(windows, B, C, H, W)`` (rows in the order of ``kde.windows``): the 1x1 windows
  in closed form (:func:`_hellinger_point_window`, about a quarter of the cost of the tiled pass at the official
  windows), the others by :func:`_bin_sums`."""
  term = _term("hellinger", None)
  others = tuple(k for k in kde.windows if k != 1)
  rest = _bin_sums(fields, term, kde._replace(windows=others)) if others else None
  point = _hellinger_point_window(fields, kde) if 1 in kde.windows else None
  rows, n = [], 0
  for k in kde.windows:
    if k == 1:
      rows.append(point)
    else:
      rows.append(rest[n])
      n += 1
  return jnp.stack(rows)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _bin_sums(fields, term: _Term, kde: _KDE) -> jax.Array:
  """Per-pixel bin sums ``(rows, B, C, H, W)`` of ``term`` over the densities of ``fields`` (rows: one per window
  for a ``per_window`` term, else one row, the sum over the windows; see :func:`_rows`).

  The backward pass recomputes the densities and applies the incoming per-pixel cotangent (two passes in all).
  """
  return _pass(fields, None, term=term, kde=kde, want_value=True, want_grads=(False,) * len(fields))[0]


def _bin_sums_fwd(fields, term, kde):
  values, flags = _perturbed(fields)
  return _bin_sums(values, term, kde), (values, flags)


def _bin_sums_bwd(term, kde, res, ct):
  values, flags = res
  _, grads = _pass(values, ct, term=term, kde=kde, want_value=False, want_grads=flags)
  zeros = _zeros_like_fields(values)
  return (tuple(g if g is not None else z for g, z in zip(grads, zeros)),)


_bin_sums.defvjp(_bin_sums_fwd, _bin_sums_bwd, symbolic_zeros=True)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _mean_bin_sums(fields, term: _Term, kde: _KDE) -> jax.Array:
  """The mean of the bin sums over (windows, B, C, H, W) (a scalar) whose gradient is computed in the same single
  pass as its value."""
  return _window_mean(_bin_sums(fields, term, kde), kde)


def _mean_bin_sums_fwd(fields, term, kde):
  values, flags = _perturbed(fields)
  shape = (_rows(term, kde),) + values[0][0].shape
  ct = jnp.full(shape, 1.0 / (math.prod(shape[1:]) * len(kde.windows)), jnp.float32)
  sums, grads = _pass(values, ct if any(flags) else None, term=term, kde=kde, want_value=True, want_grads=flags)
  return _window_mean(sums, kde), (grads, _zeros_like_fields(values))


def _mean_bin_sums_bwd(term, kde, res, ct):
  grads, zeros = res
  return (tuple(z if g is None else (ct * g[0], ct * g[1]) for g, z in zip(grads, zeros)),)


_mean_bin_sums.defvjp(_mean_bin_sums_fwd, _mean_bin_sums_bwd, symbolic_zeros=True)


def _kde_options(bins, bandwidth, kernel, windows, chunk_size, pixels: int | None = None) -> _KDE:
  """Static KDE options; ``chunk_size=None``: :func:`_default_chunk` for ``pixels`` (batch x H x W) values per bin,
  1 when ``pixels`` is not given."""
  if kernel not in _KERNELS:
    raise ValueError(f"unknown kernel {kernel!r}; expected 'sigmoid' or 'gaussian'")
  if chunk_size is None:
    chunk = 1 if pixels is None else _default_chunk(bins, pixels)
  else:
    chunk = int(min(max(int(chunk_size), 1), bins))
  while bins % chunk:  # a divisor of L (no remainder chunk to compile)
    chunk -= 1
  return _KDE(int(bins), float(bandwidth), kernel, _check_windows(windows), chunk)


# ----------------------------------------------------------------------------------------------------------------
# Public losses and metric.


def _resolve_weights(weights, kind: str, key):
  if weights is None:
    weights = "mean" if kind == "cross" else "normal"
  if isinstance(weights, str):
    if weights == "mean":
      return None
    if key is None:
      raise ValueError(f"weights={weights!r} draws random neighbour weights and needs key=")
    return neighbour_weights(key, weights)
  return jnp.asarray(weights, jnp.float32)


def smoothness_loss(pred: jax.Array, target: jax.Array) -> jax.Array:
  """``mean |G * pred - G * target|``, G the 3x3 sigma-1.5 Gaussian, per channel, zero padding 1 (``smooth_loss``).

  As in the official code this acts on the raw (unclamped, unscaled) NHWC inputs.
  """
  g = gaussian_window(3, 1.5)
  d = jnp.moveaxis(jnp.asarray(pred, jnp.float32) - jnp.asarray(target, jnp.float32), -1, 1)
  h, w = d.shape[2], d.shape[3]
  dp = jnp.pad(d, ((0, 0), (0, 0), (1, 1), (1, 1)))
  # The filter is linear, so G*pred - G*target = G*(pred - target) (equal up to float rounding).
  out = sum(jnp.float32(g[dy, dx]) * dp[:, :, dy:dy + h, dx:dx + w] for dy in range(3) for dx in range(3))
  return jnp.mean(jnp.abs(out))


def spatial_entropy_loss(pred: jax.Array, target: jax.Array, *, key: jax.Array | None = None, kind: Kind = "kl",
                         bins: int = 32, bandwidth: float = 0.5, kernel: KernelName = "sigmoid",
                         windows: Sequence[int] = (1, 3, 5), weights: Weights = None,
                         neighbour_norm: NeighbourNorm = "official", chunk_size: int | None = None,
                         clamp: Clamp = True, eps: float | None = None,
                         cross_order: Literal["official", "target_first"] = "official") -> jax.Array:
  """Spatial-entropy loss between NHWC batches ``pred`` and ``target`` (values in [0, 1]); a scalar.

  Args:
    pred, target: ``(B, H, W, C)`` arrays, clamped to [0, 1] (if ``clamp``) and scaled by ``bins - 1``.
    key: PRNG key for random neighbour weights (one draw per call, shared by prediction and target).
    kind: ``'kl'`` = ``KL(target || pred)``, ``sum_q P ln((P+eps)/(Q+eps))`` with P the target density
      (``r_entropy_loss``, paper Eq. 15; ``eps`` default 1e-10); ``'cross'`` = ``-sum_q P ln(Q+eps)`` with, for
      ``cross_order='official'``, P = prediction and Q = target density (``c_entropy_loss``; ``eps`` default 0);
      ``'hellinger'`` = ``(1/sqrt 2) sqrt(sum_q (sqrt P - sqrt Q)^2)`` (``hellinger_loss``, released config);
      ``'hellinger_smooth'`` = Hellinger + :func:`smoothness_loss`. Each is averaged over
      ``(windows, C, H, W)`` and the batch.
    bins: number of bins per axis ``L`` (released config 32).
    bandwidth: KDE bandwidth ``h`` (official 0.5).
    kernel: ``'sigmoid'`` (derivative of the logistic, official) or ``'gaussian'``.
    windows: odd box-window sizes; official ``(1, 3, 5)``, paper ``(11,)``.
    weights: ``None`` = official per kind (``'normal'`` for KL/Hellinger, ``'mean'`` for cross), ``'normal'``,
      ``'shuffled_gaussian'`` (paper), ``'mean'`` (no weights) or an explicit 3x3 array.
    neighbour_norm: ``'official'`` (divide by ``C * sum w``) or ``'mean'`` (per-channel weighted mean).
    chunk_size: pixel-value bins per scan step (each step = ``chunk_size * bins`` bin pairs); ``None`` chooses it
      with the neighbour-bin blocks so that a tile holds about ``2^17`` values (2 at batch 2 of 128x128, 1 at batch
      8; :func:`_default_chunk`); otherwise the largest divisor of ``bins`` not above it. Affects memory and speed
      only (values up to float rounding).
    clamp: the input clamp (:func:`clamp01`): ``True``/``'official'`` (zero gradient outside [0, 1]),
      ``'straight_through'`` (clamped value, identity gradient: not in the official code, a working recipe) or
      ``False``/``'none'``.
    eps: divergence epsilon (see ``kind``); ignored by Hellinger.
    cross_order: ``'official'`` or ``'target_first'`` (``-sum P_target ln Q_pred``).
  """
  pred = jnp.asarray(pred, jnp.float32)
  target = jnp.asarray(target, jnp.float32)
  if pred.shape != target.shape:
    raise ValueError(f"pred and target shapes differ: {pred.shape} vs {target.shape}")
  windows = _check_windows(windows)
  if bins < 2:
    raise ValueError(f"bins must be >= 2, got {bins}")
  if kind not in ("kl", "cross", "hellinger", "hellinger_smooth"):
    raise ValueError(f"unknown kind {kind!r}; expected 'kl', 'cross', 'hellinger' or 'hellinger_smooth'")
  if cross_order not in ("official", "target_first"):
    raise ValueError(f"unknown cross_order {cross_order!r}; expected 'official' or 'target_first'")
  w = _resolve_weights(weights, kind, key)
  opts = dict(bins=bins, norm=neighbour_norm, clamp=_clamp_mode(clamp))
  fields = (_prepare(pred, w, **opts), _prepare(target, w, **opts))
  kde = _kde_options(bins, bandwidth, kernel, windows, chunk_size, pixels=math.prod(pred.shape[:3]))
  if kind == "kl":
    return _mean_bin_sums(fields, _term("kl", float(_KL_EPS if eps is None else eps)), kde)
  if kind == "cross":
    return _mean_bin_sums(fields, _term("cross", float(eps) if eps else None, cross_order), kde)
  sums = _hellinger_sums(fields, kde)
  loss = jnp.float32(1.0 / math.sqrt(2.0)) * jnp.mean(safe_sqrt(sums))
  if kind == "hellinger_smooth":
    loss = loss + smoothness_loss(pred, target)
  return loss


def spatial_entropy(image: jax.Array, *, key: jax.Array | None = None, weights: Weights = "mean", bins: int = 32,
                    bandwidth: float = 0.5, kernel: KernelName = "sigmoid", windows: Sequence[int] = (1, 3, 5),
                    neighbour_norm: NeighbourNorm = "official", chunk_size: int | None = None, clamp: Clamp = True,
                    eps: float = _KL_EPS) -> jax.Array:
  """Spatial entropy ``-sum_q p ln(p + eps)`` of an image (paper Eq. 3; official ``spatial_entropy``), as a metric.

  ``image``: ``(H, W, C)`` -> scalar, or ``(B, H, W, C)`` -> ``(B,)`` (one value per image; the official function
  additionally averages over the batch). The bin sum is averaged over ``(windows, C, H, W)``. Defaults to no
  neighbour weights (``weights='mean'`` or ``None``) so that the metric is deterministic; other options as in
  :func:`spatial_entropy_loss`.
  """
  image = jnp.asarray(image, jnp.float32)
  single = image.ndim == 3
  if single:
    image = image[None]
  windows = _check_windows(windows)
  w = _resolve_weights("mean" if weights is None else weights, "metric", key)
  fields = (_prepare(image, w, bins=bins, norm=neighbour_norm, clamp=clamp),)
  kde = _kde_options(bins, bandwidth, kernel, windows, chunk_size, pixels=math.prod(image.shape[:3]))
  ent = _window_mean(_bin_sums(fields, _term("entropy", float(eps)), kde), kde, axis=(0, 2, 3, 4))
  return ent[0] if single else ent


def joint_histogram(image: jax.Array, *, weights=None, bins: int = 32, bandwidth: float = 0.5,
                    kernel: KernelName = "sigmoid", windows: Sequence[int] = (1, 3, 5),
                    neighbour_norm: NeighbourNorm = "official", clamp: Clamp = True) -> jax.Array:
  """The image-wide KDE joint histogram of (pixel value, neighbour value): the loss's local densities, averaged.

  The mean of :func:`kde_density` over channels, pixels and windows (the averaging the losses apply to their bin
  sums), laid out as an ``(L, L)`` map: row ``i`` is the pixel-value bin, column ``j`` the neighbour bin (the official
  bin pair ``q = i + L*j``). With ``neighbour_norm='mean'`` a smooth image lies on the diagonal ``i = j`` and noise
  spreads it; the official normalisation divides the neighbour sum by ``C * sum(w)``, so for ``C`` channels the mass
  lies along ``j ~ i / C``; a dark image piles up in the first bins. Computed without the dense density: the
  zero-padded box sum is its own adjoint, so averaging a window's box sums equals weighting each pixel's kernel
  product by how many windows cover it (an ``einsum`` over channels and pixels). Not normalised: entries are the
  official densities (their sum is below 1 near the borders and for values between bins).

  Args:
    image: ``(H, W, C)`` or ``(B, H, W, C)`` in [0, 1] (clamped if ``clamp``).
    weights: an explicit 3x3 neighbour weight array, or None (all ones), as :func:`kde_density`.
    bins, bandwidth, kernel, windows, neighbour_norm, clamp: as :func:`spatial_entropy_loss`.

  Returns:
    ``(L, L)`` for one image, ``(B, L, L)`` for a batch (float32).
  """
  image = jnp.asarray(image, jnp.float32)
  single = image.ndim == 3
  if single:
    image = image[None]
  windows = _check_windows(windows)
  x, xn = _prepare(image, weights, bins=bins, norm=neighbour_norm, clamp=clamp)
  u = _bin_kernels(x, bins=bins, bandwidth=bandwidth, kernel=kernel)  # (B, C, L, H, W)
  v = _bin_kernels(xn, bins=bins, bandwidth=bandwidth, kernel=kernel)
  c, h, w = x.shape[1:]
  ones = jnp.ones((h, w), jnp.float32)
  cover = sum(_window_scale(k, bandwidth) * _box(ones, k) for k in windows) / jnp.float32(len(windows) * c * h * w)
  hist = jnp.einsum("bcihw,bcjhw,hw->bij", u, v, cover, precision=jax.lax.Precision.HIGHEST)
  return hist[0] if single else hist
