"""Configs: loading ``path.py:arg`` specs, the ``variant,key=value`` argument every config file shares, validation.

``load_config('configs/entropy_sde.py:demo,steps=200')`` imports the file, calls ``get_config('demo,steps=200')``
(as ``ml_collections.config_flags.DEFINE_config_file``) and validates the result (:func:`validate_config`). A spec
without ``.py`` and without a path separator (``entropy_sde:demo``) names a config shipped with the package (the
top-level ``configs/`` folder, installed as ``lliejax.configs``), so installed copies work without the repository.

Config files import only ``ml_collections`` and this module: :func:`parse_arg` splits their argument into the
variant and the overrides, :func:`apply_overrides` applies ``key=value`` pairs (dotted keys, aliases; spaces around
keys and values are ignored) typed by the config's own declared types (:func:`parse_value`):

=====================  ==========================================================================================
declared type          accepted values
=====================  ==========================================================================================
``bool``               ``true/false``, ``yes/no``, ``1/0`` (any case); anything else is an error
``int``                ``12``, ``-3``, ``500_000``
``float``              ``1e-4``, ``0.5``, ``3``, ``inf``
``str``                the text as written (one pair of surrounding quotes removed)
``list`` / ``tuple``   ``(1,1,2)``, ``[1,1,2]`` or ``1:1:2``; ``()`` is empty. Items take the type of the old ones
``None``               ``none`` / ``null`` (any case) where the field may be None: declared with
                       ``ml_collections.config_dict.placeholder(T)`` (which also gives the type ``T`` of the
                       other values), or a plain ``None`` default (then the value is a Python literal, else a string)
=====================  ==========================================================================================

Lists and tuples keep their commas: :func:`parse_arg` splits the argument only at commas outside brackets.

Validation: :func:`validate_config` runs the ``validate_config`` hook of the config's method
(:meth:`lliejax.methods.Method.validate_config`: the generic keys in the base class, each method its own sections),
which rejects impossible values with a :class:`ConfigError` whose message starts with the key
(``config.sde.T: must be >= 1, got 0``). The ``check_*`` functions here are what the hooks are written with; each
skips a key the config does not have.
"""
from __future__ import annotations

import ast
import difflib
import importlib
import importlib.util
import math
import numbers
import os
from typing import Any, Iterable, Mapping, Sequence

import ml_collections
from ml_collections import config_dict

#: Words that set None (any case) where a field may be None.
NONE_WORDS = ("none", "null")
_TRUE = ("true", "yes", "1")
_FALSE = ("false", "no", "0")
_MISSING = object()  # lookup(): no default given
_ABSENT = object()  # check_*(): the key is not in the config


class ConfigError(ValueError):
  """A malformed or impossible config value. The message starts with the key: ``config.batch_size: ...``.

  Attributes:
    key: the dotted config key (``'batch_size'``, ``'sde.T'``).
  """

  def __init__(self, key: str, message: str):
    super().__init__(f"config.{key}: {message}")
    self.key = key


# ------------------------------------------------------------------------------------------------ loading
def load_config(spec: str, *, validate: bool = True) -> ml_collections.ConfigDict:
  """The config of ``PATH.py[:ARG]`` or of the packaged ``NAME[:ARG]``, validated by :func:`validate_config`.

  Args:
    spec: ``PATH.py[:ARG]`` or ``NAME[:ARG]`` (module docstring).
    validate: run :func:`validate_config` (without a device count: the batch is checked to be >= 1 only, since
      evaluation and conversion load configs too; training checks the divisibility itself).

  Raises:
    FileNotFoundError: no such file or packaged config.
    AttributeError: the file defines no ``get_config``.
    KeyError: an override names an unknown key.
    ValueError: a bad variant or override; :class:`ConfigError` for a value, naming its key.
  """
  path, _, arg = spec.partition(":")
  if not path.endswith(".py") and os.sep not in path:
    try:
      module = importlib.import_module(f"lliejax.configs.{path}")
    except ModuleNotFoundError as e:
      raise FileNotFoundError(f"config {spec!r}: no file {path!r} and no packaged config "
                              f"configs/{path}.py") from e
  else:
    path = os.path.expanduser(path)
    if not os.path.isfile(path):
      raise FileNotFoundError(f"config file {path!r} does not exist (from --config {spec!r})")
    name = "lliejax_user_config_" + os.path.splitext(os.path.basename(path))[0]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise AttributeError(f"config file {path!r} defines no get_config()")
  config = module.get_config(arg) if arg else module.get_config()
  if validate:
    validate_config(config)
  return config


def validate_config(config: ml_collections.ConfigDict, *, device_count: int | None = None) -> None:
  """Reject impossible values of ``config`` with the checks of its method (module docstring).

  Runs ``methods.get(config.method).validate_config``; a config without a ``method`` key gets the generic checks
  of :class:`lliejax.methods.Method` only.

  Args:
    config: a full config.
    device_count: the number of devices a training batch is split over (``jax.device_count()``, or the size of
      the training mesh); when given, ``config.batch_size`` must be a multiple of it.

  Raises:
    ConfigError: an impossible value, naming its key.
    ValueError: an unknown method.
  """
  from lliejax import methods  # pylint: disable=import-outside-toplevel

  name = config.get("method")
  cls = methods.Method if name is None else methods.get(name, module=config.get("method_module"))
  cls.validate_config(config, device_count=device_count)


# ------------------------------------------------------------------------------------------------ overrides
def split_items(text: str) -> list[str]:
  """``text`` split at the commas outside ``()``/``[]``/``{}``, each part stripped, empty parts dropped."""
  parts, depth, start = [], 0, 0
  for i, ch in enumerate(text):
    if ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth = max(depth - 1, 0)
    elif ch == "," and depth == 0:
      parts.append(text[start:i])
      start = i + 1
  parts.append(text[start:])
  return [p.strip() for p in parts if p.strip()]


def parse_arg(arg: str | None, default: str, variants, *, name: str = "") -> tuple[str, list[str]]:
  """``'variant,k=v,...'`` -> ``(variant, ['k=v', ...])``; ``arg=None`` gives ``default``; ``name`` is for errors.

  Commas inside brackets belong to the value (``model.enc_blk_nums=(1,1)``); spaces around items are ignored.

  Raises:
    ValueError: the variant is not one of ``variants``.
  """
  parts = split_items(arg or default)
  variant, overrides = (parts[0], parts[1:]) if parts else (default, [])
  if variant not in variants:
    raise ValueError(f"unknown {name + ' ' if name else ''}config variant {variant!r}; choose one of "
                     f"{', '.join(variants)}")
  return variant, overrides


def apply_overrides(config: ml_collections.ConfigDict, items: Iterable[str],
                    aliases: Mapping[str, str] | None = None) -> None:
  """Set ``key=value`` items (dotted keys; ``aliases`` maps short names to them) in place.

  Each value is parsed with the type the config declares for its key (:func:`parse_value`; the module docstring
  has the syntax). Spaces around keys and values are ignored.

  Raises:
    KeyError: naming an unknown section or key.
    ValueError: an item without ``=``; :class:`ConfigError` (naming the key) for a value of the wrong type.
  """
  aliases = aliases or {}
  for item in items:
    item = item.strip()
    if not item:
      continue
    if "=" not in item:
      raise ValueError(f"config override {item!r} is not of the form key=value")
    key, value = (s.strip() for s in item.split("=", 1))
    key = aliases.get(key, key)
    target = config
    parts = key.split(".")
    for i, p in enumerate(parts[:-1]):
      if not isinstance(target, ml_collections.ConfigDict) or p not in target:
        raise KeyError(f"config override {item!r}: unknown section {'.'.join(parts[:i + 1])!r}"
                       f"{_suggest(p, _keys(target))}")
      target = target[p]
    leaf = parts[-1]
    if not isinstance(target, ml_collections.ConfigDict) or leaf not in target:
      known = _keys(target) + (list(aliases) if target is config else [])
      raise KeyError(f"config override {item!r}: unknown key {key!r}{_suggest(leaf, known)}")
    new = parse_value(target, leaf, value, key=key, item=item)
    try:
      target[leaf] = new
    except TypeError as e:  # a type ml_collections refuses although it parsed (e.g. a custom field type)
      raise ConfigError(key, f"cannot take {value!r} (override {item!r}): {e}") from e


def parse_value(section: ml_collections.ConfigDict, leaf: str, text: str, *, key: str | None = None,
                item: str | None = None) -> Any:
  """``text`` parsed as a value of ``section[leaf]``, with the type the config declares for it.

  The type is that of a ``placeholder`` / ``FieldReference`` field (even while its value is None), else of the
  current value (module docstring).

  Args:
    section: the ConfigDict holding the field.
    leaf: the field's name in ``section``.
    text: the value as written.
    key: the full dotted key, for errors (default ``leaf``).
    item: the whole override, for errors.

  Raises:
    ConfigError: ``text`` is not a value of the declared type (the message names the key).
  """
  key = key or leaf
  text = text.strip()
  declared = section.get_type(leaf)
  old = section[leaf]
  field = section._fields[leaf]  # pylint: disable=protected-access  (the FieldReference itself, not its value)
  nullable = old is None or isinstance(field, config_dict.FieldReference)
  where = f" (override {item!r})" if item else ""
  if isinstance(old, ml_collections.ConfigDict) or (isinstance(declared, type) and
                                                     issubclass(declared, ml_collections.ConfigDict)):
    raise ConfigError(key, f"is a section; set its keys instead ({key}.NAME=VALUE){where}")
  if nullable and text.lower() in NONE_WORDS:
    return None
  if declared is type(None):  # a plain None default: no declared type
    return _literal(text)
  if declared is bool:
    return _parse_bool(text, key, where)
  if isinstance(declared, type) and issubclass(declared, (list, tuple)):
    kind = _item_type(old or ())
    if kind is None:  # no items to take the type from: Python literals, e.g. ((1, 2), (3, 4))
      value = _literal(text)
      if isinstance(value, (list, tuple)):
        return declared(value)
    items = _parse_sequence(text, key, where)
    return declared(_parse_scalar(t, kind, f"{key}[{i}]", where) for i, t in enumerate(items))
  if isinstance(declared, type) and issubclass(declared, (int, float, str)):
    return _parse_scalar(text, declared, key, where)
  value = _literal(text)
  if not isinstance(value, declared):
    raise ConfigError(key, f"expected a {declared.__name__}, got {text!r}{where}")
  return value


def _parse_scalar(text: str, kind: type | None, key: str, where: str) -> Any:
  """``text`` as a ``kind`` (bool, int, float or str; None: a Python literal or else the string)."""
  text = text.strip()
  if kind is None:
    return _literal(text)
  if kind is bool:
    return _parse_bool(text, key, where)
  if issubclass(kind, int):
    try:
      return int(text)
    except ValueError:
      raise ConfigError(key, f"expected an integer, got {text!r}{where}") from None
  if issubclass(kind, float):
    try:
      return float(text)
    except ValueError:
      raise ConfigError(key, f"expected a number, got {text!r}{where}") from None
  return _unquote(text)


def _parse_bool(text: str, key: str, where: str) -> bool:
  low = text.strip().lower()
  if low in _TRUE:
    return True
  if low in _FALSE:
    return False
  raise ConfigError(key, f"expected a boolean (true/false, yes/no, 1/0), got {text!r}{where}")


def _parse_sequence(text: str, key: str, where: str) -> list[str]:
  """The items of ``(a,b)``, ``[a,b]``, ``a:b`` or ``a,b`` (stripped; ``()`` is empty)."""
  text = text.strip()
  if text[:1] in "([" or text[-1:] in ")]":
    if len(text) < 2 or {text[0], text[-1]} not in ({"(", ")"}, {"[", "]"}):
      raise ConfigError(key, f"expected a list such as (1,1,2) or 1:1:2, got {text!r} (unbalanced brackets){where}")
    text = text[1:-1]
  sep = ":" if ":" in text and "," not in text else ","
  return [t.strip() for t in text.split(sep) if t.strip()]


def _item_type(old: Sequence[Any]) -> type | None:
  """The item type of an existing list (bool, int, float or str), or None when empty or mixed."""
  kinds = {type(v) for v in old}
  if kinds <= {int, float} and float in kinds:
    return float
  if len(kinds) == 1 and next(iter(kinds)) in (bool, int, float, str):
    return next(iter(kinds))
  return None


def _literal(text: str) -> Any:
  """A Python literal (``true``/``false``/``none`` in any case too), else the string itself."""
  low = text.lower()
  if low in ("true", "false"):
    return low == "true"
  if low in NONE_WORDS:
    return None
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
    return _unquote(text)


def _unquote(text: str) -> str:
  if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
    return text[1:-1]
  return text


def _keys(section: Any) -> list[str]:
  return list(section) if isinstance(section, ml_collections.ConfigDict) else []


def _suggest(name: str, choices: Sequence[str]) -> str:
  close = difflib.get_close_matches(name, list(choices), n=1)
  return f" (did you mean {close[0]!r}?)" if close else ""


# ------------------------------------------------------------------------------------------------ checks
def lookup(config, key: str, default: Any = _MISSING) -> Any:
  """``config`` at the dotted ``key``; ``default`` when a section or the key is absent (KeyError without one)."""
  node = config
  for part in key.split("."):
    try:
      node = node[part]
    except (KeyError, TypeError, AttributeError, IndexError):
      if default is _MISSING:
        raise KeyError(f"config has no key {key!r}") from None
      return default
  return node


def is_int(value: Any) -> bool:
  """An integer (numpy's too), not a bool."""
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
  """A real number (int or float, numpy's too), not a bool."""
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _check_number(key: str, value: Any, kind: str, valid: bool, lo, hi, lo_open: bool, hi_open: bool,
                  allow_none: bool) -> None:
  """Raise the ConfigError of a value that is not a ``kind`` (``valid`` False) or out of ``lo..hi``."""
  in_range = valid and (lo is None or (value > lo if lo_open else value >= lo)) and (
      hi is None or (value < hi if hi_open else value <= hi))
  if in_range:
    return
  if lo is not None and hi is not None:
    bounds = f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
  elif lo is not None:
    bounds = f"{'>' if lo_open else '>='} {lo}"
  elif hi is not None:
    bounds = f"{'<' if hi_open else '<='} {hi}"
  else:
    bounds = ""
  want = bounds if valid else f"{kind} {bounds}".strip()  # the type is named only when it is wrong
  raise ConfigError(key, f"must be {'None or ' if allow_none else ''}{want}, got {value!r}")


def check_int(config, key: str, *, min_value: int | None = None, max_value: int | None = None,
              allow_none: bool = False) -> int | None:
  """``config.<key>`` if it is an integer in ``[min_value, max_value]`` (or None with ``allow_none``).

  Returns:
    The value; None when the key is absent.

  Raises:
    ConfigError: otherwise (``config.sde.T: must be >= 1, got 0``).
  """
  value = lookup(config, key, _ABSENT)
  if value is _ABSENT or (value is None and allow_none):
    return None
  _check_number(key, value, "an integer", is_int(value), min_value, max_value, False, False, allow_none)
  return int(value)


def check_float(config, key: str, *, min_value: float | None = None, max_value: float | None = None,
                min_open: bool = False, max_open: bool = False, allow_none: bool = False) -> float | None:
  """``config.<key>`` if it is a finite number in the range (``*_open``: the bound excluded), or None if allowed.

  Returns:
    The value as a float; None when the key is absent.

  Raises:
    ConfigError: otherwise (``config.optim.learning_rate: must be > 0, got -1.0``).
  """
  value = lookup(config, key, _ABSENT)
  if value is _ABSENT or (value is None and allow_none):
    return None
  _check_number(key, value, "a finite number", is_number(value) and math.isfinite(value), min_value, max_value,
                min_open, max_open, allow_none)
  return float(value)


def check_choice(config, key: str, choices: Sequence[Any], *, allow_none: bool = False) -> Any:
  """``config.<key>`` if it is one of ``choices`` (or None with ``allow_none``); None when absent.

  Raises:
    ConfigError: otherwise, listing the choices.
  """
  value = lookup(config, key, _ABSENT)
  if value is _ABSENT or (value is None and allow_none):
    return None
  if value not in choices or isinstance(value, bool) != any(isinstance(c, bool) for c in choices):
    raise ConfigError(key, f"must be one of {', '.join(str(c) for c in choices)}"
                      f"{' (or None)' if allow_none else ''}, got {value!r}")
  return value


def check_bool(config, key: str) -> bool | None:
  """``config.<key>`` if it is a boolean; None when absent.

  Raises:
    ConfigError: otherwise.
  """
  value = lookup(config, key, _ABSENT)
  if value is _ABSENT:
    return None
  if not isinstance(value, bool):
    raise ConfigError(key, f"must be true or false, got {value!r}")
  return bool(value)


def check_int_list(config, key: str, *, min_value: int | None = None, odd: bool = False,
                   nonempty: bool = True) -> tuple[int, ...] | None:
  """``config.<key>`` if it is a (non-empty) list or tuple of integers ``>= min_value`` (and odd); None when absent.

  Raises:
    ConfigError: otherwise.
  """
  value = lookup(config, key, _ABSENT)
  if value is _ABSENT:
    return None
  if not isinstance(value, (list, tuple)):
    raise ConfigError(key, f"must be a list of integers, got {value!r}")
  if nonempty and not value:
    raise ConfigError(key, "must not be empty")
  for v in value:
    if not is_int(v) or (min_value is not None and v < min_value) or (odd and v % 2 == 0):
      want = f"{'odd ' if odd else ''}integers{f' >= {min_value}' if min_value is not None else ''}"
      raise ConfigError(key, f"must hold {want}, got {list(value)!r}")
  return tuple(int(v) for v in value)


def check_str(config, key: str, *, nonempty: bool = True, allow_none: bool = False) -> str | None:
  """``config.<key>`` if it is a (non-empty) string (or None with ``allow_none``); None when absent.

  Raises:
    ConfigError: otherwise.
  """
  value = lookup(config, key, _ABSENT)
  if value is _ABSENT or (value is None and allow_none):
    return None
  if not isinstance(value, str) or (nonempty and not value.strip()):
    raise ConfigError(key, f"must be a {'non-empty ' if nonempty else ''}string, got {value!r}")
  return value
