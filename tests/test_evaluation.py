"""Scoring saved results against ground-truth folders (``lliejax eval --results A --gt B``) and the LPIPS loss."""
import csv
import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from PIL import Image
from skimage import data

from lliejax import cli, evaluate, losses
from lliejax.metrics import conventions, perceptual


def _folders(tmp_path, n=3, extra_gt=True):
  """results/ and gt/ folders of real photos (results: a darker, noisy 'enhancement'), same file stems."""
  res, gt = tmp_path / "results", tmp_path / "gt"
  res.mkdir()
  gt.mkdir()
  rng = np.random.default_rng(0)
  photos = [("astronaut", data.astronaut()[:200, 100:324]), ("coffee", data.coffee()[100:300, 200:424]),
            ("chelsea", data.chelsea()[:200, :224])][:n]  # >= 194 px: standard NIQE's two scales of 96x96 patches
  for name, img in photos:
    Image.fromarray(img).save(gt / f"{name}.png")
    enh = np.clip(0.8 * img + 12 + 6 * rng.standard_normal(img.shape), 0, 255).astype(np.uint8)
    Image.fromarray(enh).save(res / f"{name}.png")
  if extra_gt:  # a ground truth without a result is ignored
    Image.fromarray(data.camera()[:64, :64]).convert("RGB").save(gt / "unused.png")
  return str(res), str(gt), dict(photos)


def test_eval_results_against_gt_folder_writes_tables(tmp_path, capsys):
  res, gt, photos = _folders(tmp_path)
  out = str(tmp_path / "out")
  rc = cli.main(["eval", "--protocol", "reddit", "--results", res, "--gt", gt, "--compare", "anlightendiff_fs,standard",
                 "--out", out, "--quiet"])
  assert rc == 0, capsys.readouterr().err
  printed = capsys.readouterr().out
  assert "| metric | reddit | anlightendiff_fs | standard |" in printed
  for proto in ("reddit", "anlightendiff_fs"):
    with open(os.path.join(out, f"metrics_{proto}.csv")) as f:
      rows = list(csv.DictReader(f))
    assert [r["name"] for r in rows] == ["astronaut", "chelsea", "coffee", "mean"]
    for r in rows[:-1]:
      res8 = np.asarray(Image.open(os.path.join(res, r["name"] + ".png")))
      ref = conventions.get(proto).score(res8, photos[r["name"]])
      assert set(ref) == set(r) - {"name"}
      for k, v in ref.items():
        assert float(r[k]) == pytest.approx(v, rel=1e-9), (proto, k)
    for k in rows[-1]:
      if k != "name":
        assert float(rows[-1][k]) == pytest.approx(np.mean([float(r[k]) for r in rows[:-1]]), rel=1e-9)
  with open(os.path.join(out, "metrics_standard.json")) as f:
    std = json.load(f)
  assert std["protocol"] == "standard" and set(std["mean"]) == {"psnr", "ssim", "lpips", "dists", "niqe"}
  # The conventions really differ on the same files.
  with open(os.path.join(out, "metrics_reddit.json")) as f:
    red = json.load(f)
  assert red["mean"]["psnr"] != std["mean"]["psnr"] and red["mean"]["lpips"] != std["mean"]["lpips"]
  # Never overwrite the tables silently.
  assert cli.main(["eval", "--results", res, "--gt", gt, "--out", out, "--quiet"]) == 2
  assert "exists; pass --overwrite" in capsys.readouterr().err


def test_eval_results_errors_name_the_problem(tmp_path, capsys):
  res, gt, _ = _folders(tmp_path, extra_gt=False)
  os.remove(os.path.join(gt, "coffee.png"))
  assert cli.main(["eval", "--results", res, "--gt", gt, "--quiet"]) == 2
  err = capsys.readouterr().err
  assert "1 result(s)" in err and "coffee.png" in err and gt in err
  assert cli.main(["eval", "--results", str(tmp_path / "nothing"), "--gt", gt, "--quiet"]) == 2
  assert cli.main(["eval", "--results", res, "--gt", gt, "--workdir", str(tmp_path), "--quiet"]) == 2
  assert "--workdir does not apply" in capsys.readouterr().err
  assert cli.main(["eval", "--results", res, "--fid-weights", "x.pth", "--quiet"]) == 2
  assert "--fid-weights needs --gt" in capsys.readouterr().err


def test_eval_results_without_gt_is_niqe_only(tmp_path, capsys):
  res, _, _ = _folders(tmp_path, n=2, extra_gt=False)
  r = evaluate.evaluate_folders(res, None, ["reddit"])
  assert [set(row) for row in r["per_image"]] == [{"name", "niqe"}] * 2
  from lliejax.metrics import niqe
  img = np.asarray(Image.open(os.path.join(res, "astronaut.png")))
  assert r["per_image"][0]["niqe"] == pytest.approx(niqe.niqe(img, variant="reddit"), rel=1e-12)


def test_fid_weights_missing_is_a_clear_error(tmp_path, capsys):
  res, gt, _ = _folders(tmp_path, n=2, extra_gt=False)
  missing = str(tmp_path / "pt_inception-2015-12-05-6726825d.pth")
  assert cli.main(["eval", "--results", res, "--gt", gt, "--fid-weights", missing, "--quiet"]) == 2
  assert "pt_inception-2015-12-05-6726825d.pth" in capsys.readouterr().err


def test_lpips_loss_from_config_equals_the_metric():
  cfg = ml_collections.ConfigDict({"name": "lpips", "net": "alex", "input_range": "[0,1]", "weight": 2.0})
  fn, frozen = losses.get(cfg), losses.frozen_params(cfg)
  rng = np.random.default_rng(0)
  a = jnp.asarray(data.astronaut()[None, :64, :80] / 255.0, jnp.float32)
  b = jnp.asarray(np.clip(np.asarray(a) + 0.1 * rng.standard_normal(a.shape), 0, 1), jnp.float32)
  loss = jax.jit(fn)(a, b, jax.random.key(0), frozen=frozen)
  assert float(loss) == pytest.approx(2.0 * float(perceptual.lpips(a, b, net="alex", normalize=True)[0]), rel=1e-5)
  # [-1,1] inputs give the same distance for the mapped images.
  cfg2 = ml_collections.ConfigDict({"name": "lpips", "net": "alex", "input_range": "[-1,1]"})
  assert float(losses.get(cfg2)(2 * a - 1, 2 * b - 1, None, frozen=frozen)) == pytest.approx(float(loss) / 2, rel=1e-5)
  with pytest.raises(ValueError, match="input_range=None"):
    losses.get(ml_collections.ConfigDict({"name": "lpips", "net": "vgg"}))
  with pytest.raises(ValueError, match="needs its pretrained parameters"):
    fn(a, b, None)
