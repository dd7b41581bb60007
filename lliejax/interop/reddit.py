"""The key map of ReDDiT's SR3 UNet (also GSAD's): official ``state_dict`` <-> lliejax params, both directions.

Official checkpoints (lgz-0713/ReDDiT ``model/model.py``: ``save_network``; the released ``*_gen.pth``, training's
``*_gen_ema.pth``; GSAD's teacher files have the same layout) are ``GaussianDiffusion.state_dict()``: the twelve
schedule buffers (:data:`lliejax.diffusion.reddit.BUFFER_NAMES`, float32 of length ``N``) followed by the UNet's
keys under ``denoise_fn.`` (optionally everything under ``module.`` from ``DataParallel``). This module accepts
that layout or a bare UNet ``state_dict``; the buffers are set aside (the official ``load_network`` skips them too)
and can be checked against a schedule with :func:`check_buffers`.

======================================================  =============================================  ==========
PyTorch key (under ``denoise_fn.``)                     lliejax param path                             layout
======================================================  =============================================  ==========
``noise_level_mlp.{1,3}.weight``                        ``noise_level_mlp_{1,3}/kernel``               Linear
``downs.0.weight``, ``<conv>.weight``                   ``downs_0/kernel``, ``<conv>/kernel``          Conv
``downs|ups.i.conv.weight`` (Down/Upsample)             ``downs_i|ups_i/conv/kernel``                  Conv
``<blk>.res_block.mlp.1.weight`` (dead)                 ``<blk>/res_block/mlp_1/kernel``               Linear
``<blk>.res_block.noise_func.noise_func.0.weight``      ``<blk>/res_block/noise_func/noise_func_0/..`` Linear
``<blk>.res_block.block{1,2}.block.0.weight`` (norm)    ``<blk>/res_block/block{1,2}/block_0/scale``   vector
``<blk>.res_block.block{1,2}.block.3.weight``           ``<blk>/res_block/block{1,2}/block_3/kernel``  Conv
``<blk>.res_block.res_conv.weight``                     ``<blk>/res_block/res_conv/kernel``            Conv 1x1
``<blk>.attn.norm.weight``, ``attn.{qkv,out}.weight``   ``<blk>/attn/norm/scale``, ``attn/qkv|out/..`` Conv 1x1
``final_conv.block.{0,3}.weight``                       ``final_conv/block_0/scale``, ``block_3/...``
``var_conv.{0,2,4}.weight`` (dead)                      ``var_conv_{0,2,4}/kernel``                    Conv
``*.bias``                                              ``*/bias``                                     unchanged
======================================================  =============================================  ==========

with ``<blk>`` = ``downs.i`` / ``mid.j`` / ``ups.i`` (``downs_i`` ... in lliejax). Every name follows the rule of
:mod:`lliejax.interop.keymap` except GroupNorm weights, which are Flax's ``scale``.

The architecture (``config.model`` of ``configs/reddit_teacher.py``) is ``in_channel, out_channel, inner_channel,
channel_mults, attn_res, res_blocks, norm_groups, image_size``. Weights fix all but three: ``norm_groups``
(inferred as 32, the only value any config uses) and ``attn_res`` / ``image_size``, of which the keys show only
the levels with attention; inference reports ``image_size=128`` and the matching ``attn_res``, the same network.
"""
from __future__ import annotations

import collections
import dataclasses
import re
from typing import Any, Mapping

import numpy as np

from lliejax.diffusion import reddit as reddit_diffusion
from lliejax.interop.keymap import (Converted, Entry, KeyMap, StateDictMismatchError, flatten, key_to_path,
                                    path_to_key, shape_of, to_float32, torch_shape)

#: Key prefix of the UNet inside ``GaussianDiffusion.state_dict()``.
DIFFUSION_PREFIX = "denoise_fn."
#: ``image_size`` reported by :meth:`SR3KeyMap.infer` (every released config).
INFERRED_IMAGE_SIZE = 128
_DOWN_RE = re.compile(r"^downs\.(\d+)\.")


@dataclasses.dataclass(frozen=True)
class NormEntry(Entry):
  """A GroupNorm parameter: ``weight`` maps to Flax's ``scale`` (not ``kernel``)."""

  @property
  def path(self) -> tuple[str, ...]:
    p = key_to_path(self.key)
    return p[:-1] + ("scale",) if p[-1] == "kernel" else p


def split_diffusion_state_dict(state_dict: Mapping[str, Any]) -> tuple[dict, dict]:
  """``(UNet state_dict, schedule buffers)`` of a ``GaussianDiffusion`` or bare UNet ``state_dict``.

  Removes a ``module.`` prefix (``DataParallel``) and the ``denoise_fn.`` prefix. Keys that are neither buffers
  nor under ``denoise_fn.`` (when that prefix is used) stay in the UNet part, so a strict import reports them.
  """
  sd = {}
  for k, v in state_dict.items():
    sd[k[len("module."):] if isinstance(k, str) and k.startswith("module.") else k] = v
  buffers = {k: sd.pop(k) for k in reddit_diffusion.BUFFER_NAMES if k in sd}
  if any(isinstance(k, str) and k.startswith(DIFFUSION_PREFIX) for k in sd):
    sd = {(k[len(DIFFUSION_PREFIX):] if k.startswith(DIFFUSION_PREFIX) else k): v for k, v in sd.items()}
  return sd, buffers


def check_buffers(buffers: Mapping[str, Any], sched: reddit_diffusion.Schedule, *, rtol: float = 1e-5) -> list[str]:
  """The names of ``buffers`` that differ from ``sched``'s (shape or value beyond ``rtol``); [] when all agree."""
  bad = []
  for name, v in buffers.items():
    a = to_float32(v, name, {})
    ref = sched.buffers[name]
    if a is None or a.shape != ref.shape or not np.allclose(a, ref, rtol=rtol, atol=1e-7):
      bad.append(name)
  return bad


class SR3KeyMap(KeyMap):
  """``UNet`` of ReDDiT's ``model/ddpm_modules/unet.py`` (module docstring)."""

  network = "SR3UNet"
  arch_fields = ("in_channel", "out_channel", "inner_channel", "channel_mults", "attn_res", "res_blocks",
                 "norm_groups", "image_size")

  def arch(self, model) -> dict:
    if model is not None and not isinstance(model, Mapping) and hasattr(model, "channel_mults") and \
        hasattr(model, "weight_init"):  # an SR3UNet module
      model = {k: getattr(model, k) for k in self.arch_fields}
    return super().arch(model)

  @staticmethod
  def attention_levels(arch: Mapping[str, Any]) -> list[bool]:
    """Per level, whether its blocks have attention (the nominal resolution rule of the official UNet)."""
    return [(arch["image_size"] // 2**i) in arch["attn_res"] for i in range(len(arch["channel_mults"]))]

  def spec(self, arch: Mapping[str, Any]) -> list[Entry]:
    a = self.arch(arch)
    c0, mults, nres = a["inner_channel"], a["channel_mults"], a["res_blocks"]
    attn = self.attention_levels(a)
    out: list[Entry] = [Entry("noise_level_mlp.1.weight", (4 * c0, c0), "dense"),
                        Entry("noise_level_mlp.1.bias", (4 * c0,), "bias"),
                        Entry("noise_level_mlp.3.weight", (c0, 4 * c0), "dense"),
                        Entry("noise_level_mlp.3.bias", (c0,), "bias")]

    def conv(key, cout, cin, k, bias=True):
      out.append(Entry(f"{key}.weight", (cout, cin, k, k), "conv"))
      if bias:
        out.append(Entry(f"{key}.bias", (cout,), "bias"))

    def norm(key, c):
      out.extend([NormEntry(f"{key}.weight", (c,), "bias"), NormEntry(f"{key}.bias", (c,), "bias")])

    def stage(key, cin, cout, with_attn):
      r = f"{key}.res_block"
      out.extend([Entry(f"{r}.mlp.1.weight", (cout, c0), "dense"), Entry(f"{r}.mlp.1.bias", (cout,), "bias"),
                  Entry(f"{r}.noise_func.noise_func.0.weight", (cout, c0), "dense"),
                  Entry(f"{r}.noise_func.noise_func.0.bias", (cout,), "bias")])
      norm(f"{r}.block1.block.0", cin)
      conv(f"{r}.block1.block.3", cout, cin, 3)
      norm(f"{r}.block2.block.0", cout)
      conv(f"{r}.block2.block.3", cout, cout, 3)
      if cin != cout:
        conv(f"{r}.res_conv", cout, cin, 1)
      if with_attn:
        norm(f"{key}.attn.norm", cout)
        conv(f"{key}.attn.qkv", 3 * cout, cout, 1, bias=False)
        conv(f"{key}.attn.out", cout, cout, 1)

    conv("downs.0", c0, a["in_channel"], 3)
    skips, c, idx = [c0], c0, 1
    for level, mult in enumerate(mults):
      for _ in range(nres):
        stage(f"downs.{idx}", c, c0 * mult, attn[level])
        c = c0 * mult
        skips.append(c)
        idx += 1
      if level != len(mults) - 1:
        conv(f"downs.{idx}.conv", c, c, 3)
        skips.append(c)
        idx += 1
    stage("mid.0", c, c, True)
    stage("mid.1", c, c, False)
    idx = 0
    for level in reversed(range(len(mults))):
      for _ in range(nres + 1):
        stage(f"ups.{idx}", c + skips.pop(), c0 * mults[level], attn[level])
        c = c0 * mults[level]
        idx += 1
      if level != 0:
        conv(f"ups.{idx}.conv", c, c, 3)
        idx += 1
    norm("final_conv.block.0", c)
    conv("final_conv.block.3", a["out_channel"], c, 3)
    conv("var_conv.0", c, c, 3)
    conv("var_conv.2", c, c, 3)
    conv("var_conv.4", 3, c, 3)
    return out

  def infer(self, shapes: Mapping[str, tuple]) -> dict:
    """Widths from the input / output convs and the first block of every level; depth from the ``downs`` indices."""
    need = ("downs.0.weight", "final_conv.block.3.weight")
    missing = [k for k in need if k not in shapes]
    if missing:
      keys = list(shapes)
      raise StateDictMismatchError(missing=missing, network=self.network,
                                   hint=f"not an SR3 UNet / ReDDiT GaussianDiffusion state_dict? first keys: "
                                        f"{', '.join(keys[:5]) or '(none)'}")
    first, last = tuple(shapes["downs.0.weight"]), tuple(shapes["final_conv.block.3.weight"])
    if len(first) != 4 or len(last) != 4:
      raise StateDictMismatchError(mismatched=[("downs.0.weight", first, "(inner, in_channel, 3, 3)")],
                                   network=self.network)
    inner = int(first[0])
    indices = sorted({int(m.group(1)) for k in shapes if (m := _DOWN_RE.match(k))} - {0})
    downsamples = [i for i in indices if f"downs.{i}.conv.weight" in shapes]
    res_blocks = (downsamples[0] - 1) if downsamples else len(indices)
    levels = len(downsamples) + 1
    mults, attn = [], []
    for level in range(levels):
      i = 1 + level * (res_blocks + 1)
      w = shapes.get(f"downs.{i}.res_block.block1.block.3.weight")
      if w is None or res_blocks < 1:
        raise StateDictMismatchError(missing=[f"downs.{i}.res_block.block1.block.3.weight"], network=self.network,
                                     hint="cannot read the level widths from the downs.* keys")
      mults.append(int(w[0]) // inner)
      attn.append(f"downs.{i}.attn.qkv.weight" in shapes)
    return {"in_channel": int(first[1]), "out_channel": int(last[0]), "inner_channel": inner,
            "channel_mults": mults, "attn_res": [INFERRED_IMAGE_SIZE // 2**lv for lv, on in enumerate(attn) if on],
            "res_blocks": res_blocks, "norm_groups": 32, "image_size": INFERRED_IMAGE_SIZE}

  def infer_params(self, params: Mapping[str, Any]) -> dict:
    """As :meth:`KeyMap.infer_params`, with GroupNorm ``scale`` read as ``weight``."""
    if isinstance(params.get("params"), Mapping) and len(params) == 1:
      params = params["params"]
    shapes = {}
    for path, v in flatten(params).items():
      shape = shape_of(v)
      if path[-1] == "scale":
        path = path[:-1] + ("kernel",)
      kind = {4: "conv", 2: "dense"}.get(len(shape), "bias") if path[-1] == "kernel" else "bias"
      shapes[path_to_key(path)] = torch_shape(shape, kind)
    return self.infer(shapes)

  def import_state_dict(self, state_dict: Mapping[str, Any], arch=None, *, source: str | None = None,
                        consume: bool = False) -> Converted:
    """A ``GaussianDiffusion`` (``*_gen.pth``, ``*_gen_ema.pth``) or bare UNet ``state_dict`` -> params, strictly.

    The schedule buffers are dropped (:func:`split_diffusion_state_dict`; check them with :func:`check_buffers`);
    every other key must be a parameter of the architecture, else a :class:`StateDictMismatchError` lists all
    missing, unexpected (named without the ``denoise_fn.`` prefix) and mis-shaped keys.
    """
    sd, _ = split_diffusion_state_dict(state_dict)
    result = super().import_state_dict(sd, arch, source=source, consume=consume)
    if consume and isinstance(state_dict, dict):
      state_dict.clear()
    return result

  def export_diffusion_state_dict(self, params: Mapping[str, Any], arch=None, *,
                                  schedule: reddit_diffusion.Schedule | None = None,
                                  as_torch: bool = False) -> collections.OrderedDict:
    """lliejax params -> ``GaussianDiffusion.state_dict()`` (what the official ``test.py`` loads strictly).

    The twelve buffers of ``schedule`` (default: the released 16x32 one, ``N = 513``) first, then the UNet under
    ``denoise_fn.``, in the order ``torch.nn.Module.state_dict`` writes them.
    """
    sched = schedule if schedule is not None else reddit_diffusion.make_schedule(16, 32)
    unet = self.export_params(params, arch)
    out = collections.OrderedDict((k, np.array(sched.buffers[k])) for k in reddit_diffusion.BUFFER_NAMES)
    out.update((DIFFUSION_PREFIX + k, v) for k, v in unet.items())
    if as_torch:
      import torch  # pylint: disable=import-outside-toplevel
      out = collections.OrderedDict((k, torch.from_numpy(v)) for k, v in out.items())
    return out


KEYMAP = SR3KeyMap()
