"""Losses between the predicted and optimum reverse states of the maximum-likelihood objective.

``get_loss_fn(config.loss)`` returns ``loss(pred, target, key) -> scalar``. ``pred``/``target`` are the NHWC
tensors ``x_hat_{t-1}`` and ``x*_{t-1}`` of :func:`lliejax.sde.ml_pair`; ``key`` is the per-step key (the
entropy losses draw their neighbour weights from it).

=====================  ==========================================================================================
``l1``                 ``MatchingLoss('l1', is_weighted=False)``: mean |pred - target| (per-sample mean, then
                       batch mean, i.e. the global mean).
``kl``                 relative entropy KL(target || pred) between local KDE histograms (paper's loss).
``cross``              cross-entropy between the KDE histograms (official argument order).
``hellinger``          Hellinger distance (what the released config's ``loss_type: en`` runs).
``hellinger_smooth``   Hellinger + mean |G*pred - G*target| (the official ``helsmooth``).
=====================  ==========================================================================================

The entropy losses are in :mod:`lliejax.entropy`; every ``config.loss`` key there is passed through.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

LossFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
ENTROPY_LOSSES = ("kl", "cross", "hellinger", "hellinger_smooth")
LOSSES = ("l1", "l2") + ENTROPY_LOSSES


def l1_matching(pred, target):
  return jnp.mean(jnp.abs(pred - target))


def l2_matching(pred, target):
  return jnp.mean(jnp.square(pred - target))


def get_loss_fn(cfg) -> LossFn:
  """Loss selected by ``cfg.name`` and scaled by ``cfg.weight``."""
  name = cfg.name
  weight = float(cfg.get("weight", 1.0))
  if name == "l1":
    return lambda pred, target, key: weight * l1_matching(pred, target)
  if name == "l2":
    return lambda pred, target, key: weight * l2_matching(pred, target)
  if name in ENTROPY_LOSSES:
    from lliejax import entropy  # pylint: disable=import-outside-toplevel

    kwargs = dict(kind=name, bins=int(cfg.bins), bandwidth=float(cfg.bandwidth), kernel=cfg.kernel,
                  windows=tuple(int(w) for w in cfg.windows), neighbour_norm=cfg.neighbour_norm)
    if cfg.get("weights") is not None:
      kwargs["weights"] = cfg.weights
    if int(cfg.get("chunk_size", 0)) > 0:
      kwargs["chunk_size"] = int(cfg.chunk_size)
    if cfg.get("eps") is not None:
      kwargs["eps"] = float(cfg.eps)

    def loss(pred, target, key):
      return weight * entropy.spatial_entropy_loss(pred, target, key=key, **kwargs)

    return loss
  raise ValueError(f"config.loss.name={name!r} is not a known loss; choose one of {', '.join(LOSSES)}")
