"""Reading a dataset split: the ``config.data`` settings, random-access record sources, evaluation images.

The ``config.data`` section (missing keys take these defaults; see :data:`DEFAULTS`): ``name`` ('lliejax_demo'),
``data_dir`` ('~/tensorflow_datasets'), ``manual_dir`` (None), ``augment`` ('lqgt') and its options
(:mod:`lliejax.data.augment`), ``worker_count`` (0: no grain worker processes), ``eval_split`` ('test'),
``eval_max_images`` (None), ``read_threads`` (2) and ``prefetch`` (4 batches) of the grain reader.

Records are read with TFDS ``as_data_source`` (array_record, random access) with image decoding skipped; the PNG
bytes are decoded here with PIL, so reading needs neither TensorFlow nor OpenCV.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import tensorflow_datasets as tfds

from lliejax.data import image_io, registry

DEFAULTS = {
    "name": "lliejax_demo",
    "data_dir": registry.DEFAULT_DATA_DIR,
    "manual_dir": None,
    "augment": "lqgt",
    "worker_count": 0,
    "eval_split": "test",
    "eval_max_images": None,
    "read_threads": 2,
    "prefetch": 4,
}


def setting(cfg: Mapping[str, Any] | Any, key: str, default: Any = None):
  """``cfg[key]`` of a ``config.data`` section (dict or ConfigDict), else :data:`DEFAULTS` / ``default``."""
  fallback = DEFAULTS.get(key, default)
  value = cfg.get(key, fallback) if cfg is not None else fallback
  return fallback if value is None and key in ("name", "data_dir", "augment") else value


def prepare_from_config(data_cfg: Any) -> tfds.core.DatasetBuilder:
  """:func:`lliejax.data.registry.prepare` with ``name`` / ``data_dir`` / ``manual_dir`` from ``config.data``."""
  return registry.prepare(setting(data_cfg, "name"), data_dir=setting(data_cfg, "data_dir"),
                          manual_dir=setting(data_cfg, "manual_dir"))


def read_source(builder: tfds.core.DatasetBuilder, split: str) -> Any:
  """A random-access data source of ``split`` whose ``lq``/``gt`` are left as PNG bytes."""
  if split not in builder.info.splits:
    raise ValueError(f"dataset {builder.name!r} has no split {split!r}; available: "
                     f"{sorted(builder.info.splits.keys())}")
  skip = tfds.decode.SkipDecoding()
  return builder.as_data_source(split, decoders={"lq": skip, "gt": skip})


def decode_record(record: dict[str, Any]) -> dict[str, Any]:
  """A raw record of :func:`read_source` -> ``{'lq', 'gt': uint8 (H, W, 3), 'name': str}``."""
  return {"lq": image_io.decode_png(record["lq"]), "gt": image_io.decode_png(record["gt"]),
          "name": _text(record["name"])}


def _text(value) -> str:
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def num_examples(data_cfg: Any, split: str) -> int:
  """Number of examples of ``split`` of the configured dataset (builds it if needed)."""
  return prepare_from_config(data_cfg).info.splits[split].num_examples


@dataclasses.dataclass(frozen=True)
class EvalItem:
  """One evaluation pair, decoded on :meth:`load` to ``{'lq', 'gt': float32 (H, W, 3) in [0, 1], 'name'}``."""

  name: str
  source: Any
  record: int

  def load(self) -> dict[str, Any]:
    rec = decode_record(self.source[self.record])
    return {"lq": image_io.to_float(rec["lq"]), "gt": image_io.to_float(rec["gt"]), "name": rec["name"]}


def eval_items(data_cfg: Any, *, split: str | None = None, max_images: int | None = None) -> list[EvalItem]:
  """The full-size pairs of a split, sorted by name (the official order of sorted file names).

  Args:
    data_cfg: the ``config.data`` section (the dataset is built on first use).
    split: default ``data_cfg.eval_split`` ('test').
    max_images: keep the first images in name order (default ``data_cfg.eval_max_images``; None = all).
  """
  split = split if split is not None else setting(data_cfg, "eval_split")
  max_images = max_images if max_images is not None else setting(data_cfg, "eval_max_images")
  source = read_source(prepare_from_config(data_cfg), split)
  # Sorted like the official code lists files (e.g. LOL-v1 test: 1, 111, 146, ..., 22, ...).
  names = sorted((_text(source[i]["name"]), i) for i in range(len(source)))
  if max_images is not None:
    names = names[:int(max_images)]
  return [EvalItem(name=name, source=source, record=i) for name, i in names]
