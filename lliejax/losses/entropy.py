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
Per-pixel bin sums come from :func:`_slab_pass`, a ``lax.scan`` over the pixel-value bins ``i`` (``chunk_size`` per
step, default 1) and, inside a step, blocks of neighbour bins ``j``; it is vectorised over the batch (so a batch
sharded over devices stays data-parallel) and mapped over channels. Kernel products are outer products of per-bin
kernels (``L`` kernel evaluations per pixel and axis instead of ``L^2``) and box windows are separable
``reduce_window`` sums. The gradient is hand-written (``jax.custom_vjp``): the zero-padded box is its own adjoint,
so the cotangent of every density is box-summed back and contracted with the kernels, again one bin chunk at a time.
KL and cross-entropy (a plain mean of the bin sums) compute value and gradient in one pass; Hellinger (a square root
per pixel) needs the bin sums first, so its gradient takes a second pass. The target's gradient is computed only when
something differentiates the target (``symbolic_zeros``). Nothing is skipped: every bin pair is evaluated, so values
equal the dense computation up to float32 summation order (tests: dense reference to 2e-5, official check values).

Numerics (documented deviations that do not change values):

* Hellinger: ``sqrt`` has an infinite derivative at 0; the densities of far bins underflow to exactly 0 in float32
  and identical inputs give a zero bin sum, so the official code produces NaN gradients. Here both square roots use
  :func:`safe_sqrt`: the exact ``sqrt`` value with derivative ``0`` at ``x == 0`` (a subgradient).
* The sigmoid-derivative kernel is evaluated exactly as PyTorch (``s = 1/(1+exp(-v))``, ``s*(1-s)``) but has a
  custom JVP ``kappa * (1 - 2s)`` so that ``exp`` overflow far from the bin (large neighbour values from random
  weights) cannot produce ``inf/inf``.
* KL uses ``P * ln((P+eps)/(Q+eps))`` (one log instead of two; mathematically identical, more accurate when
  ``P ~ Q``), with the log set to exactly 0 where ``P == Q`` (the division can round otherwise).
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
# Neighbour bins j per block inside one scan step: keeps the per-step arrays (batch, block, H, W) cache-sized.
# Measured at (2, 3, 128, 128, 32) on this 2-core CPU (process CPU time): 8 is as fast as 16 or 32 with the gradient
# and 10-40 % faster for a value-only pass.
_J_BLOCK = 8


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


# ----------------------------------------------------------------------------------------------------------------
# The bin-sum engine: per-pixel sums over all L*L bins of an elementwise divergence term, with a hand-written
# gradient (custom VJP) so that neither pass stores anything of size L^2.


class _Term(NamedTuple):
  """An elementwise divergence term of the densities of one or two images and its partial derivatives.

  ``value(d)`` and ``grads(d)`` take the tuple ``d`` of densities (first the prediction, then the target); ``grads``
  returns one derivative per density.
  """
  value: Callable
  grads: Callable


@functools.lru_cache(maxsize=None)
def _term(kind: str, eps: float | None, cross_order: str = "official") -> _Term:
  """The term of ``kind`` (cached, so that equal options give the same object: a static custom-VJP argument)."""
  if kind == "kl":  # P ln((P+e)/(Q+e)), Q prediction, P target; the log is exactly 0 where P == Q
    e = np.float32(eps)

    def log_ratio(d):
      return jnp.where(d[1] == d[0], 0.0, jnp.log((d[1] + e) / (d[0] + e)))

    return _Term(lambda d: d[1] * log_ratio(d), lambda d: (-d[1] / (d[0] + e), log_ratio(d) + d[1] / (d[1] + e)))
  if kind == "cross":  # official: -P_pred ln(Q_target + e); target_first: -P_target ln(Q_pred + e)
    e = np.float32(eps or 0.0)
    if cross_order == "official":
      return _Term(lambda d: -d[0] * jnp.log(d[1] + e), lambda d: (-jnp.log(d[1] + e), -d[0] / (d[1] + e)))
    return _Term(lambda d: -d[1] * jnp.log(d[0] + e), lambda d: (-d[1] / (d[0] + e), -jnp.log(d[0] + e)))
  if kind == "hellinger":  # (sqrt P - sqrt Q)^2, derivative 0 where a density is exactly 0 (safe_sqrt)
    def grads(d):
      rq, rp = jnp.sqrt(d[0]), jnp.sqrt(d[1])
      diff = rp - rq
      return (jnp.where(rq > 0, -diff / jnp.where(rq > 0, rq, 1.0), 0.0),
              jnp.where(rp > 0, diff / jnp.where(rp > 0, rp, 1.0), 0.0))
    return _Term(lambda d: jnp.square(jnp.sqrt(d[1]) - jnp.sqrt(d[0])), grads)
  if kind == "entropy":  # -p ln(p + e) of one image (the metric)
    e = np.float32(eps)
    return _Term(lambda d: -d[0] * jnp.log(d[0] + e), lambda d: (-jnp.log(d[0] + e) - d[0] / (d[0] + e),))
  raise ValueError(f"unknown term {kind!r}")


class _KDE(NamedTuple):
  """Static options of the KDE (hashable)."""
  bins: int
  bandwidth: float
  kernel: str
  windows: tuple[int, ...]
  chunk: int


def _kernel_and_derivative(x: jax.Array, kde: _KDE) -> tuple[jax.Array, jax.Array]:
  """``kappa((g - x)/h)`` and its derivative with respect to ``x`` for every bin ``g``: (F, H, W) -> 2 x (F, L, H, W)."""
  g = jnp.arange(kde.bins, dtype=jnp.float32)[:, None, None]
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


def _slab_pass(fields, ct, *, term: _Term, kde: _KDE, want_value: bool, want_grads: tuple[bool, ...]):
  """One image channel: per-window per-pixel bin sums and/or the gradient of ``sum_k sum_p ct_k(p) S_k(p)``.

  ``fields``: tuple of ``(x, x_neighbour)`` (H, W) pairs, prediction first; ``ct``: (windows, H, W) weights of the
  per-pixel sums ``S_k(p) = sum_{i,j} term(D_k(p, i, j))`` (ignored when no gradient is wanted). Returns
  ``(S or None, ((dx, dx_neighbour) or None per field))``.

  Scans over chunks of ``kde.chunk`` pixel-value bins ``i``; per chunk and per block of :data:`_J_BLOCK` neighbour
  bins ``j`` the kernel products ``u_i(p) v_j(p)``, their box sums, the term and, for the gradient,
  ``G = ct * dterm/dD`` box-summed back (the zero-padded box is its own adjoint) and contracted with ``v`` (for
  ``du_i``, a scan output) and ``u`` (for ``dv_j``, a scan carry). Live memory: a few ``(chunk, block, H, W)``
  arrays; nothing of size ``L^2`` is stored.
  """
  h, w = fields[0][0].shape
  bins, ci, windows = kde.bins, kde.chunk, kde.windows
  scales = [np.float32(1.0 / (0.5 * kde.bandwidth * k * k)) for k in windows]
  u, du, v, dv = [], [], [], []
  for x, xn in fields:
    for out, a in (((u, du), x), ((v, dv), xn)):
      k, dk = _kernel_and_derivative(a[None], kde)
      out[0].append(k[0])
      out[1].append(dk[0])
  u_chunks = [a.reshape(bins // ci, ci, h, w) for a in u]
  grad_idx = [f for f, g in enumerate(want_grads) if g]
  blocks = [(j0, min(j0 + _J_BLOCK, bins)) for j0 in range(0, bins, _J_BLOCK)]

  def body(carry, uc):
    value, gvs = carry  # gvs: per gradient field, a tuple of per-j-block accumulators
    totals = [None] * len(windows)
    gus = {f: None for f in grad_idx}
    new_gvs = [list(g) for g in gvs]
    for bi, (j0, j1) in enumerate(blocks):
      vb = [a[j0:j1] for a in v]
      prods = [a[:, None] * b[None] for a, b in zip(uc, vb)]  # (ci, lj, H, W)
      accs = {f: None for f in grad_idx}
      for n, (k, s) in enumerate(zip(windows, scales)):
        dens = tuple(s * _box(p, k) for p in prods)
        if want_value:
          t = _sum_leading(term.value(dens).reshape(-1, h, w))
          totals[n] = t if totals[n] is None else totals[n] + t
        if grad_idx:
          grads = term.grads(dens)
          for f in grad_idx:
            g = s * _box(ct[n] * grads[f], k)
            accs[f] = g if accs[f] is None else accs[f] + g
      for gi, f in enumerate(grad_idx):
        acc = accs[f]
        new_gvs[gi][bi] = new_gvs[gi][bi] + _sum_leading(acc * uc[f][:, None])
        gu = jnp.stack([_sum_leading(acc[c] * vb[f]) for c in range(ci)])
        gus[f] = gu if gus[f] is None else gus[f] + gu
    if want_value:
      value = value + jnp.stack(totals)
    return (value, tuple(tuple(g) for g in new_gvs)), tuple(gus[f] for f in grad_idx)

  init = (jnp.zeros((len(windows), h, w), jnp.float32) if want_value else jnp.zeros((), jnp.float32),
          tuple(tuple(jnp.zeros((j1 - j0, h, w), jnp.float32) for j0, j1 in blocks) for _ in grad_idx))
  if ci == bins:
    (value, gvs), gus = body(init, [a[0] for a in u_chunks])
    gus = tuple(g[None] for g in gus)
  else:
    (value, gvs), gus = jax.lax.scan(body, init, u_chunks)
  out_grads = [None] * len(fields)
  gvs = [jnp.concatenate(g) for g in gvs]
  for f, gv, gu in zip(grad_idx, gvs, gus):
    out_grads[f] = (_sum_leading(gu.reshape(bins, h, w) * du[f]), _sum_leading(gv * dv[f]))
  return (value if want_value else None), tuple(out_grads)


def _pass(fields, ct, *, term: _Term, kde: _KDE, want_value: bool, want_grads: tuple[bool, ...]):
  """:func:`_slab_pass` over (B, C, H, W) fields: vectorised over the batch (which may be sharded), a sequential
  ``lax.map`` over channels. ``ct``: (windows, B, C, H, W) or ``None``. Values come back as (windows, B, C, H, W)."""
  nw = len(kde.windows)
  b, c, h, w = fields[0][0].shape
  if ct is None:
    ct = jnp.zeros((nw, b, c, h, w), jnp.float32)
  slab = functools.partial(_slab_pass, term=term, kde=kde, want_value=want_value, want_grads=want_grads)

  def per_channel(args):  # leaves (B, H, W)
    flds, cts = args
    return jax.vmap(slab)(flds, cts)

  to_c = lambda a: jnp.moveaxis(a, 1, 0)  # (B, C, ...) -> (C, B, ...)
  flds = jax.tree.map(to_c, fields)
  cts = jnp.transpose(ct, (2, 1, 0, 3, 4))  # (C, B, windows, H, W)
  value, grads = jax.lax.map(per_channel, (flds, cts))
  if want_value:
    value = jnp.transpose(value, (2, 1, 0, 3, 4))  # (C, B, nw, H, W) -> (nw, B, C, H, W)
  grads = tuple(None if g is None else tuple(to_c(a) for a in g) for g in grads)
  return value, grads


def _zeros_like_fields(fields):
  return tuple((jnp.zeros(x.shape, x.dtype), jnp.zeros(xn.shape, xn.dtype)) for x, xn in fields)


def _perturbed(fields):
  """Values and per-field 'is differentiated' flags of symbolic-zero custom-VJP primals."""
  values = tuple((x.value, xn.value) for x, xn in fields)
  return values, tuple(bool(x.perturbed or xn.perturbed) for x, xn in fields)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _bin_sums(fields, term: _Term, kde: _KDE) -> jax.Array:
  """Per-window per-pixel bin sums ``(windows, B, C, H, W)`` of ``term`` over the densities of ``fields``.

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
  """``mean(_bin_sums(...))`` (a scalar) whose gradient is computed in the same single pass as its value."""
  return jnp.mean(_bin_sums(fields, term, kde))


def _mean_bin_sums_fwd(fields, term, kde):
  values, flags = _perturbed(fields)
  nw = len(kde.windows)
  shape = (nw,) + values[0][0].shape
  ct = jnp.full(shape, 1.0 / math.prod(shape), jnp.float32)
  sums, grads = _pass(values, ct if any(flags) else None, term=term, kde=kde, want_value=True, want_grads=flags)
  return jnp.mean(sums), (grads, _zeros_like_fields(values))


def _mean_bin_sums_bwd(term, kde, res, ct):
  grads, zeros = res
  return (tuple(z if g is None else (ct * g[0], ct * g[1]) for g, z in zip(grads, zeros)),)


_mean_bin_sums.defvjp(_mean_bin_sums_fwd, _mean_bin_sums_bwd, symbolic_zeros=True)


def _kde_options(bins, bandwidth, kernel, windows, chunk_size) -> _KDE:
  if kernel not in _KERNELS:
    raise ValueError(f"unknown kernel {kernel!r}; expected 'sigmoid' or 'gaussian'")
  chunk = 1 if chunk_size is None else int(min(max(int(chunk_size), 1), bins))
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
  kde = _kde_options(bins, bandwidth, kernel, windows, chunk_size)
  if kind == "kl":
    return _mean_bin_sums(fields, _term("kl", float(_KL_EPS if eps is None else eps)), kde)
  if kind == "cross":
    return _mean_bin_sums(fields, _term("cross", float(eps) if eps else None, cross_order), kde)
  sums = _bin_sums(fields, _term("hellinger", None), kde)
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
  sums = _bin_sums(fields, _term("entropy", float(eps)), _kde_options(bins, bandwidth, kernel, windows, chunk_size))
  ent = jnp.mean(sums, axis=(0, 2, 3, 4))
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
