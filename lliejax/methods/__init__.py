"""The registry of methods: ``get(name)``, ``names()``, ``build(config)``, ``register``.

Built-in methods are imported on first use, so ``import lliejax.methods`` stays light. A method defined elsewhere
(a research prototype, the test suite's DDPM) registers itself with the :func:`register` decorator when its module
is imported; exports record that module, and :func:`get` imports it when the name is not registered yet.
"""
from __future__ import annotations

import importlib

from lliejax.methods.base import Method, count_params

__all__ = ["Method", "build", "count_params", "get", "names", "register"]

# name -> module that defines (and registers) it
_BUILTIN = {"entropy_sde": "lliejax.methods.entropy_sde", "reddit_teacher": "lliejax.methods.reddit_teacher",
            "reddit_student": "lliejax.methods.reddit_student",
            "consistency_student": "lliejax.methods.consistency_student",
            "progressive_student": "lliejax.methods.progressive_student",
            "sampler_student": "lliejax.methods.sampler_student",
            "anlightendiff_fs": "lliejax.methods.anlightendiff", "anlightendiff_ts": "lliejax.methods.anlightendiff"}
_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
  """Class decorator: make ``cls`` available as ``get(cls.name)``."""
  if not cls.name:
    raise ValueError(f"{cls.__qualname__} has no name")
  other = _REGISTRY.get(cls.name)
  if other is not None and (other.__module__, other.__qualname__) != (cls.__module__, cls.__qualname__):
    raise ValueError(f"method {cls.name!r} is already registered by {other.__module__}.{other.__qualname__}")
  _REGISTRY[cls.name] = cls
  return cls


def names() -> tuple[str, ...]:
  """The built-in and registered method names, sorted."""
  return tuple(sorted(set(_BUILTIN) | set(_REGISTRY)))


def get(name: str, *, module: str | None = None) -> type[Method]:
  """The method class registered as ``name``.

  Args:
    name: a method name (``config.method``).
    module: the module defining it, imported when ``name`` is not registered yet (what exports record).

  Raises:
    ValueError: unknown name, naming the known ones.
  """
  if name not in _REGISTRY:
    source = _BUILTIN.get(name, module)
    if source is not None:
      try:
        importlib.import_module(source)
      except ImportError as e:
        raise ValueError(f"method {name!r}: cannot import {source} ({e})") from e
  if name not in _REGISTRY:
    raise ValueError(f"unknown method {name!r}; known methods: {', '.join(names())}")
  return _REGISTRY[name]


def build(config) -> Method:
  """``get(config.method)(config)``."""
  if config.get("method") is None:
    raise ValueError(f"config has no 'method' key; known methods: {', '.join(names())}")
  return get(config.method, module=config.get("method_module"))(config)
