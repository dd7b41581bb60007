"""Tests of lliejax.data: TFDS builders (array_record, no TensorFlow), the demo set and the grain pipeline."""
import os
import subprocess
import sys
import textwrap
import zlib

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from lliejax import data
from lliejax.data import augment, demo, lol, registry, source

tfds.disable_progress_bar()

H, W = 40, 48


def _pair(rng, h=H, w=W):
  """GT with values in {0, 4, ..., 252} and LQ = GT // 4 (exactly GT / 4, so linear ops commute)."""
  gt = (rng.integers(0, 64, size=(h, w, 3)) * 4).astype(np.uint8)
  return gt // 4, gt


def _save(path, img):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  Image.fromarray(img).save(path, quality=95) if path.endswith(".jpg") else Image.fromarray(img).save(path)


def _write_split(root, low_rel, high_rel, low_names, high_names, seed, sizes=None):
  """Writes pairs; returns {low stem: (lq, gt)} as PIL decodes them back."""
  rng = np.random.default_rng(seed)
  out = {}
  for k, (ln, hn) in enumerate(zip(low_names, high_names)):
    lq, gt = _pair(rng, *(sizes[k] if sizes else (H, W)))
    lp, hp = os.path.join(root, low_rel, ln), os.path.join(root, high_rel, hn)
    _save(lp, lq)
    _save(hp, gt)
    out[os.path.splitext(ln)[0]] = (np.asarray(Image.open(lp).convert("RGB")),
                                    np.asarray(Image.open(hp).convert("RGB")))
  return out


def _make_lol_v1(root, n_train=6, n_test=3):
  names = [f"{i}.png" for i in range(1, n_train + 1)]
  train = _write_split(root, "our485/low", "our485/high", names, names, seed=1)
  test_names = [f"{i}.png" for i in (1, 22, 111)[:n_test]]
  test = _write_split(root, "eval15/low", "eval15/high", test_names, test_names, seed=2)
  return {"train": train, "test": test}


def _make_lol_v2(root, subset, n_train=5, n_test=2, real=True):
  base = os.path.join(root, subset)
  out = {}
  for split, n, off in (("Train", n_train, 1), ("Test", n_test, 690)):
    ids = range(off, off + n)
    if real:
      low, high = [f"low{i:05d}.png" for i in ids], [f"normal{i:05d}.png" for i in ids]
    else:
      low = high = [f"r{i:03d}x.png" for i in ids]
      low[0] = high[0] = low[0][:-4] + ".jpg"  # a JPEG pair: stored as PNG of the decoded pixels
    out[split.lower()] = _write_split(base, f"{split}/Low", f"{split}/Normal", low, high, seed=off)
  return out


def _read_all(name, data_dir, split):
  builder = registry.get_builder(name, data_dir=data_dir)
  src = source.read_source(builder, split)
  return {r["name"]: (r["lq"], r["gt"]) for r in map(source.decode_record, (src[i] for i in range(len(src))))}


def _assert_same(got, expected):
  assert sorted(got) == sorted(expected)
  for k, (lq, gt) in expected.items():
    np.testing.assert_array_equal(got[k][0], lq)
    np.testing.assert_array_equal(got[k][1], gt)
    assert got[k][0].dtype == np.uint8 and got[k][0].shape == (H, W, 3)


@pytest.fixture(scope="module")
def lol_v1(tmp_path_factory):
  manual = str(tmp_path_factory.mktemp("lolv1_manual"))
  expected = _make_lol_v1(manual)
  data_dir = str(tmp_path_factory.mktemp("tfds"))
  registry.prepare("lol_v1", data_dir=data_dir, manual_dir=manual)
  return {"manual_dir": manual, "data_dir": data_dir, "expected": expected}


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.mktemp("tfds_demo"))
  demo.build_demo(data_dir)
  return data_dir


def _cfg(lol_v1, **kw):
  cfg = {"name": "lol_v1", "data_dir": lol_v1["data_dir"], "patch_size": 24, "resize_prob": 0.5}
  cfg.update(kw)
  return cfg


def _take(it, k):
  return [next(it) for _ in range(k)]


# ------------------------------------------------------------------------------------------------------------
# Builders


def test_lol_v1_roundtrip_and_idempotent(lol_v1):
  for split in ("train", "test"):
    _assert_same(_read_all("lol_v1", lol_v1["data_dir"], split), lol_v1["expected"][split])
  builder = registry.get_builder("lol_v1", data_dir=lol_v1["data_dir"])
  assert builder.info.splits["train"].num_examples == 6 and builder.info.splits["test"].num_examples == 3
  files = sorted(os.listdir(builder.data_dir))
  assert any(f.startswith("lol_v1-train.array_record") for f in files)
  stamp = os.path.getmtime(os.path.join(builder.data_dir, "dataset_info.json"))
  again = registry.prepare("lol_v1", data_dir=lol_v1["data_dir"])  # built: no manual_dir needed, no rebuild
  assert again.is_prepared()
  assert os.path.getmtime(os.path.join(builder.data_dir, "dataset_info.json")) == stamp


@pytest.mark.parametrize("as_subfolder", [False, True])
def test_lol_v2_real_roundtrip(tmp_path, as_subfolder):
  expected = _make_lol_v2(str(tmp_path / "LOL-v2"), "Real_captured")
  manual = tmp_path / "LOL-v2" / ("Real_captured" if as_subfolder else "")
  registry.prepare("lol_v2_real", data_dir=str(tmp_path / "tfds"), manual_dir=str(manual))
  for split in ("train", "test"):
    got = _read_all("lol_v2_real", str(tmp_path / "tfds"), split)
    _assert_same(got, expected[split])  # names are the low-light stems, e.g. low00001


def test_lol_v2_synthetic_roundtrip(tmp_path):
  expected = _make_lol_v2(str(tmp_path / "m"), "Synthetic", real=False)
  registry.prepare("lol_v2_synthetic", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "m"))
  for split in ("train", "test"):
    _assert_same(_read_all("lol_v2_synthetic", str(tmp_path / "tfds"), split), expected[split])


def _make_velol(root, split_counts=(("train", 3, 1), ("test", 2, 401))):
  base = os.path.join(root, "VE-LOL-L-Cap-Full")
  out = {}
  for split, n, off in split_counts:
    ids = range(off, off + n)
    out[split] = _write_split(base, f"{split}/low", f"{split}/high", [f"low{i:05d}.png" for i in ids],
                              [f"normal{i:05d}.png" for i in ids], seed=off + 7)
  return out


def test_velol_roundtrip(tmp_path):
  """VE-LOL-L-Cap-Full: manual_dir = VE-LOL-L; AnlightenDiff's 'normal' -> 'low' name rule pairs as the ids."""
  expected = _make_velol(str(tmp_path / "VE-LOL-L"))
  registry.prepare("velol", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "VE-LOL-L"))
  for split in ("train", "test"):
    got = _read_all("velol", str(tmp_path / "tfds"), split)
    _assert_same(got, expected[split])
    for name in got:  # the official rule: the high file's name with 'normal' replaced by 'low'
      assert name.replace("low", "normal") + ".png" in os.listdir(tmp_path / f"VE-LOL-L/VE-LOL-L-Cap-Full/{split}/high")


def test_union_lol_v1_v2_velol(tmp_path):
  """AnlightenDiff's LOL+LOLv2+VELOL: the official data/ folder (LOL-v2 folders renamed to low/high as its README
  suggests), one train split of all three with prefixed names, LOL eval15 as 'test' (train.yaml), the other tests named."""
  data = tmp_path / "data"
  v1 = _make_lol_v1(str(data / "LOL"), n_train=2, n_test=1)
  v2 = _make_lol_v2(str(data / "LOL-v2"), "Real_captured", n_train=2, n_test=1)
  for split in ("Train", "Test"):
    os.rename(data / f"LOL-v2/Real_captured/{split}/Normal", data / f"LOL-v2/Real_captured/{split}/high")
  ve = _make_velol(str(data / "VE-LOL-L"), (("train", 2, 1), ("test", 1, 401)))
  tfds_dir = str(tmp_path / "tfds")
  registry.prepare("lol_v1_v2_velol", data_dir=tfds_dir, manual_dir=str(tmp_path))  # data/ found one level down
  train = {f"lol_v1/{k}": v for k, v in v1["train"].items()}
  train.update({f"lol_v2_real/{k}": v for k, v in v2["train"].items()})
  train.update({f"velol/{k}": v for k, v in ve["train"].items()})
  _assert_same(_read_all("lol_v1_v2_velol", tfds_dir, "train"), train)
  _assert_same(_read_all("lol_v1_v2_velol", tfds_dir, "test"), {f"lol_v1/{k}": v for k, v in v1["test"].items()})
  _assert_same(_read_all("lol_v1_v2_velol", tfds_dir, "test_lol_v2_real"),
               {f"lol_v2_real/{k}": v for k, v in v2["test"].items()})
  _assert_same(_read_all("lol_v1_v2_velol", tfds_dir, "test_velol"), {f"velol/{k}": v for k, v in ve["test"].items()})
  # a missing member names the folder it expected and its alternatives; nothing is written
  bad = tmp_path / "bad" / "data"
  _make_lol_v1(str(bad / "LOLdataset"), n_train=1, n_test=1)
  with pytest.raises(ValueError, match=r"lol_v1_v2_velol: expected folder .*LOL-v2/Real_captured/Train/Low \(or "
                                       r"LOLv2/LOL-v2/Real_captured/Train/Low\) \(split 'train'\)"):
    registry.prepare("lol_v1_v2_velol", data_dir=str(tmp_path / "tfds2"), manual_dir=str(bad))
  assert not os.path.exists(tmp_path / "tfds2" / "lol_v1_v2_velol")


def test_missing_folder_errors(tmp_path):
  manual = tmp_path / "m"
  _write_split(str(manual), "our485/low", "our485/high", ["1.png"], ["1.png"], seed=0)
  with pytest.raises(ValueError, match=r"lol_v1.*eval15"):
    registry.prepare("lol_v1", data_dir=str(tmp_path / "tfds"), manual_dir=str(manual))
  with pytest.raises(ValueError, match=r"lol_v2_real.*Real_captured"):
    registry.prepare("lol_v2_real", data_dir=str(tmp_path / "tfds"), manual_dir=str(manual))
  with pytest.raises(ValueError, match="does not exist"):
    registry.prepare("lol_v1", data_dir=str(tmp_path / "tfds"), manual_dir=str(tmp_path / "nope"))
  with pytest.raises(ValueError, match="manual_dir"):
    registry.prepare("lol_v2_synthetic", data_dir=str(tmp_path / "tfds"))
  with pytest.raises(ValueError, match="lliejax_demo, lol_v1, lol_v2_real, lol_v2_synthetic, velol, lol_v1_v2_velol"):
    registry.get_builder("lol_v3", data_dir=str(tmp_path / "tfds"))
  assert not os.path.exists(tmp_path / "tfds" / "lol_v1")


def test_pairing_errors(tmp_path):
  base = tmp_path / "Real_captured"
  _write_split(str(base), "Test/Low", "Test/Normal", ["low00001.png"], ["normal00001.png"], seed=0)
  # count mismatch
  _write_split(str(base), "Train/Low", "Train/Normal", ["low00001.png"], ["normal00001.png"], seed=0)
  _save(str(base / "Train/Low/low00002.png"), np.zeros((H, W, 3), np.uint8))
  with pytest.raises(ValueError, match=r"Train/Low holds 2 images but .*Train/Normal holds 1"):
    registry.prepare("lol_v2_real", data_dir=str(tmp_path / "tfds"), manual_dir=str(base))
  # id mismatch
  _save(str(base / "Train/Normal/normal00003.png"), np.zeros((H, W, 3), np.uint8))
  with pytest.raises(ValueError, match=r"cannot pair .*Train/Low.*ids only in .*\[2\].*\[3\]"):
    registry.prepare("lol_v2_real", data_dir=str(tmp_path / "tfds"), manual_dir=str(base))
  # pairing by numeric id when the names differ; pairs in sorted LQ-name order
  _write_split(str(tmp_path / "ids"), "a", "b", ["low9.png", "low10.png"], ["normal9.png", "normal10.png"], seed=0)
  pairs = lol.pair_files(str(tmp_path / "ids/a"), str(tmp_path / "ids/b"), dataset="x")
  assert [(os.path.basename(p[1]), p[2]) for p in pairs] == [("normal10.png", "low10"), ("normal9.png", "low9")]
  # size mismatch inside a pair
  os.remove(base / "Train/Normal/normal00003.png")
  _save(str(base / "Train/Normal/normal00002.png"), np.zeros((8, 8, 3), np.uint8))
  with pytest.raises(ValueError, match="differ in size"):
    registry.prepare("lol_v2_real", data_dir=str(tmp_path / "tfds"), manual_dir=str(base))


# ------------------------------------------------------------------------------------------------------------
# Demo


def test_demo_dataset(demo_dir):
  builder = registry.prepare("lliejax_demo", data_dir=demo_dir)
  assert builder.info.splits["train"].num_examples == len(demo.TRAIN_PHOTOS)
  assert builder.info.splits["test"].num_examples == len(demo.TEST_PHOTOS)
  cfg = {"name": "lliejax_demo", "data_dir": demo_dir}
  names = []
  for item in data.eval_items(cfg):
    ex = item.load()
    lq, gt = ex["lq"], ex["gt"]
    assert lq.shape == gt.shape and lq.shape[2] == 3 and max(lq.shape[:2]) == demo.DEFAULT_MAX_SIDE
    assert lq.dtype == np.float32 and 0 <= lq.min() and lq.max() <= 1
    assert lq.mean() < 0.5 * gt.mean()
    psnr = 10 * np.log10(1 / np.mean((lq - gt) ** 2))
    assert psnr < 20
    assert ex["name"] == item.name
    names.append(item.name)
  assert names == sorted(demo.TEST_PHOTOS)
  assert [e.name for e in data.eval_items(cfg, max_images=2)] == sorted(demo.TEST_PHOTOS)[:2]
  # The stored GT is the downscaled bundled photo; the LQ is darken() of it with the per-photo seed.
  rec = _read_all("lliejax_demo", demo_dir, "test")["coffee"]
  gt = demo.downscale(demo.load_photo("coffee"), demo.DEFAULT_MAX_SIDE)
  np.testing.assert_array_equal(rec[1], gt)
  np.testing.assert_array_equal(rec[0], demo.darken(gt, np.random.default_rng([0, zlib.crc32(b"coffee")])))


def test_darken():
  img = demo.load_photo("astronaut")[:64, :64]
  a = demo.darken(img, np.random.default_rng(0))
  b = demo.darken(img, np.random.default_rng(0))
  c = demo.darken(img, np.random.default_rng(1))
  np.testing.assert_array_equal(a, b)
  assert a.dtype == np.uint8 and a.shape == img.shape and not np.array_equal(a, c)
  # Noise-free model with fixed parameters: round(255 * a * x ** g).
  clean = demo.darken(img, np.random.default_rng(0), exposure=0.5, gamma=2.0, cast=0.0, photons=1e12,
                      read_noise=0.0)
  ref = np.round(255 * 0.5 * (img / 255.0) ** 2)
  assert np.abs(clean.astype(float) - ref).max() <= 1


# ------------------------------------------------------------------------------------------------------------
# Pipeline


def test_train_batches_are_aligned(lol_v1):
  it = data.train_iterator(_cfg(lol_v1), seed=0, batch_size=4)
  for batch in _take(it, 12):
    assert set(batch) == {"lq", "gt", "index"}
    assert batch["lq"].shape == batch["gt"].shape == (4, 24, 24, 3) and batch["lq"].dtype == np.float32
    assert 0 <= batch["gt"].min() and batch["gt"].max() <= 1
    # LQ = GT / 4 holds pixelwise after resize/crop/flip/transpose iff both got the same geometric ops.
    np.testing.assert_allclose(batch["lq"], batch["gt"] / 4, atol=2e-6)


def test_paired_augment_matches_reference():
  """Replays the draws and checks against full-image resize (jax.image.resize) + crop + flips, all 8 poses."""
  import jax
  rng_img = np.random.default_rng(0)
  lq, gt = _pair(rng_img, 30, 37)
  seen = set()
  for s in range(40):
    out_lq, out_gt = augment.paired_augment(lq, gt, np.random.default_rng(s), patch_size=16, resize_prob=0.5)
    r = np.random.default_rng(s)
    resize = r.random() < 0.5
    img = gt.astype(np.float32) / 255
    if resize:
      img = np.asarray(jax.image.resize(img, (24, 29, 3), "linear", antialias=False))
    top, left = r.integers(0, img.shape[0] - 15), r.integers(0, img.shape[1] - 15)
    x = img[top:top + 16, left:left + 16]
    hf, vf, tr = r.random() < 0.5, r.random() < 0.5, r.random() < 0.5
    x = x[:, ::-1] if hf else x
    x = x[::-1] if vf else x
    x = x.transpose(1, 0, 2) if tr else x
    np.testing.assert_allclose(out_gt, x, atol=1e-5)
    np.testing.assert_allclose(out_lq, out_gt / 4, atol=2e-6)
    seen.add((resize, hf, vf, tr))
  assert len({k[1:] for k in seen}) == 8 and {k[0] for k in seen} == {False, True}
  with pytest.raises(ValueError, match="smaller than patch_size 64"):
    augment.paired_augment(lq, gt, np.random.default_rng(0), patch_size=64, name="tiny")


def test_crop_flip_policy():
  """The same crop / flip / rotation for LQ and GT (LQ = GT / 4 survives), every pose drawn, config fields read."""
  lq, gt = _pair(np.random.default_rng(1), 30, 37)
  policy = augment.from_config({"augment": "crop_flip", "patch_size": 16, "rot90": True})
  assert policy == augment.CropFlip(patch_size=16, rot90=True)
  poses = set()
  for s in range(60):
    out_lq, out_gt = policy(lq, gt, np.random.default_rng(s))
    r = np.random.default_rng(s)
    top, left, hflip, k = r.integers(0, 15), r.integers(0, 22), r.random() < 0.5, r.integers(0, 4)
    x = gt[top:top + 16, left:left + 16].astype(np.float32) / 255
    np.testing.assert_allclose(out_gt, np.rot90(x[:, ::-1] if hflip else x, k), atol=1e-7)
    np.testing.assert_allclose(out_lq, out_gt / 4, atol=2e-6)
    poses.add((bool(hflip), int(k)))
  assert len(poses) == 8
  with pytest.raises(ValueError, match="config.data.augment='mixup'"):
    augment.from_config({"augment": "mixup"})


def test_determinism_and_resume(lol_v1):
  cfg = _cfg(lol_v1)
  a = _take(data.train_iterator(cfg, seed=7, batch_size=4), 6)
  b = _take(data.train_iterator(cfg, seed=7, batch_size=4), 6)
  c = _take(data.train_iterator(cfg, seed=8, batch_size=4), 6)
  r = _take(data.train_iterator(cfg, seed=7, batch_size=4, start_step=4), 2)
  for x, y in zip(a, b):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  assert any(not np.array_equal(x["gt"], y["gt"]) for x, y in zip(a, c))
  for x, y in zip(a[4:], r):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
  # Each epoch (6 records) is a permutation of the split, reshuffled between epochs.
  order = np.concatenate([x["index"] for x in a])
  for e in range(4):
    assert sorted(order[6 * e:6 * e + 6]) == list(range(6))
  assert not all(np.array_equal(order[:6], order[6 * e:6 * e + 6]) for e in range(1, 4))


def test_process_sharding(lol_v1):
  """Each process reads its slice of every global batch: the global batches do not depend on the process count."""
  cfg = _cfg(lol_v1)
  whole = _take(data.train_iterator(cfg, seed=0, batch_size=6), 4)
  for count in (2, 3):
    parts = [_take(data.train_iterator(cfg, seed=0, batch_size=6, process_index=p, process_count=count,
                                       start_step=1), 3) for p in range(count)]
    assert parts[0][0]["lq"].shape[0] == 6 // count
    for step in range(3):
      for k in whole[0]:
        np.testing.assert_array_equal(np.concatenate([part[step][k] for part in parts]), whole[step + 1][k])
  with pytest.raises(ValueError, match="not divisible"):
    data.train_iterator(cfg, seed=0, batch_size=3, process_count=2)


def test_eval_items(lol_v1):
  exp = lol_v1["expected"]["test"]
  items = data.eval_items(_cfg(lol_v1, eval_max_images=2))
  assert [g.name for g in items] == ["1", "111"]  # sorted names like the official code, truncated
  for item in items:
    g = item.load()
    assert g["lq"].shape == (H, W, 3) and g["lq"].dtype == np.float32
    np.testing.assert_array_equal(np.round(g["gt"] * 255).astype(np.uint8), exp[item.name][1])
  assert len(data.eval_items(_cfg(lol_v1), split="train")) == 6


def test_reads_without_tensorflow(lol_v1, tmp_path):
  """Builds and reads (TFDS + grain) in a subprocess where TensorFlow cannot be imported."""
  script = textwrap.dedent(f"""
    import sys
    class _Hide:
      def __init__(self, inner):
        self.inner = inner
      def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == 'tensorflow':
          return None
        f = getattr(self.inner, 'find_spec', None)
        return f(name, path, target) if f else None
      def invalidate_caches(self):
        f = getattr(self.inner, 'invalidate_caches', None)
        f and f()
    sys.meta_path[:] = [_Hide(f) for f in sys.meta_path]
    try:
      import tensorflow
      raise SystemExit('tensorflow still importable')
    except ImportError:
      pass
    import numpy as np
    from lliejax import data
    data.prepare('lol_v1', data_dir={str(tmp_path)!r}, manual_dir={lol_v1['manual_dir']!r})
    cfg = {{'name': 'lol_v1', 'data_dir': {str(tmp_path)!r}, 'patch_size': 16}}
    batch = next(data.train_iterator(cfg, seed=0, batch_size=2))
    assert np.allclose(batch['lq'], batch['gt'] / 4, atol=2e-6)
    assert len(data.eval_items(cfg)) == 3 and data.eval_items(cfg)[0].load()["lq"].ndim == 3
    assert 'tensorflow' not in sys.modules, 'tensorflow was imported'
    print('NO_TF_OK')
  """)
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120,
                       cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  assert "NO_TF_OK" in res.stdout, res.stdout[-2000:] + res.stderr[-4000:]


def test_worker_processes_match_in_process(lol_v1):
  """grain worker processes (worker_count > 0) yield the same stream, also when resuming."""
  cfg = _cfg(lol_v1)
  ref = _take(data.train_iterator(cfg, seed=5, batch_size=4), 4)
  it = data.train_iterator(_cfg(lol_v1, worker_count=2), seed=5, batch_size=4, start_step=1)
  got = _take(it, 3)
  del it
  for x, y in zip(ref[1:], got):
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])
