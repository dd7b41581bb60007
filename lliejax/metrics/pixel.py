"""Pixel metrics (PSNR / SSIM) with the evaluation conventions of the reference code bases.

Two families of functions:

* numpy, float64, one image at a time (``to_uint8``, ``psnr``, ``ssim``, ``rgb_to_y``): for reporting
  numbers that must match a paper's own tooling (the evaluation scripts of the three official code bases);
* jax, float32, batched NHWC (``psnr_jax``, ``ssim_jax``): for use inside jitted training / validation
  steps, agreeing with the numpy versions to ~1e-4 (PSNR in dB, SSIM absolute).

Conventions
-----------

=====================  ==========================================================  =======================
aspect                 this module                                                 matches
=====================  ==========================================================  =======================
channel order          RGB, HWC (numpy) / NHWC (jax). PSNR and SSIM averaged       all three code bases
                       over channels are order-independent; only ``y_channel``     (BGR there, same value)
                       needs the order.
float -> uint8         ``to_uint8(rounding='round')``: clamp [0,1], x255,         Entropy-SDE / IR-SDE
                       round-half-to-even (``numpy.round``), computed in the       ``tensor2img``; ReDDiT
                       input's float dtype (float32 for network outputs).          ``tensor2img``
                       ``rounding='truncate'``: clamp, x255, ``astype(uint8)``.    AnlightenDiff output PNGs,
                                                                                   ReDDiT after GT-mean
data range             255 on uint8 (or float in [0,255]) for the numpy            all
                       functions; jax functions take ``data_range`` (default 1).
PSNR                   ``20 log10(data_range / sqrt(MSE))``, float64, MSE over     IR-SDE ``calculate_psnr``,
                       all pixels and channels, ``inf`` for identical images.      ReDDiT; = skimage
                                                                                   ``peak_signal_noise_ratio``
                                                                                   (AnlightenDiff) to 1e-12
border crop            ``crop_border`` pixels removed on every side before both    IR-SDE ``test.py`` (its
                       metrics (default 0).                                        default is ``scale``=4!)
SSIM 'matlab'          11x11 Gaussian window, sigma 1.5 (normalised, as             IR-SDE ``calculate_ssim``
                       ``cv2.getGaussianKernel``), C1=(0.01 L)^2, C2=(0.03 L)^2,   (Wang et al. MATLAB
                       population (co)variances, "valid" region only (output       ``ssim_index``)
                       shrinks by 10 px), mean over the valid map and channels.
SSIM 'skimage'         ``skimage.metrics.structural_similarity(channel_axis=-1,     AnlightenDiff, ReDDiT
                       data_range=255)``: 7x7 uniform window, sample covariance
                       (N-1), mean over the map cropped by 3 px, channel mean.
Y channel              MATLAB BT.601 "studio swing" luma, not rounded, float64:    IR-SDE ``bgr2ycbcr``
                       ``Y = 16 + (65.481 R + 128.553 G + 24.966 B) / 255`` for    (``only_y=True`` on BGR
                       R,G,B in [0,255] (Y in [16,235]); PSNR/SSIM on Y use        float [0,1] input, then
                       data range 255.                                             x255)
=====================  ==========================================================  =======================

Measured agreement (see ``tests/test_metrics.py``): ``ssim(convention='matlab')`` equals
``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=255, channel_axis=-1)`` to ~1e-12: skimage's truncated Gaussian (``truncate=3.5``) is also 11 taps
and it averages over the map cropped by 5 px, i.e. exactly the valid region, so the different border
handling of its filter never enters the mean. ``psnr`` equals ``skimage.metrics.peak_signal_noise_ratio
(data_range=255)`` to ~1e-12 (it uses ``10 log10(L^2/MSE)``). Upstream ``calculate_ssim`` filters all three
channels at once (``cv2.filter2D`` works per channel) and averages the whole HxWx3 map, which equals the
mean of the per-channel SSIMs used here. ``psnr_jax``/``ssim_jax`` (float32) agree with the numpy versions to
<1e-4 dB / <1e-5 in the tests (also on bright images, thanks to mean-shifting before the variances).

ReDDiT's GT-mean brightness adjustment and the choice of metrics per paper live in
:mod:`lliejax.metrics.conventions`.
"""
import functools
import math
from typing import Literal

import jax
import jax.numpy as jnp
import numpy as np

Rounding = Literal["round", "truncate"]
SsimConvention = Literal["matlab", "skimage"]

# MATLAB rgb2ycbcr / IR-SDE ``bgr2ycbcr(only_y=True)`` luma coefficients, in RGB order, for [0,255] input.
_Y_COEFFS_RGB = (65.481, 128.553, 24.966)
_Y_OFFSET = 16.0

_SSIM_WIN = 11
_SSIM_SIGMA = 1.5
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03


# ---------------------------------------------------------------------------------------------------------
# Conversions.


def to_uint8(img, *, rounding: Rounding = "round") -> np.ndarray:
  """Converts a float image in [0, 1] to uint8 (any shape).

  Args:
    img: float array (numpy or jax). Values outside [0, 1] are clamped. Integer inputs are cast to float64.
    rounding: ``'round'`` = clamp, x255, round half to even (``numpy.round``; the Entropy-SDE / IR-SDE and
      ReDDiT ``tensor2img`` convention). ``'truncate'`` = clamp, x255, truncate towards zero
      (``astype(uint8)``; the AnlightenDiff convention).

  The arithmetic is done in the input's float dtype (float32 for network outputs), like the reference code,
  so half-way cases are decided exactly as there.

  Raises:
    ValueError: on NaN values or an unknown ``rounding``.
  """
  if rounding not in ("round", "truncate"):
    raise ValueError(f"unknown rounding {rounding!r}; expected 'round' or 'truncate'")
  x = np.asarray(img)
  if not np.issubdtype(x.dtype, np.floating):
    x = x.astype(np.float64)
  if np.isnan(x).any():
    raise ValueError("to_uint8: image contains NaN values")
  x = np.clip(x, x.dtype.type(0), x.dtype.type(1)) * x.dtype.type(255)
  if rounding == "round":
    x = np.round(x)
  return x.astype(np.uint8)


def rgb_to_y(img, *, data_range: float = 255.0):
  """MATLAB BT.601 luma of an RGB ``(..., 3)`` image (numpy or jax; not rounded).

  ``Y = (16 + (65.481 R + 128.553 G + 24.966 B) / 255) * data_range / 255`` for R, G, B in
  ``[0, data_range]``; with ``data_range=255`` that is ``16 + (65.481 R + 128.553 G + 24.966 B) / 255`` in
  [16, 235]. Same coefficients as IR-SDE's ``bgr2ycbcr(only_y=True)``, which takes BGR input and hence lists
  them reversed (24.966, 128.553, 65.481). numpy input is computed in float64.
  """
  if isinstance(img, np.ndarray) or not isinstance(img, jax.Array):
    img = np.asarray(img, dtype=np.float64)
  if img.shape[-1] != 3:
    raise ValueError(f"rgb_to_y expects 3 channels in the last axis, got shape {tuple(img.shape)}")
  cr, cg, cb = _Y_COEFFS_RGB
  scale = 255.0 / data_range
  y255 = (cr * img[..., 0] + cg * img[..., 1] + cb * img[..., 2]) * scale / 255.0 + _Y_OFFSET
  return y255 / scale


# ---------------------------------------------------------------------------------------------------------
# numpy metrics (float64, one image).


def _prepare_pair(a, b, crop_border: int, y_channel: bool, data_range: float):
  a = np.asarray(a)
  b = np.asarray(b)
  if a.shape != b.shape:
    raise ValueError(f"images must have the same shape, got {a.shape} and {b.shape}")
  if a.ndim not in (2, 3):
    raise ValueError(f"expected an HxW or HxWxC image, got shape {a.shape}")
  a = a.astype(np.float64)
  b = b.astype(np.float64)
  if crop_border < 0:
    raise ValueError(f"crop_border must be >= 0, got {crop_border}")
  if crop_border:
    if 2 * crop_border >= min(a.shape[0], a.shape[1]):
      raise ValueError(f"crop_border={crop_border} leaves nothing of a {a.shape[:2]} image")
    a = a[crop_border:-crop_border, crop_border:-crop_border]
    b = b[crop_border:-crop_border, crop_border:-crop_border]
  if y_channel:
    if a.ndim != 3 or a.shape[2] != 3:
      raise ValueError(f"y_channel=True needs HxWx3 RGB images, got shape {a.shape}")
    a = rgb_to_y(a, data_range=data_range)
    b = rgb_to_y(b, data_range=data_range)
  return a, b


def psnr(a, b, *, data_range: float = 255.0, crop_border: int = 0, y_channel: bool = False) -> float:
  """PSNR in dB of two HxWxC (or HxW) images, IR-SDE ``calculate_psnr`` convention.

  Args:
    a, b: uint8 images, or float images in ``[0, data_range]`` (RGB order if ``y_channel``).
    data_range: peak value (255 for uint8).
    crop_border: pixels removed from every side before the computation.
    y_channel: evaluate on the MATLAB BT.601 Y channel (:func:`rgb_to_y`, not rounded) instead of RGB.

  Returns:
    ``20 log10(data_range / sqrt(MSE))`` computed in float64; ``inf`` when the images are identical.
  """
  a, b = _prepare_pair(a, b, crop_border, y_channel, data_range)
  mse = float(np.mean((a - b) ** 2))
  if mse == 0.0:
    return float("inf")
  return 20.0 * math.log10(data_range / math.sqrt(mse))


def gaussian_window_1d(size: int = _SSIM_WIN, sigma: float = _SSIM_SIGMA) -> np.ndarray:
  """Normalised 1-D Gaussian taps (float64), the same values as ``cv2.getGaussianKernel(size, sigma)``."""
  x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
  w = np.exp(-(x * x) / (2.0 * sigma * sigma))
  return w / w.sum()


def _valid_filter_np(x: np.ndarray, w: np.ndarray) -> np.ndarray:
  """Separable 'valid' correlation of the two leading (spatial) axes of ``x`` with taps ``w``."""
  k = len(w)
  h, wd = x.shape[0] - k + 1, x.shape[1] - k + 1
  rows = sum(w[i] * x[i:i + h] for i in range(k))
  return sum(w[j] * rows[:, j:j + wd] for j in range(k))


def _ssim_matlab(a: np.ndarray, b: np.ndarray, data_range: float) -> float:
  if min(a.shape[0], a.shape[1]) < _SSIM_WIN:
    raise ValueError(f"matlab SSIM needs images of at least {_SSIM_WIN}x{_SSIM_WIN}, got {a.shape[:2]}")
  c1 = (_SSIM_K1 * data_range) ** 2
  c2 = (_SSIM_K2 * data_range) ** 2
  w = gaussian_window_1d()
  mu1 = _valid_filter_np(a, w)
  mu2 = _valid_filter_np(b, w)
  mu1_sq, mu2_sq, mu12 = mu1 * mu1, mu2 * mu2, mu1 * mu2
  s1 = _valid_filter_np(a * a, w) - mu1_sq
  s2 = _valid_filter_np(b * b, w) - mu2_sq
  s12 = _valid_filter_np(a * b, w) - mu12
  ssim_map = ((2 * mu12 + c1) * (2 * s12 + c2)) / ((mu1_sq + mu2_sq + c1) * (s1 + s2 + c2))
  return float(ssim_map.mean())


def ssim(a, b, *, data_range: float = 255.0, crop_border: int = 0, y_channel: bool = False,
         convention: SsimConvention = "matlab") -> float:
  """SSIM of two HxWxC (or HxW) images, averaged over the map and the channels.

  Args:
    a, b: uint8 images, or float images in ``[0, data_range]`` (RGB order if ``y_channel``).
    data_range: peak value ``L`` (255 for uint8).
    crop_border: pixels removed from every side first.
    y_channel: evaluate on the MATLAB BT.601 Y channel (:func:`rgb_to_y`) instead of RGB.
    convention: ``'matlab'`` = IR-SDE ``calculate_ssim`` (11x11 Gaussian, sigma 1.5, C1=(0.01 L)^2,
      C2=(0.03 L)^2, valid region, float64; needs >= 11x11 pixels). ``'skimage'`` =
      ``skimage.metrics.structural_similarity`` defaults (7x7 uniform window, sample covariance) with
      ``data_range`` and ``channel_axis=-1`` (AnlightenDiff / ReDDiT).
  """
  a, b = _prepare_pair(a, b, crop_border, y_channel, data_range)
  if convention == "matlab":
    return _ssim_matlab(a, b, data_range)
  if convention == "skimage":
    from skimage.metrics import structural_similarity  # pylint: disable=g-import-not-at-top
    return float(structural_similarity(a, b, data_range=data_range, channel_axis=-1 if a.ndim == 3 else None))
  raise ValueError(f"unknown SSIM convention {convention!r}; expected 'matlab' or 'skimage'")


# ---------------------------------------------------------------------------------------------------------
# jax metrics (float32, batched NHWC, jit-friendly).


def _as_batch(x) -> jax.Array:
  x = jnp.asarray(x)
  if not jnp.issubdtype(x.dtype, jnp.floating):
    x = x.astype(jnp.float32)
  if x.ndim != 4:
    raise ValueError(f"expected an NHWC batch, got shape {x.shape}")
  return x


def _quantize_jax(x: jax.Array) -> jax.Array:
  """clamp [0,1], x255, round half to even: the values of :func:`to_uint8` (as float)."""
  return jnp.round(jnp.clip(x, 0.0, 1.0) * 255.0)


@functools.partial(jax.jit, static_argnames=("data_range", "quantize"))
def psnr_jax(a, b, *, data_range: float = 1.0, quantize: bool = False) -> jax.Array:
  """Per-image PSNR (dB) of two NHWC float batches; returns shape ``(B,)`` (``inf`` where identical).

  Args:
    a, b: float batches with values in ``[0, data_range]``.
    data_range: peak value (a Python number: it is a static jit argument).
    quantize: first map both batches (assumed in [0, 1]) to the uint8 grid exactly like
      ``to_uint8(rounding='round')`` and evaluate with data range 255, i.e. the value the evaluation script
      reports for the saved PNGs. ``data_range`` is then ignored.
  """
  a, b = _as_batch(a), _as_batch(b)
  if a.shape != b.shape:
    raise ValueError(f"batches must have the same shape, got {a.shape} and {b.shape}")
  if quantize:
    a, b, data_range = _quantize_jax(a), _quantize_jax(b), 255.0
  sq = jnp.square(a - b)
  # Two-stage mean (rows, then the rest) keeps float32 accumulation error well below 1e-5 relative.
  mse = jnp.mean(jnp.mean(sq, axis=2), axis=(1, 2))
  return 10.0 * jnp.log10(jnp.asarray(data_range, sq.dtype) ** 2 / mse)


def _valid_filter_jax(x: jax.Array, w: np.ndarray) -> jax.Array:
  """Separable 'valid' correlation over axes -3 (H) and -2 (W) as explicit shifted sums.

  Plain multiply-adds (no convolution primitive), so accelerators cannot silently drop to reduced
  precision (e.g. TF32).
  """
  k = len(w)
  h, wd = x.shape[-3] - k + 1, x.shape[-2] - k + 1
  rows = sum(float(w[i]) * x[..., i:i + h, :, :] for i in range(k))
  return sum(float(w[j]) * rows[..., :, j:j + wd, :] for j in range(k))


@functools.partial(jax.jit, static_argnames=("data_range", "quantize"))
def ssim_jax(a, b, *, data_range: float = 1.0, quantize: bool = False) -> jax.Array:
  """Per-image MATLAB-style SSIM (see :func:`ssim`, ``convention='matlab'``) of NHWC batches; shape ``(B,)``.

  Args:
    a, b: float batches with values in ``[0, data_range]``; H and W must be >= 11.
    data_range: peak value ``L`` (C1 = (0.01 L)^2, C2 = (0.03 L)^2).
    quantize: as in :func:`psnr_jax` (uint8 grid, ``L = 255``).

  Differentiable. To limit float32 cancellation in ``E[x^2] - E[x]^2`` both images are shifted by their
  common per-image, per-channel mean first (SSIM's variances are shift invariant; the means are restored).
  """
  a, b = _as_batch(a), _as_batch(b)
  if a.shape != b.shape:
    raise ValueError(f"batches must have the same shape, got {a.shape} and {b.shape}")
  if min(a.shape[1], a.shape[2]) < _SSIM_WIN:
    raise ValueError(f"SSIM needs images of at least {_SSIM_WIN}x{_SSIM_WIN}, got {a.shape[1:3]}")
  if quantize:
    a, b, data_range = _quantize_jax(a), _quantize_jax(b), 255.0
  c1 = (_SSIM_K1 * data_range) ** 2
  c2 = (_SSIM_K2 * data_range) ** 2
  shift = jax.lax.stop_gradient(0.5 * (jnp.mean(a, axis=(1, 2), keepdims=True)
                                       + jnp.mean(b, axis=(1, 2), keepdims=True)))
  x, y = a - shift, b - shift
  w = gaussian_window_1d()
  f = _valid_filter_jax(jnp.stack([x, y, x * x, y * y, x * y]), w)
  mx, my = f[0], f[1]
  sxx = f[2] - mx * mx
  syy = f[3] - my * my
  sxy = f[4] - mx * my
  mu1, mu2 = mx + shift, my + shift
  num = (2.0 * mu1 * mu2 + c1) * (2.0 * sxy + c2)
  den = (mu1 * mu1 + mu2 * mu2 + c1) * (sxx + syy + c2)
  return jnp.mean(num / den, axis=(1, 2, 3))


__all__ = [
    "to_uint8", "rgb_to_y", "psnr", "ssim", "gaussian_window_1d", "psnr_jax", "ssim_jax",
]
