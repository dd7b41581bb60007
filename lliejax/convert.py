"""PyTorch interop for the ConditionalNAFNet of Refusion / Entropy-SDE: official ``state_dict`` <-> lliejax params.

The official code (``DenoisingNAFNet_arch.py`` of ``shermanlian/spatial-entropy-loss`` and
``Algolzw/image-restoration-sde``) saves checkpoints (``<iter>_G.pth``, ``lastest_EMA.pth``, the released
``lolv1.pth`` ...) as a plain ``state_dict``: a dict ``key -> tensor`` with keys such as
``encoders.4.27.conv2.weight`` (optionally prefixed ``module.`` when saved from ``DataParallel``).

Mapping (REFERENCE / STATE_DICT_KEYS section 1; :mod:`lliejax.models.nafnet` mirrors the names):

==================================  =====================================  ==================================
PyTorch key                         lliejax param path                     layout
==================================  =====================================  ==================================
``time_mlp.{1,3}.weight``           ``time_mlp_{1,3}/kernel``              Linear ``(out, in)`` -> ``(in, out)``
``intro|ending|downs.i.weight``     ``intro|ending|downs_i/kernel``        Conv ``(O, I, kH, kW)`` -> ``(kH, kW, I, O)``
``ups.i.0.weight`` (no bias)        ``ups_i_0/kernel``                     Conv 1x1 (PixelShuffle is in the model)
``<blk>.conv{1..5}.weight``         ``<blk>/conv{1..5}/kernel``            Conv; ``conv2`` depthwise ``(2c, 1, 3, 3)``
``<blk>.sca.1.weight``              ``<blk>/sca_1/kernel``                 Conv 1x1
``<blk>.mlp.1.weight``              ``<blk>/mlp_1/kernel``                 Linear
``<blk>.norm{1,2}.g``               ``<blk>/norm{1,2}/g``                  ``(1, c, 1, 1)`` -> ``(c,)``
``<blk>.beta``, ``<blk>.gamma``     ``<blk>/beta``, ``<blk>/gamma``        ``(1, c, 1, 1)`` -> ``(c,)``
``*.bias``                          ``*/bias``                             unchanged
==================================  =====================================  ==================================

with ``<blk>`` = ``encoders.i.j`` / ``middle_blks.j`` / ``decoders.i.j`` (``encoders_i_j`` ... in lliejax).
All conversions are pure transposes/reshapes, so PyTorch -> lliejax -> PyTorch is bitwise exact.

The conversion core works on dicts of numpy arrays and never imports torch; only :func:`load_torch_state_dict`
and :func:`save_torch_state_dict` (and the CLI) import it, lazily (``pip install lliejax[torch]``).

Command line (``lliejax-convert --help``)::

    lliejax-convert lolv1.pth exports/lolv1 --config configs/entropy_sde.py:lolv1
    lliejax-convert --to-torch exports/lolv1 lolv1_roundtrip.pth
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import os
import re
import sys
import tempfile
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

MODEL_KEYS = ("img_channel", "width", "enc_blk_nums", "middle_blk_num", "dec_blk_nums")
# Wrapper keys under which training scripts commonly nest a state_dict (only unwrapped when the value is itself
# a plain dict of tensors and the wrapper holds nothing but such a dict plus scalar/bookkeeping entries).
CONTAINER_KEYS = ("state_dict", "params", "params_ema", "model", "net", "network", "model_state_dict")
_BLOCK_PARAMS = (  # official registration order inside a NAFBlock: (suffix, kind)
    ("beta", "vec"), ("gamma", "vec"), ("mlp.1.weight", "dense"), ("mlp.1.bias", "bias"),
    ("conv1.weight", "conv"), ("conv1.bias", "bias"), ("conv2.weight", "conv"), ("conv2.bias", "bias"),
    ("conv3.weight", "conv"), ("conv3.bias", "bias"), ("sca.1.weight", "conv"), ("sca.1.bias", "bias"),
    ("conv4.weight", "conv"), ("conv4.bias", "bias"), ("conv5.weight", "conv"), ("conv5.bias", "bias"),
    ("norm1.g", "vec"), ("norm2.g", "vec"))


class ConversionError(ValueError):
  """Base class of the errors raised by :mod:`lliejax.convert`."""


class CheckpointFormatError(ConversionError):
  """A file that is not a readable PyTorch ``state_dict`` (corrupt, truncated, empty, arbitrary pickle ...)."""


class StateDictMismatchError(ConversionError):
  """Keys or shapes do not match the expected ConditionalNAFNet architecture.

  Attributes ``missing``, ``unexpected`` (lists of keys) and ``mismatched`` (list of
  ``(key, got_shape_or_dtype, expected)``) hold *all* problems; the message lists them all.
  """

  def __init__(self, missing: Sequence[str] = (), unexpected: Sequence[str] = (),
               mismatched: Sequence[tuple] = (), *, model: Mapping[str, Any] | None = None,
               inferred: Mapping[str, Any] | None = None, source: str | None = None, hint: str | None = None):
    self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)
    self.model, self.inferred, self.source = model, inferred, source
    what = f"{source}: " if source else ""
    lines = [f"{what}state_dict does not match the ConditionalNAFNet architecture "
             f"({len(self.missing)} missing, {len(self.unexpected)} unexpected, "
             f"{len(self.mismatched)} mis-shaped/mis-typed keys)"]
    if model is not None:
      lines.append(f"  expected architecture: {format_model_config(model)}")
    if inferred is not None and (model is None or _model_tuple(inferred) != _model_tuple(model)):
      lines.append(f"  the state_dict looks like: {format_model_config(inferred)}")
    if hint:
      lines.append(f"  hint: {hint}")
    if self.missing:
      lines.append("  missing keys:")
      lines += [f"    {k}" for k in self.missing]
    if self.unexpected:
      lines.append("  unexpected keys:")
      lines += [f"    {k}" for k in self.unexpected]
    if self.mismatched:
      lines.append("  mis-shaped keys (got vs expected):")
      lines += [f"    {k}: {got} vs {exp}" for k, got, exp in self.mismatched]
    super().__init__("\n".join(lines))


# ------------------------------------------------------------------------------------------------ architecture
def model_config_dict(model) -> dict:
  """The architecture fields of a ``config.model`` ConfigDict / mapping / :class:`ConditionalNAFNet`."""
  if model is None:
    raise ValueError("model config is None")
  get = (lambda k: model[k]) if isinstance(model, Mapping) or hasattr(model, "to_dict") else (
      lambda k: getattr(model, k))
  out = {}
  for k in MODEL_KEYS:
    try:
      v = get(k)
    except (KeyError, AttributeError) as e:
      raise ValueError(f"model config has no {k!r} (need {', '.join(MODEL_KEYS)})") from e
    out[k] = [int(x) for x in v] if k.endswith("nums") else int(v)
  if len(out["enc_blk_nums"]) != len(out["dec_blk_nums"]):
    raise ValueError(f"enc_blk_nums {out['enc_blk_nums']} and dec_blk_nums {out['dec_blk_nums']} must have the "
                     "same number of levels")
  return out


def _model_tuple(m) -> tuple:
  d = model_config_dict(m)
  return tuple(tuple(v) if isinstance(v, list) else v for v in d.values())


def format_model_config(model) -> str:
  d = model_config_dict(model)
  return ", ".join(f"{k}={d[k]}" for k in MODEL_KEYS)


@dataclasses.dataclass(frozen=True)
class _Entry:
  key: str  # official PyTorch key
  path: tuple  # lliejax param path
  shape: tuple  # PyTorch shape
  kind: str  # conv | dense | vec | bias

  @property
  def flax_shape(self) -> tuple:
    return _to_flax_shape(self.shape, self.kind)


def _to_flax_shape(shape: tuple, kind: str) -> tuple:
  if kind == "conv":
    o, i, kh, kw = shape
    return (kh, kw, i, o)
  if kind == "dense":
    return (shape[1], shape[0])
  if kind == "vec":
    return (shape[1],)
  return tuple(shape)


def _param_spec(model) -> list[_Entry]:
  """Every parameter of ConditionalNAFNet(model) in the official ``state_dict`` order."""
  m = model_config_dict(model)
  w, ic = m["width"], m["img_channel"]
  td = 4 * w
  spec = [_Entry("time_mlp.1.weight", ("time_mlp_1", "kernel"), (2 * td, w), "dense"),
          _Entry("time_mlp.1.bias", ("time_mlp_1", "bias"), (2 * td,), "bias"),
          _Entry("time_mlp.3.weight", ("time_mlp_3", "kernel"), (td, td), "dense"),
          _Entry("time_mlp.3.bias", ("time_mlp_3", "bias"), (td,), "bias"),
          _Entry("intro.weight", ("intro", "kernel"), (w, 2 * ic, 3, 3), "conv"),
          _Entry("intro.bias", ("intro", "bias"), (w,), "bias"),
          _Entry("ending.weight", ("ending", "kernel"), (ic, w, 3, 3), "conv"),
          _Entry("ending.bias", ("ending", "bias"), (ic,), "bias")]

  def block(prefix: str, name: str, c: int):
    shapes = {"beta": (1, c, 1, 1), "gamma": (1, c, 1, 1), "mlp.1.weight": (4 * c, td // 2), "mlp.1.bias": (4 * c,),
              "conv1.weight": (2 * c, c, 1, 1), "conv1.bias": (2 * c,), "conv2.weight": (2 * c, 1, 3, 3),
              "conv2.bias": (2 * c,), "conv3.weight": (c, c, 1, 1), "conv3.bias": (c,),
              "sca.1.weight": (c, c, 1, 1), "sca.1.bias": (c,), "conv4.weight": (2 * c, c, 1, 1),
              "conv4.bias": (2 * c,), "conv5.weight": (c, c, 1, 1), "conv5.bias": (c,), "norm1.g": (1, c, 1, 1),
              "norm2.g": (1, c, 1, 1)}
    for suffix, kind in _BLOCK_PARAMS:
      mod, _, leaf = suffix.rpartition(".")
      leaf = "kernel" if leaf == "weight" else leaf
      path = (name, mod.replace(".", "_"), leaf) if mod else (name, leaf)
      spec.append(_Entry(f"{prefix}.{suffix}", path, shapes[suffix], kind))

  chans, c = [], w
  for i, n in enumerate(m["enc_blk_nums"]):
    chans.append(c)
    for j in range(n):
      block(f"encoders.{i}.{j}", f"encoders_{i}_{j}", c)
    c *= 2
  mid = c
  for i, n in enumerate(m["dec_blk_nums"]):
    c //= 2
    for j in range(n):
      block(f"decoders.{i}.{j}", f"decoders_{i}_{j}", c)
  for j in range(m["middle_blk_num"]):
    block(f"middle_blks.{j}", f"middle_blks_{j}", mid)
  c = mid
  for i in range(len(m["dec_blk_nums"])):
    spec.append(_Entry(f"ups.{i}.0.weight", (f"ups_{i}_0", "kernel"), (2 * c, c, 1, 1), "conv"))
    c //= 2
  for i, c in enumerate(chans):
    spec.append(_Entry(f"downs.{i}.weight", (f"downs_{i}", "kernel"), (2 * c, c, 2, 2), "conv"))
    spec.append(_Entry(f"downs.{i}.bias", (f"downs_{i}", "bias"), (2 * c,), "bias"))
  return spec


def expected_state_dict_shapes(model) -> dict[str, tuple]:
  """``{official key: PyTorch shape}`` for ConditionalNAFNet(model), in the official ``state_dict`` order."""
  return {e.key: e.shape for e in _param_spec(model)}


def expected_param_shapes(model) -> dict[tuple, tuple]:
  """``{lliejax param path: shape}`` for ConditionalNAFNet(model)."""
  return {e.path: e.flax_shape for e in _param_spec(model)}


_LEVEL_RE = re.compile(r"^(encoders|decoders)\.(\d+)\.(\d+)\.")
_MID_RE = re.compile(r"^middle_blks\.(\d+)\.")
_DOWN_RE = re.compile(r"^downs\.(\d+)\.")
_UP_RE = re.compile(r"^ups\.(\d+)\.")


def _shape_of(v) -> tuple:
  return tuple(int(s) for s in getattr(v, "shape", ()))


def infer_model_config(state_dict: Mapping[str, Any]) -> dict:
  """Derive ``img_channel, width, enc_blk_nums, middle_blk_num, dec_blk_nums`` from official keys and shapes.

  Accepts tensors, numpy arrays or anything with ``.shape`` (a ``module.`` prefix is stripped). Raises
  :class:`StateDictMismatchError` when the dict is not recognisably a ConditionalNAFNet ``state_dict``.
  """
  sd = strip_prefix(state_dict)
  missing = [k for k in ("intro.weight", "ending.weight") if k not in sd]
  if missing:
    keys = list(sd)
    hint = None
    if any(k.startswith("ema_model.") for k in keys):
      hint = "this looks like an ema_pytorch EMA state; select the EMA weights with key_prefix='ema_model.'"
    raise StateDictMismatchError(missing=missing, unexpected=[], hint=hint or (
        f"not a ConditionalNAFNet state_dict? first keys: {', '.join(keys[:5]) or '(none)'}"))
  intro, ending = _shape_of(sd["intro.weight"]), _shape_of(sd["ending.weight"])
  if len(intro) != 4 or len(ending) != 4:
    raise StateDictMismatchError(mismatched=[("intro.weight", intro, "(width, 2*img_channel, 3, 3)")])
  enc: dict[int, set] = collections.defaultdict(set)
  dec: dict[int, set] = collections.defaultdict(set)
  mid, downs, ups = set(), set(), set()
  for k in sd:
    if (mt := _LEVEL_RE.match(k)):
      (enc if mt.group(1) == "encoders" else dec)[int(mt.group(2))].add(int(mt.group(3)))
    elif (mt := _MID_RE.match(k)):
      mid.add(int(mt.group(1)))
    elif (mt := _DOWN_RE.match(k)):
      downs.add(int(mt.group(1)))
    elif (mt := _UP_RE.match(k)):
      ups.add(int(mt.group(1)))
  n_enc = max(downs | set(enc), default=-1) + 1
  n_dec = max(ups | set(dec), default=-1) + 1
  return {"img_channel": int(ending[0]), "width": int(intro[0]),
          "enc_blk_nums": [len(enc.get(i, ())) for i in range(n_enc)], "middle_blk_num": len(mid),
          "dec_blk_nums": [len(dec.get(i, ())) for i in range(n_dec)]}


def _try_infer(state_dict) -> dict | None:
  try:
    return infer_model_config(state_dict)
  except (ConversionError, ValueError):
    return None


# ------------------------------------------------------------------------------------------------ conversion
def strip_prefix(state_dict: Mapping[str, Any], prefix: str = "module.") -> dict:
  """Remove ``prefix`` from every key that has it (``DataParallel`` adds ``module.``)."""
  if not any(isinstance(k, str) and k.startswith(prefix) for k in state_dict):
    return dict(state_dict)
  return {(k[len(prefix):] if k.startswith(prefix) else k): v for k, v in state_dict.items()}


def select_prefix(state_dict: Mapping[str, Any], prefix: str) -> dict:
  """Keep only the keys starting with ``prefix`` (e.g. ``ema_model.`` of an ema_pytorch state), prefix removed."""
  out = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
  if not out:
    raise StateDictMismatchError(hint=f"no key starts with {prefix!r}; first keys: "
                                 f"{', '.join(list(state_dict)[:5]) or '(none)'}")
  return out


def _to_numpy(v, key: str, changes: dict) -> np.ndarray | None:
  """Array/tensor -> numpy float32; records non-float32 source dtypes; ``None`` for non-floating values."""
  if type(v).__module__.startswith("torch"):
    v = v.detach().cpu()
    name = str(v.dtype).replace("torch.", "")
    if not v.is_floating_point():
      return None
    if name != "float32":
      changes[key] = name
      import torch  # pylint: disable=import-outside-toplevel
      v = v.to(torch.float32)
    return v.numpy()
  a = np.asarray(v)
  if a.dtype.kind != "f" and a.dtype.name != "bfloat16":
    return None
  if a.dtype != np.float32:
    changes[key] = a.dtype.name
    a = a.astype(np.float32)
  return a


def _pt_to_flax(a: np.ndarray, kind: str) -> np.ndarray:
  if kind == "conv":
    return np.ascontiguousarray(a.transpose(2, 3, 1, 0))
  if kind == "dense":
    return np.ascontiguousarray(a.T)
  if kind == "vec":
    return a.reshape(a.shape[1]).copy()
  return np.array(a, copy=True)


def _flax_to_pt(a: np.ndarray, kind: str) -> np.ndarray:
  if kind == "conv":
    return np.ascontiguousarray(a.transpose(3, 2, 0, 1))
  if kind == "dense":
    return np.ascontiguousarray(a.T)
  if kind == "vec":
    return a.reshape(1, a.shape[0], 1, 1).copy()
  return np.array(a, copy=True)


@dataclasses.dataclass
class Converted:
  """Result of :func:`convert_state_dict`."""

  params: dict  # nested lliejax params (numpy float32)
  model: dict  # architecture fields (img_channel, width, ...)
  dtype_changes: dict  # {key: original dtype} for tensors converted to float32
  num_params: int


def convert_state_dict(state_dict: Mapping[str, Any], model=None, *, source: str | None = None,
                       consume: bool = False) -> Converted:
  """Official ConditionalNAFNet ``state_dict`` -> lliejax params, with strict checks.

  Args:
    state_dict: ``{key: tensor or array}`` (a ``module.`` prefix is stripped). Non-float32 floating tensors
      (float16, bfloat16, float64) are converted to float32 and reported in ``dtype_changes``.
    model: the architecture (``config.model`` / mapping / ConditionalNAFNet). ``None`` infers it from the keys.
    source: a name for error messages (the file path).
    consume: drop entries from ``state_dict`` (which must then be a mutable dict) as they are converted, to
      keep peak memory at about one copy of the weights.

  Raises:
    StateDictMismatchError: listing every missing, unexpected and mis-shaped (or non-floating) key at once.
  """
  sd = strip_prefix(state_dict)
  inferred = _try_infer(sd)
  if model is None:
    if inferred is None:
      infer_model_config(sd)  # raises the descriptive error
    model = inferred
  model = model_config_dict(model)
  spec = _param_spec(model)
  expected = {e.key: e for e in spec}
  missing = [k for k in expected if k not in sd]
  unexpected = [k for k in sd if k not in expected]
  mismatched = []
  for k, e in expected.items():
    if k not in sd:
      continue
    v = sd[k]
    shape = _shape_of(v)
    dtype = str(getattr(v, "dtype", type(v).__name__)).replace("torch.", "")
    if not hasattr(v, "shape"):
      mismatched.append((k, f"a {type(v).__name__}", f"a float tensor of shape {e.shape}"))
    elif shape != e.shape:
      mismatched.append((k, shape, e.shape))
    elif not any(s in dtype for s in ("float", "half", "double")):
      mismatched.append((k, f"dtype {dtype}", "a floating dtype"))
  if missing or unexpected or mismatched:
    hint = None
    if any(k.startswith("ema_model.") for k in unexpected):
      hint = "this looks like an ema_pytorch EMA state; select the EMA weights with key_prefix='ema_model.'"
    raise StateDictMismatchError(missing, unexpected, mismatched, model=model, inferred=inferred, source=source,
                                 hint=hint)
  params: dict = {}
  changes: dict = {}
  for e in spec:
    v = sd.pop(e.key) if consume else sd[e.key]
    if consume and isinstance(state_dict, dict):
      state_dict.pop(e.key, None)
      state_dict.pop("module." + e.key, None)
    a = _to_numpy(v, e.key, changes)
    del v
    node = params
    for p in e.path[:-1]:
      node = node.setdefault(p, {})
    node[e.path[-1]] = _pt_to_flax(a, e.kind)
    del a
  n = sum(int(np.prod(e.shape)) for e in spec)
  return Converted(params=params, model=model, dtype_changes=changes, num_params=n)


def state_dict_to_params(state_dict: Mapping[str, Any], model=None) -> dict:
  """Official ``state_dict`` -> nested lliejax params (numpy float32). See :func:`convert_state_dict`."""
  return convert_state_dict(state_dict, model).params


def _flatten(tree, prefix=()) -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, Mapping):
      out.update(_flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


_FLAX_BLOCK_RE = re.compile(r"^(encoders|decoders)_(\d+)_(\d+)$")


def infer_model_config_from_params(params: Mapping[str, Any]) -> dict:
  """Architecture of a lliejax ConditionalNAFNet params tree (the inverse naming of :func:`infer_model_config`)."""
  if "intro" not in params and isinstance(params.get("params"), Mapping):
    params = params["params"]  # a {'params': ...} variables dict
  try:
    intro, ending = params["intro"]["kernel"], params["ending"]["kernel"]
  except (KeyError, TypeError) as e:
    raise StateDictMismatchError(missing=["intro/kernel"] if "intro" not in params else ["ending/kernel"],
                                 hint="not ConditionalNAFNet params") from e
  enc: dict[int, set] = collections.defaultdict(set)
  dec: dict[int, set] = collections.defaultdict(set)
  mid, downs, ups = set(), set(), set()
  for name in params:
    if (mt := _FLAX_BLOCK_RE.match(name)):
      (enc if mt.group(1) == "encoders" else dec)[int(mt.group(2))].add(int(mt.group(3)))
    elif (mt := re.match(r"^middle_blks_(\d+)$", name)):
      mid.add(int(mt.group(1)))
    elif (mt := re.match(r"^downs_(\d+)$", name)):
      downs.add(int(mt.group(1)))
    elif (mt := re.match(r"^ups_(\d+)_0$", name)):
      ups.add(int(mt.group(1)))
  n_enc = max(downs | set(enc), default=-1) + 1
  n_dec = max(ups | set(dec), default=-1) + 1
  return {"img_channel": int(np.shape(ending)[-1]), "width": int(np.shape(intro)[-1]),
          "enc_blk_nums": [len(enc.get(i, ())) for i in range(n_enc)], "middle_blk_num": len(mid),
          "dec_blk_nums": [len(dec.get(i, ())) for i in range(n_dec)]}


def params_to_state_dict(params: Mapping[str, Any], model=None, *, as_torch: bool = False,
                         source: str | None = None) -> collections.OrderedDict:
  """lliejax params -> official ``state_dict`` (official key names, order and shapes).

  Args:
    params: the network params (``variables['params']``; a ``{'params': ...}`` wrapper is accepted).
    model: architecture to validate against; ``None`` infers it from the param names.
    as_torch: return ``torch.Tensor`` values (imports torch) instead of numpy arrays.

  Raises:
    StateDictMismatchError: listing every missing, unexpected and mis-shaped param path.
  """
  if "params" in params and "intro" not in params:
    params = params["params"]
  inferred = infer_model_config_from_params(params)
  model = model_config_dict(model if model is not None else inferred)
  spec = _param_spec(model)
  flat = _flatten(params)
  expected = {e.path: e for e in spec}
  fmt = "/".join
  missing = [fmt(p) for p in expected if p not in flat]
  unexpected = [fmt(p) for p in flat if p not in expected]
  mismatched = [(fmt(p), _shape_of(flat[p]), e.flax_shape) for p, e in expected.items()
                if p in flat and _shape_of(flat[p]) != e.flax_shape]
  if missing or unexpected or mismatched:
    raise StateDictMismatchError(missing, unexpected, mismatched, model=model, inferred=inferred, source=source)
  out = collections.OrderedDict()
  changes: dict = {}
  for e in spec:
    a = _to_numpy(np.asarray(flat[e.path]), fmt(e.path), changes)
    out[e.key] = _flax_to_pt(a, e.kind)
  if as_torch:
    import torch  # pylint: disable=import-outside-toplevel
    out = collections.OrderedDict((k, torch.from_numpy(v)) for k, v in out.items())
  return out


# ------------------------------------------------------------------------------------------------ .pth files
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
  """Explain a ``weights_only`` refusal: an arbitrary pickled object, or bytes that are no checkpoint at all."""
  text = str(e)
  mt = re.search(r"WeightsUnpickler error:\s*(.+?)(?:\. Please use|\n\n|$)", text, re.S)
  detail = " ".join(mt.group(1).split()) if mt else (text.strip().splitlines() or [type(e).__name__])[0]
  if "Unsupported global" in text:
    return (f"{path}: not a plain state_dict: it pickles objects other than tensors ({detail}); "
            "torch.load(weights_only=True) refuses them and lliejax never unpickles arbitrary objects. "
            "Re-save only the tensors: torch.save(model.state_dict(), path)")
  return (f"{path}: cannot read as a PyTorch checkpoint (corrupt file, or not written by torch.save?): "
          f"torch.load(weights_only=True) failed: {detail}")


def load_torch_state_dict(path: str, *, key_prefix: str | None = None, mmap: bool = False) -> dict:
  """Read a ``.pth`` safely (``torch.load(..., map_location='cpu', weights_only=True)``).

  ``mmap=True`` memory-maps the file (zip format; falls back to a normal read for the legacy format). The
  default normal read gives every tensor its own storage, so :func:`convert_state_dict` with ``consume=True``
  frees each one as it is converted (peak about one copy of the weights: ~1.5 GB for the 288M model).

  Returns ``{key: torch.Tensor}`` (``module.`` stripped; with ``key_prefix`` only keys under it, prefix
  removed). Containers are unwrapped only when they are plain dicts of tensors (see :data:`CONTAINER_KEYS`).

  Raises:
    CheckpointFormatError: naming the file, for a missing/empty/truncated/corrupt file, a pickle that
      ``weights_only`` refuses (an arbitrary object), or a dict whose values are not tensors.
  """
  import pickle  # pylint: disable=import-outside-toplevel

  import torch  # pylint: disable=import-outside-toplevel
  if not os.path.isfile(path):
    raise CheckpointFormatError(f"{path}: no such file")
  if os.path.getsize(path) == 0:
    raise CheckpointFormatError(f"{path}: the file is empty")
  obj, loaded, errors = None, False, []
  for use_mmap in ((True, False) if mmap else (False,)):
    try:
      obj = torch.load(path, map_location="cpu", weights_only=True, mmap=use_mmap)
      loaded = True
      break
    except pickle.UnpicklingError as e:
      raise CheckpointFormatError(_unpickling_message(path, e)) from e
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, AttributeError, IndexError) as e:
      errors.append(e)  # with mmap: e.g. the legacy (non-zip) format cannot be memory-mapped; retry without
  if not loaded:
    e = errors[-1]
    raise CheckpointFormatError(f"{path}: cannot read as a PyTorch checkpoint (corrupt or truncated file?): "
                                f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"
                                ) from e
  sd = _unwrap(obj, path)
  if key_prefix:
    sd = select_prefix(sd, key_prefix)
  return strip_prefix(sd)


def save_torch_state_dict(state_dict: Mapping[str, Any], path: str, *, overwrite: bool = False) -> str:
  """``torch.save`` a ``{key: array or tensor}`` dict (numpy values become tensors), atomically."""
  import torch  # pylint: disable=import-outside-toplevel
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.exists(path) and not overwrite:
    raise FileExistsError(f"{path} already exists; pass overwrite=True (--overwrite) to replace it")
  if os.path.isdir(path):
    raise IsADirectoryError(f"{path} is a directory, expected a .pth file path")
  sd = collections.OrderedDict(
      (k, v if type(v).__module__.startswith("torch") else torch.from_numpy(np.ascontiguousarray(v)))
      for k, v in state_dict.items())
  os.makedirs(os.path.dirname(path), exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".lliejax-", suffix=".pth.tmp", dir=os.path.dirname(path))
  os.close(fd)
  try:
    torch.save(sd, tmp)
    os.replace(tmp, path)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return path


def load_torch_checkpoint(path: str, model=None, *, key_prefix: str | None = None) -> Converted:
  """Read an official ``.pth`` and convert it (strict); ``model=None`` infers the architecture."""
  sd = load_torch_state_dict(path, key_prefix=key_prefix)
  return convert_state_dict(sd, model, source=path, consume=True)


def export_to_torch(export_dir: str, out_path: str, *, overwrite: bool = False) -> tuple[str, int]:
  """A lliejax export directory -> official ``.pth``; returns ``(path, parameter count)``."""
  from lliejax import checkpoint  # pylint: disable=import-outside-toplevel
  params, info = checkpoint.load_exported(export_dir)
  model = info.get("model") or None
  if model is not None and not all(k in model for k in MODEL_KEYS):
    model = None
  sd = params_to_state_dict(params, model, source=export_dir)
  save_torch_state_dict(sd, out_path, overwrite=overwrite)
  return out_path, sum(int(v.size) for v in sd.values())


# ------------------------------------------------------------------------------------------------ CLI
_DEFAULT_CONFIG = "entropy_sde:lolv1"


def _load_config(spec: str):
  from lliejax.config_utils import load_config  # pylint: disable=import-outside-toplevel
  return load_config(spec)


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
      prog="lliejax-convert",
      description="Convert official Refusion / Entropy-SDE ConditionalNAFNet PyTorch checkpoints (.pth "
                  "state_dicts, online or EMA) into lliejax export directories, and back with --to-torch. "
                  "Needs PyTorch: pip install 'lliejax[torch]'.",
      formatter_class=argparse.RawDescriptionHelpFormatter,
      epilog="examples:\n"
             "  lliejax-convert lolv1.pth exports/lolv1 --config configs/entropy_sde.py:lolv1\n"
             "  lliejax-convert lastest_EMA.pth exports/ema            # architecture inferred from the keys\n"
             "  lliejax-convert --to-torch exports/lolv1 lolv1_from_jax.pth\n\n"
             "The export is what lliejax-enhance / lliejax-eval load (lliejax.checkpoint.load_exported).")
  p.add_argument("src", help="input: an official .pth state_dict (default), or an export directory with "
                             "--to-torch")
  p.add_argument("dst", help="output: an export directory (default), or a .pth file with --to-torch")
  p.add_argument("--to-torch", action="store_true",
                 help="reverse direction: read the lliejax export directory SRC and write the official "
                      "state_dict .pth DST (official key names, order and shapes, float32)")
  p.add_argument("--config", default=None, metavar="PATH[:ARG]",
                 help="config whose `model` section the checkpoint must match and whose `sde` section is "
                      "stored in the export, e.g. configs/entropy_sde.py:lolv1 (or entropy_sde:lolv1 for the "
                      "packaged copy). Default: infer the architecture from the keys and take the sde "
                      f"section of {_DEFAULT_CONFIG}")
  p.add_argument("--key-prefix", default=None, metavar="PREFIX",
                 help="only use keys starting with PREFIX (removed), e.g. 'ema_model.' for a whole "
                      "ema_pytorch EMA state. A 'module.' prefix is always stripped")
  p.add_argument("--overwrite", action="store_true", help="replace an existing output (an existing export "
                                                          "directory / .pth file)")
  return p


def run(argv: Sequence[str] | None = None) -> int:
  """Entry point of ``lliejax-convert``; returns the exit code (errors print one message, exit 1)."""
  args = _parser().parse_args(argv)
  try:
    if args.to_torch:
      from lliejax import checkpoint  # pylint: disable=import-outside-toplevel
      if not checkpoint.is_export_dir(args.src):
        raise ConversionError(f"{args.src} is not a lliejax export directory "
                              f"(no {checkpoint.EXPORT_META})")
      out, n = export_to_torch(args.src, args.dst, overwrite=args.overwrite)
      print(f"wrote {out}: {n:,} parameters (official ConditionalNAFNet state_dict, float32)")
      return 0
    return _to_jax(args)
  except (ConversionError, FileExistsError, FileNotFoundError, IsADirectoryError) as e:
    print(f"lliejax-convert: error: {e}", file=sys.stderr)
    return 1


def _to_jax(args) -> int:
  from lliejax import checkpoint  # pylint: disable=import-outside-toplevel
  if os.path.isdir(args.src):
    hint = " (it is a lliejax export: did you mean --to-torch?)" if checkpoint.is_export_dir(args.src) else ""
    raise ConversionError(f"{args.src} is a directory, expected a .pth file{hint}")
  dst = os.path.abspath(os.path.expanduser(args.dst))
  if os.path.exists(dst) and not args.overwrite:  # fail before the (slow) read
    raise FileExistsError(f"export directory {dst} already exists; pass --overwrite to replace it")
  cfg = _load_config(args.config or _DEFAULT_CONFIG)
  result = load_torch_checkpoint(args.src, cfg.model if args.config else None, key_prefix=args.key_prefix)
  model = cfg.model.to_dict() if hasattr(cfg.model, "to_dict") else dict(cfg.model)
  if not args.config:
    model.update(result.model)  # inferred architecture, other model fields (dtype, remat) from the default
    print(f"architecture inferred from the keys: {format_model_config(result.model)}")
    print(f"note: no --config given; storing the sde section of {_DEFAULT_CONFIG}: "
          f"{dict(cfg.sde.to_dict()) if hasattr(cfg.sde, 'to_dict') else dict(cfg.sde)}")
  if result.dtype_changes:
    by_dtype = collections.Counter(result.dtype_changes.values())
    summary = ", ".join(f"{n} {d}" for d, n in sorted(by_dtype.items()))
    print(f"converted to float32: {len(result.dtype_changes)} tensors ({summary})")
  else:
    print("all tensors were float32 (no dtype conversion)")
  checkpoint.export_params(dst, result.params, model=model, sde=cfg.sde, overwrite=args.overwrite,
                           source=os.path.abspath(args.src), source_format="pytorch-state-dict",
                           config=args.config, key_prefix=args.key_prefix,
                           dtype_changes=dict(collections.Counter(result.dtype_changes.values())))
  print(f"wrote {dst}: {result.num_params:,} parameters ({format_model_config(result.model)})")
  return 0


def main(argv: Iterable[str] | None = None) -> None:
  sys.exit(run(argv))


if __name__ == "__main__":
  main()
