"""Reading and writing PyTorch checkpoint files without ever executing what they pickle.

* ``.pth`` / ``.pt``: a ``state_dict`` (possibly nested under a key such as ``state_dict``, see
  :data:`CONTAINER_KEYS`), read with ``torch.load(weights_only=True)``; any pickled object other than tensors and
  plain containers is refused with a clear error (:class:`CheckpointFormatError`).
* ``.ckpt`` (PyTorch Lightning, e.g. AnlightenDiff's releases): the whole checkpoint dict, whose ``state_dict`` is
  taken. Lightning also pickles hyper-parameters, callbacks and loop states, which may be objects of any class;
  those are replaced by inert placeholders (:class:`Opaque`) by a restricted unpickler, so nothing of theirs is
  imported or run, while tensors are rebuilt by torch's own allow-listed functions.

torch is imported only when a file is read or written (``pip install 'lliejax[torch]'``).
"""
from __future__ import annotations

import collections
import os
import pickle
import re
import tempfile
from typing import Any, Mapping

import numpy as np

from lliejax import fileutil
from lliejax.interop.keymap import ConversionError, strip_prefix

# Wrapper keys under which training scripts commonly nest a state_dict (only unwrapped when the value is itself
# a plain dict of tensors and no other key holds one).
CONTAINER_KEYS = ("state_dict", "params", "params_ema", "model", "net", "network", "model_state_dict")
TORCH_HINT = "PyTorch is needed for this: pip install 'lliejax[torch]'"


class CheckpointFormatError(ConversionError):
  """A file that is not a readable checkpoint (corrupt, truncated, empty, arbitrary pickle ...)."""


def import_torch():
  """``torch``, or a :class:`CheckpointFormatError` that says how to install it."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise CheckpointFormatError(TORCH_HINT) from e
  return torch


def select_prefix(state_dict: Mapping[str, Any], prefix: str) -> dict:
  """Keep only the keys starting with ``prefix`` (e.g. ``ema_model.`` of an ema_pytorch state), prefix removed."""
  from lliejax.interop.keymap import StateDictMismatchError  # pylint: disable=import-outside-toplevel
  out = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
  if not out:
    raise StateDictMismatchError(hint=f"no key starts with {prefix!r}; first keys: "
                                 f"{', '.join(list(state_dict)[:5]) or '(none)'}")
  return out


def _is_tensor_dict(d) -> bool:
  if not isinstance(d, Mapping) or not d:
    return False
  return all(isinstance(k, str) and type(v).__name__ in ("Tensor", "Parameter") and
             type(v).__module__.startswith("torch") for k, v in d.items())


def _unwrap(obj, path: str) -> dict:
  """A plain ``{str: Tensor}`` dict, possibly nested one level under a :data:`CONTAINER_KEYS` key."""
  if _is_tensor_dict(obj):
    return dict(obj)
  if isinstance(obj, Mapping):
    nested = [k for k in CONTAINER_KEYS if k in obj and _is_tensor_dict(obj[k])]
    if len(nested) == 1:
      return dict(obj[nested[0]])
    if len(nested) > 1:
      raise CheckpointFormatError(f"{path}: ambiguous checkpoint container: several state_dicts under "
                                  f"{nested}; extract one with torch and save it alone")
    if not obj:
      raise CheckpointFormatError(f"{path}: the file holds an empty dict, not a state_dict")
    bad = [f"{k!r} ({type(v).__name__})" for k, v in obj.items()
           if not (isinstance(k, str) and type(v).__module__.startswith("torch"))][:8]
    raise CheckpointFormatError(
        f"{path}: not a state_dict: a dict whose values are not all tensors (e.g. {', '.join(bad)}); "
        f"supported: a dict of tensors, or one nested under one of {list(CONTAINER_KEYS)}")
  raise CheckpointFormatError(f"{path}: not a state_dict: the file holds a {type(obj).__module__}."
                              f"{type(obj).__name__}, expected a dict of tensors")


def _unpickling_message(path: str, e: Exception) -> str:
  """Explain a ``weights_only`` refusal: pickled code/objects, or bytes that are no checkpoint at all.

  torch's own text (which suggests retrying with ``weights_only=False``, i.e. switching the protection off) is never
  repeated; only the name of the refused global is kept.
  """
  text = str(e)
  m = (re.search(r"unsupported GLOBAL ([\w.]+)", text, re.I) or re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
       or re.search(r"Unsupported (?:global|class)[^\n]*?([\w]+\.[\w.]+)", text))
  if m or "GLOBAL" in text or "Unsupported global" in text:
    what = f" (it refers to {m.group(1).rstrip('.')})" if m else ""
    return (f"{path}: refused: the file contains pickled code or objects other than tensors{what}. lliejax never "
            "loads such files, because unpickling them can run arbitrary code. If you trust its source, re-save only "
            "the tensors with torch: torch.save(model.state_dict(), path)")
  lines = [ln.strip() for ln in text.splitlines() if ln.strip() and "weights_only" not in ln
           and "arbitrary code" not in ln]
  detail = lines[0] if lines else type(e).__name__
  return f"{path}: cannot read as a PyTorch checkpoint (corrupt file, or not written by torch.save?): {detail}"


def _check_file(path: str) -> None:
  if not os.path.isfile(path):
    raise CheckpointFormatError(f"{path}: no such file")
  if os.path.getsize(path) == 0:
    raise CheckpointFormatError(f"{path}: the file is empty")


def _read_error(path: str, e: Exception) -> CheckpointFormatError:
  first = str(e).strip().splitlines()[0] if str(e).strip() else ""
  return CheckpointFormatError(f"{path}: cannot read as a PyTorch checkpoint (corrupt or truncated file?): "
                               f"{type(e).__name__}: {first}")


_READ_ERRORS = (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, IndexError, TypeError)


def load_state_dict(path: str, *, key_prefix: str | None = None, mmap: bool = False) -> dict:
  """A ``.pth`` ``state_dict`` read safely (``torch.load(..., map_location='cpu', weights_only=True)``).

  ``mmap=True`` memory-maps the file (zip format; falls back to a normal read for the legacy format). The
  default normal read gives every tensor its own storage, so a conversion with ``consume=True`` frees each one as
  it is converted (peak about one copy of the weights: ~1.5 GB for the 288M model).

  Returns ``{key: torch.Tensor}`` (``module.`` stripped; with ``key_prefix`` only keys under it, prefix removed).

  Raises:
    CheckpointFormatError: naming the file, for a missing/empty/truncated/corrupt file, a pickle that
      ``weights_only`` refuses (an arbitrary object), a dict whose values are not tensors, or no torch.
  """
  torch = import_torch()
  _check_file(path)
  errors = []
  for use_mmap in ((True, False) if mmap else (False,)):
    try:
      obj = torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
      break
    except pickle.UnpicklingError as e:
      raise CheckpointFormatError(_unpickling_message(path, e)) from e
    except _READ_ERRORS as e:
      errors.append(e)  # with mmap: e.g. the legacy (non-zip) format cannot be memory-mapped; retry without
  else:
    raise _read_error(path, errors[-1]) from errors[-1]
  return _select(_unwrap(obj, path), key_prefix)


def _select(sd: dict, key_prefix: str | None) -> dict:
  if key_prefix:
    sd = select_prefix(sd, key_prefix)
  return strip_prefix(sd)


# ------------------------------------------------------------------------------------------------ Lightning
class Opaque(dict):
  """Stands in for a pickled object of a class lliejax does not load; keeps its arguments and state as data.

  A dict (and list-like through :meth:`append` / :meth:`extend`) so that the pickle opcodes that fill containers
  work on it; nothing of the original class is imported or called.
  """

  cls_name = "?"

  def __init__(self, *args, **kwargs):  # pylint: disable=super-init-not-called
    self.args, self.kwargs, self.items_, self.state = args, kwargs, [], None

  def __setstate__(self, state):
    self.state = state

  def append(self, value):
    self.items_.append(value)

  def extend(self, values):
    self.items_.extend(values)

  def __repr__(self):
    return f"<opaque {self.cls_name}>"


def _allowed_globals() -> dict:
  """torch's own allow-list of ``weights_only`` loading (tensor rebuild functions, dtypes, containers)."""
  from torch import _weights_only_unpickler  # pylint: disable=import-outside-toplevel
  return dict(_weights_only_unpickler._get_allowed_globals())  # pylint: disable=protected-access


class _RestrictedUnpickler(pickle.Unpickler):
  """Resolves torch's allow-listed globals; every other global becomes an :class:`Opaque` subclass."""

  allowed: dict = {}

  def find_class(self, module, name):
    full = f"{module}.{name}"
    if full in self.allowed:
      return self.allowed[full]
    return type(name, (Opaque,), {"cls_name": full, "__module__": "lliejax.interop.opaque"})


class _RestrictedPickleModule:
  """What ``torch.load(pickle_module=...)`` needs: an ``Unpickler`` and ``load``."""

  Unpickler = _RestrictedUnpickler
  UnpicklingError = pickle.UnpicklingError

  @staticmethod
  def load(f, **kwargs):
    return _RestrictedUnpickler(f, **kwargs).load()


def load_lightning_checkpoint(path: str) -> dict:
  """The whole dict of a PyTorch Lightning ``.ckpt``, objects of unknown classes replaced by :class:`Opaque`.

  Raises:
    CheckpointFormatError: naming the file (missing, empty, corrupt, not a dict, no torch).
  """
  import_torch()
  import torch  # pylint: disable=import-outside-toplevel
  _check_file(path)
  _RestrictedUnpickler.allowed = _allowed_globals()
  try:
    obj = torch.load(path, map_location="cpu", weights_only=False, pickle_module=_RestrictedPickleModule)
  except (pickle.UnpicklingError, *_READ_ERRORS) as e:
    raise _read_error(path, e) from e
  if not isinstance(obj, Mapping):
    raise CheckpointFormatError(f"{path}: not a Lightning checkpoint: the file holds a {type(obj).__name__}")
  return dict(obj)


def load_checkpoint_state_dict(path: str, *, key_prefix: str | None = None) -> dict:
  """The ``state_dict`` of a ``.pth``/``.pt`` (:func:`load_state_dict`) or a Lightning ``.ckpt`` file."""
  if path.endswith(".ckpt"):
    ckpt = load_lightning_checkpoint(path)
    if "state_dict" not in ckpt or not _is_tensor_dict(ckpt["state_dict"]):
      raise CheckpointFormatError(f"{path}: a Lightning checkpoint without a 'state_dict' of tensors (keys: "
                                  f"{', '.join(map(str, list(ckpt)[:8]))})")
    return _select(dict(ckpt["state_dict"]), key_prefix)
  return load_state_dict(path, key_prefix=key_prefix)


def _tensors(torch, state_dict: Mapping[str, Any]) -> collections.OrderedDict:
  return collections.OrderedDict(
      (k, v if type(v).__module__.startswith("torch") else torch.from_numpy(np.ascontiguousarray(v)))
      for k, v in state_dict.items())


def save_torch(obj: Mapping[str, Any], path: str, *, overwrite: bool = False, state_dict_key: str | None = None,
               kind: str = ".pth") -> str:
  """``torch.save(obj)`` atomically (a temporary file renamed into place; the umask's permissions); numpy values of
  ``obj`` (or of ``obj[state_dict_key]``) become tensors.

  Raises:
    FileExistsError: ``path`` exists and ``overwrite`` is false. IsADirectoryError: ``path`` is a folder.
  """
  torch = import_torch()
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")
  if os.path.isdir(path):
    raise IsADirectoryError(f"{path} is a directory, expected a {kind} file path")
  if state_dict_key is None:
    obj = _tensors(torch, obj)
  else:
    obj = dict(obj)
    obj[state_dict_key] = _tensors(torch, obj[state_dict_key])
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".lliejax-", suffix=f"{kind}.tmp", dir=os.path.dirname(path))
  os.close(fd)
  try:
    fileutil.make_public(tmp)  # mkstemp makes 0600; the result follows the umask
    torch.save(obj, tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def save_state_dict(state_dict: Mapping[str, Any], path: str, *, overwrite: bool = False) -> str:
  """``torch.save`` a ``{key: array or tensor}`` dict (numpy values become tensors), atomically (:func:`save_torch`).

  Raises:
    FileExistsError: ``path`` exists and ``overwrite`` is false. IsADirectoryError: ``path`` is a folder.
  """
  return save_torch(state_dict, path, overwrite=overwrite)
