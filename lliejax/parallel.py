"""Data parallelism with ``jax.jit`` + ``NamedSharding`` over a one-axis ``('data',)`` mesh.

Params and optimizer state are replicated, the batch is split along its first axis over every device of every
process. Each process loads only its share of the global batch (``batch_size // process_count`` examples) and
:func:`global_batch` assembles the global ``jax.Array`` from the per-process pieces, so the same code runs on one
CPU, 8 simulated devices, a GPU host or a multi-host pod (after :func:`maybe_initialize_distributed`).
"""
from __future__ import annotations

import logging
import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def maybe_initialize_distributed() -> None:
  """Call ``jax.distributed.initialize()`` when launched as a multi-process job.

  Triggered by ``LLIEJAX_DISTRIBUTED=1`` or the coordinator variables JAX understands
  (``JAX_COORDINATOR_ADDRESS``; SLURM / TPU pod environments are auto-detected by JAX itself).
  """
  if os.environ.get("LLIEJAX_DISTRIBUTED") == "1" or os.environ.get("JAX_COORDINATOR_ADDRESS"):
    jax.distributed.initialize()
    logging.info("jax.distributed initialised: process %d of %d", jax.process_index(), jax.process_count())


def make_mesh(devices=None) -> Mesh:
  devices = jax.devices() if devices is None else list(devices)
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def data_sharded(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def local_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """Examples this process loads per step; validates divisibility with a clear message."""
  n_dev = mesh.devices.size
  if global_batch_size % n_dev:
    raise ValueError(f"config.batch_size={global_batch_size} is not divisible by the number of devices ({n_dev})")
  return global_batch_size // jax.process_count()


def global_batch(local: dict, mesh: Mesh) -> dict:
  """Per-process numpy batch -> global arrays sharded along ``'data'``."""
  sharding = data_sharded(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in local.items()}
