"""Checkpoints: Orbax training checkpoints with automatic resume, and params-only exports for inference.

Training checkpoints live in ``<workdir>/checkpoints/<step>/`` (an ``ocp.CheckpointManager``: keep N, async
save, latest-step resume). They hold the whole ``TrainState`` and are restored against an abstract target
(otherwise optax states come back as plain lists).

An *export* is a directory that needs no optimizer to load::

    <dir>/lliejax_export.json   {"format": "lliejax-params", "version": 1, "model": {...}, "sde": {...}, ...}
    <dir>/params/               Orbax PyTree checkpoint of the (EMA) network params

``lliejax-enhance``, ``lliejax-eval`` and ``lliejax-convert`` read and write this format.
"""
from __future__ import annotations

import json
import os
import shutil
from typing import Any, Mapping

import jax
import numpy as np
import orbax.checkpoint as ocp

EXPORT_FORMAT = "lliejax-params"
EXPORT_VERSION = 1
EXPORT_META = "lliejax_export.json"


def _to_plain(d):
  """ConfigDict / mapping -> JSON-serialisable dict."""
  if hasattr(d, "to_dict"):
    d = d.to_dict()
  if isinstance(d, Mapping):
    return {k: _to_plain(v) for k, v in d.items()}
  if isinstance(d, (list, tuple)):
    return [_to_plain(v) for v in d]
  if isinstance(d, np.generic):
    return d.item()
  return d


def is_export_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, EXPORT_META))


def export_params(directory: str, params, *, model: Mapping[str, Any], sde: Mapping[str, Any] | None = None,
                  overwrite: bool = False, **meta) -> str:
  """Write params (a pytree of arrays) plus the architecture needed to rebuild the network.

  Args:
    directory: output directory; must not exist unless ``overwrite`` (then only a previous *export* there is
      replaced; any other existing directory is refused so nothing the user owns is lost).
    params: the network params (``variables['params']``).
    model: the ``config.model`` section (width, block counts, ...).
    sde: the ``config.sde`` section used for sampling.
    **meta: extra JSON-serialisable information (source file, step, ...).
  """
  directory = os.path.abspath(os.path.expanduser(directory))
  if os.path.exists(directory):
    if not overwrite:
      raise FileExistsError(f"export directory {directory} already exists; pass overwrite=True (--overwrite) "
                            "to replace it")
    if not is_export_dir(directory):
      raise FileExistsError(f"refusing to overwrite {directory}: it exists and is not a lliejax export "
                            f"(no {EXPORT_META})")
    shutil.rmtree(directory)
  os.makedirs(directory)
  params = jax.tree_util.tree_map(np.asarray, params)
  with ocp.PyTreeCheckpointer() as ckptr:
    ckptr.save(os.path.join(directory, "params"), params)
  info = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "model": _to_plain(model),
          "sde": _to_plain(sde) if sde is not None else None, **_to_plain(meta)}
  with open(os.path.join(directory, EXPORT_META), "w") as f:
    json.dump(info, f, indent=2)
  return directory


def read_export_info(directory: str) -> dict:
  path = os.path.join(directory, EXPORT_META)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{directory} is not a lliejax export: {EXPORT_META} is missing")
  try:
    with open(path) as f:
      info = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from e
  if info.get("format") != EXPORT_FORMAT:
    raise ValueError(f"{path}: format is {info.get('format')!r}, expected {EXPORT_FORMAT!r}")
  if int(info.get("version", 0)) > EXPORT_VERSION:
    raise ValueError(f"{path}: export version {info['version']} is newer than this lliejax supports "
                     f"({EXPORT_VERSION})")
  return info


def load_exported(directory: str, target=None):
  """Load ``(params, info)`` from an export directory. ``target`` (abstract pytree) is optional."""
  directory = os.path.abspath(os.path.expanduser(directory))
  info = read_export_info(directory)
  with ocp.PyTreeCheckpointer() as ckptr:
    if target is not None:
      params = ckptr.restore(os.path.join(directory, "params"), item=target)
    else:
      params = ckptr.restore(os.path.join(directory, "params"))
  return params, info
