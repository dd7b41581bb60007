"""Tests for lliejax.metrics: conventions vs scikit-image, an independent SSIM, jax vs numpy, clu collections."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import ndimage
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from lliejax import metrics as M


def _pair(seed, shape=(48, 56, 3), noise=0.06):
  rng = np.random.default_rng(seed)
  a = rng.random(shape).astype(np.float32)
  size = [5, 5] + [1] * (len(shape) - 2) if len(shape) <= 3 else [1, 5, 5, 1]
  a = ndimage.uniform_filter(a, size=size)  # some structure, not just white noise
  b = np.clip(a + noise * rng.standard_normal(shape), 0, 1).astype(np.float32)
  return a, b


# ---------------------------------------------------------------------------------------------- to_uint8


def test_to_uint8_round_half_to_even_vs_truncate():
  ks = np.arange(255)
  x = (ks + 0.5) / 255.0  # float64
  exact = (x * 255.0) == ks + 0.5  # cases where x*255 is exactly a half-integer in float64
  assert exact.sum() > 50
  ks, x = ks[exact], x[exact]
  r = M.to_uint8(x, rounding="round").astype(int)
  t = M.to_uint8(x, rounding="truncate").astype(int)
  np.testing.assert_array_equal(r % 2, 0)  # ties go to the even neighbour
  np.testing.assert_array_equal(r, np.where(ks % 2 == 0, ks, ks + 1))
  np.testing.assert_array_equal(t, ks)
  # Explicit small cases: 0.5 -> 0, 1.5 -> 2, 2.5 -> 2; 127.5 -> 128.
  for dtype in (np.float32, np.float64):
    x = np.array([0.5, 1.5, 2.5, 3.5], dtype) / dtype(255)  # x*255 is exactly k+0.5 in both dtypes
    np.testing.assert_array_equal(M.to_uint8(x), [0, 2, 2, 4])
    np.testing.assert_array_equal(M.to_uint8(x, rounding="truncate"), [0, 1, 2, 3])
  assert M.to_uint8(np.array([0.5]))[0] == 128 and M.to_uint8(np.array([0.5]), rounding="truncate")[0] == 127
  assert M.to_uint8(np.float32(0.999)) == 255 and M.to_uint8(np.float32(0.999), rounding="truncate") == 254


def test_to_uint8_clamps_and_matches_reference_formula_in_float32():
  rng = np.random.default_rng(0)
  x = (rng.random((64, 64, 3)) * 1.4 - 0.2).astype(np.float32)
  x[0, 0, 0], x[0, 0, 1] = np.inf, -np.inf
  ref = (np.clip(x, 0, 1) * 255.0).round().astype(np.uint8)  # Entropy-SDE tensor2img on float32 data
  np.testing.assert_array_equal(M.to_uint8(x), ref)
  np.testing.assert_array_equal(M.to_uint8(jnp.asarray(x)), ref)
  np.testing.assert_array_equal(M.to_uint8(x, rounding="truncate"), (np.clip(x, 0, 1) * 255.0).astype(np.uint8))
  assert M.to_uint8(x).dtype == np.uint8
  with pytest.raises(ValueError, match="NaN"):
    M.to_uint8(np.array([0.1, np.nan]))
  with pytest.raises(ValueError, match="rounding"):
    M.to_uint8(x, rounding="floor")


# ---------------------------------------------------------------------------------------------- PSNR


def test_psnr_matches_skimage_and_formula():
  a, b = _pair(1)
  ua, ub = M.to_uint8(a), M.to_uint8(b)
  p = M.psnr(ua, ub)
  assert p == pytest.approx(peak_signal_noise_ratio(ua, ub, data_range=255), abs=1e-10)
  mse = np.mean((ua.astype(np.float64) - ub) ** 2)
  assert p == pytest.approx(20 * math.log10(255.0 / math.sqrt(mse)), abs=1e-12)
  # float input in [0,255] gives the same value; identical images give inf
  assert M.psnr(ua.astype(np.float32), ub.astype(np.float64)) == pytest.approx(p, abs=1e-12)
  assert M.psnr(ua, ua) == math.inf
  # border crop
  c = 4
  assert M.psnr(ua, ub, crop_border=c) == pytest.approx(
      peak_signal_noise_ratio(ua[c:-c, c:-c], ub[c:-c, c:-c], data_range=255), abs=1e-10)
  # float images in [0,1] with data_range=1
  assert M.psnr(a, b, data_range=1.0) == pytest.approx(peak_signal_noise_ratio(a.astype(np.float64), b, data_range=1),
                                                       abs=1e-9)
  with pytest.raises(ValueError, match="same shape"):
    M.psnr(ua, ub[:-1])


def _y_upstream_style(u8_rgb):
  """Independent BT.601 Y as IR-SDE's test computes it: BGR float [0,1] -> bgr2ycbcr(only_y) -> x255."""
  bgr = u8_rgb[..., ::-1].astype(np.float64) / 255.0
  y01 = (bgr * 255.0) @ np.array([24.966, 128.553, 65.481]) / 255.0 + 16.0
  return y01 / 255.0 * 255.0


def test_y_channel_metrics():
  a, b = _pair(2)
  ua, ub = M.to_uint8(a), M.to_uint8(b)
  ya, yb = _y_upstream_style(ua), _y_upstream_style(ub)
  np.testing.assert_allclose(M.rgb_to_y(ua), ya, atol=1e-10)
  assert M.rgb_to_y(np.array([0, 0, 0])) == pytest.approx(16.0)
  assert M.rgb_to_y(np.array([255, 255, 255])) == pytest.approx(235.0)
  np.testing.assert_allclose(M.rgb_to_y(a, data_range=1.0), M.rgb_to_y(a.astype(np.float64) * 255) / 255, atol=1e-12)
  np.testing.assert_allclose(np.asarray(M.rgb_to_y(jnp.asarray(a), data_range=1.0)),
                             M.rgb_to_y(a, data_range=1.0), atol=1e-6)
  assert M.psnr(ua, ub, y_channel=True) == pytest.approx(peak_signal_noise_ratio(ya, yb, data_range=255), abs=1e-9)
  assert M.ssim(ua, ub, y_channel=True) == pytest.approx(M.ssim(ya, yb), abs=1e-12)
  with pytest.raises(ValueError, match="3"):
    M.psnr(ua[..., 0], ub[..., 0], y_channel=True)


# ---------------------------------------------------------------------------------------------- SSIM (numpy)


def _ssim_reference(a, b, L=255.0):
  """Straightforward MATLAB-style SSIM: 2-D 11x11 Gaussian via scipy.ndimage.convolve, then crop 5 px."""
  g = np.exp(-((np.arange(11) - 5.0) ** 2) / (2 * 1.5 ** 2))
  win = np.outer(g, g) / np.outer(g, g).sum()
  c1, c2 = (0.01 * L) ** 2, (0.03 * L) ** 2
  a = a.astype(np.float64)
  b = b.astype(np.float64)
  chans = [a] if a.ndim == 2 else [a[..., i] for i in range(a.shape[2])]
  chans_b = [b] if b.ndim == 2 else [b[..., i] for i in range(b.shape[2])]
  vals = []
  for x, y in zip(chans, chans_b):
    f = lambda z: ndimage.convolve(z, win, mode="reflect")[5:-5, 5:-5]  # pylint: disable=cell-var-from-loop
    mx, my = f(x), f(y)
    sxx, syy, sxy = f(x * x) - mx ** 2, f(y * y) - my ** 2, f(x * y) - mx * my
    m = ((2 * mx * my + c1) * (2 * sxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (sxx + syy + c2))
    vals.append(m.mean())
  return float(np.mean(vals))


def test_ssim_identical_and_constant_images():
  a, _ = _pair(3)
  ua = M.to_uint8(a)
  assert M.ssim(ua, ua) == pytest.approx(1.0, abs=1e-12)
  assert M.ssim(ua, ua, convention="skimage") == pytest.approx(1.0, abs=1e-12)
  # Constant images: variances vanish and SSIM = (2 m1 m2 + C1) / (m1^2 + m2^2 + C1) for every convention.
  c1 = (0.01 * 255) ** 2
  expected = (2 * 100 * 120 + c1) / (100 ** 2 + 120 ** 2 + c1)
  x, y = np.full((20, 24, 3), 100, np.uint8), np.full((20, 24, 3), 120, np.uint8)
  assert M.ssim(x, y) == pytest.approx(expected, abs=1e-12)
  assert M.ssim(x, y, convention="skimage") == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("shape", [(48, 56, 3), (33, 40), (40, 31, 1)])
def test_ssim_matlab_vs_independent_and_skimage_gaussian(shape):
  a, b = _pair(4, shape=shape)
  ua, ub = M.to_uint8(a), M.to_uint8(b)
  s = M.ssim(ua, ub)
  assert s == pytest.approx(_ssim_reference(ua, ub), abs=1e-12)
  # skimage with MATLAB-like options agrees on the valid region to float64 rounding: its 11-tap Gaussian
  # (truncate=3.5) filters with reflection, but the mean excludes the 5-px border, i.e. exactly the valid map.
  sk = structural_similarity(ua, ub, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255,
                             channel_axis=-1 if ua.ndim == 3 else None)
  assert s == pytest.approx(sk, abs=1e-10)


def test_ssim_conventions_differ_and_skimage_is_skimage_default():
  a, b = _pair(5)
  ua, ub = M.to_uint8(a), M.to_uint8(b)
  s_sk = M.ssim(ua, ub, convention="skimage")
  assert s_sk == pytest.approx(structural_similarity(ua, ub, channel_axis=-1, data_range=255), abs=1e-12)
  assert abs(s_sk - M.ssim(ua, ub)) > 1e-3  # 7x7 uniform / sample covariance vs 11x11 Gaussian
  c = 4
  assert M.ssim(ua, ub, crop_border=c) == pytest.approx(_ssim_reference(ua[c:-c, c:-c], ub[c:-c, c:-c]), abs=1e-12)
  with pytest.raises(ValueError, match="convention"):
    M.ssim(ua, ub, convention="cv2")
  with pytest.raises(ValueError, match="11x11"):
    M.ssim(ua[:10], ub[:10])


def test_gaussian_window_matches_opencv_definition():
  w = M.gaussian_window_1d(11, 1.5)
  assert w.shape == (11,) and w.sum() == pytest.approx(1.0, abs=1e-15)
  g = np.exp(-((np.arange(11) - 5) ** 2) / 4.5)
  np.testing.assert_allclose(w, g / g.sum(), rtol=1e-15)


# ---------------------------------------------------------------------------------------------- jax versions


def test_jax_metrics_match_numpy():
  pairs = [_pair(10 + i, shape=(40, 52, 3), noise=0.02 + 0.05 * i) for i in range(3)]
  a = np.stack([p[0] for p in pairs])
  b = np.stack([p[1] for p in pairs])
  b[2] = a[2]  # identical pair -> inf PSNR, SSIM 1
  pj = np.asarray(jax.jit(lambda x, y: M.psnr_jax(x, y, quantize=True))(a, b))
  sj = np.asarray(jax.jit(lambda x, y: M.ssim_jax(x, y, quantize=True))(a, b))
  assert pj.shape == (3,) and sj.shape == (3,)
  for i in range(3):
    ua, ub = M.to_uint8(a[i]), M.to_uint8(b[i])
    if i == 2:
      assert np.isinf(pj[i]) and M.psnr(ua, ub) == math.inf
    else:
      assert pj[i] == pytest.approx(M.psnr(ua, ub), abs=1e-4)
    assert sj[i] == pytest.approx(M.ssim(ua, ub), abs=1e-5)
  # unquantised, data_range 1
  pf = np.asarray(M.psnr_jax(a, b, data_range=1.0))
  sf = np.asarray(M.ssim_jax(a, b, data_range=1.0))
  for i in range(2):
    assert pf[i] == pytest.approx(M.psnr(a[i], b[i], data_range=1.0), abs=1e-4)
    assert sf[i] == pytest.approx(M.ssim(a[i], b[i], data_range=1.0), abs=1e-5)


def test_jax_metrics_precision_on_bright_image_and_grad():
  rng = np.random.default_rng(7)
  a = (0.85 + 0.15 * rng.random((1, 96, 128, 3))).astype(np.float32)  # bright: worst case for E[x^2]-E[x]^2
  b = np.clip(a + 0.004 * rng.standard_normal(a.shape), 0, 1).astype(np.float32)
  ua, ub = M.to_uint8(a[0]), M.to_uint8(b[0])
  assert float(M.psnr_jax(a, b, quantize=True)[0]) == pytest.approx(M.psnr(ua, ub), abs=1e-4)
  assert float(M.ssim_jax(a, b, quantize=True)[0]) == pytest.approx(M.ssim(ua, ub), abs=1e-5)
  g = jax.grad(lambda x: M.ssim_jax(x, b).sum())(jnp.asarray(a))
  assert g.shape == a.shape and bool(jnp.all(jnp.isfinite(g)))
  with pytest.raises(ValueError, match="NHWC"):
    M.psnr_jax(a[0], b[0])


# ---------------------------------------------------------------------------------------------- clu collections


def test_train_collection_merge_compute():
  collection = M.train_collection(["loss", "grad_norm", "learning_rate", "aux"])
  m1 = collection.single_from_model_output(loss=jnp.array(1.0), grad_norm=jnp.array(2.0),
                                           learning_rate=jnp.array(1e-4), aux=jnp.array(5.0))
  step = jax.jit(lambda l, g, lr: collection.single_from_model_output(loss=l, grad_norm=g, learning_rate=lr,
                                                                      aux=l + 1))
  m2 = step(jnp.array(3.0), jnp.array(6.0), jnp.array(2e-4))
  out = collection.empty().merge(m1).merge(m2).compute()
  assert float(out["loss"]) == pytest.approx(2.0)
  assert float(out["grad_norm"]) == pytest.approx(4.0)
  assert float(out["aux"]) == pytest.approx(4.5)
  assert float(out["learning_rate"]) == pytest.approx(2e-4)  # the last value, not the mean


def test_convention_scores_as_the_reference_functions():
  a, b = _pair(20, shape=(2, 24, 28, 3))
  out, gt, lq = np.asarray(a[0]) * 1.1 - 0.05, np.asarray(b[0]), np.asarray(a[1])  # output beyond [0, 1]
  row = M.IRSDE.score(out, gt, lq)
  o8, g8, l8 = M.to_uint8(out), M.to_uint8(gt), M.to_uint8(lq)
  assert row == {"psnr": M.psnr(o8, g8), "ssim": M.ssim(o8, g8), "psnr_input": M.psnr(l8, g8),
                 "ssim_input": M.ssim(l8, g8)}
  cropped = M.IRSDE.score(out, gt, crop_border=4)
  assert set(cropped) == {"psnr", "ssim"} and cropped["psnr"] == M.psnr(o8, g8, crop_border=4)
  trunc = M.Convention("t", rounding="truncate", ssim="skimage").score(out, gt)
  # The ground truth is always rounded: a float GT is an 8-bit file / 255, which rounding recovers exactly (truncating
  # k/255*255 in float32 can give k-1); the convention's rounding applies to the output only.
  t8, tg = M.to_uint8(out, rounding="truncate"), M.to_uint8(gt)
  assert trunc == {"psnr": M.psnr(t8, tg), "ssim": M.ssim(t8, tg, convention="skimage")}
