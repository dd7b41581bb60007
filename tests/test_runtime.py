"""The host-allocator tuning of ``lliejax.runtime``: repeated XLA:CPU runs must not page-fault their buffers."""
import json
import os
import subprocess
import sys

import pytest

from lliejax import runtime

_PROBE = r"""
import json, resource, sys
import lliejax
import jax, jax.numpy as jnp
# A program whose temporaries (~8 x 32 MiB) live in XLA's per-run buffer, as in a train step.
f = jax.jit(lambda x: sum(jnp.sum(jnp.sin(x * i) * x) for i in range(1, 9)))
x = jnp.ones((8 * 2**20,), jnp.float32)
for _ in range(15):  # compile, then let the heap reach its working size
  jax.block_until_ready(f(x))
r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
  jax.block_until_ready(f(x))
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0) / 5
print(json.dumps({"faults_per_run": faults, "status": lliejax.runtime.status()}))
"""


def _probe(tune: str) -> dict:
  env = dict(os.environ, LLIEJAX_TUNE_MALLOC=tune, XLA_FLAGS="")
  out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True, text=True, timeout=300)
  assert out.returncode == 0, out.stderr[-2000:]
  return json.loads(out.stdout.strip().splitlines()[-1])


def test_status_reports_what_import_did():
  s = runtime.status()
  assert set(s) == {"applied", "reason"}
  if os.environ.get("LLIEJAX_TUNE_MALLOC", "1") == "0":
    assert not s["applied"] and "LLIEJAX_TUNE_MALLOC" in s["reason"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc mallopt tuning is Linux-only")
def test_tuned_allocator_reuses_pages_between_runs():
  tuned, untuned = _probe("1"), _probe("0")
  if not tuned["status"]["applied"]:
    pytest.skip(tuned["status"]["reason"])
  assert untuned["status"] == {"applied": False, "reason": "disabled by LLIEJAX_TUNE_MALLOC=0"}
  # glibc defaults: every run maps fresh pages for its temporaries (tens of thousands of 4 KiB faults).
  assert untuned["faults_per_run"] > 5000, untuned
  # Tuned: the heap keeps the previous run's pages.
  assert tuned["faults_per_run"] < 0.05 * untuned["faults_per_run"], (tuned, untuned)
