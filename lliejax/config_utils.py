"""Loading ``ml_collections`` configs from a ``path:arg`` spec (as ``config_flags.DEFINE_config_file``).

``load_config('configs/entropy_sde.py:demo,steps=200')`` imports the file and calls ``get_config('demo,steps=200')``.
A spec without a path separator and without ``.py`` (``entropy_sde:demo``) names a config shipped inside the
package (``lliejax/configs/entropy_sde.py``), so installed copies work without the repository.
"""
from __future__ import annotations

import importlib
import importlib.util
import json
import os

import ml_collections


def load_config(spec: str) -> ml_collections.ConfigDict:
  path, _, arg = spec.partition(":")
  if not path.endswith(".py") and os.sep not in path:
    try:
      module = importlib.import_module(f"lliejax.configs.{path}")
    except ModuleNotFoundError as e:
      raise FileNotFoundError(f"config {spec!r}: no file {path!r} and no packaged config "
                              f"lliejax/configs/{path}.py") from e
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


def config_to_json(config: ml_collections.ConfigDict) -> str:
  return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def config_from_dict(d: dict) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(d)
