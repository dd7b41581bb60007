"""Configs: loading ``path.py:arg`` specs, and the ``variant,key=value`` argument every config file shares.

``load_config('configs/entropy_sde.py:demo,steps=200')`` imports the file and calls ``get_config('demo,steps=200')``
(as ``ml_collections.config_flags.DEFINE_config_file``). A spec without ``.py`` and without a path separator
(``entropy_sde:demo``) names a config shipped with the package (the top-level ``configs/`` folder, installed as
``lliejax.configs``), so installed copies work without the repository.

Config files import only ``ml_collections`` and this module: :func:`parse_arg` splits their argument into the
variant and the overrides, :func:`apply_overrides` applies ``key=value`` pairs (dotted keys, aliases, lists as
``1:1:2``) with the type of the value they replace.
"""
from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Mapping

import ml_collections


def load_config(spec: str) -> ml_collections.ConfigDict:
  """The config of ``PATH.py[:ARG]`` or of the packaged ``NAME[:ARG]``."""
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
  return module.get_config(arg) if arg else module.get_config()


def parse_arg(arg: str | None, default: str, variants, *, name: str = "") -> tuple[str, list[str]]:
  """``'variant,k=v,...'`` -> ``(variant, ['k=v', ...])``; ``arg=None`` gives ``default``; ``name`` is for errors.

  Raises:
    ValueError: the variant is not one of ``variants``.
  """
  parts = [p for p in (arg or default).split(",") if p]
  variant, overrides = (parts[0], parts[1:]) if parts else (default, [])
  if variant not in variants:
    raise ValueError(f"unknown {name + ' ' if name else ''}config variant {variant!r}; choose one of "
                     f"{', '.join(variants)}")
  return variant, overrides


def apply_overrides(config: ml_collections.ConfigDict, items, aliases: Mapping[str, str] | None = None) -> None:
  """Set ``key=value`` items (dotted keys; ``aliases`` maps short names to them) in place.

  The new value takes the type of the old one: booleans from ``1/true/yes`` (anything else is false), integers,
  floats, lists and tuples of integers written ``1:1:2``; other values stay strings.

  Raises:
    KeyError: naming an unknown section or key.
    ValueError: an item without ``=``.
  """
  aliases = aliases or {}
  for item in items:
    if "=" not in item:
      raise ValueError(f"config override {item!r} is not of the form key=value")
    key, value = item.split("=", 1)
    key = aliases.get(key, key)
    target = config
    parts = key.split(".")
    for p in parts[:-1]:
      if p not in target:
        raise KeyError(f"config override {item!r}: unknown section {p!r}")
      target = target[p]
    leaf = parts[-1]
    if leaf not in target:
      raise KeyError(f"config override {item!r}: unknown key {key!r}")
    old = target[leaf]
    if isinstance(old, bool):
      value = value.lower() in ("1", "true", "yes")
    elif isinstance(old, int):
      value = int(value)
    elif isinstance(old, float):
      value = float(value)
    elif isinstance(old, (list, tuple)):
      value = type(old)(int(v) for v in value.strip("[]()").split(":") if v)
    target[leaf] = value
