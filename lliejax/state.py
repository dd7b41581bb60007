"""The training state of any method, its creation, its abstract (shape-only) form and restoring it from a workdir.

``TrainState(step, params, ema, opt_state)``: ``params`` and ``opt_state`` as the method and optax define them,
``ema`` one copy of ``params`` per rule of ``method.ema_rules()`` (a dict, possibly empty). The frozen pytree of a
method is not part of it (see :mod:`lliejax.methods.base`).
"""
from __future__ import annotations

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from lliejax import checkpoint, methods, optim


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  ema: dict
  opt_state: Any

  def export_params(self, method: methods.Method):
    """The parameters a method exports and evaluates: its ``export_ema`` copy, or the online ones."""
    return self.ema[method.export_ema] if method.export_ema in self.ema else self.params


def global_norms(state: TrainState, method: methods.Method) -> dict[str, float]:
  """Global L2 norms of ``params`` and of the exported copy (``export``; the EMA), as Python floats (NaN/inf
  when a value is not finite). Works on replicated arrays of a multi-process job (this process's copy)."""
  norms = jax.jit(lambda s: {"params": optax.tree.norm(s.params), "export": optax.tree.norm(s.export_params(method))}
                  )(state)
  return {k: float(jax.device_get(v.addressable_data(0) if hasattr(v, "addressable_data") else v))
          for k, v in norms.items()}


def run_keys(config) -> dict[str, jax.Array]:
  """The keys of a run, split from ``config.seed``: ``init`` (params, frozen), ``train`` (steps), ``eval``."""
  init, train, evaluation = jax.random.split(jax.random.key(config.seed), 3)
  return {"init": init, "train": train, "eval": evaluation}


def create(method: methods.Method, tx: optax.GradientTransformation, key: jax.Array) -> TrainState:
  """Step 0: ``method.init_params(key)``, every EMA copy equal to them, a fresh optimizer state."""
  params = method.init_params(key)
  ema = {name: jax.tree_util.tree_map(jnp.copy, params) for name in method.ema_rules()}
  return TrainState(step=jnp.zeros((), jnp.int32), params=params, ema=ema, opt_state=tx.init(params))


def abstract(method: methods.Method, tx: optax.GradientTransformation, sharding=None) -> TrainState:
  """Shapes and dtypes of :func:`create` (nothing computed), each leaf with ``sharding`` when given."""
  shapes = jax.eval_shape(lambda: create(method, tx, jax.random.key(0)))
  if sharding is None:
    return shapes
  return jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding), shapes)


def restore_from_workdir(workdir: str, *, step: int | None = None):
  """``(state, method, config, step)`` from the latest (or given) checkpoint of a training workdir.

  Raises:
    FileNotFoundError: not a workdir, or no checkpoint in it.
  """
  config = checkpoint.load_workdir_config(workdir)
  method = methods.build(config)
  tx = optim.make_optimizer(config)
  with checkpoint.TrainCheckpoints(workdir, keep=int(config.get("keep_checkpoints", 3))) as ckpts:
    step = ckpts.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{workdir}: no checkpoint found in {ckpts.directory}")
    state = ckpts.restore(step, abstract(method, tx))
  return state, method, config, step
