"""FID (lliejax.metrics.fid) against pytorch-fid 0.3.0.

* Architecture parity, always run: pytorch-fid's ``InceptionV3(use_fid_inception=True)`` is built with *random*
  weights (its ``load_state_dict_from_url`` is replaced, so nothing downloads), its BatchNorm statistics are
  calibrated on photos and then perturbed, the weights go through a ``.pth`` (and a converted ``.npz``) into
  lliejax, and the 2048-d features of ``skimage.data`` photos of several non-299 sizes are compared.
* ``frechet_distance`` against ``calculate_frechet_distance`` (incl. near-singular, retry and imaginary cases).
* Real weights: only when ``$LLIEJAX_FID_WEIGHTS`` names pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth``.
* Errors: missing/unnamed file, wrong keys, wrong shapes, torchvision's ImageNet Inception, wrong checksum.

Needs torch, torchvision (for pytorch-fid's block classes), pytorch-fid, scipy and scikit-image.
"""
import os
import sys
import types
import warnings

import numpy as np
import pytest
from scipy.linalg import LinAlgWarning

# torchvision's compiled ops do not load against the CPU build of torch; pytorch-fid only needs its Python
# modules (the Inception block classes).
sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
torch = pytest.importorskip("torch")
pfi = pytest.importorskip("pytorch_fid.inception")
fid_score = pytest.importorskip("pytorch_fid.fid_score")
skdata = pytest.importorskip("skimage.data")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from lliejax.interop import torch_io  # noqa: E402
from lliejax.metrics import fid as F  # noqa: E402

FEATURE_RTOL = 1e-4


def _photos():
  """Photos of three non-299 sizes: shrunk in both axes, shrunk in one and enlarged in the other, enlarged."""
  return [skdata.chelsea(), skdata.coffee()[:, :280], skdata.astronaut()[::4, ::5]]


def _to_torch(img: np.ndarray):
  """uint8 HWC -> float NCHW in [0, 1], like ``torchvision.transforms.ToTensor``."""
  return torch.from_numpy(img).permute(2, 0, 1)[None].float().div(255)


def _random_fid_inception():
  """A freshly initialised ``fid_inception_v3()`` structure (torchvision Inception3 with the FID blocks)."""
  inc = pfi._inception_v3(num_classes=1008, aux_logits=False, weights=None)  # pylint: disable=protected-access
  blocks = dict(Mixed_5b=pfi.FIDInceptionA(192, pool_features=32), Mixed_5c=pfi.FIDInceptionA(256, pool_features=64),
                Mixed_5d=pfi.FIDInceptionA(288, pool_features=64), Mixed_6b=pfi.FIDInceptionC(768, channels_7x7=128),
                Mixed_6c=pfi.FIDInceptionC(768, channels_7x7=160), Mixed_6d=pfi.FIDInceptionC(768, channels_7x7=160),
                Mixed_6e=pfi.FIDInceptionC(768, channels_7x7=192), Mixed_7b=pfi.FIDInceptionE_1(1280),
                Mixed_7c=pfi.FIDInceptionE_2(2048))
  for name, block in blocks.items():
    setattr(inc, name, block)
  return inc


def _torch_features(model, images) -> np.ndarray:
  with torch.no_grad():
    return np.concatenate([model(_to_torch(img))[0][:, :, 0, 0].numpy() for img in images]).astype(np.float64)


def _agreement(got: np.ndarray, ref: np.ndarray) -> tuple[float, float]:
  """(max |got - ref| / max |ref|, max elementwise |got - ref| / (|ref| + 1e-3 max |ref|))."""
  err = np.abs(got - ref)
  scale = np.abs(ref).max()
  return float(err.max() / scale), float((err / (np.abs(ref) + 1e-3 * scale)).max())


@pytest.fixture(scope="module")
def torch_fid(tmp_path_factory):
  """pytorch-fid's InceptionV3 with random weights and non-trivial BatchNorm statistics, and its ``.pth``."""
  torch.manual_seed(0)
  urls, inner = [], []
  original = pfi.fid_inception_v3

  def fake_download(url, *args, **kwargs):
    urls.append(url)
    return _random_fid_inception().state_dict()

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(pfi, "load_state_dict_from_url", fake_download)
    mp.setattr(pfi, "fid_inception_v3", lambda: inner.append(original()) or inner[-1])
    model = pfi.InceptionV3(output_blocks=[3], resize_input=True, normalize_input=True, use_fid_inception=True)
  assert urls == [pfi.FID_WEIGHTS_URL]

  # Random affine BatchNorm parameters, running statistics calibrated on the photos (so every layer stays in a
  # sensible range), then perturbed so that they differ from the batch statistics.
  photos = _photos()
  bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  assert len(bns) == 94
  gen = torch.Generator().manual_seed(1)
  with torch.no_grad():
    for bn in bns:
      bn.weight.copy_(0.5 + torch.rand(bn.weight.shape, generator=gen))
      bn.bias.copy_(0.2 * torch.randn(bn.bias.shape, generator=gen))
      bn.reset_running_stats()
      bn.momentum = None  # cumulative average over the calibration calls
    model.train()
    for img in photos:
      model(_to_torch(img))
    model.eval()
    for bn in bns:
      bn.running_var.mul_(torch.exp(0.3 * torch.randn(bn.running_var.shape, generator=gen)))
      bn.running_mean.add_(0.2 * bn.running_var.sqrt() * torch.randn(bn.running_mean.shape, generator=gen))
  path = str(tmp_path_factory.mktemp("fid") / "random_pt_inception.pth")
  torch.save(inner[0].state_dict(), path)  # the layout of pt_inception-2015-12-05-6726825d.pth
  ref = _torch_features(model, photos)
  assert ref.shape == (3, 2048) and ref.std() > 1 and (ref > 0).mean() > 0.5
  return types.SimpleNamespace(model=model, inception=inner[0], path=path, photos=photos, ref=ref)


@pytest.fixture(scope="module")
def variables(torch_fid):
  return F.load_inception(torch_fid.path)


# ------------------------------------------------------------------------------------------------ network
@pytest.mark.parametrize("shape", [(300, 451), (400, 280), (128, 103), (77, 123), (299, 299), (600, 299)])
def test_resize_matches_interpolate(shape):
  img = np.random.default_rng(0).random((*shape, 3), dtype=np.float32)
  ref = torch.nn.functional.interpolate(torch.from_numpy(img).permute(2, 0, 1)[None], size=(299, 299),
                                        mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
  got = np.asarray(F.resize_bilinear(jnp.asarray(img)[None]))[0]
  assert np.abs(got - ref).max() <= 3e-7


def test_features_match_pytorch_fid(torch_fid, variables):
  got = F.inception_features(torch_fid.photos, variables, batch_size=4)  # uint8 photos of three sizes
  assert got.shape == (3, 2048) and got.dtype == np.float64
  rel_max, rel_elem = _agreement(got, torch_fid.ref)
  print(f"\nFID Inception features vs pytorch-fid (random weights): max|d|/max|ref| = {rel_max:.2e}, "
        f"max elementwise rel = {rel_elem:.2e}")
  assert rel_max < 1e-5
  assert rel_elem < FEATURE_RTOL * 10
  np.testing.assert_allclose(got, torch_fid.ref, rtol=FEATURE_RTOL, atol=FEATURE_RTOL * np.abs(torch_fid.ref).max())


def test_module_resizes_inside(torch_fid, variables):
  """``FIDInceptionV3`` on a raw non-299 batch (resize inside the module) equals the streaming route."""
  img = torch_fid.photos[0]
  got = np.asarray(F.FIDInceptionV3().apply(variables, jnp.asarray(img, jnp.float32)[None] / 255), np.float64)
  rel_max, _ = _agreement(got, torch_fid.ref[:1])
  assert rel_max < 1e-5


def test_npz_route_needs_no_torch(torch_fid, variables, tmp_path, monkeypatch):
  npz = F.convert_inception(torch_fid.path, tmp_path / "inception.npz")
  with pytest.raises(FileExistsError):
    F.convert_inception(torch_fid.path, npz)
  with pytest.raises(ValueError, match=".npz"):
    F.convert_inception(torch_fid.path, tmp_path / "inception.bin")

  def no_torch(*args, **kwargs):
    raise AssertionError("the .npz route must not read torch files")

  monkeypatch.setattr(torch_io, "load_state_dict", no_torch)
  from_npz = F.load_inception(npz)
  flat_a = jax.tree_util.tree_leaves_with_path(from_npz)
  flat_b = jax.tree_util.tree_leaves_with_path(variables)
  assert [p for p, _ in flat_a] == [p for p, _ in flat_b]
  assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(flat_a, flat_b))
  got = F.inception_features([img.astype(np.float32) / 255 for img in torch_fid.photos], from_npz, batch_size=4)
  rel_max, _ = _agreement(got, torch_fid.ref)
  assert rel_max < 1e-5


def test_other_state_dict_layouts(torch_fid, variables):
  """pytorch-fid's ``InceptionV3`` keys (``blocks.i.j``); the file without ``fc`` and BatchNorm counters."""
  leaves = jax.tree_util.tree_leaves(variables)
  module_sd = torch_fid.model.state_dict()
  assert any(k.startswith("blocks.3.2.") for k in module_sd)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(F.inception_variables(module_sd)),
                                                   leaves))
  bare = {k: v for k, v in torch_fid.inception.state_dict().items()
          if not k.startswith("fc.") and not k.endswith("num_batches_tracked")}
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree_util.tree_leaves(F.inception_variables(bare)), leaves))
  kernel = variables["params"]["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"]
  weight = torch_fid.inception.Mixed_6b.branch7x7_2.conv.weight.detach().numpy()
  assert kernel.shape == (1, 7, 128, 128) and np.array_equal(np.asarray(kernel), weight.transpose(2, 3, 1, 0))


def test_streaming_accumulator(torch_fid, variables, monkeypatch):
  photos = torch_fid.photos
  acc = F.FIDAccumulator(variables, batch_size=4)
  for img in photos:  # one at a time, sizes differ
    acc.update(img, None)
  acc.update(real=photos[::-1])  # a list
  acc.update(real=np.stack([photos[2]] * 5))  # an NHWC batch: 8 real images = two full batches
  fake, real = acc.fake.features(), acc.real.features()
  assert len(acc.fake) == 3 and real.shape == (8, 2048)
  assert _agreement(fake, torch_fid.ref)[0] < 1e-5
  np.testing.assert_allclose(real, torch_fid.ref[[2, 1, 0, 2, 2, 2, 2, 2]], rtol=0, atol=1e-5 * np.abs(real).max())

  seen = []
  monkeypatch.setattr(F, "frechet_distance", lambda *args: seen.append(args) or 1.5)
  assert acc.compute() == 1.5
  mu, sigma = F.activation_statistics(fake)
  np.testing.assert_array_equal(seen[0][0], mu)
  np.testing.assert_array_equal(seen[0][1], sigma)
  np.testing.assert_array_equal(seen[0][2], real.mean(0))
  assert acc.compute(real_statistics=("m", "s")) == 1.5 and seen[1][2:] == ("m", "s")
  assert F.fid(photos, photos[::-1], variables, batch_size=4) == 1.5
  np.testing.assert_allclose(seen[2][0], mu, rtol=1e-6)
  acc.reset()
  assert len(acc.fake) == 0 and acc.fake.features().shape == (0, 2048)
  with pytest.raises(ValueError, match="at least 2"):
    acc.compute()
  with pytest.raises(ValueError, match="RGB"):
    acc.update(np.zeros((4, 4, 4), np.float32))
  with pytest.raises(ValueError, match="uint8"):
    acc.update(np.zeros((4, 4, 3), np.int32))


# ------------------------------------------------------------------------------------------------ distance
def _random_stats(rng, d, n):
  x = rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) + rng.standard_normal(d)
  return F.activation_statistics(x)


def _reference_fd(*args, **kwargs):
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")  # scipy's deprecation of sqrtm(disp=False), used by pytorch-fid
    return fid_score.calculate_frechet_distance(*args, **kwargs)


@pytest.mark.parametrize("d,n", [(64, 500), (64, 40), (128, 20)])  # full rank, rank 39 and rank 19 covariances
def test_frechet_distance_matches_pytorch_fid(d, n):
  rng = np.random.default_rng(d + n)
  s1, s2 = _random_stats(rng, d, n), _random_stats(rng, d, n)
  ref = _reference_fd(*s1, *s2)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", category=LinAlgWarning)  # ill-conditioned (rank-deficient) products
    got = F.frechet_distance(*s1, *s2)
  assert isinstance(got, float) and got > 0
  assert abs(got - ref) <= 1e-6 * abs(ref)


def test_activation_statistics_and_self_distance():
  feats = np.random.default_rng(0).standard_normal((300, 64)).astype(np.float32) * 3 + 1
  mu, sigma = F.activation_statistics(feats)
  np.testing.assert_allclose(mu, feats.astype(np.float64).mean(0), rtol=1e-12)
  np.testing.assert_allclose(sigma, np.cov(feats.astype(np.float64), rowvar=False), rtol=1e-12)
  assert abs(F.frechet_distance(mu, sigma, mu, sigma)) < 1e-6 * np.trace(sigma)
  with pytest.raises(ValueError, match="at least 2"):
    F.activation_statistics(feats[:1])


def test_frechet_singular_retry_and_imaginary(monkeypatch):
  from scipy import linalg  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(3)
  s1, s2 = _random_stats(rng, 16, 100), _random_stats(rng, 16, 100)
  real_sqrtm = linalg.sqrtm
  calls = []

  def failing_first(a, *args, **kwargs):  # the first root of every evaluation is "not finite"
    calls.append(a)
    root = real_sqrtm(a) if len(calls) % 2 == 0 else np.full(a.shape, np.inf)
    return (root, 0.0) if kwargs.get("disp") is False else root

  monkeypatch.setattr(linalg, "sqrtm", failing_first)
  ref = _reference_fd(*s1, *s2, eps=1e-3)
  with pytest.warns(RuntimeWarning, match="singular"):
    got = F.frechet_distance(*s1, *s2, eps=1e-3)
  assert len(calls) == 4 and abs(got - ref) <= 1e-9 * abs(ref)
  monkeypatch.setattr(linalg, "sqrtm", real_sqrtm)
  # A product with a negative eigenvalue: a square root with an imaginary diagonal, refused by both.
  mu = np.zeros(2)
  with pytest.raises(ValueError, match="Imaginary component"):
    _reference_fd(mu, np.diag([1.0, 1.0]), mu, np.diag([-1.0, 1.0]))
  with pytest.raises(ValueError, match="imaginary component"):
    F.frechet_distance(mu, np.diag([1.0, 1.0]), mu, np.diag([-1.0, 1.0]))
  with pytest.raises(ValueError, match="different"):
    F.frechet_distance(np.zeros(3), np.eye(3), np.zeros(2), np.eye(2))


# ------------------------------------------------------------------------------------------------ errors
def test_no_weights_path(monkeypatch, tmp_path):
  monkeypatch.delenv(F.WEIGHTS_ENV, raising=False)
  monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no pytorch-fid cache copy there
  assert F.default_weights_path() is None
  with pytest.raises(FileNotFoundError) as e:
    F.load_inception()
  assert F.FID_WEIGHTS_FILE in str(e.value) and F.FID_WEIGHTS_URL in str(e.value)
  assert F.FID_WEIGHTS_URL == pfi.FID_WEIGHTS_URL
  with pytest.raises(FileNotFoundError, match="no such file") as e:
    F.load_inception(tmp_path / "nowhere.pth")
  assert F.FID_WEIGHTS_URL in str(e.value)
  cached = tmp_path / "hub" / "checkpoints" / F.FID_WEIGHTS_FILE
  cached.parent.mkdir(parents=True)
  cached.write_bytes(b"")
  assert F.default_weights_path() == str(cached)
  monkeypatch.setenv(F.WEIGHTS_ENV, "/some/where.pth")
  assert F.default_weights_path() == "/some/where.pth"


def test_wrong_keys_and_shapes(torch_fid, tmp_path):
  sd = torch_fid.inception.state_dict()
  broken = {k: v for k, v in sd.items() if not k.startswith("Mixed_7c.")}
  broken["extra.weight"] = torch.zeros(3)
  broken["Mixed_5b.branch1x1.conv.weight"] = torch.zeros(64, 192, 3, 3)
  path = str(tmp_path / "broken.pth")
  torch.save(broken, path)
  with pytest.raises(F.InceptionWeightsError) as e:
    F.load_inception(path)
  msg = str(e.value)
  assert path in msg and F.FID_WEIGHTS_FILE in msg
  assert "Mixed_7c.branch1x1.conv.weight" in msg and "extra.weight" in msg and "... and" in msg
  assert "Mixed_5b.branch1x1.conv.weight: (64, 192, 3, 3) vs (64, 192, 1, 1)" in msg
  assert len(e.value.missing) == 9 * 5 and e.value.unexpected == ["extra.weight"]
  assert msg.count("\n") < 40  # a few keys, not hundreds

  # torchvision's ImageNet Inception-v3: same key names, but 1000 classes and AuxLogits.
  tv = pfi._inception_v3(num_classes=1000, aux_logits=True, weights=None)  # pylint: disable=protected-access
  with pytest.raises(F.InceptionWeightsError, match="torchvision's ImageNet Inception-v3"):
    F.inception_variables(tv.state_dict())
  bad_npz = tmp_path / "bad.npz"
  bad_npz.write_bytes(b"not a zip")
  with pytest.raises(F.InceptionWeightsError, match="cannot read as .npz"):
    F.load_inception(bad_npz)


def test_official_name_checksum(torch_fid, tmp_path):
  fake = tmp_path / F.FID_WEIGHTS_FILE
  fake.write_bytes(open(torch_fid.path, "rb").read())
  with pytest.raises(F.InceptionWeightsError, match="sha256"):
    F.load_inception(fake)
  assert F.load_inception(fake, check_hash=False)["params"].keys() == {
      "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "Mixed_5b", "Mixed_5c",
      "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"}


# ------------------------------------------------------------------------------------------------ real weights
def test_real_weights_match_pytorch_fid(monkeypatch):
  path = os.environ.get(F.WEIGHTS_ENV)
  if not path or not os.path.isfile(path):
    pytest.skip(f"set ${F.WEIGHTS_ENV} to pytorch-fid's {F.FID_WEIGHTS_FILE} (from {F.FID_WEIGHTS_URL}) to compare "
                "the features with the real weights")
  monkeypatch.setattr(pfi, "load_state_dict_from_url",
                      lambda url, *a, **k: torch.load(path, map_location="cpu", weights_only=True))
  model = pfi.InceptionV3([3]).eval()
  photos = _photos()
  ref = _torch_features(model, photos)
  got = F.inception_features(photos, F.load_inception(path), batch_size=4)
  rel_max, rel_elem = _agreement(got, ref)
  print(f"\nreal weights: max|d|/max|ref| = {rel_max:.2e}, max elementwise rel = {rel_elem:.2e}")
  assert rel_max < FEATURE_RTOL
  np.testing.assert_allclose(got, ref, rtol=FEATURE_RTOL, atol=FEATURE_RTOL * np.abs(ref).max())


def test_eval_folders_fid_uses_the_files_features(torch_fid, tmp_path, monkeypatch):
  """``lliejax eval --results A --gt B --fid-weights W``: the FID statistics are those of the files' features."""
  from PIL import Image

  from lliejax import cli

  res, gt = tmp_path / "res", tmp_path / "gt"
  res.mkdir()
  gt.mkdir()
  photos = [np.ascontiguousarray(p) for p in torch_fid.photos]
  for i, img in enumerate(photos):
    Image.fromarray(img).save(gt / f"{i}.png")
    Image.fromarray(img[::-1]).save(res / f"{i}.png")  # flipped: other features
  seen = []
  monkeypatch.setattr(F, "frechet_distance", lambda *args: seen.append(args) or 12.5)
  out = str(tmp_path / "out")
  assert cli.main(["eval", "--protocol", "reddit", "--results", str(res), "--gt", str(gt), "--fid-weights",
                   torch_fid.path, "--out", out, "--quiet"]) == 0
  ref_fake = _torch_features(torch_fid.model, [np.ascontiguousarray(p[::-1]) for p in photos])
  ref_real = _torch_features(torch_fid.model, photos)
  scale = np.abs(ref_real).max()
  np.testing.assert_allclose(seen[0][0], ref_fake.mean(0), rtol=0, atol=1e-5 * scale)
  np.testing.assert_allclose(seen[0][2], ref_real.mean(0), rtol=0, atol=1e-5 * scale)
  import json
  with open(os.path.join(out, "metrics_reddit.json")) as f:
    assert json.load(f)["mean"]["fid"] == 12.5
