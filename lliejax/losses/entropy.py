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

Memory and speed: the ``(B, L*L, C, H, W)`` density is never materialised. The bin grid is processed in chunks of
``chunk_size`` pixel-value bins ``i`` (``chunk_size * L`` bin pairs) inside a ``lax.scan`` whose body is
rematerialised (``jax.checkpoint``), so forward *and* backward hold one chunk at a time. Per chunk the kernel
products are one outer product of precomputed per-bin kernels (``kappa_i(x)`` x ``kappa_j(x~)``, i.e.
``L`` kernel evaluations per pixel and bin axis instead of ``L^2``), box sums are separable 1-D
``lax.reduce_window`` sums, and the divergence is summed over the chunk's bins into per-pixel accumulators
``(windows, B, C, H, W)``; Hellinger takes its square root only after the last chunk. Results do not depend on the
chunk size beyond float rounding.

Numerics (documented deviations that do not change values):

* Hellinger: ``sqrt`` has an infinite derivative at 0; the densities of far bins underflow to exactly 0 in float32
  and identical inputs give a zero bin sum, so the official code produces NaN gradients. Here both square roots use
  :func:`safe_sqrt`: the exact ``sqrt`` value with derivative ``0`` at ``x == 0`` (a subgradient).
* The sigmoid-derivative kernel is evaluated exactly as PyTorch (``s = 1/(1+exp(-v))``, ``s*(1-s)``) but has a
  custom JVP ``kappa * (1 - 2s)`` so that ``exp`` overflow far from the bin (large neighbour values from random
  weights) cannot produce ``inf/inf``.
* KL uses ``P * ln((P+eps)/(Q+eps))`` (one log instead of two; mathematically identical, more accurate when
  ``P ~ Q``).
* Cross-entropy keeps the official missing epsilon (``eps=None`` -> 0): ``0 * ln 0`` gives NaN exactly where the
  official code does (far bins that underflow, e.g. dark images at L = 32); pass ``eps=1e-10`` to avoid it.
"""
from __future__ import annotations

import math
from typing import Literal, Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np

Kind = Literal["kl", "cross", "hellinger", "hellinger_smooth"]
KernelName = Literal["sigmoid", "gaussian"]
NeighbourNorm = Literal["official", "mean"]
Clamp = Union[bool, Literal["official", "straight_through", "none"]]
CLAMP_MODES = ("official", "straight_through", "none")
Weights = Union[None, str, jax.Array, np.ndarray]

# Target elements of one chunk's kernel-product array (per image): 16 MiB in float32. The compiled temporary memory
# of forward + backward is roughly 10-20 such arrays. (Speed is nearly independent of the chunk size.)
_CHUNK_ELEMENTS = 1 << 22
_KL_EPS = 1e-10


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


def _box(x: jax.Array, k: int) -> jax.Array:
  """Zero-padded 'same' k x k box sum over the last two axes (separable 1-D reduce_window sums)."""
  if k == 1:
    return x
  n = x.ndim
  r = k // 2
  for axis in (n - 1, n - 2):
    win = [1] * n
    win[axis] = k
    pad = [(0, 0)] * n
    pad[axis] = (r, r)
    x = jax.lax.reduce_window(x, np.array(0, x.dtype), jax.lax.add, tuple(win), (1,) * n, pad)
  return x


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


def _chunked_bin_sums(fields, term_fn, *, bins: int, bandwidth: float, kernel: str, windows: tuple[int, ...],
                      chunk_size: int | None) -> jax.Array:
  """Per-pixel sums over all ``L*L`` bins of ``term_fn(densities)`` for every window.

  ``fields``: tuple of ``(x, x_neighbour)`` NCHW pairs (one per image); ``term_fn`` maps the tuple of chunk densities
  (one per image, each ``(B, C, ci, L, H, W)``) to the elementwise term. Returns ``(len(windows), B, C, H, W)``.
  Only one chunk of ``chunk_size`` pixel-value bins is live at a time, in forward and (thanks to ``jax.checkpoint``)
  in backward.
  """
  b, c, h, w = fields[0][0].shape
  if chunk_size is None:
    # The largest divisor of L within the budget (no remainder chunk to compile).
    cap = max(1, _CHUNK_ELEMENTS // max(1, b * c * h * w * bins))
    chunk_size = max(d for d in range(1, bins + 1) if bins % d == 0 and d <= cap)
  chunk_size = int(min(max(int(chunk_size), 1), bins))
  us = [_bin_kernels(x, bins=bins, bandwidth=bandwidth, kernel=kernel) for x, _ in fields]
  vs = [_bin_kernels(xn, bins=bins, bandwidth=bandwidth, kernel=kernel) for _, xn in fields]

  @jax.checkpoint
  def chunk_sums(u_chunks, v_all):
    prods = [u[:, :, :, None] * v[:, :, None, :] for u, v in zip(u_chunks, v_all)]  # (B, C, ci, L, H, W)
    out = []
    for k in windows:
      scale = _window_scale(k, bandwidth)
      dens = tuple(scale * _box(p, k) for p in prods)
      out.append(jnp.sum(term_fn(dens), axis=(2, 3)))
    return jnp.stack(out)

  n_full, rem = divmod(bins, chunk_size)
  total = jnp.zeros((len(windows), b, c, h, w), jnp.float32)
  if n_full == 1 and rem == 0:
    return chunk_sums(us, vs)
  if n_full:
    def split(u):  # (B, C, L, H, W) -> (n_full, B, C, ci, H, W)
      u = u[:, :, :n_full * chunk_size].reshape(b, c, n_full, chunk_size, h, w)
      return jnp.moveaxis(u, 2, 0)

    def body(acc, u_chunks):
      return acc + chunk_sums(u_chunks, vs), None

    total, _ = jax.lax.scan(body, total, [split(u) for u in us])
  if rem:
    total = total + chunk_sums([u[:, :, n_full * chunk_size:] for u in us], vs)
  return total


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
    chunk_size: pixel-value bins per chunk (each chunk = ``chunk_size * bins`` bin pairs); ``None`` picks the largest
      divisor of ``bins`` keeping a chunk's product array within 16 MiB (at least one bin). Affects memory and speed
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
  kde_opts = dict(bins=bins, bandwidth=bandwidth, kernel=kernel, windows=windows, chunk_size=chunk_size)

  if kind == "kl":
    e = jnp.float32(_KL_EPS if eps is None else eps)

    def term(d):
      q, p = d  # q: prediction, p: target density
      return p * jnp.log((p + e) / (q + e))

    return jnp.mean(_chunked_bin_sums(fields, term, **kde_opts))
  if kind == "cross":
    e = None if not eps else jnp.float32(eps)

    def term(d):
      p, q = d if cross_order == "official" else d[::-1]
      return -p * jnp.log(q if e is None else q + e)

    return jnp.mean(_chunked_bin_sums(fields, term, **kde_opts))

  def term(d):
    return jnp.square(safe_sqrt(d[1]) - safe_sqrt(d[0]))

  sums = _chunked_bin_sums(fields, term, **kde_opts)
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
  e = jnp.float32(eps)
  sums = _chunked_bin_sums(fields, lambda d: -d[0] * jnp.log(d[0] + e), bins=bins, bandwidth=bandwidth,
                           kernel=kernel, windows=windows, chunk_size=chunk_size)
  ent = jnp.mean(sums, axis=(0, 2, 3, 4))
  return ent[0] if single else ent
