"""lliejax.runtime: the explicit host-allocator tuning (repeated XLA:CPU runs must not page-fault their buffers),
and no side effect of importing the package."""
import json
import os
import subprocess
import sys

import pytest


_PROBE = r"""
import json, os, resource, sys
import lliejax.runtime
if os.environ["PROBE_TUNE"] == "1":
  lliejax.runtime.tune_host_allocator()  # what the lliejax programs do first thing
import jax, jax.numpy as jnp
# A program whose temporaries (~8 x 32 MiB) live in XLA's per-run buffer, as in a train step.
f = jax.jit(lambda x: sum(jnp.sum(jnp.sin(x * i) * x) for i in range(1, 9)))
x = jnp.ones((8 * 2**20,), jnp.float32)
for _ in range(25):  # compile, then let the heap reach its working size
  jax.block_until_ready(f(x))
windows = []  # the quietest of three windows of five runs: other processes on a busy machine add noise
for _ in range(3):
  r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  for _ in range(5):
    jax.block_until_ready(f(x))
  windows.append((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 5)
print(json.dumps({"faults_per_run": min(windows), "status": lliejax.runtime.status()}))
"""


def _probe(tune: str, env_flag: str = "1") -> dict:
  env = dict(os.environ, PROBE_TUNE=tune, LLIEJAX_TUNE_MALLOC=env_flag, XLA_FLAGS="")
  out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_has_no_side_effects():
  code = ("import lliejax, lliejax.cli, lliejax.train, lliejax.inference, lliejax.methods;"
          "from lliejax import runtime; assert runtime.status() == {}, runtime.status()")
  subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt tuning is Linux-only")
def test_tuned_allocator_reuses_pages_between_runs():
  tuned, untuned = _probe("1"), _probe("0")
  if not tuned["status"]["applied"]:
    pytest.skip(tuned["status"]["reason"])
  assert untuned["status"] == {}  # never called: the allocator keeps glibc's defaults
  # glibc defaults: every run maps fresh pages for its temporaries (tens of thousands of 4 KiB faults).
  assert untuned["faults_per_run"] > 5000, untuned
  # Tuned: the heap keeps the previous run's pages.
  assert tuned["faults_per_run"] < 0.25 * untuned["faults_per_run"], (tuned, untuned)
  disabled = _probe("1", env_flag="0")
  assert disabled["status"] == {"applied": False, "reason": "disabled by LLIEJAX_TUNE_MALLOC=0"}
