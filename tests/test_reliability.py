"""The command line's error path, file modes of written outputs, the refused-pickle message, the demo's first line.

Subprocess tests run the installed ``lliejax`` program as a user would (one line on stderr, the exit status, no
traceback unless ``--debug``).
"""
import os
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from lliejax import fileutil
from lliejax.data import image_io

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _run(args, cwd, env=None, timeout=240, python=None):
  cmd = [sys.executable, "-c", python] if python else [sys.executable, "-m", "lliejax.cli", *args]
  return subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout,
                        env={**os.environ, "JAX_PLATFORMS": "cpu", **(env or {})})


def _one_line_error(proc, prog="lliejax train"):
  """stderr holds exactly one error line (log lines aside) and no traceback."""
  lines = [ln for ln in proc.stderr.splitlines() if ln.startswith(f"{prog}: error:")]
  assert len(lines) == 1, proc.stderr
  assert "Traceback" not in proc.stderr, proc.stderr
  return lines[0]


def test_config_file_errors_are_one_line_and_debug_shows_the_traceback(tmp_path):
  (tmp_path / "syntax.py").write_text("def get_config(:\n")
  (tmp_path / "noget.py").write_text("x = 1\n")
  p = _run(["train", "--config", "syntax.py", "--workdir", "w"], cwd=tmp_path)
  assert p.returncode == 2
  line = _one_line_error(p)
  assert "syntax error in" in line and "syntax.py, line 1" in line
  p = _run(["train", "--config", "noget.py", "--workdir", "w"], cwd=tmp_path)
  assert p.returncode == 2 and "defines no get_config()" in _one_line_error(p)
  p = _run(["train", "--config", "syntax.py", "--workdir", "w", "--debug"], cwd=tmp_path)
  assert p.returncode == 2 and "Traceback" in p.stderr and "lliejax train: error: syntax error" in p.stderr
  p = _run(["train", "--config", "syntax.py", "--workdir", "w"], cwd=tmp_path, env={"LLIEJAX_DEBUG": "1"})
  assert p.returncode == 2 and "Traceback" in p.stderr
  assert not (tmp_path / "w").exists()


def test_convert_without_torch_names_the_extra(tmp_path):
  """A missing optional dependency: one line with the pip command, no traceback."""
  (tmp_path / "weights.pth").write_bytes(b"\0" * 16)
  code = ("import sys; sys.modules['torch'] = None; from lliejax import cli; "
          "sys.exit(cli.main(['convert', 'weights.pth', 'out']))")
  p = _run(None, cwd=tmp_path, python=code)
  assert p.returncode in (1, 2)
  line = _one_line_error(p, "lliejax convert")
  assert "pip install 'lliejax[torch]'" in line
  assert not (tmp_path / "out").exists()


def test_error_classification():
  import errno

  from lliejax import cli
  assert cli.exit_code(ValueError("x"), "train") == 2
  assert cli.exit_code(FloatingPointError("nan"), "train") == 1
  assert cli.exit_code(OSError(errno.ENOSPC, "No space left on device", "/w/ckpt"), "train") == 1
  assert cli.exit_code(PermissionError(errno.EACCES, "Permission denied", "/w"), "train") == 2
  assert cli.exit_code(ModuleNotFoundError("No module named 'cv2'", name="cv2"), "eval") == 2
  assert cli.exit_code(ZeroDivisionError(), "train") is None  # a bug: its traceback is shown
  msg = cli.error_message(OSError(errno.ENOSPC, "No space left on device", "/w/ckpt"))
  assert msg == "No space left on device: /w/ckpt (free some space or use another --workdir/--out)"
  assert "pip install opencv-python-headless" in cli.error_message(
      ModuleNotFoundError("No module named 'cv2'", name="cv2"))


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_written_files_follow_the_umask(tmp_path, mask):
  """Atomic writers create a 0600 temporary file; the result has the mode open() would give (0666 & ~umask)."""
  old = os.umask(mask)
  try:
    png = image_io.write_png(tmp_path / "a.png", np.zeros((4, 5, 3), np.float32))
    assert stat.S_IMODE(os.stat(png).st_mode) == 0o666 & ~mask
    assert fileutil.umask() == mask  # reading the umask does not change it
    torch = pytest.importorskip("torch")
    from lliejax.interop import torch_io
    pth = torch_io.save_state_dict({"w": np.zeros(3, np.float32)}, str(tmp_path / "w.pth"))
    assert stat.S_IMODE(os.stat(pth).st_mode) == 0o666 & ~mask
    assert torch.load(pth, weights_only=True)["w"].shape == (3,)
  finally:
    os.umask(old)


def test_demo_prints_what_it_does_at_once(tmp_path):
  """The first line comes before JAX starts (the demo used to be silent for minutes)."""
  env = {**os.environ, "JAX_PLATFORMS": "cpu"}
  t0 = time.monotonic()
  proc = subprocess.Popen([sys.executable, "-m", "lliejax.cli", "demo", "--workdir", str(tmp_path / "demo"),
                           "--data-dir", str(tmp_path / "tfds"), "--steps", "5"], stdout=subprocess.PIPE,
                          stderr=subprocess.DEVNULL, text=True, env=env, cwd=tmp_path)
  try:
    first = proc.stdout.readline()
    elapsed = time.monotonic() - t0
  finally:
    proc.kill()
    proc.wait()
  assert first.startswith("lliejax demo: builds the offline demo set"), first
  assert "for 5 steps" in first and "Measured:" in first
  assert elapsed < 20, elapsed  # the import of lliejax.config_utils + the config; no JAX computation yet
