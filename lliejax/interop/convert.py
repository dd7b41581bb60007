"""Official PyTorch checkpoints <-> lliejax exports (the ``lliejax convert`` command).

:func:`convert_checkpoint` reads a ``.pth`` (weights only) or Lightning ``.ckpt`` file, maps it with the key map of
the config's network (:data:`KEYMAPS`, by ``config.model.name``) and writes an export
(:func:`lliejax.checkpoint.export`) that ``lliejax enhance`` / ``lliejax eval`` load. Without a config, the
architecture is inferred from the keys and the other sections come from :data:`DEFAULT_CONFIG`.
:func:`export_to_torch` writes an export back as an official ``state_dict`` (key names, order and shapes), which
loads with ``load_state_dict(strict=True)`` in the official code. For AnlightenDiff the networks an export keeps in
``frozen`` (the earlier TS stages') are written with its params, and an output ending in ``.ckpt`` is a whole
Lightning checkpoint (:func:`lliejax.interop.anlightendiff.lightning_checkpoint`: the networks, the TS encoder copy
and the schedule buffers) that the official ``LitDiffusion`` loads with ``strict=True``.
"""
from __future__ import annotations

import collections
import os
from typing import Callable

from lliejax import checkpoint, config_utils, methods
from lliejax.interop import anlightendiff, keymap, nafnet, reddit, torch_io

#: ``config.model.name`` -> key map of that network.
KEYMAPS: dict[str, keymap.KeyMap] = {"conditional_nafnet": nafnet.KEYMAP, "sr3_unet": reddit.KEYMAP,
                                     "anlightendiff": anlightendiff.KEYMAP}
DEFAULT_CONFIG = "entropy_sde:lolv1"


def keymap_for(model_cfg) -> keymap.KeyMap:
  """The key map of ``config.model`` (raises a ``ConversionError`` naming the known networks)."""
  name = model_cfg.get("name")
  if name not in KEYMAPS:
    raise keymap.ConversionError(f"config.model.name={name!r} has no PyTorch key map; known: {', '.join(KEYMAPS)}")
  return KEYMAPS[name]


def convert_checkpoint(src: str, dst: str, *, config_spec: str | None = None, key_prefix: str | None = None,
                       overwrite: bool = False, log: Callable[[str], None] = print) -> str:
  """An official checkpoint file -> a lliejax export directory ``dst``; returns ``dst``.

  Args:
    src: a ``.pth``/``.pt`` state_dict or a Lightning ``.ckpt``.
    dst: the export directory (refused if it exists, unless ``overwrite``).
    config_spec: the config whose ``model`` section the checkpoint must match and which the export records
      (default: :data:`DEFAULT_CONFIG` with the architecture inferred from the keys).
    key_prefix: only keys under this prefix (removed), e.g. ``ema_model.`` of an ema_pytorch EMA state.
    log: where progress lines go.

  Raises:
    ConversionError (CheckpointFormatError, StateDictMismatchError), FileExistsError, FileNotFoundError.
  """
  if os.path.isdir(src):
    hint = " (it is a lliejax export: did you mean --to-torch?)" if checkpoint.is_export_dir(src) else ""
    raise keymap.ConversionError(f"{src} is a directory, expected a .pth or .ckpt file{hint}")
  dst = os.path.abspath(os.path.expanduser(dst))
  if os.path.exists(dst) and not overwrite:  # fail before the (slow) read
    raise FileExistsError(f"export directory {dst} already exists; pass --overwrite to replace it")
  config = config_utils.load_config(config_spec or DEFAULT_CONFIG)
  kmap = keymap_for(config.model)
  sd = torch_io.load_checkpoint_state_dict(src, key_prefix=key_prefix)
  result = kmap.import_state_dict(sd, config.model if config_spec else None, source=src, consume=True)
  if not config_spec:
    config.model.update(result.arch)
    log(f"architecture inferred from the keys: {kmap.format_arch(result.arch)}")
    log(f"note: no --config given; the other sections are those of {DEFAULT_CONFIG}")
  if result.dtype_changes:
    by_dtype = collections.Counter(result.dtype_changes.values())
    summary = ", ".join(f"{n} {d}" for d, n in sorted(by_dtype.items()))
    log(f"converted to float32: {len(result.dtype_changes)} tensors ({summary})")
  else:
    log("all tensors were float32 (no dtype conversion)")
  method = methods.get(config.method)
  checkpoint.export(dst, result.params, config=config, method=method.name, method_module=method.__module__,
                    overwrite=overwrite, source=os.path.abspath(src), source_format="pytorch-state-dict",
                    config_spec=config_spec, key_prefix=key_prefix,
                    dtype_changes=dict(collections.Counter(result.dtype_changes.values())))
  log(f"wrote {dst}: {result.num_params:,} parameters ({kmap.format_arch(result.arch)})")
  return dst


def export_to_torch(export_dir: str, out_path: str, *, overwrite: bool = False) -> tuple[str, int]:
  """A lliejax export directory -> official ``.pth`` (or, for AnlightenDiff, Lightning ``.ckpt``); returns
  ``(path, parameter count)`` (the networks' parameters; neither the TS encoder copy nor the buffers counted).

  ``.pth``: the networks' ``state_dict`` (official keys, order, shapes; float32). AnlightenDiff: the export's params
  and the networks in its ``frozen`` together (a TS ``diffusion``-stage export gives the whole
  ``twostep_final.ckpt`` layout), in the Lightning key layout; with a ``.ckpt`` path the checkpoint dict of
  :func:`lliejax.interop.anlightendiff.lightning_checkpoint` (buffers for the export's ``diffusion.timesteps``).

  Raises:
    ConversionError: ``export_dir`` is not an export, its network has no key map, ``.ckpt`` for a network other
      than AnlightenDiff's, or an AnlightenDiff export without all networks of its layout.
  """
  if not checkpoint.is_export_dir(export_dir):
    raise keymap.ConversionError(f"{export_dir} is not a lliejax export directory (no {checkpoint.EXPORT_META})")
  exp = checkpoint.load_export(export_dir)
  config = exp.config if exp.config is not None else methods.get(exp.method).legacy_config(exp.info)
  kmap = keymap_for(config.model)
  lightning = out_path.endswith(".ckpt")
  if kmap is not anlightendiff.KEYMAP:
    if lightning:
      raise keymap.ConversionError(f"{out_path}: a Lightning .ckpt is written for AnlightenDiff exports only (this "
                                   f"export's network is {config.model.get('name')!r}); use a .pth path")
    sd = kmap.export_params(exp.params, config.model, source=export_dir)
    torch_io.save_state_dict(sd, out_path, overwrite=overwrite)
    return out_path, sum(int(v.size) for v in sd.values())
  arch = kmap.arch(config.model)
  if lightning:
    ckpt = anlightendiff.lightning_checkpoint(
        exp.params, arch, timesteps=int(config.diffusion.timesteps), frozen=exp.frozen, source=export_dir,
        extra={"lliejax": {"export": os.path.abspath(export_dir), "method": exp.method,
                           "stage": config.get("objective", {}).get("stage")}})
    torch_io.save_torch(ckpt, out_path, overwrite=overwrite, state_dict_key="state_dict", kind=".ckpt")
    sd = ckpt["state_dict"]
  else:
    sd = kmap.export_params(anlightendiff.export_networks(exp.params, exp.frozen, arch), arch, source=export_dir)
    torch_io.save_state_dict(sd, out_path, overwrite=overwrite)
  buffers = {anlightendiff.BUFFER_PREFIX + n for n in anlightendiff.BUFFER_NAMES}
  return out_path, sum(int(v.size) for k, v in sd.items()
                       if k not in buffers and not k.startswith(anlightendiff.TS_ENCODER_COPY))


