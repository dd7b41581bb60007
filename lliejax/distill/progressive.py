"""Progressive distillation (Salimans & Ho, "Progressive Distillation for Fast Sampling of Diffusion Models", ICLR
2022) on any teacher process of :mod:`lliejax.distill.processes`: ReDDiT's two-teacher-step target (the trajectory
distiller, :mod:`lliejax.distill.trajectory`) generalised through the :class:`~lliejax.distill.processes.Process`
interface, so that the mean-reverting SDE of Entropy-SDE is distilled stage by stage as ReDDiT's DDPM is.

Notation: the teacher's process on a grid ``t_0 < t_1 < ... < t_{2M}`` (``2M`` deterministic steps,
:meth:`Process.ode_step`), and the student's process on every other point, ``s_k = t_{2k}``, ``k = 0..M``
(:func:`student_process`: the same process on the sub-grid, stepping with the deterministic ``'ddim'`` update: the
DDIM step of the gamma-DDPM, the exponential integrator of the mean-reverting SDE). Per sample ``k ~ U{0..M-1}`` and
``z ~ N(0, I)`` (:func:`draw`):

1. ``x = q(x_{t_{2k+2}} | x0, cond)`` (:meth:`Process.forward_sample`): the student's state at ``s_{k+1}``;
2. two deterministic teacher steps (noise predictions under ``stop_gradient``, :func:`teacher_steps`):
   ``x' = Phi_T(x; t_{2k+2} -> t_{2k+1})``, ``x'' = Phi_T(x'; t_{2k+1} -> t_{2k})``;
3. the target (:func:`solve_noise`, :func:`targets`): the student's one step ``Phi_S(x; s_{k+1} -> s_k, eps)`` is
   **affine in its noise prediction** ``eps`` for every step of :mod:`lliejax.distill.processes` (the DDPM's DDIM
   step ``gamma_s x / gamma_t + (sigma_s - gamma_s sigma_t / gamma_t) eps``; the SDE's ``'ddim'`` step
   ``mu + (x - mu) e^{Theta_t - Theta_s} + (sigma_bar_s - sigma_bar_t e^{Theta_t - Theta_s}) eps``; its ``'euler'``
   step too), ``Phi_S(x; eps) = a + b eps`` with ``a = Phi_S(x; 0)`` and ``b = Phi_S(x; 1) - a``. For the ``'ddim'``
   steps ``b = r (nu_{s_k} - nu_{s_{k+1}})`` (``r = gamma_{s_k}`` for the DDPM, ``e^{-Theta_{s_k}}`` for the SDE;
   ``nu`` the strictly increasing noise level of :meth:`Process.noise_levels`), never 0. So the one noise prediction
   whose single student step lands exactly on the teacher's two-step state is, in closed form,
   ``eps_tgt = (x'' - a) / b``, and ``x0_tgt = predict_x0(x, s_{k+1}, eps_tgt)`` (:meth:`Process.predict_x0`) --
   Salimans & Ho's Algorithm 2 target ``x_tilde = (z'' - (sigma_s / sigma_t) z_t) / (alpha_s - (sigma_s / sigma_t)
   alpha_t)`` for the variance-preserving DDIM, here for any affine step;
4. the student ``eps_s = F(x, cond, s_{k+1})``, ``x0_s = predict_x0(x, s_{k+1}, eps_s)`` and (:data:`WEIGHTINGS`)
   ``'truncated_snr'`` (default): ``mean_b max(MSE_b(x0_s, x0_tgt), MSE_b(eps_s, eps_tgt))`` (Salimans & Ho §4,
   "truncated SNR" weighting ``max(SNR, 1)`` of the ``x0`` error; the ``max`` of ReDDiT's loss), ``'x0'`` (the ``x0``
   MSE alone) or ``'eps'`` (the noise MSE alone);
5. with ``w_gt > 0`` (:class:`Options`), ReDDiT's ground-truth term ``w_gt mean_b max(MSE_b(x0, x0_s), MSE_b(z,
   eps_s))`` is added (``L_gt`` of ``GaussianDiffusion.loss`` in ReDDiT's ``model/ddpm_trans_modules/
   diffusion.py``, REFERENCE §3.4 step 7; :func:`lliejax.distill.trajectory.loss` has it for ReDDiT's teachers, with
   the official ``w_gt = 0.1`` of LOL-v1): the student is pulled towards the ground truth as well as along the
   teacher's trajectory, so it can do better than the teacher's own deterministic sampler (which, for the
   Entropy-SDE demo teacher, scores several dB below its stochastic posterior sampler). Salimans & Ho have no such
   term (``w_gt = 0``, the default).

For the gamma-DDPM on grid levels this is :func:`lliejax.distill.trajectory.targets` without RATR (ReDDiT draws
continuous levels inside the grid intervals; here the levels are the grid's); the tests check the two agree.

**Stages.** A student of ``M`` steps is the teacher of the next stage (``M / 2`` steps); the
``progressive_student`` method (:mod:`lliejax.methods.progressive_student`) trains one stage with the generic loop,
and :func:`distill_stages` chains them as :func:`lliejax.distill.trajectory.distill_stages` does ReDDiT's. The grid
of an ``S``-step model is :func:`grid` ``(S)`` (``S + 1`` points of the teacher's table, from the clean end), and
``grid(2S)[::2] == grid(S)``, checked (:func:`check_nested`). The first stage from a base teacher of ``T`` native
steps (``sde.T`` = 100 for Entropy-SDE, ``diffusion.num_timesteps`` for ReDDiT) uses the teacher on the grid of
``G_0 = final * 2^m`` steps, the largest such ``<= T`` (:func:`first_teacher_steps`): for Entropy-SDE's ``T = 100``
and a 4-step student, ``64 -> 32 -> 16 -> 8 -> 4`` (four stages; a 64-step deterministic teacher, as Salimans & Ho
start from a DDIM teacher on a power-of-two grid); for 2 steps one more stage; ``final = 25`` gives
``100 -> 50 -> 25``. ``distill.first_grid`` starts from a coarser grid instead (e.g. ``8``: one ``8 -> 4`` stage).

All functions are pure and traceable; networks are ``net_fn(x_t, cond, time) -> noise`` callables (the caller binds
the student's (differentiated) and the frozen teacher's parameters).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lliejax.distill import processes as pr

NetFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
WEIGHTINGS = ("truncated_snr", "x0", "eps")


@dataclasses.dataclass(frozen=True)
class Options:
  """Static options of :func:`loss`.

  Attributes:
    weighting: one of :data:`WEIGHTINGS` (module docstring, step 4).
    k: force the student's step index ``k`` (in ``0..M-1``: from ``s_{k+1}`` to ``s_k``) instead of drawing it.
    w_gt: weight of ReDDiT's ground-truth term (module docstring, step 5; 0 skips it).
  """

  weighting: str = "truncated_snr"
  k: int | None = None
  w_gt: float = 0.0

  def __post_init__(self):
    if self.weighting not in WEIGHTINGS:
      raise ValueError(f"progressive distillation: weighting={self.weighting!r}; choose one of "
                       f"{', '.join(WEIGHTINGS)}")
    if not self.w_gt >= 0.0:
      raise ValueError(f"progressive distillation: w_gt must be >= 0, got {self.w_gt}")


# ------------------------------------------------------------------------------------------------ grids
def student_process(teacher: pr.Process) -> pr.Process:
  """The student's process: the teacher's on every other grid point, with the deterministic ``'ddim'`` step.

  Raises:
    ValueError: the teacher's grid has an odd number of steps (or one step).
    TypeError: a process other than :class:`~lliejax.distill.processes.DDPMGamma` /
      :class:`~lliejax.distill.processes.MeanReverting`.
  """
  steps = teacher.num_scales - 1
  if steps < 2 or steps % 2:
    raise ValueError(f"progressive distillation: the teacher's grid has {steps} step(s); a student of half as many "
                     "needs an even number >= 2")
  if isinstance(teacher, pr.DDPMGamma):
    return pr.DDPMGamma(gammas=teacher.gammas[::2], data_range=teacher.data_range)
  if isinstance(teacher, pr.MeanReverting):
    return pr.MeanReverting(sde=teacher.sde, ts=teacher.ts[::2], solver="ddim", data_range=teacher.data_range)
  raise TypeError(f"progressive distillation: no sub-grid rule for {type(teacher).__name__}")


def check_nested(teacher: pr.Process, student: pr.Process) -> None:
  """Raises ``ValueError`` unless the student's grid is every other point of the teacher's (same noise levels)."""
  nu_t, nu_s = teacher.noise_levels(), student.noise_levels()
  if nu_t.size != 2 * nu_s.size - 1 or not np.array_equal(nu_t[::2], nu_s):
    raise ValueError(f"progressive distillation: the student's {nu_s.size - 1}-step grid is not every other point "
                     f"of the teacher's {nu_t.size - 1}-step grid")


def first_teacher_steps(native_steps: int, final_steps: int, first_grid: int | None = None) -> int:
  """``G_0 = final_steps * 2^m``, the largest such ``<= native_steps`` with ``m >= 1`` (module docstring), or
  ``first_grid`` when given (``distill.first_grid``: fewer stages from a coarser teacher grid, e.g. ``8`` for one
  ``8 -> 4`` stage), checked to be such a count.

  Raises:
    ValueError: ``final_steps < 1``, ``2 * final_steps > native_steps``, or a ``first_grid`` that is not
      ``final_steps * 2^m`` (``m >= 1``) within ``native_steps``.
  """
  native_steps, final_steps = int(native_steps), int(final_steps)
  if final_steps < 1 or 2 * final_steps > native_steps:
    raise ValueError(f"progressive distillation: a {native_steps}-step teacher has no student of {final_steps} "
                     f"step(s) (stages halve; at most {native_steps // 2})")
  steps = 2 * final_steps
  allowed = [steps]
  while 2 * steps <= native_steps:
    steps *= 2
    allowed.append(steps)
  if first_grid is None:
    return steps
  if int(first_grid) not in allowed:
    raise ValueError(f"progressive distillation: distill.first_grid={first_grid} must be final_steps * 2^m within "
                     f"the teacher's {native_steps} steps, one of {allowed}")
  return int(first_grid)


# ------------------------------------------------------------------------------------------------ target
def step_coefficients(process: pr.Process, x: jax.Array, cond: jax.Array, n) -> tuple[jax.Array, jax.Array]:
  """``(a, b)`` with ``process.ode_step(x, cond, eps, n) = a + b eps`` (the step is affine in ``eps``)."""
  a = process.ode_step(x, cond, jnp.zeros_like(x), n)
  b = process.ode_step(x, cond, jnp.ones_like(x), n) - a
  return a, b


def solve_noise(process: pr.Process, x: jax.Array, cond: jax.Array, n, x_target: jax.Array
                ) -> tuple[jax.Array, jax.Array]:
  """``(eps, b)``: the noise prediction whose step ``process.ode_step(x, cond, eps, n)`` lands on ``x_target``
  (``(x_target - a) / b``, :func:`step_coefficients`), and the coefficient ``b``."""
  a, b = step_coefficients(process, x, cond, n)
  return (x_target - a) / b, b


def teacher_steps(teacher: pr.Process, teacher_eps_fn: NetFn, x: jax.Array, cond: jax.Array, k
                  ) -> tuple[jax.Array, jax.Array]:
  """``(x', x'')``: two deterministic teacher steps ``t_{2k+2} -> t_{2k+1} -> t_{2k}`` from ``x`` (no gradient)."""
  batch = x.shape[0]
  k = pr.as_index(k, batch)
  out = []
  for n in (2 * k + 1, 2 * k):
    eps = jax.lax.stop_gradient(teacher_eps_fn(x, cond, teacher.net_time(n + 1, batch)))
    x = jax.lax.stop_gradient(teacher.ode_step(x, cond, eps, n))
    out.append(x)
  return out[0], out[1]


class Draw(NamedTuple):
  """The random quantities of one step."""

  k: jax.Array  # int32 (B,): the student's step s_{k+1} -> s_k
  noise: jax.Array  # z of x_{s_{k+1}}, the shape of x0


def draw(student: pr.Process, key: jax.Array, shape: tuple[int, ...], *, options: Options = Options()) -> Draw:
  """``k ~ U{0..M-1}`` per sample and ``z ~ N(0, I)``, as :func:`loss` draws them from ``key``."""
  kk, kz = jax.random.split(key)
  m = student.num_scales - 1
  if options.k is None:
    k = jax.random.randint(kk, (shape[0],), 0, m, dtype=jnp.int32)
  else:
    if not 0 <= options.k <= m - 1:
      raise ValueError(f"progressive distillation: k must be in [0, {m - 1}], got {options.k}")
    k = jnp.full((shape[0],), options.k, jnp.int32)
  return Draw(k, jax.random.normal(kz, shape, jnp.float32))


def targets(teacher: pr.Process, student: pr.Process, teacher_eps_fn: NetFn, x0: jax.Array, cond: jax.Array,
            d: Draw) -> dict[str, jax.Array]:
  """Steps 1-3 of the module docstring (no gradient): ``x_t`` (the student's input state), ``x_mid`` / ``x_end``
  (the teacher's two steps), ``eps_tgt``, ``x0_tgt`` and ``coefficient`` (``b``)."""
  x_t = student.forward_sample(x0, cond, d.k + 1, d.noise)
  x_mid, x_end = teacher_steps(teacher, teacher_eps_fn, x_t, cond, d.k)
  eps_tgt, b = solve_noise(student, x_t, cond, d.k, x_end)
  out = {"x_t": x_t, "x_mid": x_mid, "x_end": x_end, "eps_tgt": eps_tgt,
         "x0_tgt": student.predict_x0(x_t, cond, d.k + 1, eps_tgt), "coefficient": b}
  return jax.tree.map(jax.lax.stop_gradient, out)


def _mse_per_sample(a, b):
  return jnp.mean(jnp.square(a - b).reshape(a.shape[0], -1), axis=-1)


def loss(teacher: pr.Process, student: pr.Process, student_fn: NetFn, teacher_eps_fn: NetFn,
         batch: Mapping[str, jax.Array], key: jax.Array, *, options: Options = Options(),
         x0_loss: Callable[[jax.Array, jax.Array], jax.Array] | None = None
         ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The progressive-distillation loss of one batch (module docstring): ``(scalar, aux)``. Pure and traceable.

  Args:
    teacher: the teacher's process on its ``2M``-step grid.
    student: the student's (:func:`student_process` of ``teacher``; checked with :func:`check_nested`).
    student_fn: ``(x_t, cond, time) -> noise`` of the student (the caller differentiates through it).
    teacher_eps_fn: the same of the frozen teacher (outputs under ``stop_gradient``).
    batch: ``{'x0': GT, 'cond': LQ}``, NHWC in the processes' ``data_range``.
    key: the step's key; the draws are :func:`draw` ``(student, key, x0.shape, options=options)``.
    options: :class:`Options`.
    x0_loss: an extra term ``x0_loss(x0_student, x0_target) -> scalar`` added to the total (reported as
      ``extra``): e.g. the spatial-entropy loss of the ``progressive_student`` method.

  Returns:
    The total and ``aux``: ``distill``, ``x0_mse``, ``eps_mse``, ``k`` (mean drawn index), ``min_abs_coefficient``
    (the smallest ``|b|``), ``gt`` with ``options.w_gt`` and ``extra`` with ``x0_loss``.
  """
  check_nested(teacher, student)
  x0, cond = batch["x0"], batch["cond"]
  d = draw(student, key, x0.shape, options=options)
  tg = targets(teacher, student, teacher_eps_fn, x0, cond, d)
  batch_size = x0.shape[0]
  eps_s = student_fn(tg["x_t"], cond, student.net_time(d.k + 1, batch_size))
  x0_s = student.predict_x0(tg["x_t"], cond, d.k + 1, eps_s)
  mse_x0, mse_eps = _mse_per_sample(x0_s, tg["x0_tgt"]), _mse_per_sample(eps_s, tg["eps_tgt"])
  per_sample = {"truncated_snr": jnp.maximum(mse_x0, mse_eps), "x0": mse_x0, "eps": mse_eps}[options.weighting]
  distill = jnp.mean(per_sample)
  aux = {"distill": distill, "x0_mse": jnp.mean(mse_x0), "eps_mse": jnp.mean(mse_eps),
         "k": jnp.mean(d.k.astype(jnp.float32)), "min_abs_coefficient": jnp.min(jnp.abs(tg["coefficient"]))}
  total = distill
  if options.w_gt:
    gt = jnp.mean(jnp.maximum(_mse_per_sample(x0, x0_s), _mse_per_sample(d.noise, eps_s)))
    total = total + options.w_gt * gt
    aux["gt"] = gt
  if x0_loss is not None:
    extra = x0_loss(x0_s, tg["x0_tgt"])
    total = total + extra
    aux["extra"] = extra
  return total, aux


def sample(process: pr.Process, net_fn: NetFn, cond: jax.Array, key: jax.Array | None = None, *,
           x_init: jax.Array | None = None) -> jax.Array:
  """A student's sampler: the deterministic steps of its process (its grid, ``'ddim'`` step) from ``x_T``
  (:meth:`Process.init_state`) to the clean end, in one ``lax.scan`` (:func:`lliejax.distill.consistency.ode_sample`).
  Traceable."""
  from lliejax.distill import consistency  # pylint: disable=import-outside-toplevel
  return consistency.ode_sample(process, net_fn, cond, key, x_init=x_init)


# ------------------------------------------------------------------------------------------------ stages
def stage_config(config, teacher: str, *, final_steps: int | None = None):
  """A copy of the ``progressive_student`` ``config`` for the stage whose teacher is the export ``teacher``.

  The model, the family and its process section are the teacher's
  (:func:`lliejax.methods.consistency_student.student_config`); the student's grid ``process.steps`` (and
  ``sampling.steps``) is half the teacher's: half of a ``progressive_student`` teacher's ``process.steps``, or
  ``first_teacher_steps(T, final_steps) / 2`` for a base teacher (``entropy_sde``, ``reddit_teacher``,
  ``reddit_student``: ``T`` its native step count; ``final_steps`` defaults to half of it).

  Raises:
    ValueError: an export that cannot teach, or a teacher grid with no half-step student.
  """
  from lliejax import checkpoint  # pylint: disable=import-outside-toplevel
  from lliejax.methods import consistency_student as cs  # pylint: disable=import-outside-toplevel
  from lliejax import methods  # pylint: disable=import-outside-toplevel
  info = checkpoint.read_export_info(teacher)
  allowed = methods.get(config.method).teacher_methods
  if info["method"] not in allowed:
    raise ValueError(f"{teacher}: a {info['method']} export cannot teach {config.method} (expected one of "
                     f"{', '.join(allowed)})")
  stage = cs.student_config(config, teacher, info=info)
  if info["method"] == "progressive_student":
    steps = int(info["config"]["process"]["steps"])
    if steps % 2 or steps < 2:
      raise ValueError(f"{teacher}: a {steps}-step teacher has no half-step student (stages halve an even count)")
    stage.process.teacher_solver = "ddim"  # it samples with 'ddim' steps
  else:
    native = cs.native_steps(stage)
    steps = first_teacher_steps(native, native // 2 if final_steps is None else final_steps,
                                config.distill.get("first_grid"))
  stage.process.steps = steps // 2
  stage.sampling.steps = steps // 2
  return stage


def teacher_grid_steps(teacher: str, *, final_steps: int, first_grid: int | None = None) -> int:
  """The grid step count ``teacher`` is distilled from (what :func:`stage_config` halves; ``first_grid`` as
  :func:`first_teacher_steps`, for a base teacher)."""
  from lliejax import checkpoint  # pylint: disable=import-outside-toplevel
  from lliejax.methods import consistency_student as cs  # pylint: disable=import-outside-toplevel
  info = checkpoint.read_export_info(teacher)
  if info["method"] == "progressive_student":
    return int(info["config"]["process"]["steps"])
  import ml_collections  # pylint: disable=import-outside-toplevel
  return first_teacher_steps(cs.native_steps(ml_collections.ConfigDict(info["config"]),
                                             family=cs.family_of_export(info, teacher)), final_steps, first_grid)


def distill_stages(config, teacher: str, workdir: str, *, final_steps: int = 4,
                   train_fn: Callable | None = None) -> list[str]:
  """Progressive distillation: stages ``G -> G/2 -> ... -> final_steps`` (module docstring), each student the next
  stage's teacher; stage ``k`` trains in ``workdir/<S>step`` (``S`` its step count) with ``train_fn(stage_config,
  stage_workdir)`` (default :func:`lliejax.train.train_and_evaluate`), whose ``export/`` teaches stage ``k + 1``.

  Args:
    config: a ``progressive_student`` config (its family, model, grid and teacher are set per stage).
    teacher: the first teacher's export (``entropy_sde``, ``reddit_teacher``, ``reddit_student`` or a
      ``progressive_student`` to continue from).
    workdir: the stages' workdirs go under it.
    final_steps: the step count of the last student.
    train_fn: ``(config, workdir) -> anything``; must leave an export in ``workdir/export``.

  Returns:
    The export directories of the students, first stage first.

  Raises:
    ValueError: no stage reaches ``final_steps`` (naming the teacher's grid).
  """
  from lliejax import config_utils  # pylint: disable=import-outside-toplevel
  if train_fn is None:
    from lliejax import train  # pylint: disable=import-outside-toplevel
    train_fn = train.train_and_evaluate
  final_steps = int(final_steps)
  if final_steps < 1:
    raise ValueError(f"final_steps must be >= 1, got {final_steps}")
  exports = []
  while True:
    steps = teacher_grid_steps(teacher, final_steps=final_steps, first_grid=config.distill.get("first_grid"))
    if steps % 2 or steps // 2 < final_steps:
      if not exports:
        raise ValueError(f"{teacher}: a {steps}-step teacher grid has no student of >= final_steps={final_steps} "
                         "steps (stages halve an even step count)")
      break
    stage = stage_config(config, teacher, final_steps=final_steps)
    config_utils.validate_config(stage)
    stage_dir = os.path.join(os.path.abspath(os.path.expanduser(workdir)), f"{steps // 2}step")
    train_fn(stage, stage_dir)
    teacher = os.path.join(stage_dir, "export")
    exports.append(teacher)
    if steps // 2 == final_steps:
      break
  return exports


__all__ = ["Options", "WEIGHTINGS", "Draw", "check_nested", "distill_stages", "draw", "first_teacher_steps",
           "loss", "sample", "solve_noise", "stage_config", "step_coefficients", "student_process", "targets",
           "teacher_grid_steps", "teacher_steps"]
