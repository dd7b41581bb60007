"""Input pipeline: TFDS array_record sources read with grain, paired augmentation, evaluation images.

Training (:func:`train_iterator`) follows the official ``LQGT`` dataset (REFERENCE.md section 1.10), applied
identically to the LQ and GT images of a pair:

1. decode both PNGs to float32 RGB in [0, 1];
2. with probability ``resize_prob`` (0.2) resize both to ``(floor(s W), floor(s H))``, ``s = resize_scale``
   (0.8), bilinear with OpenCV ``INTER_LINEAR`` semantics (half-pixel centres, edge replication, no
   anti-aliasing). Only the crop window of the resized image is computed, which gives the same values as
   resizing the whole image and cropping;
3. a random ``P x P`` crop at the same position (top offset drawn first, then left);
4. horizontal flip, vertical flip and H<->W transpose, each with probability 0.5, three independent draws in
   this order. ``flip`` gates both flips, ``transpose`` the transpose (all three numbers are always drawn).

Images smaller than the patch: a ``ValueError`` naming the example is raised (no padding). When the random
resize would make an image smaller than the patch, that resize is skipped (the official code would produce an
undersized crop there; it never happens for LOL at P = 128).

Determinism and resumption: the stream is a pure function of ``(seed, process_index, process_count, step)``.
Element ``i = step * b + j`` of a process is record ``perm_e[i mod n]`` of its shard, where ``e = i // n`` is the
epoch and ``perm_e = np.random.default_rng([shuffle_seed, e]).permutation(n)``; its augmentation draws come from
a Philox generator keyed by the (per-process) augmentation seed and ``i`` (grain ``random_map``). So
``train_iterator(..., start_step=k)`` yields exactly batches ``k, k+1, ...`` of the uninterrupted stream, for
any ``worker_count``.

Sharding: process ``p`` of ``P`` reads records ``p, p + P, p + 2P, ...`` of the split (disjoint, covering all).
The caller passes the *global* batch size; each process gets ``batch_size // process_count`` examples.
"""
from __future__ import annotations

import os
import re
import sys
from typing import Any, Iterator, Mapping

from absl import flags
import grain
import numpy as np
import tensorflow_datasets as tfds

from lliejax.data import common, demo, lol

DATASETS = ("lliejax_demo", "lol_v1", "lol_v2_real", "lol_v2_synthetic")
_LOL_BUILDERS = {"lol_v1": lol.LolV1, "lol_v2_real": lol.LolV2Real, "lol_v2_synthetic": lol.LolV2Synthetic}

_DEFAULTS = {
    "name": "lliejax_demo",
    "data_dir": "~/tensorflow_datasets",
    "manual_dir": None,
    "patch_size": 128,
    "resize_prob": 0.2,
    "resize_scale": 0.8,
    "flip": True,
    "transpose": True,
    "worker_count": 0,
    "eval_split": "test",
    "eval_max_images": None,
    "read_threads": 2,
    "prefetch": 4,
}


def _get(cfg: Mapping[str, Any] | Any, key: str):
  value = cfg.get(key, _DEFAULTS[key]) if cfg is not None else _DEFAULTS[key]
  return _DEFAULTS[key] if value is None and key in ("name", "data_dir") else value


# ----------------------------------------------------------------------------------------------------------
# Builders


def _split_name(name: str) -> tuple[str, str | None]:
  base, _, config = name.partition("/")
  if base not in DATASETS:
    raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)} "
                     "(lliejax_demo also accepts lliejax_demo/small, lliejax_demo/full, "
                     "lliejax_demo/max<N>_seed<S>)")
  if config and base != "lliejax_demo":
    raise ValueError(f"dataset {base!r} has no builder configs (got {name!r})")
  return base, config or None


def _demo_args(config: str | None) -> dict[str, Any]:
  if config is None or config == "small":
    return {"max_side": demo.DEFAULT_MAX_SIDE, "seed": 0}
  if config == "full":
    return {"max_side": None, "seed": 0}
  m = re.fullmatch(r"max(\d+|full)_seed(\d+)", config)
  if not m:
    raise ValueError(f"unknown lliejax_demo config {config!r}; expected small, full or max<N>_seed<S>")
  return {"max_side": None if m.group(1) == "full" else int(m.group(1)), "seed": int(m.group(2))}


def get_builder(name: str, *, data_dir: str | os.PathLike[str] | None = None,
                manual_dir: str | os.PathLike[str] | None = None) -> tfds.core.DatasetBuilder:
  """The TFDS builder (array_record) of dataset ``name`` under ``data_dir``; nothing is built.

  Args:
    name: one of :data:`DATASETS`; ``lliejax_demo`` may carry a config (``lliejax_demo/full``).
    data_dir: TFDS data dir (default ``~/tensorflow_datasets``).
    manual_dir: folder holding the extracted LOL images; when given and the dataset is not built yet, its
      layout is checked here (clear error before anything is built). Ignored for ``lliejax_demo``.
  """
  base, config = _split_name(name)
  data_dir = os.path.expanduser(os.fspath(data_dir if data_dir is not None else _DEFAULTS["data_dir"]))
  if base == "lliejax_demo":
    return demo.demo_builder(data_dir, **_demo_args(config))
  builder = _LOL_BUILDERS[base](data_dir=data_dir, file_format="array_record")
  if manual_dir is not None and not builder.is_prepared():
    builder.resolve_subset_dir(os.fspath(manual_dir))
  return builder


def prepare(name: str, *, data_dir: str | os.PathLike[str] | None = None,
            manual_dir: str | os.PathLike[str] | None = None) -> tfds.core.DatasetBuilder:
  """Builds dataset ``name`` under ``data_dir`` unless it is already built; returns the prepared builder.

  Idempotent. ``lliejax_demo`` needs no ``manual_dir``; the LOL datasets need it for the first build (layouts
  in :mod:`lliejax.data.lol`). In multi-process jobs sharing one ``data_dir``, build once before starting.
  """
  builder = get_builder(name, data_dir=data_dir, manual_dir=manual_dir)
  if builder.is_prepared():
    return builder
  base, _ = _split_name(name)
  if base != "lliejax_demo":
    if manual_dir is None:
      raise ValueError(f"dataset {base!r} is not built in {builder.data_dir!r}; pass manual_dir (config key "
                       "data.manual_dir) pointing at the extracted images. "
                       f"{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    manual_dir = os.path.abspath(os.path.expanduser(os.fspath(manual_dir)))
    builder.split_pairs(manual_dir)  # validate the whole layout first (clear errors, nothing written)
  else:
    manual_dir = None
  config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
  builder.download_and_prepare(download_config=config)
  return builder


def prepare_from_config(data_cfg: Any) -> tfds.core.DatasetBuilder:
  """:func:`prepare` with ``name``/``data_dir``/``manual_dir`` taken from a ``config.data`` section."""
  return prepare(_get(data_cfg, "name"), data_dir=_get(data_cfg, "data_dir"),
                 manual_dir=_get(data_cfg, "manual_dir"))


def num_examples(data_cfg: Any, split: str) -> int:
  """Number of examples of ``split`` of the configured dataset (builds it if needed)."""
  builder = prepare_from_config(data_cfg)
  return builder.info.splits[split].num_examples


# ----------------------------------------------------------------------------------------------------------
# Augmentation


def _linear_taps(out_idx: np.ndarray, in_size: int, out_size: int):
  """Source taps and weights of OpenCV INTER_LINEAR for output positions ``out_idx`` (float32 weights)."""
  scale = in_size / out_size
  f = ((out_idx + 0.5) * scale - 0.5).astype(np.float32)
  i0 = np.floor(f).astype(np.int64)
  w = (f - i0).astype(np.float32)
  w = np.where(i0 < 0, np.float32(0), w)
  i0 = np.clip(i0, 0, in_size - 1)
  w = np.where(i0 >= in_size - 1, np.float32(0), w)
  i1 = np.minimum(i0 + 1, in_size - 1)
  return i0, i1, w


def resize_window(image: np.ndarray, out_hw: tuple[int, int], top: int, left: int, size: int) -> np.ndarray:
  """Rows ``top:top+size``, cols ``left:left+size`` of ``image`` bilinearly resized to ``out_hw``.

  OpenCV ``cv2.resize(..., INTER_LINEAR)`` semantics on a float image (half-pixel centres, replicated border,
  no anti-aliasing), evaluated only on the window.
  """
  h, w = image.shape[:2]
  r = np.arange(top, top + size)
  c = np.arange(left, left + size)
  y0, y1, wy = _linear_taps(r, h, out_hw[0])
  x0, x1, wx = _linear_taps(c, w, out_hw[1])
  wy = wy[:, None, None]
  rows = image[y0] * (1 - wy) + image[y1] * wy
  wx = wx[None, :, None]
  return (rows[:, x0] * (1 - wx) + rows[:, x1] * wx).astype(np.float32)


def paired_augment(lq: np.ndarray, gt: np.ndarray, rng: np.random.Generator, *, patch_size: int,
                   resize_prob: float = 0.2, resize_scale: float = 0.8, flip: bool = True,
                   transpose: bool = True, name: str = "") -> tuple[np.ndarray, np.ndarray]:
  """The official paired training augmentation (module docstring) on uint8/float images -> float32 patches.

  Draw order from ``rng``: resize decision, crop top, crop left, h-flip, v-flip, transpose.
  """
  if lq.shape != gt.shape:
    raise ValueError(f"example {name!r}: LQ {lq.shape} and GT {gt.shape} differ in shape")
  h, w = lq.shape[:2]
  p = int(patch_size)
  if h < p or w < p:
    raise ValueError(f"example {name!r} is {h}x{w}, smaller than patch_size {p}; use a smaller data.patch_size "
                     "(or a larger lliejax_demo max_side)")
  resize = rng.random() < resize_prob
  rh, rw = int(h * resize_scale), int(w * resize_scale)
  resize = resize and rh >= p and rw >= p
  ch, cw = (rh, rw) if resize else (h, w)
  top = int(rng.integers(0, ch - p + 1))
  left = int(rng.integers(0, cw - p + 1))
  hflip, vflip, trans = rng.random() < 0.5, rng.random() < 0.5, rng.random() < 0.5

  def one(img):
    if resize:
      x = resize_window(_to_float(img), (rh, rw), top, left, p)
    else:
      x = _to_float(img[top:top + p, left:left + p])
    if flip and hflip:
      x = x[:, ::-1]
    if flip and vflip:
      x = x[::-1]
    if transpose and trans:
      x = x.transpose(1, 0, 2)
    return np.ascontiguousarray(x, dtype=np.float32)

  return one(lq), one(gt)


def _to_float(img: np.ndarray) -> np.ndarray:
  if img.dtype == np.uint8:
    return img.astype(np.float32) / np.float32(255)
  return img.astype(np.float32, copy=False)


class _Tag(grain.transforms.MapWithIndex):
  """``record -> (index in split, record)`` (grain passes indices of later epochs unreduced)."""

  def __init__(self, num_records: int):
    self.num_records = num_records

  def map_with_index(self, index, element):
    return index % self.num_records, element


class _Augment(grain.transforms.RandomMap):
  """Decodes a tagged raw record and applies :func:`paired_augment`."""

  def __init__(self, **kwargs):
    self.kwargs = kwargs

  def random_map(self, element, rng):
    index, record = element
    rec = common.decode_record(record)
    lq, gt = paired_augment(rec["lq"], rec["gt"], rng, name=rec["name"], **self.kwargs)
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


def _seeds(seed: int, process_index: int) -> tuple[int, int]:
  """``(shuffle_seed, augment_seed)``: the shuffle is shared by all shards, the augmentation is per process."""
  words = [int(seed) & 0xFFFFFFFF, (int(seed) >> 32) & 0xFFFFFFFF]
  shuffle_seed = np.random.SeedSequence(words + [1]).generate_state(1)[0]
  augment_seed = np.random.SeedSequence(words + [2, int(process_index)]).generate_state(1)[0]
  return int(shuffle_seed), int(augment_seed)


def train_dataset(data_cfg: Any, *, seed: int, batch_size: int, process_index: int = 0,
                  process_count: int = 1) -> grain.MapDataset:
  """The infinite, batched training stream of one process as a grain ``MapDataset`` (index = step)."""
  if batch_size % process_count:
    raise ValueError(f"global batch_size {batch_size} is not divisible by process_count {process_count}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} not in [0, {process_count})")
  per_process = batch_size // process_count
  if per_process < 1:
    raise ValueError(f"batch_size must be positive, got {batch_size}")
  builder = prepare_from_config(data_cfg)
  source = common.read_source(builder, "train")
  n = len(source)
  ds = grain.MapDataset.source(source).map_with_index(_Tag(n))
  ds = ds[process_index::process_count]
  if len(ds) == 0:
    raise ValueError(f"process {process_index} of {process_count} gets no training records "
                     f"({builder.name} train has {n})")
  shuffle_seed, aug_seed = _seeds(seed, process_index)
  ds = _EpochShuffle(ds, seed=shuffle_seed)
  augment = _Augment(patch_size=int(_get(data_cfg, "patch_size")),
                     resize_prob=float(_get(data_cfg, "resize_prob")),
                     resize_scale=float(_get(data_cfg, "resize_scale")),
                     flip=bool(_get(data_cfg, "flip")), transpose=bool(_get(data_cfg, "transpose")))
  ds = ds.random_map(augment, seed=aug_seed)
  return ds.batch(per_process, drop_remainder=True)


def train_iterator(data_cfg: Any, *, seed: int, batch_size: int, process_index: int = 0,
                   process_count: int = 1, start_step: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Infinite iterator of training batches for this process.

  Args:
    data_cfg: the ``config.data`` section (keys in the module docstring of :mod:`lliejax.data`; missing keys
      take their defaults). The dataset is built on first use.
    seed: data seed (shuffling and augmentation).
    batch_size: global batch size; each process yields ``batch_size // process_count`` examples.
    process_index, process_count: this process and the number of processes (``jax.process_index()``/
      ``jax.process_count()``); records are sharded ``process_index::process_count``.
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
  options = grain.ReadOptions(num_threads=int(_get(data_cfg, "read_threads")),
                              prefetch_buffer_size=int(_get(data_cfg, "prefetch")))
  it_ds = ds.to_iter_dataset(options)
  workers = int(_get(data_cfg, "worker_count") or 0)
  if workers > 0:
    if not flags.FLAGS.is_parsed():  # grain workers read absl flags; outside absl.app use their defaults
      flags.FLAGS.mark_as_parsed()
    it_ds = it_ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
  return iter(it_ds)


# ----------------------------------------------------------------------------------------------------------
# Evaluation


def eval_iterator(data_cfg: Any, *, split: str | None = None, max_images: int | None = None,
                  process_index: int = 0, process_count: int = 1) -> Iterator[dict[str, Any]]:
  """Full-size evaluation images, one at a time, sorted by name (the official order of sorted file names).

  Args:
    data_cfg: the ``config.data`` section.
    split: split to read (default ``data_cfg.eval_split``, i.e. ``'test'``).
    max_images: keep only the first ``max_images`` images in name order (default ``data_cfg.eval_max_images``;
      None = all).
    process_index, process_count: optional sharding of the (truncated) image list, ``p::P``.

  Yields:
    ``{'lq', 'gt': float32 (1, H, W, 3) in [0, 1] RGB, 'name': str}``.
  """
  split = split if split is not None else _get(data_cfg, "eval_split")
  max_images = max_images if max_images is not None else _get(data_cfg, "eval_max_images")
  builder = prepare_from_config(data_cfg)
  source = common.read_source(builder, split)
  names = []
  for i in range(len(source)):
    name = source[i]["name"]
    names.append((name.decode("utf-8") if isinstance(name, bytes) else str(name), i))
  names.sort()  # the official order: sorted file names (e.g. LOL-v1 test: 1, 111, 146, ..., 22, ...)
  if max_images is not None:
    names = names[:int(max_images)]
  names = names[process_index::process_count]

  def gen():
    for _, i in names:
      rec = common.decode_record(source[i])
      yield {"lq": _to_float(rec["lq"])[None], "gt": _to_float(rec["gt"])[None], "name": rec["name"]}

  return gen()
