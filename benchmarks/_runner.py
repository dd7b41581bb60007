"""Shared helpers of the benchmark scripts: one subprocess per case, peak memory of that process."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from typing import Any, Callable


def peak_memory_bytes() -> int:
  """``peak_bytes_in_use`` of the first device on accelerators, else this process's peak RSS."""
  import jax  # pylint: disable=import-outside-toplevel

  dev = jax.devices()[0]
  stats = dev.memory_stats() if dev.platform != "cpu" else None
  return (stats or {}).get("peak_bytes_in_use") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def timed(fn: Callable[[int], Any], repeats: int) -> list[float]:
  """Wall seconds of ``fn(i)`` for ``i`` in ``range(repeats)``; ``fn`` must block until its result is ready."""
  times = []
  for i in range(repeats):
    t0 = time.perf_counter()
    fn(i)
    times.append(time.perf_counter() - t0)
  return times


def run_cases(script: str, names: list[str], args: list[str], env: dict | None = None) -> list[dict]:
  """Run ``script --_child NAME *args`` for each case; collect the JSON line each prints last.

  ``env``: variables to set (over this process's environment) in the children.
  """
  rows = []
  for name in names:
    proc = subprocess.run([sys.executable, script, "--_child", name, *args], capture_output=True, text=True,
                          env={**os.environ, **(env or {})})
    if proc.returncode:
      print(f"{name}: failed\n{proc.stderr[-2000:]}", file=sys.stderr)
      continue
    rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
  return rows


def run_each(script: str, names: list[str], args: list[str], describe: Callable[[dict], str]) -> list[dict]:
  """:func:`run_cases` one case at a time (the official PyTorch children without lliejax's malloc tuning), with a
  progress line ``NAME: describe(row)`` on stderr after each."""
  rows = []
  for name in names:
    env = {"LLIEJAX_TUNE_MALLOC": "0"} if name.startswith("official") else None
    got = run_cases(script, [name], args, env=env)
    rows += got
    if got:
      print(f"  {name}: {describe(got[0])}", file=sys.stderr, flush=True)
  return rows


def peak_rss_bytes() -> int:
  """This process's peak resident set size (``ru_maxrss``), whatever the device: the column of a PyTorch child."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def compile_timed(jitted: Any, *args) -> tuple[Any, float]:
  """Ahead-of-time ``jitted.lower(*args).compile()``: ``(compiled, wall seconds of lowering + compilation)``.

  The timed runs then call ``compiled`` (same arguments' shapes and shardings), so no run pays for tracing.
  """
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - t0
