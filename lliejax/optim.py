"""Optimisers and learning-rate schedules from a config (optax).

``config.optim`` keys: ``name`` (``adamw`` | ``adam`` | ``lion``), ``learning_rate``, ``b1``, ``b2``, ``eps`` (Adam
family), ``weight_decay`` (AdamW, Lion), ``schedule`` (below), ``eta_min`` (cosine), ``warmup_steps`` (optional,
linear warm-up from 0 before the schedule; default 0), ``grad_clip`` (> 0 adds global-norm clipping before the
optimiser; 0 disables). The schedule is indexed by the optimizer step (0-based) and spans ``config.num_train_steps``.

=============  ===============================================================================================
``cosine``     ``torch.optim.lr_scheduler.CosineAnnealingLR(T_max=num_train_steps, eta_min)`` stepped once per
               iteration, as the official Entropy-SDE / Refusion ``TrueCosineAnnealingLR`` option
               (``codes/config/low-light/models/denoising_model.py``):
               ``eta_min + (lr - eta_min) (1 + cos(pi k / T)) / 2``.
``constant``   ``lr`` at every step.
``linear``     ReDDiT's ``LambdaLR`` (``model/model.py:get_scheduler``, ``lr_policy='linear'``): constant for
               ``constant_steps`` optimizer steps, then ``lr (d + 1 - (k - c)) / (d + 1)`` with ``c =
               constant_steps``, ``d = decay_steps`` (official 2,000 / 3,000: ``lr / 3001`` at step 5,000); clamped
               at 0 after ``c + d + 1`` steps, where the official factor turns negative.
=============  ===============================================================================================
"""
from __future__ import annotations

import optax

OPTIMIZERS = ("adamw", "adam", "lion")
SCHEDULES = ("cosine", "constant", "linear")


def learning_rate_schedule(config) -> optax.Schedule:
  """The learning rate as a function of the optimizer step (see the module docstring)."""
  o = config.optim
  total = max(int(config.num_train_steps), 1)
  warmup = int(o.get("warmup_steps", 0) or 0)
  if o.schedule == "cosine":
    sched = optax.cosine_decay_schedule(o.learning_rate, max(total - warmup, 1), alpha=o.eta_min / o.learning_rate)
  elif o.schedule == "constant":
    sched = optax.constant_schedule(o.learning_rate)
  elif o.schedule == "linear":
    sched = constant_then_linear(o.learning_rate, int(o.constant_steps), int(o.decay_steps))
  else:
    raise ValueError(f"config.optim.schedule={o.schedule!r}: choose one of {', '.join(SCHEDULES)}")
  if warmup > 0:
    sched = optax.join_schedules([optax.linear_schedule(0.0, o.learning_rate, warmup), sched], [warmup])
  return sched


def constant_then_linear(learning_rate: float, constant_steps: int, decay_steps: int) -> optax.Schedule:
  """The ``linear`` schedule (module docstring) at optimizer step ``k`` (0-based; the official
  ``scheduler.step()`` follows every ``optimizer.step()``)."""
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  lr, c, d = float(learning_rate), int(constant_steps), int(decay_steps)

  def schedule(step):
    k = jnp.asarray(step, jnp.float32)
    # (d + 1 - max(0, k - c)) / (d + 1): integers until the division, no float32 cancellation near the end.
    return lr * jnp.maximum(d + 1.0 - jnp.maximum(k - c, 0.0), 0.0) / (d + 1.0)

  return schedule


def make_optimizer(config) -> optax.GradientTransformation:
  """The optimiser of ``config.optim`` with the schedule of :func:`learning_rate_schedule`."""
  o = config.optim
  lr = learning_rate_schedule(config)
  if o.name == "adamw":
    opt = optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay)
  elif o.name == "adam":
    opt = optax.adam(lr, b1=o.b1, b2=o.b2, eps=o.eps)
  elif o.name == "lion":  # upstream Refusion configs
    opt = optax.lion(lr, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay)
  else:
    raise ValueError(f"config.optim.name={o.name!r}: choose one of {', '.join(OPTIMIZERS)}")
  if o.grad_clip and o.grad_clip > 0:
    opt = optax.chain(optax.clip_by_global_norm(o.grad_clip), opt)
  return opt
