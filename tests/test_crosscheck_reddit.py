"""``lliejax crosscheck reddit``: every row of the ReDDiT cross-check passes against the official code.

The official files come from a local checkout (``/tmp/official-reddit``, or ``$LLIEJAX_REDDIT_OFFICIAL``) or, when
there is none, from a bare mirror of lgz-0713/ReDDiT: ``git --git-dir=<mirror> show HEAD:<path>`` writes the few
files the check imports into ``tmp_path`` (nothing of the official code is in this repository). Skipped when
neither exists, or without torch.
"""
import os
import subprocess

import pytest

from lliejax import cli
from lliejax.interop import crosscheck_reddit as cr

pytest.importorskip("torch")

CHECKOUTS = [os.environ.get("LLIEJAX_REDDIT_OFFICIAL", ""), "/tmp/official-reddit"]
MIRRORS = ["/work/.mirror/lgz-0713+ReDDiT/repo", "/work/.mirror/lgz-0713+ReDDiT"]
FILES = ("model/ddpm_modules/diffusion.py", "model/ddpm_modules/unet.py", "config/lolv1_train.json")


def _git_dir(path: str) -> bool:
  if not os.path.isdir(path):
    return False
  return subprocess.run(["git", "--git-dir", path, "rev-parse", "HEAD"], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> str:
  for path in CHECKOUTS:
    if path and os.path.isfile(os.path.join(path, "model", "ddpm_modules", "diffusion.py")):
      return path
  mirror = next((m for m in MIRRORS if _git_dir(m)), None)
  if mirror is None:
    pytest.skip("no ReDDiT checkout (/tmp/official-reddit) and no mirror of lgz-0713/ReDDiT")
  root = tmp_path_factory.mktemp("official-reddit")
  for f in FILES:
    out = subprocess.run(["git", "--git-dir", mirror, "show", f"HEAD:{f}"], capture_output=True, check=True).stdout
    (root / f).parent.mkdir(parents=True, exist_ok=True)
    (root / f).write_bytes(out)
  return str(root)


def _check(official, only):
  rows = cr.run_checks(official, only=only, threads=1, log=lambda s: None)
  table = cr.format_table(rows)
  assert rows and all(r.status == "PASS" for r in rows), table
  return rows, [r.component for r in rows], table


def test_schedule_and_unet(official):
  rows, names, table = _check(official, ["schedule", "unet"])
  for needle in ("schedule buffer names/order", "schedule 16x32 buffers", "schedule 8x64 buffers",
                 "schedule 4x128 buffers", "schedule 2x256 gamma_prev", "unet(small) forward", "unet(lol) forward",
                 "unet(lol) export -> load_state_dict(strict)"):
    assert any(needle in n for n in names), (needle, table)
  lol = next(r for r in rows if r.component == "unet(lol) state_dict keys/order/shapes")
  assert "17,434,182 parameters" in lol.note


def test_ddim(official):
  _, names, table = _check(official, ["ddim"])
  for needle in ("ddim 8x64 stride 8 (one step) sampler", "ddim 8x64 stride 8 (one step) unet(small) converted",
                 "ddim 2x256 stride 1", "ddim 4x128 stride 1", "ddim 8x64 stride 1 (8 steps) unet(small) converted",
                 "ddim 16x32 stride 3 (5 steps)"):
    assert any(needle in n for n in names), (needle, table)


def test_distillation_loss_and_gradient(official):
  rows, names, table = _check(official, ["distill"])
  for needle in ("released t=2 (wrap-around), w=0.5/0.1/0.2: loss", "released t=16", "fixed t=",
                 "d loss / d student", "level bounds"):
    assert any(needle in n for n in names), (needle, table)
  assert sum("d loss / d student" in n for n in names) == 4
  assert not any("w_lpips=0" in r.note for r in rows), table  # LPIPS-VGG loads offline in the test environment


def test_detection_cli_and_shim(official, tmp_path, capsys):
  assert cr.detect_method(official) == "reddit"
  files = cr.find_reddit_files(official)
  assert files.unet.endswith(os.path.join("ddpm_modules", "unet.py")) and files.train_config
  config = cr.read_train_config(files.train_config)
  assert config["unet"] == cr.LOL_UNET and config["weights"]["w_lpips"] == 0.2
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="lgz-0713/ReDDiT"):
    cr.detect_method(str(tmp_path / "empty"))
  # The CLI: method detected from the files, a subset of checks, JSON rows; a bad check name is a usage error.
  out = tmp_path / "rows.json"
  assert cli.main(["crosscheck", "--official", official, "--only", "schedule", "--json", str(out)]) == 0
  assert "schedule 16x32 buffers" in capsys.readouterr().out and out.stat().st_size > 0
  assert cli.main(["crosscheck", "reddit", "--official", official, "--only", "nafnet"]) == 2
  # The CUDA shim: GaussianDiffusion.__init__ asks for torch.device("cuda"), which this CPU torch cannot build.
  import torch
  official_ns = cr.import_official_reddit(files)
  with cr.cpu_only(official_ns.diffusion):
    assert official_ns.diffusion.torch.device("cuda") == torch.device("cpu")
    assert torch.ones(2).cuda().device.type == "cpu"
  assert official_ns.diffusion.torch is torch  # restored
  if not torch.cuda.is_available():
    with pytest.raises((AssertionError, RuntimeError)):
      torch.ones(2).cuda()
  gd = cr.official_diffusion(official_ns, None, 2, 256)
  assert gd.betas.device.type == "cpu" and gd.betas.shape == (513,)
