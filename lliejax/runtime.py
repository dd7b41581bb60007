"""What a lliejax program sets up for its process: the host allocator, XLA options of its programs, console logging.

Nothing here runs at import: the command-line programs (:mod:`lliejax.cli`) call :func:`tune_host_allocator` and
:func:`setup_logging` first thing; a script or notebook may call them too (the allocator tuning only helps when it
runs before the first JAX computation).

Allocator: keep XLA:CPU's per-execution buffers out of fresh page faults.

XLA:CPU allocates the temporary buffer of every executable run with ``malloc`` on one of its worker threads
(128 MiB for one small-NAFNet train step at 128x128, batch 8). With glibc's defaults such a block is served by
``mmap`` and returned with ``munmap`` when the run ends: the next run touches brand-new pages, and the kernel
zero-fills every 4 KiB page on first touch. Measured on the 2-core development machine
(``python benchmarks/train_step.py``): 348k minor page faults and 720 ms of system time *per step*, more time
than the arithmetic. glibc also refuses to keep such blocks in a worker thread's arena (at most 64 MiB), so raising
the mmap threshold alone does not help.

:func:`tune_host_allocator` calls glibc ``mallopt`` so that

* all threads share the main arena (``M_ARENA_MAX = 1``), which can grow without limit,
* no block is served by ``mmap`` (``M_MMAP_MAX = 0``), and
* freed memory at the top of the heap is not returned to the kernel (``M_TRIM_THRESHOLD`` = maximum),

so a run reuses the pages of the previous one: 0 page faults per step and 1.8x faster small-NAFNet steps at
128x128. The price: the process keeps its peak heap (freed memory is reused by later allocations, not given back to
the system), which is what a training or enhancement process wants anyway.

It must run before XLA starts its worker threads (the first JAX computation), since threads that already hold an
arena keep it. ``LLIEJAX_TUNE_MALLOC=0`` makes it a no-op (the programs then leave the allocator alone). It does
nothing on non-glibc systems (macOS, musl), where it reports why.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

# glibc <malloc.h>
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
_INT_MAX = 2**31 - 1

_state: dict = {}


def tune_host_allocator(force: bool = False) -> dict:
  """Apply the glibc ``mallopt`` settings above (once per process); returns what happened.

  The result has ``applied`` (bool) and ``reason`` (why not, or the settings). ``LLIEJAX_TUNE_MALLOC=0`` in the
  environment disables it unless ``force`` is true.
  """
  if _state and not force:
    return dict(_state)
  if not force and os.environ.get("LLIEJAX_TUNE_MALLOC", "1").strip().lower() in ("0", "false", "no", "off"):
    result = {"applied": False, "reason": "disabled by LLIEJAX_TUNE_MALLOC=0"}
  elif not sys.platform.startswith("linux"):
    result = {"applied": False, "reason": f"not Linux/glibc ({sys.platform})"}
  else:
    result = _apply_glibc()
  _state.clear()
  _state.update(result)
  return dict(result)


def _apply_glibc() -> dict:
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    version = libc.gnu_get_libc_version
  except (OSError, AttributeError):
    return {"applied": False, "reason": "C library is not glibc (no gnu_get_libc_version)"}
  version.restype = ctypes.c_char_p
  settings = {"M_ARENA_MAX": (M_ARENA_MAX, 1), "M_MMAP_MAX": (M_MMAP_MAX, 0),
              "M_TRIM_THRESHOLD": (M_TRIM_THRESHOLD, _INT_MAX)}
  failed = [name for name, (param, value) in settings.items() if libc.mallopt(param, value) != 1]
  if failed:
    return {"applied": False, "reason": f"mallopt refused {', '.join(failed)}"}
  return {"applied": True, "reason": f"glibc {version().decode()}: " +
          ", ".join(f"{name}={value}" for name, (_, value) in settings.items())}


def status() -> dict:
  """What :func:`tune_host_allocator` did in this process (empty before it ran)."""
  return dict(_state)


# ------------------------------------------------------------------------------------------------ XLA options
#: Environment variable choosing XLA:CPU's instruction scheduler for lliejax's programs (:func:`compiler_options`).
CPU_SCHEDULER_ENV = "LLIEJAX_XLA_CPU_SCHEDULER"
#: Environment variable choosing which operations XLA:CPU hands to YNNPACK (:func:`compiler_options`), and its values.
CPU_YNN_ENV = "LLIEJAX_XLA_CPU_YNN"
CPU_YNN_FUSIONS = {"default": None, "off": "",
                   "convs": "LIBRARY_FUSION_TYPE_INDIVIDUAL_CONVOLUTION,LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT"}
CPU_SCHEDULERS = {"memory": "CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED", "default": None,
                  "concurrency": "CPU_SCHEDULER_TYPE_CONCURRENCY_OPTIMIZED"}


def compiler_options(platform: str | None = None) -> dict[str, str] | None:
  """XLA options lliejax compiles its train steps and samplers with on ``platform`` (default: JAX's default backend).

  On CPU: XLA's memory-optimised instruction scheduler (``xla_cpu_scheduler_type``). XLA:CPU's default schedule
  lets independent operations run side by side, which on a few cores mostly makes large convolutions and the copies
  around them compete for the same threads and caches: the AnlightenDiff FS train step (batch 4, 160x160) took
  15.2 s with the default schedule and 9.7 s with this one on the 2-core development machine, peak RSS 7.3 against
  4.9 GiB (``benchmarks/anlightendiff.py``; the values are the same, only the order of execution changes).

  ``LLIEJAX_XLA_CPU_SCHEDULER`` = ``memory`` (default) | ``default`` (XLA's own) | ``concurrency``; a scheduler named
  in ``XLA_FLAGS`` takes precedence (nothing is set then). Other platforms: ``None``.

  ``LLIEJAX_XLA_CPU_YNN`` = ``default`` (XLA's own choice of YNNPACK fusions) | ``off`` (no YNNPACK fusion:
  ``xla_cpu_experimental_ynn_fusion_type`` empty) | ``convs`` (only single convolutions and dots); a value in
  ``XLA_FLAGS`` takes precedence. Which is fastest depends on the network (2-core development machine, train steps,
  medians): XLA's YNNPACK reductions made the GroupNorm statistics of ReDDiT's SR3 UNet 2.7x slower than XLA's own
  loops (5.2 of 29 s of the distillation step at batch 16, 96x96), and ``off`` took that step from 26.4 to 20.9 s
  and the 2-step 400x600 sampler from 10.1 to 9.5 s; but it slowed AnlightenDiff's FS step from 9.2 to 10.6 s and
  the low-light NAFNet step from 2.3 to 3.7 s (``convs``: 12.0 and 3.5 s). So the default stays XLA's.
  """
  import jax

  platform = platform or jax.default_backend()
  if platform != "cpu":
    return None
  flags = os.environ.get("XLA_FLAGS", "")
  options = {}
  if "xla_cpu_scheduler_type" not in flags:
    choice = os.environ.get(CPU_SCHEDULER_ENV, "memory").strip().lower() or "memory"
    if choice not in CPU_SCHEDULERS:
      raise ValueError(f"{CPU_SCHEDULER_ENV}={choice!r}: choose one of {', '.join(CPU_SCHEDULERS)}")
    if CPU_SCHEDULERS[choice]:
      options["xla_cpu_scheduler_type"] = CPU_SCHEDULERS[choice]
  if "xla_cpu_experimental_ynn_fusion_type" not in flags:
    choice = os.environ.get(CPU_YNN_ENV, "default").strip().lower() or "default"
    if choice not in CPU_YNN_FUSIONS:
      raise ValueError(f"{CPU_YNN_ENV}={choice!r}: choose one of {', '.join(CPU_YNN_FUSIONS)}")
    if CPU_YNN_FUSIONS[choice] is not None:
      options["xla_cpu_experimental_ynn_fusion_type"] = CPU_YNN_FUSIONS[choice]
  return options or None


def mesh_platform(mesh) -> str:
  """The platform of a mesh's devices (``cpu``, ``gpu``, ``tpu``)."""
  return mesh.devices.flat[0].platform


# ------------------------------------------------------------------------------------------------ logging
_QUIET = ("orbax", "tensorstore", "jax._src", "absl_py", "tensorflow_datasets", "grain")


class _LibraryFilter(logging.Filter):
  """Drops INFO/DEBUG records emitted from the source files of chatty libraries (Orbax logs every save)."""

  def filter(self, record: logging.LogRecord) -> bool:
    if record.levelno >= logging.WARNING:
      return True
    path = record.pathname.replace("\\", "/")
    return not any(f"/{name}/" in path or f"/{name}." in path for name in _QUIET)


def setup_logging(level: int = logging.INFO) -> None:
  """Console logging for the programs: lliejax and clu progress at ``level``, library chatter hidden."""
  logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(message)s", force=True)
  for handler in logging.getLogger().handlers:
    handler.addFilter(_LibraryFilter())
  try:
    from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
    absl_logging.use_python_logging()
    absl_logging.get_absl_handler().addFilter(_LibraryFilter())
  except ImportError:
    pass
