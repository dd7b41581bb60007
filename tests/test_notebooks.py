"""The Colab notebooks (``colab/*.ipynb``): they run top to bottom under ``LLIEJAX_TINY=1`` and are stored stripped.

Each notebook is executed with nbclient in a fresh ``python3`` kernel whose working directory is a temporary folder
(datasets, runs and exports go there). The kernel sees the environment of the test process with
``LLIEJAX_TINY=1`` and without the suite's 8 simulated devices (a notebook runs on the one device a Colab runtime
has); it shares the suite's persistent compile cache (``JAX_COMPILATION_CACHE_DIR``, set in ``conftest.py``). The
notebooks' install cell is skipped because lliejax is importable in the kernel, as it must be (an editable install).
"""
import glob
import importlib.util
import os
import time

import nbformat
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(glob.glob(os.path.join(REPO, "colab", "*.ipynb")))
HAVE_TORCH = importlib.util.find_spec("torch") is not None
# Figures (image/png outputs) each notebook must produce: the plots it exists to show.
EXPECTED_FIGURES = {"quickstart": 2, "entropy_sde": 6, "crosscheck": 2 if HAVE_TORCH else 0, "reddit": 3,
                    "anlightendiff": 4}
TIMEOUT_S = 900  # per cell; the whole set takes about 3-4 minutes on 2 CPU cores


def _name(path: str) -> str:
  return os.path.splitext(os.path.basename(path))[0]


def test_every_notebook_is_listed():
  assert sorted(map(_name, NOTEBOOKS)) == sorted(EXPECTED_FIGURES)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_name)
def test_notebook_is_stripped_and_valid(path):
  """Committed without outputs or execution counts (clean diffs; Colab shows what the reader runs)."""
  nb = nbformat.read(path, as_version=4)
  nbformat.validate(nb)
  dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count is not None)]
  assert not dirty, f"{os.path.basename(path)}: code cells {dirty} have outputs or execution counts; strip them"
  assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
  assert all("widgets" not in c.get("metadata", {}) for c in nb.cells)


@pytest.mark.parametrize("path", NOTEBOOKS, ids=_name)
def test_notebook_has_pinned_install_and_colab_badge(path):
  nb = nbformat.read(path, as_version=4)
  name = _name(path)
  first_code = next(c.source for c in nb.cells if c.cell_type == "code")
  assert "except ImportError" in first_code and "lliejax @ git+https://github.com/lliejax/lliejax@v" in first_code
  import lliejax
  assert f"@v{lliejax.__version__}" in first_code, "the pinned install must be this version's tag"
  assert f"colab.research.google.com/github/lliejax/lliejax/blob/main/colab/{name}.ipynb" in nb.cells[0].source


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=_name)
def test_notebook_runs(path, tmp_path, monkeypatch):
  """Executes every cell under ``LLIEJAX_TINY=1``; an exception in any cell fails; the figures must be there."""
  import nbclient

  monkeypatch.setenv("LLIEJAX_TINY", "1")
  monkeypatch.delenv("XLA_FLAGS", raising=False)  # one device, as on Colab (conftest sets 8 for the other tests)
  nb = nbformat.read(path, as_version=4)
  client = nbclient.NotebookClient(nb, timeout=TIMEOUT_S, kernel_name="python3",
                                   resources={"metadata": {"path": str(tmp_path)}})
  start = time.monotonic()
  try:
    client.execute()
  except nbclient.exceptions.CellExecutionError as e:
    pytest.fail(f"{os.path.basename(path)} failed:\n{e}")
  elapsed = time.monotonic() - start
  outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
  errors = [o for o in outputs if o.output_type == "error"]
  assert not errors, errors
  figures = sum("image/png" in o.get("data", {}) for o in outputs)
  name = _name(path)
  assert figures >= EXPECTED_FIGURES[name], f"{name}: {figures} figures, expected {EXPECTED_FIGURES[name]}"
  print(f"{name}: {elapsed:.1f} s, {figures} figures")
