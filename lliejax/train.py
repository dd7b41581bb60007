"""Training of the mean-reverting SDE noise network (Refusion / Entropy-SDE), data-parallel on every device.

The pure step ``train_step(state, batch, key) -> (state, metrics)`` (from :func:`make_train_step`) is compiled
once with ``jax.jit`` over a ``('data',)`` mesh: the batch is sharded, params / EMA / optimizer state are
replicated and the state is donated. Randomness comes from one root key (``config.seed``) with the step folded
in, so a run is reproducible and a resumed run draws exactly what the uninterrupted run would have.

Per step (REFERENCE 1.5 and 1.9):

1. ``t ~ U{1..T}``, ``x_t ~ q(x_t | GT, LQ)``; the network predicts the noise; the loss compares the noise-free
   reverse-SDE step ``x_hat_{t-1}`` with the optimum reverse state ``x*_{t-1}`` (``config.loss``);
2. AdamW (``b1=0.9, b2=0.99``, weight decay 0) with ``CosineAnnealingLR(T_max=num_train_steps, eta_min)``;
   optional global-norm clipping (``config.optim.grad_clip``, not in the official code);
3. EMA with the ``ema_pytorch.EMA(beta=0.995, update_every=10)`` rules (copy until step 100, then
   ``decay = clamp(1 - (1 + e)^(-2/3), 0, 0.995)``).

A non-finite loss or gradient leaves the state untouched and stops training with ``FloatingPointError``; the
last checkpoint (written only from finite states) stays the latest.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp

from lliejax import losses as losses_lib
from lliejax import parallel
from lliejax import sde as sde_lib
from lliejax.checkpoint import export_params
from lliejax.models.nafnet import ConditionalNAFNet, count_params, nafnet_from_config


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  ema_params: Any
  opt_state: Any


# ------------------------------------------------------------------------------------------ construction
def create_model(config) -> ConditionalNAFNet:
  if config.model.name != "conditional_nafnet":
    raise ValueError(f"config.model.name={config.model.name!r}: only 'conditional_nafnet' is implemented")
  return nafnet_from_config(config.model)


def learning_rate_schedule(config) -> optax.Schedule:
  o = config.optim
  if o.schedule == "cosine":
    # torch CosineAnnealingLR stepped once per iteration: eta_min + (lr - eta_min) (1 + cos(pi k / T)) / 2.
    return optax.cosine_decay_schedule(o.learning_rate, max(int(config.num_train_steps), 1),
                                       alpha=o.eta_min / o.learning_rate)
  if o.schedule == "constant":
    return optax.constant_schedule(o.learning_rate)
  raise ValueError(f"config.optim.schedule={o.schedule!r}: choose 'cosine' or 'constant'")


def make_optimizer(config) -> optax.GradientTransformation:
  o = config.optim
  lr = learning_rate_schedule(config)
  if o.name == "adamw":
    opt = optax.adamw(lr, b1=o.b1, b2=o.b2, eps=o.eps, weight_decay=o.weight_decay)
  elif o.name == "adam":
    opt = optax.adam(lr, b1=o.b1, b2=o.b2, eps=o.eps)
  elif o.name == "lion":  # upstream Refusion configs
    opt = optax.lion(lr, b1=o.b1, b2=o.b2, weight_decay=o.weight_decay)
  else:
    raise ValueError(f"config.optim.name={o.name!r}: choose 'adamw', 'adam' or 'lion'")
  if o.grad_clip and o.grad_clip > 0:
    opt = optax.chain(optax.clip_by_global_norm(o.grad_clip), opt)
  return opt


def init_params(model: nn.Module, key, img_channel: int = 3, size: int = 32):
  x = jnp.zeros((1, size, size, img_channel), jnp.float32)
  return model.init(key, x, x, jnp.ones((1,), jnp.int32))["params"]


def create_train_state(config, model, tx, key) -> TrainState:
  params = init_params(model, key, config.model.img_channel, 2 ** len(config.model.enc_blk_nums))
  return TrainState(step=jnp.zeros((), jnp.int32), params=params,
                    ema_params=jax.tree_util.tree_map(jnp.copy, params), opt_state=tx.init(params))


# ------------------------------------------------------------------------------------------ EMA
def ema_update(ema_cfg, step, ema_params, params, enabled=True):
  """One ``ema_pytorch.EMA.update()`` call made after optimizer step number ``step`` (0-based).

  Only every ``update_every``-th call touches the weights; the others (and ``enabled=False``) return
  ``ema_params`` through a ``lax.cond``, so 9 steps in 10 skip a pass over all the parameters.
  """
  every, after = int(ema_cfg.update_every), int(ema_cfg.update_after_step)
  should = step % every == 0
  copy = (step == 0) | (should & (step <= after))
  epoch = jnp.maximum(step - after, 0).astype(jnp.float32)  # (step + 1) - after - 1
  value = 1.0 - (1.0 + epoch / ema_cfg.inv_gamma) ** (-ema_cfg.power)
  decay = jnp.where(epoch <= 0, 0.0, jnp.clip(value, 0.0, ema_cfg.decay))

  def update(ema):
    return jax.tree_util.tree_map(lambda e, p: jnp.where(copy, p, e + (1.0 - decay) * (p - e)), ema, params)

  return jax.lax.cond(should & enabled, update, lambda ema: ema, ema_params)


# ------------------------------------------------------------------------------------------ step
def make_train_step(config, model: nn.Module, tx, sde: sde_lib.IRSDE,
                    loss_fn: losses_lib.LossFn | None = None) -> Callable:
  """The pure step function. ``key`` is the run's root key; the step number is folded in here."""
  loss_fn = loss_fn or losses_lib.get_loss_fn(config.loss)
  lr_schedule = learning_rate_schedule(config)

  def train_step(state: TrainState, batch, key):
    key = jax.random.fold_in(key, state.step)
    k_sde, k_loss = jax.random.split(key)

    def objective(params):
      noise_fn = lambda x, mu, t: model.apply({"params": params}, x, mu, t)
      pred, target, _ = sde_lib.ml_pair(sde, noise_fn, batch["gt"], batch["lq"], k_sde)
      return loss_fn(pred, target, k_loss)

    loss, grads = jax.value_and_grad(objective)(state.params)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def apply(params_opt):
      params, opt_state = params_opt
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    # A lax.cond, not a jnp.where per leaf: the optimizer update stays one fused pass over each tensor (a
    # where-guard costs 4x the time of the AdamW update itself on the 288M-parameter network on CPU).
    params, opt_state = jax.lax.cond(finite, apply, lambda params_opt: params_opt, (state.params, state.opt_state))
    ema = ema_update(config.ema, state.step, state.ema_params, params, enabled=finite)
    new_state = TrainState(step=state.step + finite.astype(jnp.int32), params=params, ema_params=ema,
                           opt_state=opt_state)
    metrics = {"loss": loss, "grad_norm": grad_norm, "learning_rate": lr_schedule(state.step), "finite": finite}
    return new_state, metrics

  return train_step


def jit_train_step(train_step: Callable, mesh) -> Callable:
  """Compile with the batch sharded over ``'data'``, everything else replicated, the state donated."""
  repl, data = parallel.replicated(mesh), parallel.data_sharded(mesh)
  return jax.jit(train_step, in_shardings=(repl, data, repl), out_shardings=(repl, repl), donate_argnums=(0,))


# ------------------------------------------------------------------------------------------ checkpoints
def checkpoint_manager(workdir: str, config) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(max_to_keep=int(config.keep_checkpoints), create=True,
                                         enable_async_checkpointing=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"), options=options)


def abstract_state(config, model, tx, mesh=None) -> TrainState:
  shapes = jax.eval_shape(lambda: create_train_state(config, model, tx, jax.random.key(0)))
  if mesh is None:
    return shapes
  repl = parallel.replicated(mesh)
  return jax.tree_util.tree_map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=repl), shapes)


def restore_state(mngr: ocp.CheckpointManager, step: int, target: TrainState) -> TrainState:
  return mngr.restore(step, args=ocp.args.StandardRestore(target))


def save_config(workdir: str, config) -> None:
  """Write ``config.json``; a resumed run with a different architecture is refused (its checkpoints won't fit)."""
  path = os.path.join(workdir, "config.json")
  new = json.loads(config.to_json_best_effort())
  if os.path.exists(path):
    with open(path) as f:
      old = json.load(f)
    for section in ("model", "sde"):
      if old.get(section) != new.get(section):
        raise ValueError(f"{path}: the workdir was created with a different config.{section} "
                         f"({old.get(section)} != {new.get(section)}); use a new --workdir")
    if old != new:
      logging.warning("config differs from %s (training resumes with the new values)", path)
  if jax.process_index() == 0:
    with open(path + ".tmp", "w") as f:
      json.dump(new, f, indent=2, sort_keys=True)
    os.replace(path + ".tmp", path)


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, "config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{workdir} is not a lliejax workdir: {path} is missing")
  with open(path) as f:
    return ml_collections.ConfigDict(json.load(f))


def load_params_from_workdir(workdir: str, *, ema: bool = True, step: int | None = None):
  """``(params, config, step)`` from the latest (or given) training checkpoint of a workdir, no optimizer needed
  by the caller. ``ema=False`` returns the online params."""
  config = load_workdir_config(workdir)
  model, tx = create_model(config), make_optimizer(config)
  with checkpoint_manager(workdir, config) as mngr:
    step = mngr.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{workdir}: no checkpoint found in {os.path.join(workdir, 'checkpoints')}")
    state = restore_state(mngr, step, abstract_state(config, model, tx))
  return (state.ema_params if ema else state.params), config, step


# ------------------------------------------------------------------------------------------ loop
def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, stop_at: int | None = None,
                       mesh=None) -> TrainState:
  """Train (resuming from the latest checkpoint in ``workdir``), validate, checkpoint and export EMA params.

  Args:
    config: an ``entropy_sde`` config.
    workdir: checkpoints, TensorBoard events, ``config.json`` and the final export (``export/``) go here.
    stop_at: stop after this step as if pre-empted (tests of resume); the checkpoint of that step is written.
    mesh: device mesh; default all devices.
  """
  from clu import metric_writers, periodic_actions  # pylint: disable=import-outside-toplevel
  from lliejax.data import pipeline  # pylint: disable=import-outside-toplevel
  from lliejax.metrics import TrainMetrics  # pylint: disable=import-outside-toplevel

  workdir = os.path.abspath(os.path.expanduser(workdir))
  os.makedirs(workdir, exist_ok=True)
  mesh = mesh or parallel.make_mesh()
  save_config(workdir, config)
  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  writer.write_hparams({k: v for k, v in _flatten(config.to_dict()).items()})

  sde = sde_lib.make_sde_from_config(config.sde)
  model, tx = create_model(config), make_optimizer(config)
  root = jax.random.key(config.seed)
  init_key, train_key, eval_key = jax.random.split(root, 3)
  repl = parallel.replicated(mesh)
  mngr = checkpoint_manager(workdir, config)
  latest = mngr.latest_step()
  if latest is not None:
    state = restore_state(mngr, latest, abstract_state(config, model, tx, mesh))
    logging.info("resumed from %s at step %d", workdir, latest)
  else:
    state = jax.jit(lambda k: create_train_state(config, model, tx, k), out_shardings=repl)(init_key)
  logging.info("ConditionalNAFNet with %s parameters", f"{count_params(state.params):,}")

  start = int(state.step)
  total = int(config.num_train_steps)
  parallel.local_batch_size(config.batch_size, mesh)  # validates divisibility by the device count
  data_iter = pipeline.train_iterator(config.data, seed=config.seed, batch_size=config.batch_size,
                                      process_index=jax.process_index(), process_count=jax.process_count(),
                                      start_step=start)
  step_fn = jit_train_step(make_train_step(config, model, tx, sde), mesh)
  report = periodic_actions.ReportProgress(num_train_steps=total, writer=writer, every_steps=config.log_every)
  pending, acc, last_saved = None, None, latest

  def check(metrics, step):
    if not bool(metrics["finite"]):
      mngr.wait_until_finished()
      where = (f"the last good checkpoint is step {last_saved} in {mngr.directory}" if last_saved is not None
               else "no checkpoint was written yet")
      raise FloatingPointError(f"non-finite loss ({float(metrics['loss'])}) or gradient norm at step {step}; "
                               f"training stopped, {where}")

  step = start
  for step in range(start + 1, total + 1):
    local = next(data_iter)
    batch = parallel.global_batch({"lq": local["lq"], "gt": local["gt"]}, mesh)
    state, metrics = step_fn(state, batch, train_key)
    if pending is not None:
      check(*pending)  # one step behind, so the host does not wait for the device every step
    pending = (metrics, step)
    update = TrainMetrics.single_from_model_output(loss=metrics["loss"], grad_norm=metrics["grad_norm"],
                                                   learning_rate=metrics["learning_rate"])
    acc = update if acc is None else acc.merge(update)
    report(step)
    if step % config.log_every == 0 or step == total:
      check(*pending)
      writer.write_scalars(step, {k: float(v) for k, v in acc.compute().items()})
      acc = None
    if step % config.checkpoint_every == 0 or step == total or step == stop_at:
      check(*pending)
      mngr.save(step, args=ocp.args.StandardSave(state))
      last_saved = step
    if config.eval_every and step % config.eval_every == 0 and step != total:
      validate(config, model, sde, state.ema_params, step=step, writer=writer, key=eval_key)
    if step == stop_at:
      break
  if pending is not None:
    check(*pending)
  mngr.wait_until_finished()
  mngr.close()
  if int(state.step) >= total:
    if jax.process_index() == 0:
      export_params(os.path.join(workdir, "export"), jax.device_get(state.ema_params), model=config.model,
                    sde=config.sde, overwrite=True, source=workdir, step=int(state.step), ema=True)
    if config.eval_every:
      validate(config, model, sde, state.ema_params, step=total, writer=writer, key=eval_key)
  writer.flush()
  return state


def validate(config, model, sde, params, *, step, writer, key):
  """PSNR/SSIM of the first ``config.eval_num_images`` eval images with ``config.eval_sampler``."""
  from lliejax import evaluate  # pylint: disable=import-outside-toplevel

  result = evaluate.evaluate_dataset(config, params, model=model, sde=sde, key=key,
                                     sampler=config.eval_sampler, max_images=config.eval_num_images,
                                     out_dir=None)
  writer.write_scalars(step, {f"eval/{k}": v for k, v in result["mean"].items()})
  if config.write_images:
    for name, triple in result["images"][:3]:  # LQ | output | GT
      writer.write_images(step, {f"eval/{name}": np.concatenate(triple, axis=1)[None]})
  return result


def _flatten(d, prefix=""):
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out.update(_flatten(v, f"{prefix}{k}."))
    else:
      out[f"{prefix}{k}"] = v if isinstance(v, (int, float, str, bool)) else str(v)
  return out
