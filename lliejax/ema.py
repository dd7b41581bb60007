"""Exponential moving averages of parameters: the rules a method picks for its EMA copies.

A rule is an object with ``update(step, ema, params, enabled) -> ema``, called by the training loop once after
optimizer step number ``step`` (0-based: the number of optimizer steps taken before this one) with the parameters
that step produced. ``enabled`` (a boolean array) is false for a step whose update was rejected (non-finite loss or
gradient): the EMA is then returned unchanged. Updates are wrapped in ``lax.cond`` so that steps that do not touch
the average skip a pass over all the parameters.

* :class:`EmaPytorch`: the rules of ``ema_pytorch.EMA`` (lucidrains), which the official Entropy-SDE / Refusion
  code uses (``codes/config/low-light/models/denoising_model.py``: ``EMA(model, beta=0.995, update_every=10)``):
  only every ``update_every``-th call updates; the average is a copy of the online weights until
  ``update_after_step``; then ``decay = clamp(1 - (1 + e / inv_gamma)^(-power), 0, beta)`` with ``e`` the number of
  calls after ``update_after_step``.
* :class:`Constant`: ``ema = decay * ema + (1 - decay) * params`` every ``every`` steps from ``start`` on (copy
  before), the textbook rule of DDPM-style code bases.

:func:`from_config` builds one from an ``ema`` config section (``kind``: ``ema_pytorch`` (default) or
``constant``).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Protocol

import jax
import jax.numpy as jnp


class EmaRule(Protocol):
  """What the training loop needs of an EMA rule."""

  def update(self, step: jax.Array, ema: Any, params: Any, enabled: jax.Array | bool = True) -> Any:
    ...


def _blend(ema, params, copy, decay):
  return jax.tree_util.tree_map(lambda e, p: jnp.where(copy, p, e + (1.0 - decay) * (p - e)), ema, params)


@dataclasses.dataclass(frozen=True)
class EmaPytorch:
  """``ema_pytorch.EMA(beta=decay, update_every, update_after_step, inv_gamma, power)`` (see the module docstring)."""

  decay: float = 0.995
  update_every: int = 10
  update_after_step: int = 100
  inv_gamma: float = 1.0
  power: float = 2.0 / 3.0

  def update(self, step, ema, params, enabled=True):
    """One ``EMA.update()`` call made after optimizer step number ``step`` (0-based)."""
    every, after = int(self.update_every), int(self.update_after_step)
    should = step % every == 0
    copy = (step == 0) | (should & (step <= after))
    epoch = jnp.maximum(step - after, 0).astype(jnp.float32)  # (step + 1) - after - 1
    value = 1.0 - (1.0 + epoch / self.inv_gamma) ** (-self.power)
    decay = jnp.where(epoch <= 0, 0.0, jnp.clip(value, 0.0, self.decay))
    return jax.lax.cond(should & enabled, lambda e: _blend(e, params, copy, decay), lambda e: e, ema)


@dataclasses.dataclass(frozen=True)
class Constant:
  """``ema <- decay * ema + (1 - decay) * params`` every ``every`` steps from step ``start`` on; a copy before."""

  decay: float = 0.999
  every: int = 1
  start: int = 0

  def update(self, step, ema, params, enabled=True):
    should = (step % int(self.every) == 0) | (step < self.start)
    copy = step < self.start
    return jax.lax.cond(should & enabled, lambda e: _blend(e, params, copy, self.decay), lambda e: e, ema)


def from_config(cfg) -> EmaRule:
  """An EMA rule from a ``config.ema`` section (``kind`` selects the rule; the other keys are its fields)."""
  kind = cfg.get("kind", "ema_pytorch")
  if kind == "ema_pytorch":
    return EmaPytorch(decay=float(cfg.decay), update_every=int(cfg.update_every),
                      update_after_step=int(cfg.update_after_step), inv_gamma=float(cfg.get("inv_gamma", 1.0)),
                      power=float(cfg.get("power", 2.0 / 3.0)))
  if kind == "constant":
    return Constant(decay=float(cfg.decay), every=int(cfg.get("every", 1)), start=int(cfg.get("start", 0)))
  raise ValueError(f"config.ema.kind={kind!r}: choose 'ema_pytorch' or 'constant'")
