"""Each evaluation convention reproduces the number the official evaluation code of its method computes.

The reference side of every test re-states the official computation with the tools the official code uses (OpenCV,
skimage, PIL PNG round trips, the ``lpips`` / ``DISTS_pytorch`` packages), step by step as the official scripts do
it (REFERENCE §1.11, §2.10, §3.7), on real photos: lliejax's own metric functions are not used there.
"""
import io
import math

import numpy as np
import pytest
from PIL import Image
from skimage import data
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

import torch_refs
from lliejax import metrics
from lliejax.metrics import conventions

cv2 = pytest.importorskip("cv2")


def _pairs():
  """(name, float output, uint8 GT) for three photos: a darker, noisy, slightly over-range 'enhancement' of each."""
  rng = np.random.default_rng(0)
  out = []
  for name, img in (("astronaut", data.astronaut()[64:214, 96:296]), ("coffee", data.coffee()[80:245, 200:403]),
                    ("chelsea", data.chelsea()[40:200, 60:252])):
    gt = np.ascontiguousarray(img)
    f = gt.astype(np.float32) / 255
    enh = (0.85 * f + 0.03 + 0.05 * rng.standard_normal(f.shape)).astype(np.float32)  # some values < 0 and > 1
    out.append((name, enh, gt))
  return out


def _torch():
  torch, _ = torch_refs.import_torchvision()
  return torch


# ------------------------------------------------------------------------------------------------ ReDDiT
def _reddit_official(out_f: np.ndarray, gt8: np.ndarray, lpips_vgg) -> dict:
  """ReDDiT ``test.py`` on one image: tensor2img, GT-mean, calculate_psnr/ssim, lpips VGG on [0,255] BGR."""
  torch = _torch()

  def tensor2img(t):  # core/metrics.py: clamp [-1,1] -> [0,1] -> BGR HWC -> round -> clip -> uint8
    t = t.float().clamp(-1, 1)
    t = (t + 1) / 2
    img = np.transpose(t.numpy()[[2, 1, 0]], (1, 2, 0))
    return np.clip((img * 255.0).round(), 0, 255).astype(np.uint8)

  normal = tensor2img(torch.from_numpy(np.transpose(2 * out_f - 1, (2, 0, 1))))
  gt = tensor2img(torch.from_numpy(np.transpose(gt8.astype(np.float32) / 127.5 - 1, (2, 0, 1))))
  gt, normal = gt / 255., normal / 255.
  m_out = cv2.cvtColor(normal.astype(np.float32), cv2.COLOR_BGR2GRAY).mean()
  m_gt = cv2.cvtColor(gt.astype(np.float32), cv2.COLOR_BGR2GRAY).mean()
  normal = (np.clip(normal * (m_gt / m_out), 0, 1) * 255).astype(np.uint8)
  gt = (gt * 255).astype(np.uint8)
  a, b = normal.astype(np.float64), gt.astype(np.float64)
  psnr = 20 * math.log10(255.0 / math.sqrt(np.mean((a - b) ** 2)))
  ssim = structural_similarity(normal, gt, channel_axis=-1)  # skimage 0.18 multichannel=True, range from uint8
  with torch.no_grad():
    lp = lpips_vgg(torch.tensor(normal.astype(np.float32)).permute(2, 0, 1),
                   torch.tensor(gt.astype(np.float32)).permute(2, 0, 1)).item()
  return {"psnr": psnr, "ssim": ssim, "lpips": lp}


def test_reddit_convention_matches_official_test_py():
  lpips_vgg = torch_refs.official_lpips("vgg")
  conv = conventions.get("reddit")
  for name, out_f, gt8 in _pairs():
    # ReDDiT's network outputs [-1,1]; tensor2img's rounding of (t+1)/2 is reproduced from the rounded image.
    out8 = metrics.to_uint8(out_f)
    ref = _reddit_official(out8.astype(np.float32) / 255, gt8, lpips_vgg)
    got = conv.score(out8, gt8)
    assert set(got) == {"psnr", "ssim", "lpips"}, name
    assert got["psnr"] == pytest.approx(ref["psnr"], abs=1e-9), name
    assert got["ssim"] == pytest.approx(ref["ssim"], abs=1e-9), name
    assert got["lpips"] == pytest.approx(ref["lpips"], abs=1e-5), name
  # GT-mean moves the number (the adjustment is active) ...
  no_adj = conv.replace(gt_mean=False).score(out8, gt8)
  assert abs(no_adj["psnr"] - got["psnr"]) > 0.05
  # ... and a 416x608-style padded output (8 rows / 4 columns each side) is cut back like test.py does.
  padded = np.pad(out8, ((8, 8), (4, 4), (0, 0)), mode="reflect")
  assert conv.score(padded, gt8)["psnr"] == pytest.approx(got["psnr"], abs=1e-12)


def test_gt_mean_adjustment_equals_opencv_code():
  for _, out_f, gt8 in _pairs():
    out8 = metrics.to_uint8(out_f * 0.6)  # a clearly too dark output
    o, g = out8[..., ::-1] / 255., gt8[..., ::-1] / 255.
    ratio = cv2.cvtColor(g.astype(np.float32), cv2.COLOR_BGR2GRAY).mean() / cv2.cvtColor(
        o.astype(np.float32), cv2.COLOR_BGR2GRAY).mean()
    ref = (np.clip(o * ratio, 0, 1) * 255).astype(np.uint8)[..., ::-1]
    np.testing.assert_array_equal(conventions.gt_mean_adjust(out8, gt8), ref)


# ------------------------------------------------------------------------------------------------ AnlightenDiff
def _png_roundtrip_bgr(img8_rgb: np.ndarray) -> np.ndarray:
  """PIL save as PNG, re-read with PIL, reorder to BGR (``_test_epoch_end``'s ``imread``)."""
  buf = io.BytesIO()
  Image.fromarray(img8_rgb).save(buf, format="PNG")
  buf.seek(0)
  return np.asanyarray(Image.open(buf))[:, :, [2, 1, 0]]


def _anlightendiff_official(out_f: np.ndarray, gt8: np.ndarray, lpips_alex) -> dict:
  """AnlightenDiff ``_test_step`` (save ``uint8(img*255)``) + ``_test_epoch_end`` / ``compare/full_ref.py``."""
  torch = _torch()
  sampled = np.clip(out_f, 0, 1)  # the DRDS sampler clamps to [0,1]
  sr = _png_roundtrip_bgr((sampled * 255).astype(np.uint8))
  hr = _png_roundtrip_bgr(gt8)
  if hr.shape != sr.shape:  # full_ref.center_crop
    h, w = sr.shape[:2]
    y, x = hr.shape[0] / 2 - h / 2, hr.shape[1] / 2 - w / 2
    hr = hr[int(y):int(y + h), int(x):int(x + w)]

  def transform(img):
    return torch.Tensor(np.expand_dims(np.transpose(img, [2, 0, 1]), 0)) / 127.5 - 1

  with torch.no_grad():
    lp = lpips_alex(transform(hr), transform(sr)).item()
  return {
      "psnr": peak_signal_noise_ratio(hr, sr, data_range=255),
      "ssim": structural_similarity(hr, sr, channel_axis=-1, data_range=255),
      # multichannel=True on 2-D gray images = columns as channels (skimage <= 0.19 semantics).
      "ssim_gray": structural_similarity(cv2.cvtColor(hr, cv2.COLOR_RGB2GRAY), cv2.cvtColor(sr, cv2.COLOR_RGB2GRAY),
                                         channel_axis=-1, data_range=255),
      "lpips": lp,
  }


@pytest.mark.parametrize("protocol", ["anlightendiff_fs", "anlightendiff_ts"])
def test_anlightendiff_conventions_match_official_code(protocol):
  lpips_alex = torch_refs.official_lpips("alex")
  conv = conventions.get(protocol)
  for name, out_f, gt8 in _pairs():
    if protocol == "anlightendiff_ts":
      # TS enhances the x32 center crop (dataset.get_patch: torchvision CenterCrop) and the GT is center-cropped to
      # the result by full_ref.center_crop; here the 'output' is the crop of the enhancement.
      # For odd size differences (coffee: 165x203) the two crops differ by a pixel, as in the official code.
      out_f = conv.crop_input(out_f)
      assert out_f.shape[0] % 32 == 0 and out_f.shape[1] % 32 == 0
      assert (out_f.shape != gt8.shape) == (name != "chelsea")
    ref = _anlightendiff_official(out_f, gt8, lpips_alex)
    got = conv.score(np.clip(out_f, 0, 1), gt8)
    assert set(got) == set(ref), name
    for k in ("psnr", "ssim", "ssim_gray"):
      assert got[k] == pytest.approx(ref[k], abs=1e-9), (name, k)
    assert got["lpips"] == pytest.approx(ref["lpips"], abs=1e-5), name


def test_truncation_vs_rounding_moves_psnr():
  _, out_f, gt8 = _pairs()[0]
  fs = conventions.get("anlightendiff_fs").score(out_f, gt8)["psnr"]
  rounded = conventions.get("anlightendiff_fs").replace(rounding="round").score(out_f, gt8)["psnr"]
  assert fs != rounded and abs(fs - rounded) < 0.5


# ------------------------------------------------------------------------------------------------ Entropy-SDE
def _irsde_official(out_f: np.ndarray, gt8: np.ndarray, lpips_alex, dists_model) -> dict:
  """Upstream IR-SDE ``test.py``: ``tensor2img`` (clamp, x255, round), ``calculate_psnr``, ``calculate_ssim``
  (cv2 Gaussian 11x11, sigma 1.5, valid region, channel mean), LPIPS-Alex of ``GT*2-1, SR*2-1`` on float tensors;
  DISTS_pytorch on ``uint8 / 255`` RGB."""
  torch = _torch()
  sr8 = np.round(np.clip(out_f, 0, 1) * 255).astype(np.uint8)
  a, b = sr8.astype(np.float64), gt8.astype(np.float64)
  psnr = 20 * math.log10(255.0 / math.sqrt(np.mean((a - b) ** 2)))

  def ssim1(x, y):
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    k = cv2.getGaussianKernel(11, 1.5)
    w = np.outer(k, k.transpose())
    mu1, mu2 = cv2.filter2D(x, -1, w)[5:-5, 5:-5], cv2.filter2D(y, -1, w)[5:-5, 5:-5]
    s1 = cv2.filter2D(x ** 2, -1, w)[5:-5, 5:-5] - mu1 ** 2
    s2 = cv2.filter2D(y ** 2, -1, w)[5:-5, 5:-5] - mu2 ** 2
    s12 = cv2.filter2D(x * y, -1, w)[5:-5, 5:-5] - mu1 * mu2
    return (((2 * mu1 * mu2 + c1) * (2 * s12 + c2)) / ((mu1 ** 2 + mu2 ** 2 + c1) * (s1 + s2 + c2))).mean()

  ssim = np.mean([ssim1(a[..., i], b[..., i]) for i in range(3)])
  t = lambda z: torch.from_numpy(np.ascontiguousarray(np.transpose(z, (2, 0, 1))[None]))
  with torch.no_grad():
    lp = lpips_alex(t(gt8.astype(np.float32) / 255) * 2 - 1, t(out_f) * 2 - 1).item()
    ds = dists_model(t(gt8.astype(np.float32) / 255), t(sr8.astype(np.float32) / 255)).item()
  return {"psnr": psnr, "ssim": ssim, "lpips": lp, "dists": ds}


def test_entropy_sde_and_standard_conventions_match_irsde_code():
  lpips_alex = torch_refs.official_lpips("alex")
  dists_model = torch_refs.official_dists()
  es, std = conventions.get("entropy_sde"), conventions.get("standard")
  for name, out_f, gt8 in _pairs():
    ref = _irsde_official(out_f, gt8, lpips_alex, dists_model)
    got = es.score(out_f, gt8, metrics=("psnr", "ssim", "lpips", "dists"))
    for k in ("psnr", "ssim"):
      assert got[k] == pytest.approx(ref[k], abs=1e-9), (name, k)
    assert got["lpips"] == pytest.approx(ref["lpips"], abs=1e-5), name
    assert got["dists"] == pytest.approx(ref["dists"], abs=1e-5), name
    # 'standard' differs only in feeding LPIPS the uint8 result: close, but not the same number.
    s = std.score(out_f, gt8, metrics=("psnr", "lpips"))
    assert s["psnr"] == got["psnr"] and 0 < abs(s["lpips"] - got["lpips"]) < 5e-3


def test_conventions_are_named_and_validated():
  assert conventions.names() == ["entropy_sde", "anlightendiff_fs", "anlightendiff_ts", "reddit", "standard"]
  assert conventions.get("reddit").gt_mean and not conventions.get("standard").gt_mean
  with pytest.raises(ValueError, match="unknown evaluation protocol 'redit'.*reddit"):
    conventions.get("redit")
  with pytest.raises(ValueError, match="unknown metrics \\['psnrr'\\]"):
    metrics.Convention("x", metrics=("psnrr",))
  _, out_f, gt8 = _pairs()[0]
  with pytest.raises(ValueError, match="output .* and ground truth .* differ in size"):
    conventions.get("standard").score(out_f[:-2], gt8)


def test_rgb2gray_uint8_is_bit_exact_with_opencv():
  rng = np.random.default_rng(1)
  img = np.concatenate([data.astronaut().reshape(-1, 3), rng.integers(0, 256, (100000, 3), dtype=np.uint8)])[None]
  np.testing.assert_array_equal(conventions.rgb2gray_uint8_cv2(img), cv2.cvtColor(img, cv2.COLOR_RGB2GRAY))
