"""Key maps between official PyTorch ``state_dict`` s and lliejax params: one spec per network, both directions.

Every lliejax network names its parameters after the official PyTorch keys, by one rule (:func:`key_to_path`):
a list index joins the module name before it with ``_`` and ``weight`` becomes ``kernel``::

    encoders.4.27.conv2.weight   <->   params['encoders_4_27']['conv2']['kernel']
    time_mlp.1.bias              <->   params['time_mlp_1']['bias']

A network's :class:`KeyMap` lists, for an architecture, every official key in the official ``state_dict`` order with
its PyTorch shape and layout kind, and infers the architecture from the keys and shapes of a ``state_dict``
(:meth:`KeyMap.infer`; a lliejax params tree is mapped to keys and shapes by the rule and inferred the same way).
Import (:meth:`KeyMap.import_state_dict`) and export (:meth:`KeyMap.export_params`) both follow from that spec and
are pure transposes / reshapes, so PyTorch -> lliejax -> PyTorch is bitwise exact.

Layout kinds: ``conv`` ``(O, I, kH, kW)`` <-> ``(kH, kW, I, O)``; ``dense`` (``Linear``) ``(out, in)`` <->
``(in, out)``; ``vec`` ``(1, C, 1, 1)`` <-> ``(C,)``; ``bias`` (and anything else) unchanged.

Nothing here imports torch: values may be tensors (converted with ``.numpy()``) or arrays.
"""
from __future__ import annotations

import abc
import collections
import dataclasses
import re
from typing import Any, Mapping, Sequence

import numpy as np


class ConversionError(ValueError):
  """Base class of the errors of :mod:`lliejax.interop`."""


class StateDictMismatchError(ConversionError):
  """Keys or shapes do not match the expected architecture.

  Attributes ``missing``, ``unexpected`` (lists of keys) and ``mismatched`` (list of ``(key, got, expected)``) hold
  *all* problems; the message lists them all.
  """

  def __init__(self, missing: Sequence[str] = (), unexpected: Sequence[str] = (),
               mismatched: Sequence[tuple] = (), *, network: str = "network", expected: str | None = None,
               looks_like: str | None = None, source: str | None = None, hint: str | None = None):
    self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)
    self.source = source
    what = f"{source}: " if source else ""
    lines = [f"{what}state_dict does not match the {network} architecture "
             f"({len(self.missing)} missing, {len(self.unexpected)} unexpected, "
             f"{len(self.mismatched)} mis-shaped/mis-typed keys)"]
    if expected is not None:
      lines.append(f"  expected architecture: {expected}")
    if looks_like is not None and looks_like != expected:
      lines.append(f"  the state_dict looks like: {looks_like}")
    if hint:
      lines.append(f"  hint: {hint}")
    for title, keys in (("missing keys", self.missing), ("unexpected keys", self.unexpected)):
      if keys:
        lines.append(f"  {title}:")
        lines += [f"    {k}" for k in keys]
    if self.mismatched:
      lines.append("  mis-shaped keys (got vs expected):")
      lines += [f"    {k}: {got} vs {exp}" for k, got, exp in self.mismatched]
    super().__init__("\n".join(lines))


# ------------------------------------------------------------------------------------------------ naming rule
def key_to_path(key: str) -> tuple[str, ...]:
  """``'encoders.4.27.conv2.weight'`` -> ``('encoders_4_27', 'conv2', 'kernel')``."""
  path: list[str] = []
  for token in key.split("."):
    if token.isdigit() and path:
      path[-1] = f"{path[-1]}_{token}"
    else:
      path.append(token)
  if path[-1] == "weight":
    path[-1] = "kernel"
  return tuple(path)


def path_to_key(path: Sequence[str]) -> str:
  """The inverse of :func:`key_to_path`."""
  *mods, leaf = path
  leaf = "weight" if leaf == "kernel" else leaf
  return ".".join([re.sub(r"_(\d+)", r".\1", m) for m in mods] + [leaf])


def flatten(tree: Mapping, prefix: tuple = ()) -> dict[tuple, Any]:
  """``{path: leaf}`` of a nested mapping."""
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


# ------------------------------------------------------------------------------------------------ layouts
# kind -> (axes of the PyTorch array in the lliejax layout, axes of the lliejax array in the PyTorch layout)
_PERMUTATIONS = {"conv": ((2, 3, 1, 0), (3, 2, 0, 1)), "dense": ((1, 0), (1, 0))}


def flax_shape(shape: tuple, kind: str) -> tuple:
  """The lliejax shape of a PyTorch parameter of layout ``kind``."""
  if kind in _PERMUTATIONS:
    return tuple(shape[i] for i in _PERMUTATIONS[kind][0])
  return (shape[1],) if kind == "vec" else tuple(shape)


def torch_shape(shape: tuple, kind: str) -> tuple:
  """The PyTorch shape of a lliejax parameter of layout ``kind``."""
  if kind in _PERMUTATIONS:
    return tuple(shape[i] for i in _PERMUTATIONS[kind][1])
  return (1, shape[0], 1, 1) if kind == "vec" else tuple(shape)


def to_flax(a: np.ndarray, kind: str) -> np.ndarray:
  if kind in _PERMUTATIONS:
    return np.ascontiguousarray(a.transpose(_PERMUTATIONS[kind][0]))
  return np.array(a.reshape(flax_shape(a.shape, kind)), copy=True)


def to_torch(a: np.ndarray, kind: str) -> np.ndarray:
  if kind in _PERMUTATIONS:
    return np.ascontiguousarray(a.transpose(_PERMUTATIONS[kind][1]))
  return np.array(a.reshape(torch_shape(a.shape, kind)), copy=True)


def shape_of(v) -> tuple:
  return tuple(int(s) for s in getattr(v, "shape", ()))


def to_float32(v, key: str, changes: dict) -> np.ndarray | None:
  """Array/tensor -> numpy float32; records non-float32 source dtypes in ``changes``; ``None`` if not floating."""
  if type(v).__module__.startswith("torch"):
    v = v.detach().cpu()
    name = str(v.dtype).replace("torch.", "")
    if not v.is_floating_point():
      return None
    if name != "float32":
      changes[key] = name
      v = v.float()
    return v.numpy()
  a = np.asarray(v)
  if a.dtype.kind != "f" and a.dtype.name != "bfloat16":
    return None
  if a.dtype != np.float32:
    changes[key] = a.dtype.name
    a = a.astype(np.float32)
  return a


def strip_prefix(state_dict: Mapping[str, Any], prefix: str = "module.") -> dict:
  """Remove ``prefix`` from every key that has it (``DataParallel`` adds ``module.``)."""
  if not any(isinstance(k, str) and k.startswith(prefix) for k in state_dict):
    return dict(state_dict)
  return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


# ------------------------------------------------------------------------------------------------ specs
@dataclasses.dataclass(frozen=True)
class Entry:
  """One parameter: official ``key``, PyTorch ``shape``, layout ``kind``; its lliejax path follows by rule."""

  key: str
  shape: tuple
  kind: str  # conv | dense | vec | bias

  @property
  def path(self) -> tuple[str, ...]:
    return key_to_path(self.key)

  @property
  def flax_shape(self) -> tuple:
    return flax_shape(self.shape, self.kind)


@dataclasses.dataclass
class Converted:
  """Result of :meth:`KeyMap.import_state_dict`."""

  params: dict  # nested lliejax params (numpy float32)
  arch: dict  # architecture fields
  dtype_changes: dict  # {key: original dtype} of tensors converted to float32
  num_params: int


def compare_keys(sd: Mapping[str, Any], shapes: Mapping[str, tuple], expected: Sequence[tuple[str, tuple]]
                 ) -> tuple[list, list, list]:
  """``(missing, unexpected, mismatched)`` of a state dict ``sd`` (``shapes``: its keys' shapes) against the
  ``(key, shape)`` pairs ``expected``: mismatched are non-tensors, other shapes and non-floating dtypes, as
  ``(key, found, wanted)`` for :class:`StateDictMismatchError`."""
  keys = {k for k, _ in expected}
  missing = [k for k, _ in expected if k not in sd]
  unexpected = [k for k in sd if k not in keys]
  mismatched = []
  for k, shape in expected:
    if k not in sd:
      continue
    v = sd[k]
    dtype = str(getattr(v, "dtype", type(v).__name__)).replace("torch.", "")
    if not hasattr(v, "shape"):
      mismatched.append((k, f"a {type(v).__name__}", f"a float tensor of shape {shape}"))
    elif shapes[k] != shape:
      mismatched.append((k, shapes[k], shape))
    elif not any(s in dtype for s in ("float", "half", "double")):
      mismatched.append((k, f"dtype {dtype}", "a floating dtype"))
  return missing, unexpected, mismatched


class KeyMap(abc.ABC):
  """The official <-> lliejax mapping of one network family (see the module docstring)."""

  #: The network's name in error messages (e.g. ``ConditionalNAFNet``).
  network: str = "network"
  #: The architecture fields, in order (the keys of an ``arch`` dict).
  arch_fields: tuple[str, ...] = ()

  @abc.abstractmethod
  def spec(self, arch: Mapping[str, Any]) -> list[Entry]:
    """Every parameter of the network with architecture ``arch``, in the official ``state_dict`` order."""

  @abc.abstractmethod
  def infer(self, shapes: Mapping[str, tuple]) -> dict:
    """The architecture of ``{official key: PyTorch shape}`` (raises :class:`StateDictMismatchError` if none)."""

  # ---------------------------------------------------------------------------------------------- architecture
  def arch(self, model) -> dict:
    """The architecture fields of a ``config.model`` ConfigDict / mapping / module with such attributes."""
    if model is None:
      raise ValueError("model config is None")
    get = (lambda k: model[k]) if isinstance(model, Mapping) or hasattr(model, "to_dict") else (
        lambda k: getattr(model, k))
    out = {}
    for k in self.arch_fields:
      try:
        v = get(k)
      except (KeyError, AttributeError) as e:
        raise ValueError(f"model config has no {k!r} (need {', '.join(self.arch_fields)})") from e
      out[k] = [int(x) for x in v] if isinstance(v, (list, tuple)) else int(v)
    return out

  def format_arch(self, arch) -> str:
    a = self.arch(arch)
    return ", ".join(f"{k}={a[k]}" for k in self.arch_fields)

  def state_dict_shapes(self, arch) -> dict[str, tuple]:
    """``{official key: PyTorch shape}`` in the official order."""
    return {e.key: e.shape for e in self.spec(self.arch(arch))}

  def param_shapes(self, arch) -> dict[tuple, tuple]:
    """``{lliejax param path: shape}``."""
    return {e.path: e.flax_shape for e in self.spec(self.arch(arch))}

  def infer_state_dict(self, state_dict: Mapping[str, Any]) -> dict:
    """The architecture of a ``state_dict`` (tensors or arrays; a ``module.`` prefix is stripped)."""
    return self.infer({k: shape_of(v) for k, v in strip_prefix(state_dict).items()})

  def infer_params(self, params: Mapping[str, Any]) -> dict:
    """The architecture of a lliejax params tree (a ``{'params': ...}`` wrapper is accepted)."""
    params = _unwrap_params(params)
    shapes = {}
    for path, v in flatten(params).items():
      shape = shape_of(v)
      kind = {4: "conv", 2: "dense"}.get(len(shape), "bias") if path[-1] == "kernel" else "bias"
      shapes[path_to_key(path)] = torch_shape(shape, kind)
    return self.infer(shapes)

  def _try_infer(self, shapes) -> dict | None:
    try:
      return self.infer(shapes)
    except (ConversionError, ValueError, KeyError, IndexError):
      return None

  # ---------------------------------------------------------------------------------------------- conversion
  def import_state_dict(self, state_dict: Mapping[str, Any], arch=None, *, source: str | None = None,
                        consume: bool = False) -> Converted:
    """Official ``state_dict`` -> lliejax params, strictly.

    Args:
      state_dict: ``{key: tensor or array}`` (a ``module.`` prefix is stripped). Non-float32 floating tensors
        (float16, bfloat16, float64) are converted to float32 and reported in ``dtype_changes``.
      arch: the architecture (``config.model`` / mapping); ``None`` infers it from the keys.
      source: a name for error messages (the file path).
      consume: drop entries from ``state_dict`` (a mutable dict) as they are converted, to keep peak memory at
        about one copy of the weights.

    Raises:
      StateDictMismatchError: listing every missing, unexpected and mis-shaped (or non-floating) key at once.
    """
    sd = strip_prefix(state_dict)
    shapes = {k: shape_of(v) for k, v in sd.items()}
    inferred = self._try_infer(shapes)
    if arch is None:
      arch = inferred if inferred is not None else self.infer(shapes)  # the latter raises the descriptive error
    arch = self.arch(arch)
    spec = self.spec(arch)
    missing, unexpected, mismatched = compare_keys(sd, shapes, [(e.key, e.shape) for e in spec])
    if missing or unexpected or mismatched:
      hint = None
      if any(k.startswith("ema_model.") for k in unexpected):
        hint = "this looks like an ema_pytorch EMA state; select the EMA weights with key_prefix='ema_model.'"
      raise StateDictMismatchError(missing, unexpected, mismatched, network=self.network,
                                   expected=self.format_arch(arch), source=source, hint=hint,
                                   looks_like=self.format_arch(inferred) if inferred is not None else None)
    params: dict = {}
    changes: dict = {}
    for e in spec:
      v = sd.pop(e.key) if consume else sd[e.key]
      if consume and isinstance(state_dict, dict):
        state_dict.pop(e.key, None)
        state_dict.pop("module." + e.key, None)
      a = to_float32(v, e.key, changes)
      del v
      node = params
      for p in e.path[:-1]:
        node = node.setdefault(p, {})
      node[e.path[-1]] = to_flax(a, e.kind)
      del a
    n = sum(int(np.prod(e.shape)) for e in spec)
    return Converted(params=params, arch=arch, dtype_changes=changes, num_params=n)

  def export_params(self, params: Mapping[str, Any], arch=None, *, as_torch: bool = False,
                    source: str | None = None) -> collections.OrderedDict:
    """lliejax params -> official ``state_dict`` (official key names, order and shapes; float32).

    Args:
      params: the network params (a ``{'params': ...}`` wrapper is accepted).
      arch: architecture to validate against; ``None`` infers it from the param names.
      as_torch: ``torch.Tensor`` values (imports torch) instead of numpy arrays.

    Raises:
      StateDictMismatchError: listing every missing, unexpected and mis-shaped param path.
    """
    params = _unwrap_params(params)
    inferred = self.infer_params(params)
    arch = self.arch(arch if arch is not None else inferred)
    spec = self.spec(arch)
    flat = flatten(params)
    expected = {e.path: e for e in spec}
    fmt = "/".join
    missing = [fmt(p) for p in expected if p not in flat]
    unexpected = [fmt(p) for p in flat if p not in expected]
    mismatched = [(fmt(p), shape_of(flat[p]), e.flax_shape) for p, e in expected.items()
                  if p in flat and shape_of(flat[p]) != e.flax_shape]
    if missing or unexpected or mismatched:
      raise StateDictMismatchError(missing, unexpected, mismatched, network=self.network,
                                   expected=self.format_arch(arch), looks_like=self.format_arch(inferred),
                                   source=source)
    out = collections.OrderedDict()
    changes: dict = {}
    for e in spec:
      out[e.key] = to_torch(to_float32(np.asarray(flat[e.path]), fmt(e.path), changes), e.kind)
    if as_torch:
      import torch  # pylint: disable=import-outside-toplevel
      out = collections.OrderedDict((k, torch.from_numpy(v)) for k, v in out.items())
    return out


def _unwrap_params(params: Mapping[str, Any]) -> Mapping[str, Any]:
  if isinstance(params.get("params"), Mapping) and len(params) == 1:
    return params["params"]
  return params
