"""The key maps of AnlightenDiff's networks: official ``state_dict`` s <-> lliejax params, both directions.

Two maps:

* :data:`UNET_KEYMAP` (:class:`UNetKeyMap`): one network, ``Unet`` (denoiser, FS or TS), ``Unet_cond`` (encoder) or
  ``Unet_he`` (TS refiner) of allanchan339/AnlightenDiff (``model.py``, ``cond.py``), as a bare ``state_dict``
  (no prefix) <-> the params of :class:`lliejax.models.anlightendiff_unet.Unet` / ``UnetCond`` / ``UnetHE``. The
  three share one key scheme; ``Unet_he`` and the TS ``Unet`` even have identical keys and shapes, so a bare
  state_dict does not say which network it is (the caller knows).
* :data:`KEYMAP` (:class:`AnlightenDiffKeyMap`): a whole Lightning checkpoint's ``state_dict`` (``FS_final.ckpt``,
  ``twostep_final.ckpt``) <-> ``{'unet': ..., 'encoder': ..., 'he': ...}`` (``he`` for TS only), by the prefixes
  of :data:`PREFIXES`:

  ==========  =======================  ==============================================================
  network     FS prefix                TS prefix
  ==========  =======================  ==============================================================
  ``unet``    ``model.unet.``          ``model.unet.``
  ``encoder`` ``encoder.``             ``encoder.model.`` (and its copy ``histroEncoder.encoder.model.``)
  ``he``      (none)                   ``histroEncoder.model.``
  ==========  =======================  ==============================================================

  The TS ``LitHE`` registers the same encoder object again, so ``histroEncoder.encoder.model.*`` duplicates
  ``encoder.model.*``: on import it is optional and must equal the encoder's weights; export writes it.
  The 14 schedule buffers ``model.<name>`` (:data:`BUFFER_NAMES`) and the metric networks created at run time
  (``lpips.*``, ``loss_fn_alex.*``) are set aside (:func:`split_checkpoint` returns the buffers); every other key
  must belong to a network, else :class:`~lliejax.interop.keymap.StateDictMismatchError` names all the leftover,
  missing and mis-shaped keys at once.

:func:`lightning_checkpoint` writes the other direction as a whole Lightning ``.ckpt`` dict (``lliejax convert
--to-torch EXPORT OUT.ckpt``): every network, the TS encoder copy and the 14 buffers, so that the official
``LitDiffusion`` accepts it with ``load_state_dict(strict=True)``. The metric networks are **not** written: the
official ``LitDiffusion`` creates ``self.lpips`` in ``on_train_start`` (and deletes it in ``on_train_end``) and
``self.loss_fn_alex`` in ``on_validation_start`` / ``on_test_start``, so a freshly constructed module -- which is
what every official loader fills (``LitDiffusion.load_from_checkpoint`` in ``train.py``, ``test.py``,
``gradio_demo.py``; all with ``strict=False``) -- has neither, and a strict load would reject their keys. They are
torchmetrics' pretrained LPIPS networks, not part of the method.

Per-network key <-> param path (the rule of :mod:`lliejax.interop.keymap`) and layout:

==================================================  ===============================================  ===========
PyTorch key                                         lliejax param path                               layout
==================================================  ===============================================  ===========
``mlp.{0,2}.weight``, ``<blk>.mlp.1.weight``        ``mlp_{0,2}/kernel``, ``<blk>/mlp_1/kernel``     Linear
``<conv>.weight_v`` ``(O, I, k, k)``                ``<conv>/weight_v`` ``(k, k, I, O)``             Conv
``<conv>.weight_g`` ``(O, 1, 1, 1)``                ``<conv>/weight_g`` ``(1, 1, 1, O)``             Conv
``ups.j.2.conv.0.weight`` ``(C, C, 4, 4)``          ``ups_j_2/conv_0/kernel`` ``(4, 4, out, in)``    Conv
``*.bias``                                          ``*/bias``                                       unchanged
==================================================  ===============================================  ===========

with ``<conv>`` = ``<blk>.block{1,2}.block.1``, ``<blk>.res_conv``, ``downs.i.2.conv.1``, ``final_conv.0.block.1``,
``final_conv.1`` and ``<blk>`` = ``downs.i.{0,1}``, ``ups.j.{0,1}``, ``mid_block{1,2}``. The ConvTranspose2d weight
``(in, out, k, k)`` takes the Conv permutation, giving the ``(k, k, out, in)`` layout of
``flax.linen.ConvTranspose(transpose_kernel=True)`` (see
:func:`lliejax.models.anlightendiff_unet.conv_transpose_torch`).

Architectures: :class:`UNetKeyMap` ``in_dim, unet_dim, unet_outdim, dim_mults, stronger_cond`` (the module
attributes; a module or config without ``stronger_cond`` means False); :class:`AnlightenDiffKeyMap`
``two_step, in_dim, cond_in_dim, unet_dim, unet_outdim, dim_mults, stronger_cond`` (``two_step``: the TS layout
with the HE refiner; the encoder's ``cond_on_res`` and the refiner's ``on_res`` change no key).
"""
from __future__ import annotations

import collections
import re
from typing import Any, Mapping

import numpy as np

from lliejax.interop.keymap import (Converted, Entry, KeyMap, StateDictMismatchError, compare_keys, flatten,
                                    path_to_key, shape_of, strip_prefix, to_float32, torch_shape)

#: The Lightning prefix of each network, per layout (``fs``: ``FS/``, ``ts``: ``TS/``).
PREFIXES = {"fs": {"unet": "model.unet.", "encoder": "encoder."},
            "ts": {"unet": "model.unet.", "encoder": "encoder.model.", "he": "histroEncoder.model."}}
#: The TS copy of the encoder (``LitHE.encoder`` is the same module as ``LitDiffusion.encoder``).
TS_ENCODER_COPY = "histroEncoder.encoder.model."
#: The diffusion buffers of ``EnlightDiffusion`` (under ``model.``), identical names in FS and TS.
BUFFER_NAMES = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                "posterior_mean_coef1", "posterior_mean_coef2", "extra_term_coef1", "extra_term_coef2")
BUFFER_PREFIX = "model."
#: The PyTorch Lightning release :func:`lightning_checkpoint` records (the official code needs 1.x:
#: ``Trainer.from_argparse_args``, ``validation_epoch_end``).
LIGHTNING_VERSION = "1.9.5"
#: Metric networks a Lightning checkpoint may hold (torchmetrics LPIPS-VGG / -Alex), not part of the method.
IGNORED_PREFIXES = ("lpips.", "loss_fn_alex.")
_DOWN_RE = re.compile(r"^downs\.(\d+)\.0\.block1\.block\.1\.weight_v$")
_CONV_LEAVES = ("kernel", "weight_v", "weight_g")


def _params_shapes_as_torch(params: Mapping[str, Any]) -> dict[str, tuple]:
  """``{official key: PyTorch shape}`` of a lliejax params tree (weight-norm ``g``/``v`` take the conv layout)."""
  if isinstance(params.get("params"), Mapping) and len(params) == 1:
    params = params["params"]
  shapes = {}
  for path, v in flatten(params).items():
    shape = shape_of(v)
    if path[-1] in _CONV_LEAVES and len(shape) == 4:
      kind = "conv"
    elif path[-1] == "kernel" and len(shape) == 2:
      kind = "dense"
    else:
      kind = "bias"
    shapes[path_to_key(path)] = torch_shape(shape, kind)
  return shapes


class UNetKeyMap(KeyMap):
  """One AnlightenDiff network (``Unet``, ``Unet_cond`` or ``Unet_he``) as a bare ``state_dict``."""

  network = "AnlightenDiff UNet"
  arch_fields = ("in_dim", "unet_dim", "unet_outdim", "dim_mults", "stronger_cond")

  def arch(self, model) -> dict:
    """As :meth:`KeyMap.arch`; a module / config without ``stronger_cond`` (``UnetCond``, ``UnetHE``) means 0."""
    if model is not None and not isinstance(model, Mapping) and not hasattr(model, "to_dict"):
      model = {k: getattr(model, k, 0 if k == "stronger_cond" else None) for k in self.arch_fields}
      model = {k: v for k, v in model.items() if v is not None}
    elif model is not None and "stronger_cond" not in model:
      model = dict(model.to_dict() if hasattr(model, "to_dict") else model, stronger_cond=0)
    return super().arch(model)

  def spec(self, arch: Mapping[str, Any]) -> list[Entry]:
    """Every parameter in the order of the official ``state_dict`` (``downs``, ``ups``, middle, head)."""
    a = self.arch(arch)
    d, mults = a["unet_dim"], a["dim_mults"]
    dims = [d * m for m in mults]
    levels = len(dims)
    out: list[Entry] = [Entry("mlp.0.weight", (4 * d, d), "dense"), Entry("mlp.0.bias", (4 * d,), "bias"),
                        Entry("mlp.2.weight", (d, 4 * d), "dense"), Entry("mlp.2.bias", (d,), "bias")]

    def wn_conv(key, cout, cin, k):
      out.extend([Entry(f"{key}.bias", (cout,), "bias"), Entry(f"{key}.weight_g", (cout, 1, 1, 1), "conv"),
                  Entry(f"{key}.weight_v", (cout, cin, k, k), "conv")])

    def resnet(key, cin, cout):
      out.extend([Entry(f"{key}.mlp.1.weight", (cout, d), "dense"), Entry(f"{key}.mlp.1.bias", (cout,), "bias")])
      wn_conv(f"{key}.block1.block.1", cout, cin, 3)
      wn_conv(f"{key}.block2.block.1", cout, cout, 3)
      if cin != cout:
        wn_conv(f"{key}.res_conv", cout, cin, 1)

    cin = a["in_dim"]
    for i, c in enumerate(dims):
      resnet(f"downs.{i}.0", cin, c)
      resnet(f"downs.{i}.1", 2 * c if a["stronger_cond"] else c, c)
      if i < levels - 1:
        wn_conv(f"downs.{i}.2.conv.1", c, c, 3)
      cin = c
    for j in range(levels - 1):
      c = dims[levels - 2 - j]
      resnet(f"ups.{j}.0", 2 * dims[levels - 1 - j], c)
      resnet(f"ups.{j}.1", c, c)
      out.extend([Entry(f"ups.{j}.2.conv.0.weight", (c, c, 4, 4), "conv"),
                  Entry(f"ups.{j}.2.conv.0.bias", (c,), "bias")])
    resnet("mid_block1", dims[-1], dims[-1])
    resnet("mid_block2", dims[-1], dims[-1])
    wn_conv("final_conv.0.block.1", d, d, 3)
    wn_conv("final_conv.1", a["unet_outdim"], d, 1)
    return out

  def infer(self, shapes: Mapping[str, tuple]) -> dict:
    """Widths from the time MLP, the first conv of every down level and the head; ``stronger_cond`` from the input
    width of ``downs.0.1``; depth from the ``downs`` indices."""
    need = ("mlp.0.weight", "downs.0.0.block1.block.1.weight_v", "downs.0.1.block1.block.1.weight_v",
            "final_conv.1.weight_v")
    missing = [k for k in need if k not in shapes]
    if missing:
      keys = list(shapes)
      raise StateDictMismatchError(missing=missing, network=self.network,
                                   hint="not an AnlightenDiff Unet / Unet_cond / Unet_he state_dict (without "
                                        f"prefix)? first keys: {', '.join(keys[:5]) or '(none)'}")
    bad = [(k, tuple(shapes[k]), "4 dims") for k in need[1:] if len(shapes[k]) != 4]
    if len(shapes["mlp.0.weight"]) != 2:
      bad.append(("mlp.0.weight", tuple(shapes["mlp.0.weight"]), "(4 unet_dim, unet_dim)"))
    if bad:
      raise StateDictMismatchError(mismatched=bad, network=self.network)
    dim = int(shapes["mlp.0.weight"][1])
    levels = sorted(int(m.group(1)) for k in shapes if (m := _DOWN_RE.match(k)))
    if levels != list(range(len(levels))) or dim < 1:
      raise StateDictMismatchError(network=self.network, hint=f"down levels {levels} are not 0..n-1")
    mults = [int(shapes[f"downs.{i}.0.block1.block.1.weight_v"][0]) // dim for i in levels]
    first = int(shapes["downs.0.0.block1.block.1.weight_v"][0])
    stronger = int(int(shapes["downs.0.1.block1.block.1.weight_v"][1]) == 2 * first)
    return {"in_dim": int(shapes["downs.0.0.block1.block.1.weight_v"][1]), "unet_dim": dim,
            "unet_outdim": int(shapes["final_conv.1.weight_v"][0]), "dim_mults": mults, "stronger_cond": stronger}

  def infer_params(self, params: Mapping[str, Any]) -> dict:
    """As :meth:`KeyMap.infer_params`, with the weight-norm ``weight_g``/``weight_v`` in the conv layout."""
    return self.infer(_params_shapes_as_torch(params))


UNET_KEYMAP = UNetKeyMap()


def split_checkpoint(state_dict: Mapping[str, Any]) -> tuple[dict, dict, list[str]]:
  """``(network keys, schedule buffers, ignored keys)`` of a Lightning ``state_dict``.

  Removes a ``module.`` prefix; ``buffers`` maps the bare names of :data:`BUFFER_NAMES` (``betas`` ...) to their
  values; ``ignored`` lists the keys under :data:`IGNORED_PREFIXES`. Everything else is in the first dict.
  """
  sd = strip_prefix(state_dict)
  buffers = {n: sd.pop(BUFFER_PREFIX + n) for n in BUFFER_NAMES if BUFFER_PREFIX + n in sd}
  ignored = [k for k in sd if isinstance(k, str) and k.startswith(IGNORED_PREFIXES)]
  for k in ignored:
    del sd[k]
  return sd, buffers, ignored


def _layout(two_step) -> str:
  return "ts" if two_step else "fs"


class AnlightenDiffKeyMap(KeyMap):
  """A whole AnlightenDiff Lightning ``state_dict`` <-> ``{'unet', 'encoder'[, 'he']}`` params (module docstring)."""

  network = "AnlightenDiff"
  arch_fields = ("two_step", "in_dim", "cond_in_dim", "unet_dim", "unet_outdim", "dim_mults", "stronger_cond")

  def net_archs(self, arch) -> dict[str, dict]:
    """``{network: UNetKeyMap architecture}``: the encoder takes ``cond_in_dim`` inputs, the refiner ``in_dim``."""
    a = self.arch(arch)
    common = {"unet_dim": a["unet_dim"], "unet_outdim": a["unet_outdim"], "dim_mults": a["dim_mults"]}
    out = {"unet": dict(common, in_dim=a["in_dim"], stronger_cond=a["stronger_cond"]),
           "encoder": dict(common, in_dim=a["cond_in_dim"], stronger_cond=0)}
    if a["two_step"]:
      out["he"] = dict(common, in_dim=a["in_dim"], stronger_cond=0)
    return out

  def spec(self, arch: Mapping[str, Any]) -> list[Entry]:
    """Every network parameter with its full key, in the Lightning order (the TS encoder copy excluded)."""
    return [Entry(key, e.shape, e.kind) for _, key, e in self._entries(arch)]

  def _entries(self, arch) -> list[tuple[str, str, Entry]]:
    """``(network, full key, per-network entry)`` for every parameter (the TS encoder copy excluded)."""
    prefixes = PREFIXES[_layout(self.arch(arch)["two_step"])]
    return [(net, prefixes[net] + e.key, e) for net, a in self.net_archs(arch).items() for e in UNET_KEYMAP.spec(a)]

  def param_shapes(self, arch) -> dict[tuple, tuple]:
    return {(net,) + e.path: e.flax_shape for net, _, e in self._entries(arch)}

  def infer(self, shapes: Mapping[str, tuple]) -> dict:
    """The layout from the prefixes (``encoder.model.`` -> TS), each network's widths from its keys."""
    keys = [k for k in shapes if isinstance(k, str)]
    two_step = int(any(k.startswith(PREFIXES["ts"]["encoder"]) for k in keys))
    prefixes = PREFIXES[_layout(two_step)]
    absent = [p for p in prefixes.values() if not any(k.startswith(p) for k in keys)]
    if absent:
      raise StateDictMismatchError(
          missing=[p + "*" for p in absent], network=self.network,
          hint="not an AnlightenDiff Lightning checkpoint (FS_final.ckpt / twostep_final.ckpt)? expected the "
               f"prefixes {', '.join(prefixes.values())}; first keys: {', '.join(keys[:5]) or '(none)'}")
    archs = {net: UNET_KEYMAP.infer({k[len(p):]: s for k, s in shapes.items() if k.startswith(p)})
             for net, p in prefixes.items()}
    return self._combine(archs, two_step)

  def _combine(self, archs: Mapping[str, dict], two_step: int) -> dict:
    u, e = archs["unet"], archs["encoder"]
    out = {"two_step": two_step, "in_dim": u["in_dim"], "cond_in_dim": e["in_dim"], "unet_dim": u["unet_dim"],
           "unet_outdim": u["unet_outdim"], "dim_mults": u["dim_mults"], "stronger_cond": u["stronger_cond"]}
    expected = self.net_archs(out)
    wrong = [(net, a, expected[net]) for net, a in archs.items() if UNET_KEYMAP.arch(a) != expected[net]]
    if wrong:
      detail = "; ".join(f"{net}: {UNET_KEYMAP.format_arch(a)} (expected {UNET_KEYMAP.format_arch(x)})"
                         for net, a, x in wrong)
      raise StateDictMismatchError(network=self.network, hint=f"the networks disagree on the shared config: {detail}")
    return out

  def infer_params(self, params: Mapping[str, Any]) -> dict:
    """The architecture of ``{'unet', 'encoder'[, 'he']}`` params (``he`` present = TS)."""
    if isinstance(params.get("params"), Mapping) and len(params) == 1:
      params = params["params"]
    nets = [n for n in ("unet", "encoder") if n not in params]
    if nets:
      raise StateDictMismatchError(missing=nets, unexpected=[k for k in params if k not in ("unet", "encoder", "he")],
                                   network=self.network, hint="expected params {'unet', 'encoder'[, 'he']}")
    archs = {net: UNET_KEYMAP.infer_params(params[net]) for net in ("unet", "encoder", "he") if net in params}
    return self._combine(archs, int("he" in params))

  def import_state_dict(self, state_dict: Mapping[str, Any], arch=None, *, source: str | None = None,
                        consume: bool = False) -> Converted:
    """A Lightning ``state_dict`` -> ``{'unet', 'encoder'[, 'he']}`` params, strictly.

    Buffers and metric networks are set aside (:func:`split_checkpoint`); the TS encoder copy is checked against
    the encoder (optional). Every other key must be a parameter of the architecture, else a
    :class:`StateDictMismatchError` lists all missing, unexpected (leftover) and mis-shaped keys with their prefixes.
    """
    sd, _, _ = split_checkpoint(state_dict)
    copy = {k: sd.pop(k) for k in list(sd) if isinstance(k, str) and k.startswith(TS_ENCODER_COPY)}
    shapes = {k: shape_of(v) for k, v in sd.items()}
    inferred = self._try_infer(shapes)
    if arch is None:
      arch = inferred if inferred is not None else self.infer(shapes)  # the latter raises the descriptive error
    arch = self.arch(arch)
    entries = self._entries(arch)
    missing, unexpected, mismatched = compare_keys(sd, shapes, [(key, e.shape) for _, key, e in entries])
    if copy:
      enc = PREFIXES["ts"]["encoder"]
      if not arch["two_step"]:
        unexpected.extend(copy)
      else:
        originals = {enc + k[len(TS_ENCODER_COPY):]: k for k in copy}
        missing.extend(TS_ENCODER_COPY + k[len(enc):] for _, k, _ in entries
                       if k.startswith(enc) and k not in originals)
        for orig, k in originals.items():
          if orig not in sd:
            unexpected.append(k)
          elif shape_of(copy[k]) != shapes[orig] or not np.array_equal(
              to_float32(copy[k], k, {}), to_float32(sd[orig], orig, {})):
            mismatched.append((k, "differs from " + orig, "an identical copy"))
    if missing or unexpected or mismatched:
      raise StateDictMismatchError(missing, unexpected, mismatched, network=self.network,
                                   expected=self.format_arch(arch), source=source,
                                   looks_like=self.format_arch(inferred) if inferred is not None else None)
    per_net: dict[str, dict] = collections.defaultdict(dict)
    for net, key, e in entries:
      per_net[net][e.key] = sd.pop(key) if consume else sd[key]
      if consume and isinstance(state_dict, dict):
        state_dict.pop(key, None)
        state_dict.pop("module." + key, None)
    params, changes, n = {}, {}, 0
    for net, a in self.net_archs(arch).items():
      conv = UNET_KEYMAP.import_state_dict(per_net.pop(net), a, source=source, consume=consume)
      params[net] = conv.params
      prefix = PREFIXES[_layout(arch["two_step"])][net]
      changes.update((prefix + k, v) for k, v in conv.dtype_changes.items())
      n += conv.num_params
    if consume and isinstance(state_dict, dict):
      state_dict.clear()
    return Converted(params=params, arch=arch, dtype_changes=changes, num_params=n)

  def export_params(self, params: Mapping[str, Any], arch=None, *, as_torch: bool = False,
                    source: str | None = None, buffers: Mapping[str, Any] | None = None) -> collections.OrderedDict:
    """``{'unet', 'encoder'[, 'he']}`` params -> the networks' part of the Lightning ``state_dict``.

    Official key names, order (``model.unet.``, ``encoder[.model].``, then TS ``histroEncoder.model.`` and the
    encoder copy ``histroEncoder.encoder.model.``) and shapes, float32. ``buffers`` (``{name: array}`` of
    :data:`BUFFER_NAMES`) are written first as ``model.<name>``, as ``state_dict()`` orders them; without them
    the official loaders (``load_from_checkpoint(..., strict=False)``) rebuild the buffers from the config.
    """
    if isinstance(params.get("params"), Mapping) and len(params) == 1:
      params = params["params"]
    arch = self.arch(arch if arch is not None else self.infer_params(params))
    layout = _layout(arch["two_step"])
    nets = self.net_archs(arch)
    missing = [n for n in nets if n not in params]
    unexpected = [n for n in params if n not in nets]
    if missing or unexpected:
      raise StateDictMismatchError(missing, unexpected, network=self.network, expected=self.format_arch(arch),
                                   source=source, hint="params must be {'unet', 'encoder'} (FS) or "
                                                       "{'unet', 'encoder', 'he'} (TS)")
    out = collections.OrderedDict()
    for name in BUFFER_NAMES if buffers is not None else ():
      if name in buffers:
        out[BUFFER_PREFIX + name] = np.asarray(buffers[name], np.float32)
    parts = {}
    errors = []
    for net, a in nets.items():
      try:
        parts[net] = UNET_KEYMAP.export_params(params[net], a, source=source)
      except StateDictMismatchError as e:
        errors.append((net, e))
    if errors:
      raise StateDictMismatchError([f"{n}/{k}" for n, e in errors for k in e.missing],
                                   [f"{n}/{k}" for n, e in errors for k in e.unexpected],
                                   [(f"{n}/{k}", g, x) for n, e in errors for k, g, x in e.mismatched],
                                   network=self.network, expected=self.format_arch(arch), source=source)
    for net, part in parts.items():
      out.update((PREFIXES[layout][net] + k, v) for k, v in part.items())
    if layout == "ts":
      out.update((TS_ENCODER_COPY + k, v.copy()) for k, v in parts["encoder"].items())
    if as_torch:
      import torch  # pylint: disable=import-outside-toplevel
      out = collections.OrderedDict((k, torch.from_numpy(v)) for k, v in out.items())
    return out


KEYMAP = AnlightenDiffKeyMap()


def export_networks(params: Mapping[str, Any], frozen: Mapping[str, Any] | None, arch) -> dict:
  """The networks of a lliejax export for the Lightning layout of ``arch``: ``params`` and the networks kept in
  ``frozen``, ``params`` first (TS stage exports hold the stage's network in ``params`` and the earlier stages'
  in ``frozen``, :mod:`lliejax.methods.anlightendiff`; the loss's LPIPS parameters, also in ``frozen`` during
  training, are never in an export's ``frozen`` and are ignored here).

  Raises:
    StateDictMismatchError: a network of the layout is in neither (e.g. the export of a TS stage before
      ``diffusion``, which has no denoiser yet).
  """
  if isinstance(params.get("params"), Mapping) and len(params) == 1:
    params = params["params"]
  names = list(KEYMAP.net_archs(arch))
  nets = {k: v for k, v in (frozen or {}).items() if k in names}
  nets.update({k: v for k, v in params.items() if k in names})
  missing = [n for n in names if n not in nets]
  if missing:
    held = ", ".join(sorted(set(params) | set(frozen or {}))) or "none"
    raise StateDictMismatchError(missing=missing, network=KEYMAP.network, expected=KEYMAP.format_arch(arch),
                                 hint=f"the export holds {held}; the official Lightning layout needs all of "
                                      f"{', '.join(names)} (export the TS 'diffusion' stage, whose export keeps the "
                                      "earlier stages' networks)")
  return {n: nets[n] for n in names}


def lightning_checkpoint(params: Mapping[str, Any], arch, *, timesteps: int, frozen: Mapping[str, Any] | None = None,
                         source: str | None = None, lightning_version: str = LIGHTNING_VERSION,
                         extra: Mapping | None = None) -> dict:
  """A PyTorch Lightning checkpoint dict of the official ``LitDiffusion`` (``FS_final.ckpt`` /
  ``twostep_final.ckpt`` layout) from lliejax params (and an export's ``frozen`` networks, :func:`export_networks`).

  ``state_dict``: the 14 buffers ``model.<name>`` of ``EnlightDiffusion(timesteps)`` as the official ``__init__``
  registers them (float64 arithmetic, float32 storage: :func:`lliejax.diffusion.anlightendiff.make_schedule`), then
  every network key in the official order, the TS encoder copy last (numpy float32; :meth:`torch.save` callers
  convert). No metric networks (module docstring). Beside it the keys Lightning 1.x writes and reads:
  ``epoch`` 0, ``global_step`` 0, ``pytorch-lightning_version``, empty ``callbacks`` / ``optimizer_states`` /
  ``lr_schedulers`` (a resumed ``trainer.fit(ckpt_path=...)`` then starts its optimiser afresh); no ``loops`` (whose
  absence Lightning reads as a pre-1.6 checkpoint, counting from ``epoch`` / ``global_step``; an empty one would
  not restore) and no ``hyper_parameters`` (the official loaders pass ``config`` themselves); ``extra`` is merged in
  (provenance).
  """
  from lliejax.diffusion import anlightendiff as ad  # pylint: disable=import-outside-toplevel
  arch = KEYMAP.arch(arch)
  nets = export_networks(params, frozen, arch)
  sd = KEYMAP.export_params(nets, arch, source=source, buffers=ad.make_schedule(int(timesteps)).buffers)
  ckpt = {"epoch": 0, "global_step": 0, "pytorch-lightning_version": lightning_version, "state_dict": sd,
          "callbacks": {}, "optimizer_states": [], "lr_schedulers": []}
  ckpt.update(extra or {})
  return ckpt
