"""Data parallelism with ``jax.jit`` + ``NamedSharding`` over a one-axis ``('data',)`` mesh, on one or many hosts.

Params and optimizer state are replicated; a batch is split along its first axis over every device of every
process. Each process loads only its share of the global batch (``batch_size // process_count`` examples) and
:func:`global_batch` assembles the global ``jax.Array`` from the per-process pieces, so the same code runs on one
CPU, 8 simulated devices, a GPU host or a multi-host pod (after :func:`initialize_distributed`).

Work that is not a training batch (evaluation images, files to enhance) is split across processes with
:func:`process_share` and put back together with :func:`process_sum`.
"""
from __future__ import annotations

import logging
import os
from typing import Sequence, TypeVar

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"
T = TypeVar("T")


def initialize_distributed() -> bool:
  """Call ``jax.distributed.initialize()`` when this process is part of a multi-process job; returns whether.

  Triggered by ``LLIEJAX_DISTRIBUTED=1`` (everything else from JAX's own detection: SLURM, TPU pods, ...) or
  ``JAX_COORDINATOR_ADDRESS`` with ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` (e.g. several processes on one
  machine; the CPU backend's cross-process collectives are gloo's).
  """
  if os.environ.get("LLIEJAX_DISTRIBUTED") != "1" and not os.environ.get("JAX_COORDINATOR_ADDRESS"):
    return False
  kwargs = {}
  if os.environ.get("JAX_COORDINATOR_ADDRESS"):
    kwargs["coordinator_address"] = os.environ["JAX_COORDINATOR_ADDRESS"]
    for env, arg in (("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")):
      if os.environ.get(env):
        kwargs[arg] = int(os.environ[env])
  jax.distributed.initialize(**kwargs)
  logging.info("jax.distributed initialised: process %d of %d", jax.process_index(), jax.process_count())
  return True


def make_mesh(devices=None) -> Mesh:
  """A ``('data',)`` mesh of ``devices`` (default: every device of every process)."""
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


def process_share(items: Sequence[T]) -> list[T]:
  """This process's items of a list every process holds: ``items[p::P]`` (disjoint, covering, balanced)."""
  return list(items[jax.process_index()::jax.process_count()])


def process_sum(x: np.ndarray) -> np.ndarray:
  """The sum over processes of a host array of the same shape on every process (identity with one process)."""
  x = np.asarray(x)
  if jax.process_count() == 1:
    return x
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return np.asarray(multihost_utils.process_allgather(x)).sum(axis=0)
