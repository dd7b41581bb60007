"""Batching: the training stream of one process, as a pure function of (seed, step), for any number of processes.

The *global* stream is one sequence of augmented examples: element ``i`` (``i = step * batch_size + j``) is record
``perm_e[i mod n]`` of the train split, where ``e = i // n`` is the epoch and
``perm_e = np.random.default_rng([shuffle_seed, e]).permutation(n)``, augmented
(:mod:`lliejax.data.augment`, the policy of ``config.data.augment``) with a Philox generator keyed by the
augmentation seed and ``i`` (grain ``random_map``). Process ``p`` of ``P`` reads and augments only the elements
``p * b .. (p + 1) * b - 1`` of every global batch (``b = batch_size // P``), so

* the global batch of a step is the same whatever the number of processes (a run can resume on another host count,
  and two processes with 2 devices each train exactly like one process with 4);
* ``train_iterator(..., start_step=k)`` yields exactly batches ``k, k+1, ...`` of the uninterrupted stream, for any
  ``worker_count``.
"""
from __future__ import annotations

import sys
from typing import Any, Iterator

from absl import flags
import grain
import numpy as np

from lliejax.data import augment, source


class _Tag(grain.transforms.MapWithIndex):
  """``record -> (index in split, record)`` (grain passes indices of later epochs unreduced)."""

  def __init__(self, num_records: int):
    self.num_records = num_records

  def map_with_index(self, index, element):
    return index % self.num_records, element


class _Augment(grain.transforms.RandomMap):
  """Decodes a tagged raw record and applies an augmentation policy (:mod:`lliejax.data.augment`)."""

  def __init__(self, policy):
    self.policy = policy

  def random_map(self, element, rng):
    index, record = element
    rec = source.decode_record(record)
    lq, gt = self.policy(rec["lq"], rec["gt"], rng, name=rec["name"])
    return {"lq": lq, "gt": gt, "index": np.int32(index)}


class _EpochShuffle(grain.MapDataset):
  """Infinite repetition of ``parent``, each epoch in its own permutation ``rng([seed, epoch]).permutation(n)``.

  Equivalent in role to grain's ``shuffle(seed).repeat()`` but O(1) per index for any size (grain's index
  shuffle is very slow for datasets of a handful of records, such as the demo set).
  """

  def __init__(self, parent: grain.MapDataset, *, seed: int):
    super().__init__(parent)
    self._seed = int(seed)
    self._n = len(parent)
    self._cache: dict[int, np.ndarray] = {}

  def __len__(self) -> int:
    return sys.maxsize

  def __str__(self) -> str:
    return f"EpochShuffle(seed={self._seed})"

  def _perm(self, epoch: int) -> np.ndarray:
    perm = self._cache.get(epoch)
    if perm is None:
      perm = np.random.default_rng([self._seed, epoch]).permutation(self._n)
      if len(self._cache) >= 4:
        self._cache.clear()
      self._cache[epoch] = perm
    return perm

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, k = divmod(int(index), self._n)
    return self._parent[int(self._perm(epoch)[k])]

  def __getstate__(self):
    state = self.__dict__.copy()
    state["_cache"] = {}
    return state


class _ProcessSlice(grain.MapDataset):
  """Element ``m`` of process ``p`` = element ``(m // b) * B + p * b + m % b`` of the global stream (b per process)."""

  def __init__(self, parent: grain.MapDataset, *, global_batch: int, process_index: int, per_process: int):
    super().__init__(parent)
    self._global, self._offset, self._per = int(global_batch), int(process_index) * per_process, int(per_process)

  def __len__(self) -> int:
    return sys.maxsize

  def __str__(self) -> str:
    return f"ProcessSlice(offset={self._offset}, per_process={self._per}, global_batch={self._global})"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    step, j = divmod(int(index), self._per)
    return self._parent[step * self._global + self._offset + j]


def _seeds(seed: int) -> tuple[int, int]:
  """``(shuffle_seed, augment_seed)`` of the global stream (the draws of lliejax 0.1's process 0)."""
  words = [int(seed) & 0xFFFFFFFF, (int(seed) >> 32) & 0xFFFFFFFF]
  shuffle_seed = np.random.SeedSequence(words + [1]).generate_state(1)[0]
  augment_seed = np.random.SeedSequence(words + [2, 0]).generate_state(1)[0]
  return int(shuffle_seed), int(augment_seed)


def train_dataset(data_cfg: Any, *, seed: int, batch_size: int, process_index: int = 0,
                  process_count: int = 1) -> grain.MapDataset:
  """This process's part of the infinite, batched training stream as a grain ``MapDataset`` (index = step)."""
  if batch_size < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  if batch_size % process_count:
    raise ValueError(f"global batch_size {batch_size} is not divisible by process_count {process_count}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  per_process = batch_size // process_count
  records = source.read_source(source.prepare_from_config(data_cfg), "train")
  n = len(records)
  if n == 0:
    raise ValueError(f"dataset {source.setting(data_cfg, 'name')!r} has no training records")
  shuffle_seed, aug_seed = _seeds(seed)
  ds = grain.MapDataset.source(records).map_with_index(_Tag(n))
  ds = _EpochShuffle(ds, seed=shuffle_seed)
  ds = ds.random_map(_Augment(augment.from_config(data_cfg)), seed=aug_seed)
  ds = _ProcessSlice(ds, global_batch=batch_size, process_index=process_index, per_process=per_process)
  return ds.batch(per_process, drop_remainder=True)


def train_iterator(data_cfg: Any, *, seed: int, batch_size: int, process_index: int = 0,
                   process_count: int = 1, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Infinite iterator of training batches for this process.

  Args:
    data_cfg: the ``config.data`` section (keys in :mod:`lliejax.data.source`; missing keys take their
      defaults). The dataset is built on first use.
    seed: data seed (shuffling and augmentation).
    batch_size: global batch size; each process yields ``batch_size // process_count`` examples.
    process_index, process_count: this process and the number of processes (``jax.process_index()``/
      ``jax.process_count()``); the process reads its slice of every global batch.
    start_step: first batch to yield; ``start_step=k`` yields exactly the batches ``k, k+1, ...`` of the
      stream that starts at 0 (use the checkpointed step to resume).

  Yields:
    ``{'lq', 'gt': float32 (b, P, P, 3) in [0, 1] RGB, 'index': int32 (b,) record index in the split}``.
  """
  ds = train_dataset(data_cfg, seed=seed, batch_size=batch_size, process_index=process_index,
                     process_count=process_count)
  if start_step < 0:
    raise ValueError(f"start_step must be >= 0, got {start_step}")
  if start_step:
    ds = ds[int(start_step):]
  options = grain.ReadOptions(num_threads=int(source.setting(data_cfg, "read_threads")),
                              prefetch_buffer_size=int(source.setting(data_cfg, "prefetch")))
  it_ds = ds.to_iter_dataset(options)
  workers = int(source.setting(data_cfg, "worker_count") or 0)
  if workers > 0:
    if not flags.FLAGS.is_parsed():  # grain workers read absl flags; outside absl.app use their defaults
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return iter(it_ds)
