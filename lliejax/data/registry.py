"""The dataset registry: names -> TFDS builders (array_record files), built on first use.

=====================  ==========================================================================================
``lliejax_demo``       offline, synthesised from scikit-image's photos (:mod:`lliejax.data.demo`); configs
                       ``lliejax_demo/small`` (default), ``/full``, ``/max<N>_seed<S>``
``lol_v1``             LOL (485 + 15 pairs) from a user-supplied ``manual_dir`` (:mod:`lliejax.data.lol`)
``lol_v2_real``        LOL-v2 real-captured (689 + 100)
``lol_v2_synthetic``   LOL-v2 synthetic (900 + 100)
``velol``              VE-LOL-L-Cap-Full (400 + 100)
``lol_v1_v2_velol``    AnlightenDiff's training union LOL + LOL-v2 real + VE-LOL (1,574 train pairs; tests: LOL
                       eval15 ``test``, ``test_lol_v2_real``, ``test_velol``)
=====================  ==========================================================================================

:func:`register` adds a dataset: a factory ``(data_dir, config_name) -> builder`` and whether it needs a
``manual_dir``.
"""
from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Callable

import tensorflow_datasets as tfds

DEFAULT_DATA_DIR = "~/tensorflow_datasets"


@dataclasses.dataclass(frozen=True)
class Dataset:
  """A registered dataset: ``factory(data_dir, config_name_or_None)`` returns its (unprepared) builder."""

  name: str
  factory: Callable[[str, str | None], tfds.core.DatasetBuilder]
  manual: bool  # built from a user-supplied manual_dir
  configs_help: str = ""


_REGISTRY: dict[str, Dataset] = {}


def register(dataset: Dataset) -> Dataset:
  _REGISTRY[dataset.name] = dataset
  return dataset


def names() -> tuple[str, ...]:
  _builtin()
  return tuple(_REGISTRY)


def _builtin() -> None:
  if _REGISTRY:
    return
  from lliejax.data import demo, lol  # pylint: disable=import-outside-toplevel

  register(Dataset("lliejax_demo", lambda d, c: demo.demo_builder(d, **_demo_args(c)), manual=False,
                   configs_help="lliejax_demo also accepts lliejax_demo/small, lliejax_demo/full, "
                                "lliejax_demo/max<N>_seed<S>"))
  for cls in (lol.LolV1, lol.LolV2Real, lol.LolV2Synthetic, lol.VeLol, lol.LolV1V2Velol):
    register(Dataset(cls.name, lambda d, c, cls=cls: cls(data_dir=d, file_format="array_record"), manual=True))


def _demo_args(config: str | None) -> dict[str, Any]:
  from lliejax.data import demo  # pylint: disable=import-outside-toplevel

  if config is None or config == "small":
    return {"max_side": demo.DEFAULT_MAX_SIDE, "seed": 0}
  if config == "full":
    return {"max_side": None, "seed": 0}
  m = re.fullmatch(r"max(\d+|full)_seed(\d+)", config)
  if not m:
    raise ValueError(f"unknown lliejax_demo config {config!r}; expected small, full or max<N>_seed<S>")
  return {"max_side": None if m.group(1) == "full" else int(m.group(1)), "seed": int(m.group(2))}


def lookup(name: str) -> tuple[Dataset, str | None]:
  """``(dataset, config name)`` of ``'name[/config]'``.

  Raises:
    ValueError: unknown dataset, naming the known ones.
  """
  _builtin()
  base, _, config = name.partition("/")
  if base not in _REGISTRY:
    hints = "; ".join(d.configs_help for d in _REGISTRY.values() if d.configs_help)
    raise ValueError(f"unknown dataset {name!r}; valid names: {', '.join(_REGISTRY)}" + (f" ({hints})" if hints else ""))
  dataset = _REGISTRY[base]
  if config and dataset.manual:
    raise ValueError(f"dataset {base!r} has no builder configs (got {name!r})")
  return dataset, config or None


def get_builder(name: str, *, data_dir: str | os.PathLike[str] | None = None,
                manual_dir: str | os.PathLike[str] | None = None) -> tfds.core.DatasetBuilder:
  """The TFDS builder of dataset ``name`` under ``data_dir`` (default ``~/tensorflow_datasets``); nothing is built.

  With ``manual_dir`` and a dataset not built yet, the folder layout is checked here (a clear error before anything
  is written).
  """
  dataset, config = lookup(name)
  data_dir = os.path.expanduser(os.fspath(data_dir if data_dir is not None else DEFAULT_DATA_DIR))
  builder = dataset.factory(data_dir, config)
  if dataset.manual and manual_dir is not None and not builder.is_prepared():
    builder.resolve_subset_dir(os.fspath(manual_dir))
  return builder


def prepare(name: str, *, data_dir: str | os.PathLike[str] | None = None,
            manual_dir: str | os.PathLike[str] | None = None) -> tfds.core.DatasetBuilder:
  """Builds dataset ``name`` under ``data_dir`` unless it is built already; returns the prepared builder.

  Idempotent. ``lliejax_demo`` needs no ``manual_dir``; the LOL datasets need it for the first build (layouts in
  :mod:`lliejax.data.lol`). In multi-process jobs sharing one ``data_dir``, build once before starting.

  Raises:
    ValueError: a manual dataset that is not built and no (or a malformed) ``manual_dir``.
  """
  dataset, _ = lookup(name)
  builder = get_builder(name, data_dir=data_dir, manual_dir=manual_dir)
  if builder.is_prepared():
    return builder
  if dataset.manual:
    if manual_dir is None:
      raise ValueError(f"dataset {dataset.name!r} is not built in {builder.data_dir!r}; pass manual_dir (config key "
                       "data.manual_dir) pointing at the extracted images. "
                       f"{builder.MANUAL_DOWNLOAD_INSTRUCTIONS}")
    manual_dir = os.path.abspath(os.path.expanduser(os.fspath(manual_dir)))
    builder.split_pairs(manual_dir)  # validate the whole layout first (clear errors, nothing written)
  else:
    manual_dir = None
  config = tfds.download.DownloadConfig(manual_dir=manual_dir, try_download_gcs=False)
  builder.download_and_prepare(download_config=config)
  return builder
