"""The key map of ConditionalNAFNet (Refusion / Entropy-SDE): official ``state_dict`` <-> lliejax params.

The official checkpoints of ``codes/config/low-light/models/modules/DenoisingNAFNet_arch.py``
(shermanlian/spatial-entropy-loss; the same module in Algolzw/image-restoration-sde): ``<iter>_G.pth``,
``lastest_EMA.pth``, the released ``lolv1.pth`` ... are plain ``state_dict`` s with keys such as
``encoders.4.27.conv2.weight`` (optionally prefixed ``module.`` when saved from ``DataParallel``).

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

with ``<blk>`` = ``encoders.i.j`` / ``middle_blks.j`` / ``decoders.i.j`` (``encoders_i_j`` ... in lliejax). The
architecture is ``img_channel, width, enc_blk_nums, middle_blk_num, dec_blk_nums``.
"""
from __future__ import annotations

import collections
import re
from typing import Any, Mapping

from lliejax.interop.keymap import Entry, KeyMap, StateDictMismatchError

# Official registration order inside a NAFBlock: (suffix, kind).
_BLOCK_PARAMS = (
    ("beta", "vec"), ("gamma", "vec"), ("mlp.1.weight", "dense"), ("mlp.1.bias", "bias"),
    ("conv1.weight", "conv"), ("conv1.bias", "bias"), ("conv2.weight", "conv"), ("conv2.bias", "bias"),
    ("conv3.weight", "conv"), ("conv3.bias", "bias"), ("sca.1.weight", "conv"), ("sca.1.bias", "bias"),
    ("conv4.weight", "conv"), ("conv4.bias", "bias"), ("conv5.weight", "conv"), ("conv5.bias", "bias"),
    ("norm1.g", "vec"), ("norm2.g", "vec"))
_LEVEL_RE = re.compile(r"^(encoders|decoders)\.(\d+)\.(\d+)\.")
_INDEXED_RE = re.compile(r"^(middle_blks|downs|ups)\.(\d+)\.")


class NAFNetKeyMap(KeyMap):
  """``ConditionalNAFNet`` of ``DenoisingNAFNet_arch.py``."""

  network = "ConditionalNAFNet"
  arch_fields = ("img_channel", "width", "enc_blk_nums", "middle_blk_num", "dec_blk_nums")

  def arch(self, model) -> dict:
    out = super().arch(model)
    if len(out["enc_blk_nums"]) != len(out["dec_blk_nums"]):
      raise ValueError(f"enc_blk_nums {out['enc_blk_nums']} and dec_blk_nums {out['dec_blk_nums']} must have the "
                       "same number of levels")
    return out

  def spec(self, arch: Mapping[str, Any]) -> list[Entry]:
    m = self.arch(arch)
    w, ic = m["width"], m["img_channel"]
    td = 4 * w
    spec = [Entry("time_mlp.1.weight", (2 * td, w), "dense"), Entry("time_mlp.1.bias", (2 * td,), "bias"),
            Entry("time_mlp.3.weight", (td, td), "dense"), Entry("time_mlp.3.bias", (td,), "bias"),
            Entry("intro.weight", (w, 2 * ic, 3, 3), "conv"), Entry("intro.bias", (w,), "bias"),
            Entry("ending.weight", (ic, w, 3, 3), "conv"), Entry("ending.bias", (ic,), "bias")]

    def block(prefix: str, c: int):
      shapes = {"beta": (1, c, 1, 1), "gamma": (1, c, 1, 1), "mlp.1.weight": (4 * c, td // 2),
                "mlp.1.bias": (4 * c,), "conv1.weight": (2 * c, c, 1, 1), "conv1.bias": (2 * c,),
                "conv2.weight": (2 * c, 1, 3, 3), "conv2.bias": (2 * c,), "conv3.weight": (c, c, 1, 1),
                "conv3.bias": (c,), "sca.1.weight": (c, c, 1, 1), "sca.1.bias": (c,),
                "conv4.weight": (2 * c, c, 1, 1), "conv4.bias": (2 * c,), "conv5.weight": (c, c, 1, 1),
                "conv5.bias": (c,), "norm1.g": (1, c, 1, 1), "norm2.g": (1, c, 1, 1)}
      spec.extend(Entry(f"{prefix}.{suffix}", shapes[suffix], kind) for suffix, kind in _BLOCK_PARAMS)

    chans, c = [], w
    for i, n in enumerate(m["enc_blk_nums"]):
      chans.append(c)
      for j in range(n):
        block(f"encoders.{i}.{j}", c)
      c *= 2
    mid = c
    for i, n in enumerate(m["dec_blk_nums"]):
      c //= 2
      for j in range(n):
        block(f"decoders.{i}.{j}", c)
    for j in range(m["middle_blk_num"]):
      block(f"middle_blks.{j}", mid)
    c = mid
    for i in range(len(m["dec_blk_nums"])):
      spec.append(Entry(f"ups.{i}.0.weight", (2 * c, c, 1, 1), "conv"))
      c //= 2
    for i, c in enumerate(chans):
      spec.append(Entry(f"downs.{i}.weight", (2 * c, c, 2, 2), "conv"))
      spec.append(Entry(f"downs.{i}.bias", (2 * c,), "bias"))
    return spec

  def infer(self, shapes: Mapping[str, tuple]) -> dict:
    """Widths from ``intro``/``ending``, block counts from the key indices."""
    missing = [k for k in ("intro.weight", "ending.weight") if k not in shapes]
    if missing:
      keys = list(shapes)
      hint = (f"not a ConditionalNAFNet state_dict? first keys: {', '.join(keys[:5]) or '(none)'}")
      if any(k.startswith("ema_model.") for k in keys):
        hint = "this looks like an ema_pytorch EMA state; select the EMA weights with key_prefix='ema_model.'"
      raise StateDictMismatchError(missing=missing, network=self.network, hint=hint)
    intro, ending = tuple(shapes["intro.weight"]), tuple(shapes["ending.weight"])
    if len(intro) != 4 or len(ending) != 4:
      raise StateDictMismatchError(mismatched=[("intro.weight", intro, "(width, 2*img_channel, 3, 3)")],
                                   network=self.network)
    levels: dict[str, dict[int, set]] = {"encoders": collections.defaultdict(set),
                                         "decoders": collections.defaultdict(set)}
    indexed: dict[str, set] = {"middle_blks": set(), "downs": set(), "ups": set()}
    for k in shapes:
      if (mt := _LEVEL_RE.match(k)):
        levels[mt.group(1)][int(mt.group(2))].add(int(mt.group(3)))
      elif (mt := _INDEXED_RE.match(k)):
        indexed[mt.group(1)].add(int(mt.group(2)))
    n_enc = max(indexed["downs"] | set(levels["encoders"]), default=-1) + 1
    n_dec = max(indexed["ups"] | set(levels["decoders"]), default=-1) + 1
    return {"img_channel": int(ending[0]), "width": int(intro[0]),
            "enc_blk_nums": [len(levels["encoders"].get(i, ())) for i in range(n_enc)],
            "middle_blk_num": len(indexed["middle_blks"]),
            "dec_blk_nums": [len(levels["decoders"].get(i, ())) for i in range(n_dec)]}


KEYMAP = NAFNetKeyMap()
