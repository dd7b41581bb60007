"""Pixel losses between two NHWC tensors (pure functions, mean over every element).

``l1`` and ``l2`` are ``MatchingLoss('l1' | 'l2', is_weighted=False)`` of the official
``codes/config/low-light/models/modules/loss.py`` (Entropy-SDE, identical in IR-SDE/Refusion): the element-wise
difference averaged over all non-batch elements per sample, then over the batch; with equally sized samples that is
the global mean computed here.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def l1(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Mean absolute difference (``MatchingLoss('l1')``)."""
  return jnp.mean(jnp.abs(pred - target))


def l2(pred: jax.Array, target: jax.Array) -> jax.Array:
  """Mean squared difference (``MatchingLoss('l2')``)."""
  return jnp.mean(jnp.square(pred - target))
