"""Losses between a prediction and its target, selected by a ``config.loss`` section.

:func:`get` returns ``loss(pred, target, key) -> scalar`` (``key``: the per-step key; the entropy losses draw their
neighbour weights from it), scaled by ``cfg.weight``:

=====================  ==========================================================================================
``l1``, ``l2``         :mod:`lliejax.losses.pixel` (``MatchingLoss`` of the official code).
``kl``                 relative entropy KL(target || pred) between local KDE histograms (the Entropy-SDE paper's).
``cross``              cross-entropy between the KDE histograms (official argument order).
``hellinger``          Hellinger distance (what the released Entropy-SDE config's ``loss_type: en`` runs).
``hellinger_smooth``   Hellinger + mean |G*pred - G*target| (the official ``helsmooth``).
``lpips``              LPIPS (``net``: ``alex``/``vgg``, ``input_range``: ``[0,1]``/``[-1,1]``, required),
                       :mod:`lliejax.losses.perceptual`; needs frozen parameters (:func:`frozen_params`).
=====================  ==========================================================================================

**Combined objectives** (not in the official code; the official single loss stays the default): for an entropy
``name``, ``cfg.pixel`` (``'l1'``/``'l2'``, default None) adds ``cfg.pixel_weight * pixel(pred, target)`` to
``cfg.weight * entropy`` (``l1 + lambda * entropy``), ``cfg.entropy_start`` > 0 trains with the pixel term alone
before that step (an l1 warm-up; the loss then needs ``step=``), and ``cfg.clamp`` picks the KDE input clamp
(``official`` / ``straight_through`` / ``none``, :func:`lliejax.losses.entropy.clamp01`).

A loss with pretrained parameters takes them as ``loss(pred, target, key, frozen=...)``; :func:`frozen_params`
gives them (None for the others), and methods keep them in their frozen tree (never closed over in jit).

The entropy losses are in :mod:`lliejax.losses.entropy`; every ``config.loss`` key there is passed through.
AnlightenDiff's objectives (DFPL, the noise losses on the effective noise, the TS stages' MS-SSIM and LPIPS) are
method-specific functions of the diffusion state, not ``config.loss`` entries: :mod:`lliejax.losses.anlightendiff`.
A method decides what ``pred`` and ``target`` are (Entropy-SDE: the predicted and optimum reverse states).
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from lliejax.losses import pixel

LossFn = Callable[..., jax.Array]  # (pred, target, key, frozen=None, step=None) -> scalar
PIXEL_LOSSES = {"l1": pixel.l1, "l2": pixel.l2}
ENTROPY_LOSSES = ("kl", "cross", "hellinger", "hellinger_smooth")
FROZEN_LOSSES = ("lpips",)


def names() -> tuple[str, ...]:
  """Every loss :func:`get` knows."""
  return tuple(PIXEL_LOSSES) + ENTROPY_LOSSES + FROZEN_LOSSES


def frozen_params(cfg):
  """The fixed pretrained parameters loss ``cfg.name`` needs (a pytree), or None."""
  if cfg.name == "lpips":
    from lliejax.losses import perceptual  # pylint: disable=import-outside-toplevel
    return perceptual.lpips_frozen(_lpips_options(cfg)[0])
  return None


def _lpips_options(cfg) -> tuple[str, str]:
  net = cfg.get("net", "vgg")
  if net not in ("alex", "vgg"):
    raise ValueError(f"config.loss.net={net!r}: the lpips loss takes 'alex' or 'vgg'")
  if cfg.get("input_range") not in ("[0,1]", "[-1,1]"):
    raise ValueError(f"config.loss.input_range={cfg.get('input_range')!r}: the lpips loss needs the range of the "
                     "images it compares, '[0,1]' or '[-1,1]' (see lliejax.losses.perceptual)")
  return net, cfg.input_range


def get(cfg) -> LossFn:
  """The loss ``cfg.name`` scaled by ``cfg.weight`` (default 1)."""
  name = cfg.name
  weight = float(cfg.get("weight", 1.0))
  if name in PIXEL_LOSSES:
    fn = PIXEL_LOSSES[name]
    return lambda pred, target, key, frozen=None, step=None: weight * fn(pred, target)
  if name == "lpips":
    from lliejax.losses import perceptual  # pylint: disable=import-outside-toplevel
    net, input_range = _lpips_options(cfg)

    def lpips(pred, target, key, frozen=None, step=None):
      del key, step
      if frozen is None:
        raise ValueError("the lpips loss needs its pretrained parameters: pass frozen=losses.frozen_params(cfg)")
      return weight * perceptual.lpips_loss(frozen, pred, target, net=net, input_range=input_range)

    return lpips
  if name in ENTROPY_LOSSES:
    from lliejax.losses import entropy  # pylint: disable=import-outside-toplevel

    kwargs = dict(kind=name, bins=int(cfg.bins), bandwidth=float(cfg.bandwidth), kernel=cfg.kernel,
                  windows=tuple(int(w) for w in cfg.windows), neighbour_norm=cfg.neighbour_norm)
    if cfg.get("weights") is not None:
      kwargs["weights"] = cfg.weights
    if int(cfg.get("chunk_size", 0)) > 0:
      kwargs["chunk_size"] = int(cfg.chunk_size)
    if cfg.get("eps") is not None:
      kwargs["eps"] = float(cfg.eps)
    kwargs["clamp"] = cfg.get("clamp", "official")
    pixel = PIXEL_LOSSES[cfg.pixel] if cfg.get("pixel") else None
    pixel_weight = float(cfg.get("pixel_weight", 1.0))
    start = int(cfg.get("entropy_start", 0) or 0)
    if start > 0 and pixel is None:
      raise ValueError(f"config.loss.entropy_start={start}: an entropy warm-up needs a pixel loss (config.loss.pixel)")

    def loss(pred, target, key, frozen=None, step=None):
      del frozen

      def ent():
        return weight * entropy.spatial_entropy_loss(pred, target, key=key, **kwargs)

      if start > 0:
        if step is None:
          raise ValueError("config.loss.entropy_start needs the training step: call the loss with step=")
        ent_term = jax.lax.cond(step >= start, ent, lambda: jnp.zeros((), jnp.float32))
      else:
        ent_term = ent()
      return ent_term if pixel is None else pixel_weight * pixel(pred, target) + ent_term

    return loss
  raise ValueError(f"config.loss.name={name!r} is not a known loss; choose one of {', '.join(names())}")
