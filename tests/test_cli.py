"""Command-line programs end to end on tiny inputs: train, eval, enhance (including bad inputs), demo, --help."""
import json
import os
import subprocess

import numpy as np
import pytest
from PIL import Image

from lliejax import checkpoint, cli
from lliejax.data import image_io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "entropy_sde.py") + ":tiny"


@pytest.fixture(scope="module")
def workdir(tfds_dir, tmp_path_factory):
  wd = str(tmp_path_factory.mktemp("cli") / "run")
  # eval_every=3: validation (SDE sampler, PSNR/SSIM, LQ|output|GT grids) runs during training too.
  assert cli.main(["train", "--config", TINY + ",eval_every=3", "--workdir", wd, "--data-dir", tfds_dir,
                   "--mode", "train"]) == 0
  return wd


@pytest.mark.parametrize("prog", ["lliejax", "lliejax-train", "lliejax-eval", "lliejax-enhance", "lliejax-demo",
                                  "lliejax-convert", "lliejax-crosscheck"])
def test_console_scripts_help(prog):
  out = subprocess.run([prog, "--help"], capture_output=True, text=True, timeout=120)
  assert out.returncode == 0, out.stderr
  command = prog.replace("lliejax-", "lliejax ")
  assert "usage:" in out.stdout and command in out.stdout
  if prog == "lliejax":
    assert all(c in out.stdout for c in cli.COMMANDS)


def test_train_writes_checkpoints_events_and_export(workdir):
  assert os.path.isfile(os.path.join(workdir, "config.json"))
  assert os.path.isfile(os.path.join(workdir, "export", "lliejax_export.json"))
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints")))[-1] == "6"
  events = [f for f in os.listdir(workdir) if f.startswith("events.out.tfevents")]
  assert events, "TensorBoard event file expected"
  from tensorboard.backend.event_processing import event_accumulator
  acc = event_accumulator.EventAccumulator(os.path.join(workdir, events[0]))
  acc.Reload()
  tags = acc.Tags()
  scalars = tags["scalars"] + tags.get("tensors", [])
  assert "loss" in scalars and "learning_rate" in scalars
  assert "eval/psnr" in scalars and "eval/ssim" in scalars
  assert any(t.startswith("eval/") for t in tags["images"] + tags.get("tensors", [])), tags


def test_eval_writes_metrics_json_and_pngs(workdir, tmp_path, tfds_dir):
  out = str(tmp_path / "eval")
  assert cli.main(["eval", "--workdir", workdir, "--max-images", "2", "--out", out, "--data-dir", tfds_dir]) == 0
  with open(os.path.join(out, "metrics.json")) as f:
    m = json.load(f)
  assert m["num_images"] == 2 and m["sampler"] == "posterior"
  for row in m["per_image"]:
    png = os.path.join(out, row["name"] + ".png")
    img, _ = image_io.read_image(png)
    assert img.shape[-1] == 3 and np.isfinite(row["psnr"]) and -1 <= row["ssim"] <= 1
  # A second run must not silently replace the results.
  assert cli.main(["eval", "--workdir", workdir, "--max-images", "1", "--out", out, "--data-dir", tfds_dir]) == 2
  assert cli.main(["eval", "--workdir", workdir, "--max-images", "1", "--out", out, "--data-dir", tfds_dir,
                   "--overwrite"]) == 0


def test_eval_protocol_and_compare_on_a_dataset(workdir, tmp_path, tfds_dir, capsys):
  """--protocol picks the convention; --compare scores the same outputs under more protocols."""
  out = str(tmp_path / "eval")
  assert cli.main(["eval", "--workdir", workdir, "--max-images", "2", "--out", out, "--data-dir", tfds_dir,
                   "--protocol", "reddit", "--compare", "anlightendiff_fs", "--quiet"]) == 0
  printed = capsys.readouterr().out
  assert "protocol reddit" in printed and "| metric | reddit | anlightendiff_fs |" in printed
  with open(os.path.join(out, "metrics.json")) as f:
    m = json.load(f)
  assert m["convention"] == "reddit" and set(m["protocols"]) == {"reddit", "anlightendiff_fs"}
  assert set(m["mean"]) == {"psnr", "ssim", "lpips", "psnr_input", "ssim_input"}
  assert set(m["protocols"]["anlightendiff_fs"]["mean"]) == {"psnr", "ssim", "ssim_gray", "lpips", "psnr_input",
                                                             "ssim_input"}
  # Each per-image value is the convention applied to the written PNG (8-bit: what the output rounds to) and GT.
  from lliejax.data import source
  from lliejax.metrics import conventions
  config = checkpoint.load_workdir_config(workdir)
  config.data.data_dir = tfds_dir
  items = {it.name: it for it in source.eval_items(config.data, split=config.data.get("eval_split", "test"),
                                                   max_images=2)}
  for row in m["protocols"]["reddit"]["per_image"]:
    res, _, _ = image_io.read_image_uint8(os.path.join(out, row["name"] + ".png"))
    ref = conventions.get("reddit").score(res, items[row["name"]].load()["gt"])
    for k in ("psnr", "ssim", "lpips"):
      assert row[k] == pytest.approx(ref[k], abs=1e-5), k
  with open(os.path.join(out, "metrics_anlightendiff_fs.csv")) as f:
    lines = f.read().splitlines()
  assert lines[0] == "name,psnr,ssim,ssim_gray,lpips,psnr_input,ssim_input" and lines[-1].startswith("mean,")
  assert len(lines) == 4
  assert cli.main(["eval", "--workdir", workdir, "--out", str(tmp_path / "x"), "--protocol", "redit"]) == 2
  assert "unknown evaluation protocol 'redit'" in capsys.readouterr().err


def _write_inputs(d):
  os.makedirs(d)
  rng = np.random.default_rng(0)
  rgb = (rng.random((21, 34, 3)) * 60).astype(np.uint8)
  Image.fromarray(rgb).save(os.path.join(d, "rgb.png"))
  Image.fromarray(rgb[..., 0]).save(os.path.join(d, "gray.png"))
  Image.fromarray(np.dstack([rgb, np.full(rgb.shape[:2], 200, np.uint8)])).save(os.path.join(d, "rgba.png"))
  Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(os.path.join(d, "gray16.png"))
  Image.fromarray(rgb).save(os.path.join(d, "photo.jpg"), quality=90)
  with open(os.path.join(d, "broken.png"), "wb") as f:
    f.write(b"\x89PNG\r\n\x1a\n" + b"not really a png" * 4)
  return {"rgb": (21, 34), "gray": (21, 34), "rgba": (21, 34), "gray16": (21, 34), "photo": (21, 34)}


def test_enhance_folder_with_bad_inputs(workdir, tmp_path, capsys):
  inp, out = str(tmp_path / "in"), str(tmp_path / "out")
  expected = _write_inputs(inp)
  rc = cli.main(["enhance", inp, "--checkpoint", workdir, "--out", out, "--quiet"])
  captured = capsys.readouterr()
  assert rc == 1  # the corrupt file makes the run fail at the end ...
  assert "broken.png" in captured.err
  for name, (h, w) in expected.items():  # ... but every readable file was enhanced
    img, _ = image_io.read_image(os.path.join(out, name + ".png"))
    assert img.shape == (h, w, 3)
  assert "grayscale" in captured.out.lower() or "gray" in captured.out.lower()
  assert not os.path.exists(os.path.join(out, "broken.png"))
  # Existing outputs are refused and left untouched unless --overwrite.
  before = os.path.getmtime(os.path.join(out, "rgb.png"))
  assert cli.main(["enhance", os.path.join(inp, "rgb.png"), "--checkpoint", workdir, "--out", out, "--quiet"]) == 2
  assert "already exists" in capsys.readouterr().err
  assert os.path.getmtime(os.path.join(out, "rgb.png")) == before
  assert cli.main(["enhance", os.path.join(inp, "rgb.png"), "--checkpoint", workdir, "--out", out, "--quiet",
                      "--overwrite"]) == 0


def test_enhance_never_overwrites_inputs(workdir, tmp_path, capsys):
  inp = str(tmp_path / "in")
  _write_inputs(inp)
  src = os.path.join(inp, "rgb.png")
  data = open(src, "rb").read()
  assert cli.main(["enhance", src, "--checkpoint", workdir, "--out", inp, "--overwrite", "--quiet"]) == 2
  assert "input files" in capsys.readouterr().err
  assert open(src, "rb").read() == data


def test_enhance_is_reproducible_and_same_as_exported_params(workdir, tmp_path):
  inp = str(tmp_path / "in")
  _write_inputs(inp)
  src = os.path.join(inp, "photo.jpg")
  a, b = str(tmp_path / "a"), str(tmp_path / "b")
  assert cli.main(["enhance", src, "--checkpoint", workdir, "--out", a, "--quiet", "--seed", "3"]) == 0
  assert cli.main(["enhance", src, "--model", os.path.join(workdir, "export"), "--out", b, "--quiet", "--seed", "3"]) == 0
  np.testing.assert_array_equal(np.asarray(Image.open(os.path.join(a, "photo.png"))),
                                np.asarray(Image.open(os.path.join(b, "photo.png"))))
  # Outputs are readable by others under the usual umask (the atomic writer's temporary file is 0600).
  from lliejax import fileutil
  assert os.stat(os.path.join(a, "photo.png")).st_mode & 0o777 == 0o666 & ~fileutil.umask()
  # --out naming an existing file: one line, exit 2.
  assert cli.main(["enhance", src, "--checkpoint", workdir, "--out", src, "--quiet"]) == 2


def test_enhance_folder_of_mixed_sizes_compiles_few_programs(workdir, tmp_path, capsys):
  """10 differently sized photos: at most 3 compiled sampler programs, every output exactly its input's size."""
  inp = tmp_path / "mixed"
  inp.mkdir()
  rng = np.random.default_rng(0)
  sizes = [(17, 23), (20, 31), (33, 29), (40, 40), (45, 70), (50, 37), (61, 64), (64, 17), (70, 45), (29, 58)]
  for i, (h, w) in enumerate(sizes):
    Image.fromarray((rng.random((h, w, 3)) * 90).astype(np.uint8)).save(inp / f"img{i}.png")
  out = str(tmp_path / "out")
  assert cli.main(["enhance", str(inp), "--checkpoint", workdir, "--out", out, "--quiet"]) == 0
  printed = capsys.readouterr().out
  import re
  n = int(re.search(r"\((\d+) compiled sampler program", printed).group(1))
  assert 1 <= n <= 3, printed
  for i, (h, w) in enumerate(sizes):
    assert np.asarray(Image.open(os.path.join(out, f"img{i}.png"))).shape == (h, w, 3)


def test_enhance_bad_model_and_missing_input(tmp_path, capsys):
  # --out is an existing file: refused before anything is loaded.
  (tmp_path / "afile").write_text("x")
  assert cli.main(["enhance", str(tmp_path), "--checkpoint", str(tmp_path), "--out", str(tmp_path / "afile")]) == 2
  assert "is an existing file; give a folder" in capsys.readouterr().err
  inp = str(tmp_path / "in")
  _write_inputs(inp)
  assert cli.main(["enhance", inp, "--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--quiet"]) == 2
  assert "does not exist" in capsys.readouterr().err
  assert cli.main(["enhance", str(tmp_path / "missing.png"), "--checkpoint", inp, "--out", str(tmp_path / "o")]) == 2
  assert "missing.png" in capsys.readouterr().err


def test_train_cli_bad_config_errors(tmp_path, capsys):
  assert cli.main(["train", "--config", TINY + ",model.nonexistent=3", "--workdir", str(tmp_path)]) == 2
  assert "model.nonexistent" in capsys.readouterr().err
  assert cli.main(["train", "--config", "configs/missing.py:demo", "--workdir", str(tmp_path)]) == 2
  assert "missing.py" in capsys.readouterr().err
  assert cli.main(["train", "--method", "nosuchmethod", "--workdir", str(tmp_path)]) == 2
  err = capsys.readouterr().err
  assert "unknown method 'nosuchmethod'; known methods: " in err
  known = err.split("known methods: ")[1].splitlines()[0].split(", ")
  assert {"entropy_sde", "reddit_teacher", "reddit_student"} <= set(known) and known == sorted(known)
  assert cli.main(["train", "--method", "other", "--config", TINY, "--workdir", str(tmp_path)]) == 2
  assert "is a config of method 'entropy_sde'" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_end_to_end_on_tiny_config(tfds_dir, tmp_path, capsys):
  wd = str(tmp_path / "demo")
  assert cli.main(["demo", "--workdir", wd, "--config", "entropy_sde:tiny", "--data-dir", tfds_dir]) == 0
  out = capsys.readouterr().out
  picture = os.path.join(wd, "results", "side_by_side.png")
  assert picture in out and os.path.isfile(picture)
  img, _ = image_io.read_image(picture)
  assert img.shape[0] > 64 and img.shape[1] > 3 * 64
  table = open(os.path.join(wd, "results", "metrics.md")).read()
  assert "PSNR input" in table and "mean" in table
  with open(os.path.join(wd, "results", "metrics.json")) as f:
    assert json.load(f)["num_images"] == 3
