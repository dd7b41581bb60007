"""Checkpoints and exports: the only module of lliejax that imports Orbax.

A training **workdir**::

    <workdir>/.lliejax.lock         held by the run using the workdir (:func:`prepare_workdir`); a second run is refused
    <workdir>/config.json           the run's config; a resume with another config is refused (:func:`check_config`)
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
import datetime
import errno as errno_lib
import json
import logging
import os
import re
import shlex
import shutil
import socket
import sys
import tempfile
import time
from typing import Any, Mapping, Sequence

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp

from lliejax import fileutil

EXPORT_FORMAT = "lliejax-export"
EXPORT_VERSION = 2
EXPORT_META = "lliejax_export.json"
LEGACY_FORMAT = "lliejax-params"  # lliejax 0.1 exports (version 1)
CONFIG_FILE = "config.json"
LOCK_FILE = ".lliejax.lock"
# Config keys a resume may change without ``force_config`` (see :func:`check_config`): the length of the run (the
# cosine learning-rate schedule follows the new ``num_train_steps``), where the data is read from, and bookkeeping
# that does not enter the parameters (logging, checkpointing, validation during training, the variant label).
RESUMABLE_KEYS = ("num_train_steps", "variant", "data.data_dir", "data.manual_dir", "data.worker_count",
                  "log_every", "checkpoint_every", "keep_checkpoints", "eval_every", "eval_num_images",
                  "eval_sampler", "test_sampler", "write_images", "data.eval_split", "data.eval_max_images")
MAX_LISTED_CHANGES = 8


# ------------------------------------------------------------------------------------------------ errors
class WorkdirLockedError(RuntimeError):
  """Another run holds the workdir (or left a lock lliejax cannot check); the message names it and the remedy.

  Attributes:
    path: the lock file.
    owner: the lock file's record (``pid``, ``host``, ``started``, ``command``), ``{}`` when unreadable.
    stale: the owner is known to be dead (a lock left by a killed run that could not be reclaimed safely).
  """

  exit_code = 2  # the command cannot run as given: wait, or use another --workdir

  def __init__(self, message: str, *, path: str = "", owner: Mapping[str, Any] | None = None, stale: bool = False):
    super().__init__(message)
    self.path, self.owner, self.stale = path, dict(owner or {}), stale

  def __reduce__(self):
    return (_rebuild_locked_error, (str(self), self.path, self.owner, self.stale))


def _rebuild_locked_error(message, path, owner, stale):
  return WorkdirLockedError(message, path=path, owner=owner, stale=stale)


class WorkdirError(OSError):
  """A workdir or checkpoint folder that cannot be written: a file where a folder is expected, no permission, a
  read-only or full disk. ``str(e)`` is one line naming the path and the remedy; ``errno`` is the cause's.

  Attributes:
    path: the file or folder concerned.
    exit_code: 1 for a full disk or an I/O error (the run failed), 2 otherwise (``--workdir`` must change).
  """

  def __init__(self, err: int | None, message: str, path: str = "", exit_code: int | None = None):
    super().__init__(err, message)
    self.path = path
    self.exit_code = exit_code if exit_code is not None else (
        1 if err in (errno_lib.ENOSPC, errno_lib.EDQUOT, errno_lib.EIO, None) else 2)

  def __str__(self):
    return str(self.strerror)

  def __reduce__(self):
    return (type(self), (self.errno, self.strerror, self.path, self.exit_code))


class ConfigChangedError(ValueError):
  """A resume with a config that differs from the workdir's ``config.json`` (see :func:`check_config`).

  Attributes:
    changes: ``{dotted key: (old, new)}`` of every differing key that is not in :data:`RESUMABLE_KEYS`.
  """

  exit_code = 2

  def __init__(self, message: str, changes: Mapping[str, tuple] | None = None):
    super().__init__(message)
    self.changes = dict(changes or {})


class NonFiniteParamsError(FloatingPointError):
  """Parameters with NaN or infinite values, refused by :func:`export`."""


def os_error_code(e: BaseException) -> int | None:
  """The errno of an ``OSError`` or of a TensorStore error message (Orbax writes arrays with TensorStore); None
  for other errors."""
  if isinstance(e, OSError) and e.errno:
    return e.errno
  text = str(e)
  m = re.search(r"os_error_code='?(\d+)", text)
  if m:
    return int(m.group(1))
  for code in (errno_lib.ENOSPC, errno_lib.EDQUOT, errno_lib.EROFS, errno_lib.EACCES, errno_lib.EPERM,
               errno_lib.ENOTDIR):
    if os.strerror(code) in text:
      return code
  return None


def _remedy(err: int | None) -> str:
  if err in (errno_lib.ENOSPC, errno_lib.EDQUOT):
    return "free some space on that disk or choose another --workdir"
  if err in (errno_lib.EACCES, errno_lib.EPERM):
    return "make it writable (chmod/chown) or choose another --workdir"
  if err == errno_lib.EROFS:
    return "the file system is read-only: choose another --workdir"
  if err in (errno_lib.ENOTDIR, errno_lib.EEXIST):
    return "a file stands where a folder is expected: move it or choose another --workdir"
  return "check the disk, or choose another --workdir"


def workdir_error(e: BaseException, path: str, what: str) -> WorkdirError:
  """A :class:`WorkdirError` for the failure ``e`` of ``what`` ("cannot create the workdir") on ``path``."""
  err = os_error_code(e)
  reason = os.strerror(err) if err else (str(e).strip().splitlines() or [type(e).__name__])[0]
  return WorkdirError(err, f"{what} {path}: {reason} ({_remedy(err)})", path)


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
  """The train-state checkpoints of a workdir (``<workdir>/checkpoints``), a thin ``ocp.CheckpointManager``.

  A save that cannot be written (full disk, no permission, read-only file system, a file where a folder is
  expected) raises :class:`WorkdirError` naming the folder, the remedy and the last complete checkpoint, from
  :meth:`save` or, as saves are asynchronous, from the next :meth:`save`, :meth:`wait` or :meth:`close`.
  """

  def __init__(self, workdir: str, *, keep: int = 3, async_save: bool = True):
    options = ocp.CheckpointManagerOptions(max_to_keep=int(keep), create=True,
                                           enable_async_checkpointing=async_save)
    self.directory = os.path.join(os.path.abspath(os.path.expanduser(workdir)), "checkpoints")
    self._requested: int | None = None  # the latest step passed to save()
    self._closed = False
    try:
      self._mngr = ocp.CheckpointManager(self.directory, options=options)
    except OSError as e:
      raise workdir_error(e, self.directory, "cannot create the checkpoint folder") from e

  def latest_step(self) -> int | None:
    return self._mngr.latest_step()

  def save(self, step: int, state) -> None:
    """Starts saving ``state`` as ``step`` (asynchronously; :meth:`wait` for it)."""
    try:
      self._mngr.save(step, args=ocp.args.StandardSave(state))
    except Exception as e:  # pylint: disable=broad-except
      self._raise_write_error(e, step)
    self._requested = step

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
    """Waits for the asynchronous saves; raises :class:`WorkdirError` if one failed."""
    try:
      self._mngr.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      self._raise_write_error(e, self._requested)

  def close(self) -> None:
    """Waits for the saves and closes the manager (also when a save failed, whose error is then raised)."""
    if self._closed:
      return
    self._closed = True
    try:
      self.wait()
    finally:
      try:
        self._mngr.close()
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("closing the checkpoint manager of %s: %s", self.directory, e)

  def _complete_steps(self) -> list[int]:
    """The steps whose checkpoint is complete on disk (Orbax renames a step's folder into place when done)."""
    try:
      names = os.listdir(self.directory)
    except OSError:
      return []
    return sorted(int(n) for n in names if n.isdigit() and os.path.isdir(os.path.join(self.directory, n)))

  def _raise_write_error(self, e: Exception, step: int | None):
    """Re-raises ``e`` as a :class:`WorkdirError` when it is a file-system failure (otherwise unchanged)."""
    if isinstance(e, WorkdirError) or os_error_code(e) is None:
      raise e
    err = os_error_code(e)
    done = [s for s in self._complete_steps() if step is None or s < step]
    last = (f"the last complete checkpoint is step {done[-1]}, from which the same command resumes once the disk "
            "is fixed" if done else "no complete checkpoint was written")
    what = f"step {step}" if step is not None else "a checkpoint"
    raise WorkdirError(err, f"cannot write the checkpoint of {what} in {self.directory}: {os.strerror(err)} "
                       f"({_remedy(err)}); training stopped, {last}", self.directory) from e

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def _flat(d: Mapping, prefix: str = "") -> dict[str, Any]:
  out = {}
  for k, v in d.items():
    if isinstance(v, Mapping) and v:
      out.update(_flat(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v
  return out


def _show(v, width: int = 40) -> str:
  text = "(absent)" if v is _ABSENT else json.dumps(v, sort_keys=True)
  return text if len(text) <= width else text[:width - 3] + "..."


_ABSENT = object()


def config_changes(old: Mapping, new: Mapping, *, ignore: Sequence[str] = ()) -> dict[str, tuple]:
  """``{dotted key: (old, new)}`` of the keys that differ (a missing key is :data:`_ABSENT`), ``ignore`` left out."""
  a, b = _flat(old), _flat(new)

  def same(x, y):  # NaN equals NaN here (a config may hold one, e.g. a test's loss weight)
    return x == y or (x is not _ABSENT and y is not _ABSENT and json.dumps(x, sort_keys=True) == json.dumps(
        y, sort_keys=True))

  return {k: (a.get(k, _ABSENT), b.get(k, _ABSENT)) for k in sorted(set(a) | set(b))
          if not same(a.get(k, _ABSENT), b.get(k, _ABSENT)) and k not in ignore}


def _has_checkpoints(workdir: str) -> bool:
  folder = os.path.join(workdir, "checkpoints")
  return os.path.isdir(folder) and any(n.isdigit() for n in os.listdir(folder))


def check_config(workdir: str, config, *, architecture_sections: Sequence[str] = ("model",),
                 resuming: bool | None = None, force: bool = False,
                 resumable: Sequence[str] = RESUMABLE_KEYS) -> dict | None:
  """Checks ``config`` against the workdir's ``config.json`` (if any) before a run; returns the saved config.

  Another ``method`` or other ``architecture_sections`` are always refused (the checkpoints would not fit). When
  resuming (default: the workdir has checkpoints), any other difference is refused too unless ``force``, except
  in the keys of ``resumable`` (:data:`RESUMABLE_KEYS`: ``num_train_steps``, data paths, logging / checkpoint /
  validation frequencies), which are logged.

  Raises:
    ValueError: another method or architecture, naming the section.
    ConfigChangedError: other differences when resuming without ``force``, naming up to
      :data:`MAX_LISTED_CHANGES` keys with their old and new values.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  new = json.loads(config.to_json_best_effort())
  if not os.path.exists(path):
    return None
  with open(path) as f:
    old = json.load(f)
  for section in ("method", *architecture_sections):
    if old.get(section) != new.get(section):
      raise ValueError(f"{path}: the workdir was created with a different config.{section} "
                       f"({old.get(section)} != {new.get(section)}); use a new --workdir")
  resuming = _has_checkpoints(workdir) if resuming is None else resuming
  allowed = config_changes(old, new)
  # A key only one side has comes from another lliejax version (users cannot add keys): its default keeps the
  # behaviour of the version that lacks it, so it is reported, not refused.
  versioned = {k: v for k, v in allowed.items() if _ABSENT in v}
  if versioned:
    logging.warning("config keys of another lliejax version (absent from one side) in %s: %s", path,
                    ", ".join(f"{k} {_show(a)} -> {_show(b)}" for k, (a, b) in versioned.items()))
  allowed = {k: v for k, v in allowed.items() if k not in versioned}
  changes = {k: v for k, v in allowed.items() if k not in resumable}
  for k, (a, b) in allowed.items():
    if k in resumable:
      logging.info("config.%s changed since the last run: %s -> %s", k, _show(a), _show(b))
  if changes and resuming and not force:
    listed = ", ".join(f"{k} {_show(a)} -> {_show(b)}" for k, (a, b) in list(changes.items())[:MAX_LISTED_CHANGES])
    more = len(changes) - MAX_LISTED_CHANGES
    listed += f" (and {more} more)" if more > 0 else ""
    raise ConfigChangedError(
        f"{path}: the config differs from the one this workdir was trained with: {listed}; resume with the same "
        "config, pass force_config=True (--force-config) to continue with the new values, or use a new --workdir",
        changes)
  if changes:
    logging.warning("config differs from %s in %s (%s with the new values)", path, ", ".join(changes),
                    "force_config: training resumes" if resuming else "no checkpoint yet: training starts")
  return old


def write_config(workdir: str, config) -> str:
  """Writes ``<workdir>/config.json`` atomically (process 0 of a multi-process job); returns its path."""
  path = os.path.join(workdir, CONFIG_FILE)
  if jax.process_index() != 0:
    return path
  fd, tmp = tempfile.mkstemp(prefix=f".{CONFIG_FILE}.", suffix=".tmp", dir=workdir)
  try:
    with os.fdopen(fd, "w") as f:
      json.dump(json.loads(config.to_json_best_effort()), f, indent=2, sort_keys=True)
    fileutil.make_public(tmp)
    os.replace(tmp, path)
  except OSError as e:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise workdir_error(e, path, "cannot write") from e
  return path


def save_config(workdir: str, config, *, architecture_sections: Sequence[str] = ("model",),
                resuming: bool | None = None, force: bool = False) -> None:
  """:func:`check_config`, then :func:`write_config`.

  Raises:
    ValueError: another ``method`` or other ``architecture_sections`` (its checkpoints would not fit), naming the
      section; :class:`ConfigChangedError` for other differences when resuming without ``force``.
  """
  check_config(workdir, config, architecture_sections=architecture_sections, resuming=resuming, force=force)
  write_config(workdir, config)


# ------------------------------------------------------------------------------------------------ workdir lock
def _boot_id() -> str | None:
  try:
    with open("/proc/sys/kernel/random/boot_id") as f:
      return f.read().strip()
  except OSError:
    return None


def _process_start(pid: int) -> int | None:
  """Start time of ``pid`` in clock ticks since boot (Linux), to tell a reused pid from the lock's owner."""
  try:
    with open(f"/proc/{pid}/stat") as f:
      stat = f.read()
    return int(stat[stat.rindex(")") + 2:].split()[19])
  except (OSError, ValueError, IndexError):
    return None


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)  # signal 0: existence only
  except ProcessLookupError:
    return False
  except OSError:  # EPERM: alive, another user's
    pass
  return True


def _lock_record(command: str | None) -> dict:
  now = time.time()
  command = command if command is not None else shlex.join(sys.argv)
  return {"pid": os.getpid(), "host": socket.gethostname(),
          "started": datetime.datetime.fromtimestamp(now).astimezone().isoformat(timespec="seconds"),
          "started_unix": now, "command": " ".join(command.split())[:300], "boot_id": _boot_id(),
          "pid_start": _process_start(os.getpid())}


def _read_record(fd: int) -> dict | None:
  """The lock file's record; ``None`` if empty, ``{}`` if unreadable (a writer that died mid-write)."""
  data = b""
  while chunk := os.pread(fd, 65536, len(data)):
    data += chunk
  if not data.strip():
    return None
  try:
    record = json.loads(data)
  except ValueError:
    return {}
  return record if isinstance(record, dict) else {}


def read_lock(workdir: str) -> dict | None:
  """The record of a workdir's lock file (``pid``, ``host``, ``started``, ``command``), ``None`` if unlocked."""
  path = os.path.join(os.path.abspath(os.path.expanduser(workdir)), LOCK_FILE)
  try:
    fd = os.open(path, os.O_RDONLY)
  except FileNotFoundError:
    return None
  try:
    return _read_record(fd)
  finally:
    os.close(fd)


def _owner_state(owner: Mapping) -> str:
  """``'other-host'``, ``'dead'`` (the owner's process is gone) or ``'alive'`` (or cannot be told apart)."""
  if owner.get("host") != socket.gethostname():
    return "other-host"
  if owner.get("boot_id") and _boot_id() and owner["boot_id"] != _boot_id():
    return "dead"  # the machine rebooted since
  pid = owner.get("pid")
  if not isinstance(pid, int) or pid <= 0:
    return "alive"
  if not _pid_alive(pid):
    return "dead"
  start = _process_start(pid)
  if owner.get("pid_start") is not None and start is not None and start != owner["pid_start"]:
    return "dead"  # the pid was reused by another process
  return "alive"


def _describe_owner(owner: Mapping) -> str:
  text = f"pid {owner.get('pid', '?')} on host {owner.get('host', '?')}, since {owner.get('started', '?')}"
  return text + (f": {owner['command']}" if owner.get("command") else "")


def _flock(fd: int) -> bool | None:
  """Tries ``flock(LOCK_EX | LOCK_NB)``: True acquired, False held by another open file, None not supported."""
  try:
    import fcntl  # pylint: disable=import-outside-toplevel
  except ImportError:
    return None
  try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except BlockingIOError:
    return False
  except OSError as e:
    if e.errno in (errno_lib.EWOULDBLOCK, errno_lib.EAGAIN, errno_lib.EACCES):
      return False
    return None  # ENOLCK, EOPNOTSUPP, EINVAL, ENOSYS: a file system without flock
  return True


def _same_file(fd: int, path: str) -> bool:
  try:
    a, b = os.fstat(fd), os.stat(path)
  except OSError:
    return False
  return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


@dataclasses.dataclass
class WorkdirLock:
  """The lock a run holds on its workdir (:func:`lock_workdir`); :meth:`release` (or leaving ``with``) frees it.

  ``fd`` is ``None`` for the processes other than 0 of a multi-process job, which share process 0's lock.
  """

  path: str
  fd: int | None
  record: dict

  def release(self) -> None:
    """Removes the lock file (if it is still this lock's) and closes it; idempotent."""
    if self.fd is None:
      return
    fd, self.fd = self.fd, None
    try:
      if _same_file(fd, self.path):
        os.unlink(self.path)
    except OSError as e:
      logging.warning("could not remove the workdir lock %s: %s", self.path, e)
    finally:
      os.close(fd)

  @property
  def held(self) -> bool:
    return self.fd is not None

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.release()


def lock_workdir(workdir: str, *, command: str | None = None) -> WorkdirLock:
  """Takes the exclusive lock of ``workdir`` (``<workdir>/.lliejax.lock``) for this process.

  The lock is an ``flock`` on the lock file, held while the file stays open, so the kernel drops it when the
  process dies however it dies; the file records the owner (pid, host, start time, command) for the messages. A
  lock file left by a dead process is therefore *stale* and, when the record says it was this host's process and
  that process is gone (pid not alive, reused, or the machine rebooted since), it is reclaimed with a warning:
  both the kernel lock and the pid agree that nobody uses the workdir. A record from another host is never
  reclaimed (lliejax cannot check a process there, and file systems differ in whether ``flock`` reaches other
  hosts), nor a record whose process is alive (a file system where ``flock`` does nothing). On a file system
  without ``flock`` a stale record is reported instead of reclaimed, and two runs starting in the same instant
  are not told apart.

  Raises:
    WorkdirLockedError: another run holds the lock, or its lock cannot be checked or reclaimed; the message
      names the owner (pid, host, since when, command) and the remedy.
    WorkdirError: the lock file cannot be created or written (not writable, read-only or full disk).
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  path = os.path.join(workdir, LOCK_FILE)
  record = _lock_record(command)
  remove = f"remove {path} if no run is using this workdir"
  for _ in range(10):
    fd, flocked = None, None
    try:
      fd = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
    except OSError as e:
      raise workdir_error(e, workdir, "cannot lock the workdir") from e
    try:
      flocked = _flock(fd)
      if flocked is False:  # a live process holds it; give it a moment to write its record
        owner = _read_record(fd)
        for _ in range(20):
          if owner:
            break
          time.sleep(0.05)
          owner = _read_record(fd)
        raise WorkdirLockedError(f"workdir {workdir} is in use by another training run "
                                 f"({_describe_owner(owner or {})}); wait for it to finish or stop it, or use another "
                                 "--workdir", path=path, owner=owner)
      if flocked and not _same_file(fd, path):
        os.close(fd)  # its owner released (removed) it between our open and flock: try the new file
        fd = None
        continue
      owner = _read_record(fd)
      if owner:  # left by a process that no longer holds the flock (or a file system without flock)
        state = _owner_state(owner)
        if state == "other-host":
          raise WorkdirLockedError(
              f"workdir {workdir} is locked by {_describe_owner(owner)}; lliejax cannot check a process on "
              f"another host: {remove}", path=path, owner=owner)
        if state == "alive":
          raise WorkdirLockedError(f"workdir {workdir} is in use by another training run ({_describe_owner(owner)}"
                                   f"); wait for it to finish or stop it, or use another --workdir (or {remove})",
                                   path=path, owner=owner)
        if not flocked:
          raise WorkdirLockedError(f"stale lock from pid {owner.get('pid', '?')} on host {owner.get('host', '?')} "
                                   f"since {owner.get('started', '?')} (no such process); {remove}", path=path,
                                   owner=owner, stale=True)
        logging.warning("reclaimed the stale lock of %s (%s, no such process)", workdir, _describe_owner(owner))
      elif owner == {}:
        logging.warning("reclaimed the unreadable lock file %s (its writer died)", path)
      data = json.dumps(record, indent=1).encode()
      try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
        os.fsync(fd)
      except OSError as e:
        raise workdir_error(e, workdir, "cannot write the lock file of the workdir") from e
      return WorkdirLock(path=path, fd=fd, record=record)
    except BaseException:
      if fd is not None:
        try:
          if _read_record(fd) is None and _same_file(fd, path) and flocked:
            os.unlink(path)  # our own empty file: leave no trace
        except OSError:
          pass
        os.close(fd)
      raise
  raise WorkdirLockedError(f"could not lock {path}: it keeps being replaced by other runs", path=path)


def prepare_workdir(workdir: str, *, command: str | None = None) -> WorkdirLock:
  """A run's first step on its workdir, before anything is written there.

  Refuses a ``workdir`` (or ``workdir/checkpoints``) that is a file, creates the folder, takes the lock
  (:func:`lock_workdir`) and checks that the checkpoint folder is writable. In a multi-process job only process 0
  does this; the others wait for its outcome and raise the same error.

  Raises:
    WorkdirError: a file where a folder is expected, a folder that cannot be created or written, a full disk.
    WorkdirLockedError: another run holds the workdir.
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if jax.process_count() > 1 and jax.process_index() != 0:
    _raise_shared_outcome(_share_outcome(None))
    return WorkdirLock(path=os.path.join(workdir, LOCK_FILE), fd=None, record={})
  try:
    lock = _prepare_workdir(workdir, command)
  except Exception as e:
    if jax.process_count() > 1:
      _share_outcome(e)
    raise
  if jax.process_count() > 1:
    _share_outcome(False)
  return lock


def _prepare_workdir(workdir: str, command: str | None) -> WorkdirLock:
  if os.path.exists(workdir) and not os.path.isdir(workdir):
    raise WorkdirError(errno_lib.ENOTDIR, f"--workdir {workdir} is a file, not a folder (move the file or choose "
                       "another --workdir; the folder is created if missing)", workdir)
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise workdir_error(e, workdir, "cannot create the workdir") from e
  lock = lock_workdir(workdir, command=command)
  try:
    folder = os.path.join(workdir, "checkpoints")
    if os.path.exists(folder) and not os.path.isdir(folder):
      raise WorkdirError(errno_lib.ENOTDIR, f"{folder} is a file, not the workdir's checkpoint folder (move it or "
                         "choose another --workdir)", folder)
    if os.path.isdir(folder):
      try:
        fd, probe = tempfile.mkstemp(prefix=".lliejax-write-test-", dir=folder)
        os.close(fd)
        os.unlink(probe)
      except OSError as e:
        raise workdir_error(e, folder, "cannot write to the checkpoint folder") from e
  except BaseException:
    lock.release()
    raise
  return lock


_OUTCOMES: list[int] = [0]


def _share_outcome(outcome) -> str:
  """Process 0 publishes ``outcome`` (False: success, or an exception) in the ``jax.distributed`` key-value
  store; the other processes (``outcome=None``) wait for it. Returns the published text ('' for success)."""
  _OUTCOMES[0] += 1
  key = f"lliejax/prepare_workdir/{_OUTCOMES[0]}"
  client = ocp.multihost.get_jax_distributed_client()
  if outcome is None:
    return client.blocking_key_value_get(key, 30 * 60 * 1000)
  text = "" if outcome is False else json.dumps(
      {"type": type(outcome).__name__, "message": str(outcome), "errno": getattr(outcome, "errno", None),
       "path": getattr(outcome, "path", "")})
  client.key_value_set(key, text)
  return text


def _raise_shared_outcome(text: str) -> None:
  if not text:
    return
  info = json.loads(text)
  if info["type"] == "WorkdirLockedError":
    raise WorkdirLockedError(info["message"], path=info["path"])
  if info["type"] == "WorkdirError" or info["errno"] is not None:
    raise WorkdirError(info["errno"], info["message"], info["path"])
  raise RuntimeError(f"process 0 could not prepare the workdir: {info['message']}")


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


def check_finite(tree, what: str) -> None:
  """Raises :class:`NonFiniteParamsError` naming the first leaf of ``tree`` with a NaN or infinite value."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  bad = []
  for key_path, leaf in leaves:
    x = np.asarray(leaf)
    if x.dtype.kind not in "fc" and "float" not in str(x.dtype):
      continue
    count = int(x.size - np.count_nonzero(np.isfinite(x.astype(np.complex64 if x.dtype.kind == "c" else np.float32))))
    if count:
      bad.append((jax.tree_util.keystr(key_path), count, x.size))
  if bad:
    name, count, size = bad[0]
    others = f" and {len(bad) - 1} other array(s)" if len(bad) > 1 else ""
    raise NonFiniteParamsError(f"{what}: the parameters are not finite ({count} of {size} values of {name}{others} "
                               "are NaN or infinite); export a checkpoint from before the divergence")


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

  Raises:
    NonFiniteParamsError: ``params`` hold NaN or infinite values (nothing is written or removed).
    FileExistsError: ``directory`` exists (see above).
  """
  directory = os.path.abspath(os.path.expanduser(directory))
  check_finite(params, f"refusing to export to {directory}")
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
