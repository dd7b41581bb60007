"""The training loop of every method: (Method, config) -> sharded jit step, EMA, NaN guard, writers, checkpoints.

The pure step ``train_step(state, frozen, batch, key) -> (state, metrics)`` (:func:`make_train_step`) is compiled
once with ``jax.jit`` over a ``('data',)`` mesh: the batch is sharded, params / EMA / optimizer state / frozen are
replicated and the state is donated (:func:`jit_train_step`). Per step:

1. ``key = fold_in(root key, step)``; ``(loss, aux) = method.loss(params, frozen, batch, key, ema=ema,
   step=step)`` and its gradient with respect to ``params``;
2. the optax update (:mod:`lliejax.optim`), then every EMA rule of ``method.ema_rules()`` (:mod:`lliejax.ema`);
3. a non-finite loss or gradient norm leaves the state untouched (``lax.cond``) and stops the loop with a
   ``FloatingPointError`` naming the step, the last step with a finite loss and the last checkpoint, which stays
   the latest, with the global norms of its parameters (finite: usable to resume from). Nothing is exported
   after a stop, and :func:`lliejax.checkpoint.export` refuses non-finite parameters anyway.

A run holds its workdir's lock (:func:`lliejax.checkpoint.prepare_workdir`) from before it writes anything there
until it ends, refuses a resume whose config differs from the workdir's ``config.json`` outside
:data:`lliejax.checkpoint.RESUMABLE_KEYS` (unless ``force_config``), and stops with a
:class:`lliejax.checkpoint.WorkdirError` naming the folder and the remedy when the workdir or a checkpoint cannot be
written (a file where a folder is expected, no permission, a full disk).

Randomness comes from one root key (``config.seed``) with the step folded in, and the data stream is a function of
the step (:mod:`lliejax.data.pipeline`), so a resumed run ends with exactly the parameters of an uninterrupted one.
Multi-host: every process runs the same program on its share of the global batch (:mod:`lliejax.parallel`).
"""
from __future__ import annotations

import logging
import os
import sys
import time
from typing import Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from lliejax import checkpoint, evaluate, inference, methods, metrics, optim, parallel, runtime
from lliejax import state as state_lib
from lliejax.state import TrainState


def make_train_step(method: methods.Method, tx: optax.GradientTransformation, *,
                    lr_schedule: optax.Schedule | None = None) -> Callable:
  """The pure step function of ``method`` (see the module docstring). ``key`` is the run's root key."""
  rules = method.ema_rules()

  def train_step(state: TrainState, frozen, batch, key):
    key = jax.random.fold_in(key, state.step)
    ema_in = jax.lax.stop_gradient(state.ema)

    def objective(params):
      return method.loss(params, frozen, batch, key, ema=ema_in, step=state.step)

    (loss, aux), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

    def apply(params_opt):
      params, opt_state = params_opt
      updates, opt_state = tx.update(grads, opt_state, params)
      return optax.apply_updates(params, updates), opt_state

    # A lax.cond, not a jnp.where per leaf: the optimizer update stays one fused pass over each tensor (a
    # where-guard costs 4x the time of the AdamW update itself on the 288M-parameter network on CPU).
    params, opt_state = jax.lax.cond(finite, apply, lambda params_opt: params_opt, (state.params, state.opt_state))
    ema = {name: rule.update(state.step, state.ema[name], params, enabled=finite) for name, rule in rules.items()}
    new_state = TrainState(step=state.step + finite.astype(jnp.int32), params=params, ema=ema, opt_state=opt_state)
    out = {"loss": loss, "grad_norm": grad_norm, "finite": finite, **aux}
    if lr_schedule is not None:
      out["learning_rate"] = lr_schedule(state.step)
    return new_state, out

  return train_step


def jit_train_step(train_step: Callable, mesh) -> Callable:
  """Compile with the batch sharded over ``'data'``, everything else replicated, the state donated, and
  :func:`lliejax.runtime.compiler_options` (on CPU: XLA's memory-optimised scheduler)."""
  repl, data = parallel.replicated(mesh), parallel.data_sharded(mesh)
  return jax.jit(train_step, in_shardings=(repl, repl, data, repl), out_shardings=(repl, repl),
                 donate_argnums=(0,), compiler_options=runtime.compiler_options(runtime.mesh_platform(mesh)))


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *, stop_at: int | None = None,
                       mesh=None, force_config: bool = False, progress: bool = False) -> TrainState:
  """Train ``methods.build(config)`` (resuming from the latest checkpoint in ``workdir``), validate, export.

  The workdir is locked for the run (:func:`lliejax.checkpoint.prepare_workdir`) before anything is written
  there, and the lock is released however the run ends (normally, on an error, a NaN stop or Ctrl-C).

  Args:
    config: a method config (``config.method`` names the method).
    workdir: checkpoints, TensorBoard events, ``config.json`` and the final export (``export/``) go here.
    stop_at: stop after this step as if pre-empted (tests of resume); the checkpoint of that step is written.
    mesh: device mesh; default all devices of all processes.
    force_config: resume even though ``config`` differs from the workdir's ``config.json`` in keys outside
      :data:`lliejax.checkpoint.RESUMABLE_KEYS` (``config.json`` is then replaced).
    progress: show a tqdm progress bar over the training steps (from the resume step, steps/s and the loss in
      its postfix) on stderr, besides the logging.

  Returns:
    The final train state.

  Raises:
    lliejax.checkpoint.WorkdirLockedError: another run holds ``workdir``.
    lliejax.checkpoint.WorkdirError: ``workdir`` is a file, not writable, or its disk is full (also when a
      checkpoint cannot be written during the run; the last complete checkpoint stays the latest).
    lliejax.checkpoint.ConfigChangedError: resuming with another config (see ``force_config``).
    ValueError: a workdir of another method or architecture.
    FloatingPointError: a non-finite loss or gradient norm (see the module docstring); nothing is exported.
  """
  workdir = os.path.abspath(os.path.expanduser(workdir))
  with checkpoint.prepare_workdir(workdir):
    return _train(config, workdir, stop_at=stop_at, mesh=mesh, force_config=force_config, progress=progress)


def _train(config, workdir, *, stop_at, mesh, force_config, progress) -> TrainState:
  from clu import metric_writers, periodic_actions  # pylint: disable=import-outside-toplevel
  from lliejax.data import pipeline  # pylint: disable=import-outside-toplevel

  mesh = mesh or parallel.make_mesh()
  method = methods.build(config)
  ckpts = checkpoint.TrainCheckpoints(workdir, keep=int(config.keep_checkpoints))
  writer = bar = None
  try:
    latest = ckpts.latest_step()
    checkpoint.check_config(workdir, config, architecture_sections=method.architecture_sections,
                            resuming=latest is not None, force=force_config)
    tx, lr_schedule = optim.make_optimizer(config), optim.learning_rate_schedule(config)
    keys = state_lib.run_keys(config)
    init_key, train_key, eval_key = keys["init"], keys["train"], keys["eval"]
    repl = parallel.replicated(mesh)
    frozen = jax.device_put(method.init_frozen(init_key), repl)  # not jitted: it may read files (a teacher)
    abstract = state_lib.abstract(method, tx, repl)
    if latest is not None:
      state = ckpts.restore(latest, abstract)
      logging.info("resumed from %s at step %d", workdir, latest)
    else:
      state = jax.jit(lambda k: state_lib.create(method, tx, k), out_shardings=repl)(init_key)
    checkpoint.write_config(workdir, config)  # once the checkpoint fits: config.json describes the checkpoints
    writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
    writer.write_hparams(_flatten(config.to_dict()))
    logging.info("%s", method.describe(state.params))

    start, total = int(state.step), int(config.num_train_steps)
    parallel.local_batch_size(config.batch_size, mesh)  # validates divisibility by the device count
    data_iter = pipeline.train_iterator(config.data, seed=config.seed, batch_size=config.batch_size,
                                        process_index=jax.process_index(), process_count=jax.process_count(),
                                        start_step=start)
    step_fn = jit_train_step(make_train_step(method, tx, lr_schedule=lr_schedule), mesh)
    report = periodic_actions.ReportProgress(num_train_steps=total, writer=writer, every_steps=config.log_every)
    pending, acc, last_saved = None, None, latest
    bar = _ProgressBar(start, total, enabled=progress and jax.process_index() == 0)

    def check(metrics_, step):
      if not bool(metrics_["finite"]):
        ckpts.wait()
        raise FloatingPointError(f"non-finite loss ({float(metrics_['loss'])}) or gradient norm at step {step}; "
                                 f"training stopped (the loss was last finite at step {step - 1}), "
                                 f"{_last_checkpoint(ckpts, last_saved, abstract, method)}")

    collection = None
    enhancer = inference.Enhancer(method=method, params=None, frozen=frozen, source=workdir, info={})
    for step in range(start + 1, total + 1):
      local = next(data_iter)
      batch = parallel.global_batch({"lq": local["lq"], "gt": local["gt"]}, mesh)
      if step == start + 1:  # compile, then let every process reach the first collective together
        step_fn = step_fn.lower(state, frozen, batch, train_key).compile()
        checkpoint.sync_processes("train-step-compiled")
      state, step_metrics = step_fn(state, frozen, batch, train_key)
      if pending is not None:
        check(*pending)  # one step behind, so the host does not wait for the device every step
      pending = (step_metrics, step)
      scalars = {k: v for k, v in step_metrics.items() if k != "finite"}
      collection = collection or metrics.train_collection(scalars)
      update = collection.single_from_model_output(**scalars)
      acc = update if acc is None else acc.merge(update)
      report(step)
      logged = None
      if step % config.log_every == 0 or step == total:
        check(*pending)
        logged = {k: float(v) for k, v in acc.compute().items()}
        writer.write_scalars(step, logged)
        acc = None
      bar.step(step, logged)
      if step % config.checkpoint_every == 0 or step == total or step == stop_at:
        check(*pending)
        ckpts.save(step, state)
        last_saved = step
      if config.eval_every and step % config.eval_every == 0 and step != total:
        validate(enhancer.with_params(state.export_params(method)), config, step=step, writer=writer, key=eval_key)
      if step == stop_at:
        break
    if pending is not None:
      check(*pending)
    bar.close()
    ckpts.close()
    # Only a complete run gets here (a NaN stop raised above): the export is of finite parameters, which
    # checkpoint.export checks again.
    if int(state.step) >= total:
      _export(os.path.join(workdir, "export"), state, method, frozen, config, workdir)
      if config.eval_every:
        validate(enhancer.with_params(state.export_params(method)), config, step=total, writer=writer, key=eval_key)
    writer.close()
  except BaseException:
    for close in (getattr(bar, "close", None), ckpts.close, getattr(writer, "close", None)):
      try:
        if close is not None:
          close()
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("while stopping: %s", e)  # the first error is the one to report
    raise
  return state


def _export(directory: str, state: TrainState, method, frozen, config, workdir: str) -> None:
  try:
    checkpoint.export(directory, jax.device_get(state.export_params(method)), config=config, method=method.name,
                      method_module=type(method).__module__, frozen=jax.device_get(method.inference_frozen(frozen)),
                      overwrite=True, source=workdir, step=int(state.step), ema=method.export_ema in state.ema)
  except (OSError, ValueError) as e:
    if isinstance(e, checkpoint.WorkdirError) or checkpoint.os_error_code(e) is None:
      raise
    raise checkpoint.workdir_error(e, directory, "cannot write the export") from e


def _last_checkpoint(ckpts: checkpoint.TrainCheckpoints, step: int | None, abstract, method) -> str:
  """Where a stopped run resumes from, and whether those parameters are usable (finite, their global norms)."""
  if step is None:
    return "no checkpoint was written yet: fix the cause (e.g. a lower learning rate) and start again"
  try:
    norms = state_lib.global_norms(ckpts.restore(step, abstract), method)
  except Exception as e:  # pylint: disable=broad-except
    return f"the last checkpoint is step {step} in {ckpts.directory} (it could not be read back: {e})"
  shown = f"params global norm {norms['params']:.6g}"
  if method.export_ema:
    shown += f", {method.export_ema} {norms['export']:.6g}"
  if all(np.isfinite(v) for v in norms.values()):
    return (f"the last good checkpoint is step {step} in {ckpts.directory} ({shown}: finite, usable); fix the cause "
            "(e.g. a lower learning rate) and run again to resume from it")
  return (f"the last checkpoint, step {step} in {ckpts.directory}, is NOT usable ({shown}: not finite); resume from an "
          "earlier checkpoint or start a new --workdir")


class _ProgressBar:
  """A tqdm bar over the training steps (``start`` .. ``total``), steps/s (after compilation) and the loss."""

  def __init__(self, start: int, total: int, *, enabled: bool):
    self._bar, self._redirected = None, []
    if not enabled:
      return
    import tqdm  # pylint: disable=import-outside-toplevel
    self._bar = tqdm.tqdm(total=total, initial=start, unit="step", desc="train", dynamic_ncols=True,
                          bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}"
                          "{postfix}]", file=sys.stderr)
    self._bar.set_postfix_str("compiling", refresh=True)
    self._first, self._t0, self._loss = start + 1, None, None
    for handler in logging.getLogger().handlers:  # log lines above the bar instead of through it
      if isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stderr, sys.stdout):
        self._redirected.append((handler, handler.setStream(_TqdmStream(handler.stream))))

  def step(self, step: int, logged: dict | None) -> None:
    if self._bar is None:
      return
    now = time.perf_counter()
    if self._t0 is None:
      self._t0 = now  # the first step includes compilation
    if logged and "loss" in logged:
      self._loss = logged["loss"]
    parts = []
    if step > self._first:
      parts.append(f"{(step - self._first) / max(now - self._t0, 1e-9):.2f} steps/s")
    if self._loss is not None:
      parts.append(f"loss {self._loss:.4g}")
    self._bar.set_postfix_str(", ".join(parts), refresh=False)
    self._bar.update(1)

  def close(self) -> None:
    for handler, stream in self._redirected:
      handler.setStream(stream)
    self._redirected = []
    if self._bar is not None:
      self._bar.close()
      self._bar = None


class _TqdmStream:
  """A stream that writes through ``tqdm.write`` (keeps the bar below the log lines)."""

  def __init__(self, stream):
    self._stream = stream

  def write(self, text: str) -> None:
    import tqdm  # pylint: disable=import-outside-toplevel
    if text.strip():
      tqdm.tqdm.write(text.rstrip("\n"), file=self._stream)

  def flush(self) -> None:
    self._stream.flush()


def validate(enhancer: inference.Enhancer, config, *, step, writer, key):
  """Scores of the first ``config.eval_num_images`` evaluation images with the validation sampler."""
  result = evaluate.evaluate_dataset(enhancer, config.data, key=key,
                                     sampler=enhancer.method.default_sampler("validation"),
                                     max_images=config.eval_num_images)
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
