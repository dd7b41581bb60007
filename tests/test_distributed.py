"""Multi-host training on localhost: two processes with two CPU devices each (jax.distributed) train, checkpoint,
export and evaluate exactly like one process with four devices."""
import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest

WORKER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "distributed_worker.py")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _env(devices: int, **extra) -> dict:
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_COORDINATOR") and k != "LLIEJAX_DISTRIBUTED"}
  env.update(XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}", JAX_PLATFORMS="cpu", **extra)
  return env


@pytest.mark.slow
def test_two_processes_equal_one_process(tfds_dir, tmp_path):
  from lliejax.data import registry
  registry.prepare("lliejax_demo", data_dir=tfds_dir)  # built once, before the processes start

  one = str(tmp_path / "one.json")
  ref = subprocess.run([sys.executable, WORKER, tfds_dir, str(tmp_path / "wd1"), one], env=_env(4),
                       capture_output=True, text=True, timeout=600)
  assert ref.returncode == 0, ref.stderr[-4000:]

  two = str(tmp_path / "two.json")
  port = _free_port()
  procs = [subprocess.Popen([sys.executable, WORKER, tfds_dir, str(tmp_path / "wd2"), two],
                            env=_env(2, JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                                     JAX_PROCESS_ID=str(i)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for i in range(2)]
  outs = [p.communicate(timeout=600) for p in procs]
  assert [p.returncode for p in procs] == [0, 0], "\n\n".join(
      f"process {i} (exit status {p.returncode}):\n{err[-3000:]}" for i, (p, (_, err)) in enumerate(zip(procs, outs)))

  with open(one) as f:
    a = json.load(f)
  with open(two) as f:
    b = json.load(f)
  assert (a["processes"], a["devices"]) == (1, 4) and (b["processes"], b["devices"]) == (2, 4)
  for x, y in zip(a["params"], b["params"]):
    np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-5, atol=1e-5)
  assert [r["name"] for r in a["per_image"]] == [r["name"] for r in b["per_image"]]
  for ra, rb in zip(a["per_image"], b["per_image"]):
    for k in ("psnr", "ssim", "psnr_input", "ssim_input"):
      assert rb[k] == pytest.approx(ra[k], abs=1e-3), (k, ra, rb)
  # Process 0 of two scored images 0 and 2 (of the sorted names) itself; process 1 image 1.
  assert b["local_images"] == [a["per_image"][0]["name"], a["per_image"][2]["name"]]
  # Both runs wrote one set of checkpoints and an export.
  for wd in ("wd1", "wd2"):
    assert sorted(os.listdir(tmp_path / wd / "checkpoints")) == ["2", "4"]
    assert os.path.isfile(tmp_path / wd / "export" / "lliejax_export.json")
