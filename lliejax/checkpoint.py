"""Checkpoints and exports: the only module of lliejax that imports Orbax.

A training **workdir**::

    <workdir>/config.json           the run's config; a resume with different architecture sections is refused
    <workdir>/checkpoints/<step>/   the whole train state (ocp.CheckpointManager: keep N, asynchronous saves,
                                    resume from the latest step); restored against an abstract target, without
                                    which optax states would come back as plain lists
    <workdir>/export/               the export written when training ends

An **export** is what inference needs and nothing else (no optimizer state)::

    <dir>/lliejax_export.json       {"format": "lliejax-export", "version": 2, "method", "method_module",
                                     "config": the full config, "frozen": bool, ...provenance}
    <dir>/params/                   Orbax PyTree checkpoint of the exported (EMA) parameters
    <dir>/frozen/                   Orbax PyTree of the frozen pytree that sampling needs (only when non-empty)

so ``lliejax enhance --checkpoint DIR`` rebuilds the method from the export alone. Exports of lliejax 0.1
(``"format": "lliejax-params"``, version 1: ``params/`` plus the ``model`` and ``sde`` sections) still load:
:func:`load_export` returns them with ``config=None`` and :mod:`lliejax.inference` completes the config.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import shutil
from typing import Any, Mapping, Sequence

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

EXPORT_FORMAT = "lliejax-export"
EXPORT_VERSION = 2
EXPORT_META = "lliejax_export.json"
LEGACY_FORMAT = "lliejax-params"  # lliejax 0.1 exports (version 1)
CONFIG_FILE = "config.json"


def to_plain(d):
  """ConfigDict / mapping / numpy scalars -> JSON-serialisable Python values."""
  if hasattr(d, "to_dict"):
    d = d.to_dict()
  if isinstance(d, Mapping):
    return {k: to_plain(v) for k, v in d.items()}
  if isinstance(d, (list, tuple)):
    return [to_plain(v) for v in d]
  if isinstance(d, np.generic):
    return d.item()
  return d


# ------------------------------------------------------------------------------------------------ workdirs
class TrainCheckpoints:
  """The train-state checkpoints of a workdir (``<workdir>/checkpoints``), a thin ``ocp.CheckpointManager``."""

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
    options = ocp.CheckpointManagerOptions(max_to_keep=int(keep), create=True,
                                           enable_async_checkpointing=async_save)
    self.directory = os.path.join(os.path.abspath(os.path.expanduser(workdir)), "checkpoints")
    self._mngr = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def save(self, step: int, state) -> None:
    """Starts saving ``state`` as ``step`` (asynchronously; :meth:`wait` for it)."""
    self._mngr.save(step, args=ocp.args.StandardSave(state))

  def restore(self, step: int, target):
    """The state of ``step``; ``target`` is an abstract train state (``jax.ShapeDtypeStruct`` leaves, shardings).

    A lliejax 0.1 checkpoint (whose state has ``ema_params`` where 0.2 has ``ema = {'ema': ...}``) is restored
    into the new layout.

    Raises:
      ValueError: the checkpoint does not fit ``target`` (another method or architecture), naming the step.
    """
    try:
      return self._mngr.restore(step, args=ocp.args.StandardRestore(target))
    except ValueError as e:
      error = e
    if set(getattr(target, "ema", {})) == {"ema"}:
      legacy = {"step": target.step, "params": target.params, "ema_params": target.ema["ema"],
                "opt_state": target.opt_state}
      try:
        old = self._mngr.restore(step, args=ocp.args.StandardRestore(legacy))
      except ValueError:
        pass
      else:
        logging.info("restored a lliejax 0.1 train state (ema_params) from %s/%d", self.directory, step)
        return target.replace(step=old["step"], params=old["params"], ema={"ema": old["ema_params"]},
                              opt_state=old["opt_state"])
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise ValueError(f"{self.directory}/{step}: the checkpoint does not fit this method's train state ({first}); "
                     "resume it with the config it was written with, or use a new workdir") from error

  def wait(self) -> None:
    self._mngr.wait_until_finished()

  def close(self) -> None:
    self._mngr.wait_until_finished()
    self._mngr.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def save_config(workdir: str, config, *, architecture_sections: Sequence[str] = ("model",)) -> None:
  """Writes ``<workdir>/config.json``; a workdir made with another method or architecture is refused.

  Raises:
    ValueError: the workdir's ``config.json`` has another ``method`` or other ``architecture_sections`` (its
      checkpoints would not fit), naming the section.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  new = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    for section in ("method", *architecture_sections):
      if old.get(section) != new.get(section):
        raise ValueError(f"{path}: the workdir was created with a different config.{section} "
                         f"({old.get(section)} != {new.get(section)}); use a new --workdir")
    if old != new:
      logging.warning("config differs from %s (training resumes with the new values)", path)
  if jax.process_index() == 0:
    with open(path + ".tmp", "w") as f:
      json.dump(new, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  """The config a workdir was trained with.

  Raises:
    FileNotFoundError: ``workdir`` has no ``config.json``.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{workdir} is not a lliejax workdir: {path} is missing")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def is_workdir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, CONFIG_FILE))


def sync_processes(name: str, *, timeout_s: int = 1800) -> None:
  """Wait until every process reaches this point (no-op with one process).

  A barrier of the ``jax.distributed`` coordination service (Orbax's), not a device collective: it is meant for
  places where processes may arrive far apart (compilation, uneven evaluation work), where the first collective of
  the CPU backend's gloo (30 s rendezvous) would time out.
  """
  if jax.process_count() == 1:
    return
  _BARRIERS[name] = _BARRIERS.get(name, 0) + 1
  ocp.multihost.sync_global_processes(f"lliejax:{name}:{_BARRIERS[name]}", timeout=timeout_s,
                                      processes=set(range(jax.process_count())))


_BARRIERS: dict[str, int] = {}


# ------------------------------------------------------------------------------------------------ exports
@dataclasses.dataclass
class Export:
  """A loaded export: numpy pytrees, the method name, its config (``None`` for 0.1 exports) and the metadata."""

  params: Any
  frozen: Any
  method: str
  config: ml_collections.ConfigDict | None
  info: dict


def is_export_dir(path: str) -> bool:
  return os.path.isfile(os.path.join(path, EXPORT_META))


def _has_leaves(tree) -> bool:
  return bool(jax.tree_util.tree_leaves(tree))


def export(directory: str, params, *, config, method: str, method_module: str | None = None, frozen=None,
           overwrite: bool = False, **meta) -> str:
  """Writes an export directory (see the module docstring).

  Args:
    directory: output directory; must not exist unless ``overwrite`` (then only a previous *export* there is
      replaced; any other existing directory is refused, so nothing the user owns is lost). In a multi-process
      job every process calls this with the same arguments.
    params: the parameters sampling uses (the EMA copy after training).
    config: the full config of the method (a ConfigDict or mapping).
    method: the method's registry name; ``method_module`` the module that registers it (for methods defined
      outside lliejax).
    frozen: the frozen pytree sampling needs (``None`` or empty: not written).
    **meta: JSON-serialisable provenance (source, step, ...).
  """
  directory = os.path.abspath(os.path.expanduser(directory))
  if os.path.exists(directory):
    if not overwrite:
      raise FileExistsError(f"export directory {directory} already exists; pass overwrite=True (--overwrite) "
                            "to replace it")
    if not is_export_dir(directory):
      raise FileExistsError(f"refusing to overwrite {directory}: it exists and is not a lliejax export "
                            f"(no {EXPORT_META})")
  # In a multi-process job every process calls this (Orbax synchronises them); process 0 owns the folder, and
  # changes it only once every process has checked it as it was.
  sync_processes("export-checked")
  primary = jax.process_index() == 0
  if primary:
    if os.path.exists(directory):
      shutil.rmtree(directory)
    os.makedirs(directory)
  sync_processes("export-dir")
  has_frozen = frozen is not None and _has_leaves(frozen)
  with ocp.PyTreeCheckpointer() as ckptr:
    ckptr.save(os.path.join(directory, "params"), jax.tree_util.tree_map(np.asarray, params))
    if has_frozen:
      ckptr.save(os.path.join(directory, "frozen"), jax.tree_util.tree_map(np.asarray, frozen))
  if primary:
    info = {"format": EXPORT_FORMAT, "version": EXPORT_VERSION, "method": method, "method_module": method_module,
            "config": to_plain(config), "frozen": has_frozen, **to_plain(meta)}
    with open(os.path.join(directory, EXPORT_META), "w") as f:
      json.dump(info, f, indent=2)
  sync_processes("export-done")
  return directory



def read_export_info(directory: str) -> dict:
  """The metadata of an export (either format).

  Raises:
    FileNotFoundError / ValueError: not an export, invalid JSON, unknown format or a newer version, naming the file.
  """
  path = os.path.join(directory, EXPORT_META)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{directory} is not a lliejax export: {EXPORT_META} is missing")
  try:
    with open(path) as f:
      info = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from e
  fmt, version = info.get("format"), int(info.get("version", 0))
  if fmt == LEGACY_FORMAT and version == 1:
    if not isinstance(info.get("model"), Mapping):
      raise ValueError(f"{path}: a lliejax 0.1 export without its 'model' section")
    return info
  if fmt != EXPORT_FORMAT:
    raise ValueError(f"{path}: format is {fmt!r}, expected {EXPORT_FORMAT!r}")
  if version > EXPORT_VERSION:
    raise ValueError(f"{path}: export version {version} is newer than this lliejax supports ({EXPORT_VERSION})")
  for key in ("method", "config"):
    if not info.get(key):
      raise ValueError(f"{path}: the export has no {key!r}")
  return info


def load_export(directory: str) -> Export:
  """Loads an export directory (either format) as numpy pytrees."""
  directory = os.path.abspath(os.path.expanduser(directory))
  info = read_export_info(directory)
  with ocp.PyTreeCheckpointer() as ckptr:
    params = ckptr.restore(os.path.join(directory, "params"))
    frozen = ckptr.restore(os.path.join(directory, "frozen")) if info.get("frozen") else {}
  if info["format"] == LEGACY_FORMAT:
    return Export(params=params, frozen={}, method="entropy_sde", config=None, info=info)
  return Export(params=params, frozen=frozen, method=info["method"],
                config=ml_collections.ConfigDict(info["config"]), info=info)
