"""Progressive distillation (Salimans & Ho, ICLR 2022) of a lliejax diffusion teacher, one stage, as a
:class:`lliejax.methods.Method`: the ReDDiT-style two-teacher-step target (:mod:`lliejax.distill.progressive`)
on the teacher's process, for the Entropy-SDE teacher (the mean-reverting SDE) in particular -- ReDDiT's own
teachers have ``reddit_student`` (RATR, the official numbers), which ``lliejax distill --distiller trajectory`` uses
for them.

A student of the teacher family ``config.family`` (:mod:`lliejax.methods.consistency_student`: the teacher's network
and process section, the frozen teacher export, the start from its parameters, the exported EMA, the optional
spatial-entropy term of ``distill.entropy`` on the student's ``x0`` estimate):

* its grid: ``process.steps = S`` steps, the ``S + 1`` points ``grid_indices(size, S + 1)`` of the teacher's table
  (:func:`lliejax.distill.processes.grid_indices`; the SDE's integer times ``round(linspace(0, T, S + 1))``, ReDDiT's
  levels ``gamma_prev[round(linspace(0, n s, S + 1))]``), stepped with the deterministic ``'ddim'`` update;
* its teacher: the same process on the ``2S``-step grid (every other point of which is the student's, checked),
  stepped with ``process.teacher_solver`` (the SDE's ``'ddim'`` (default) or ``'euler'`` (the official
  ``reverse_ode_step``) for a base ``entropy_sde`` teacher; a ``progressive_student`` teacher steps with
  ``'ddim'``, as it samples);
* the teacher export: ``entropy_sde`` (or ``reddit_teacher`` / ``reddit_student``: the same generic target at grid
  levels, without RATR) for the first stage, then the previous stage's ``progressive_student`` export, whose
  ``process.steps`` must be ``2S``;
* the loss: :func:`lliejax.distill.progressive.loss` (``distill.weighting``: ``truncated_snr``, ``x0``, ``eps``;
  ``distill.k`` forces the step);
* sampling (``'ddim'``): the student's deterministic steps from ``x_T`` (:meth:`Process.init_state`:
  ``mu + lambda z`` for the SDE, ``N(0, I)`` for the DDPM) on its grid, ``steps`` (default ``sampling.steps``) a
  divisor of ``S`` (a strided sub-grid), in one ``lax.scan``; ReDDiT models reflect-pad as their teacher.

:func:`lliejax.distill.progressive.distill_stages` chains the stages (``100``-step Entropy-SDE -> ``64``-step teacher
grid -> 32 -> 16 -> 8 -> 4 for a 4-step student; :func:`lliejax.distill.progressive.first_teacher_steps`).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lliejax import config_utils as cu
from lliejax import methods
from lliejax.distill import processes as pr
from lliejax.distill import progressive
from lliejax.methods import consistency_student as cs


def table_size(config) -> int | None:
  """The number of points of the teacher's table (``n s + 1`` for ReDDiT, ``T + 1`` for the SDE), or None."""
  family = config.get("family")
  if family not in cs.FAMILIES or cs.FAMILIES[family].section not in config:
    return None
  sec = config[cs.FAMILIES[family].section]
  if family == "reddit":
    n, s = sec.get("num_timesteps"), sec.get("time_scale")
    return n * s + 1 if cu.is_int(n) and cu.is_int(s) else None
  return sec.T + 1 if cu.is_int(sec.get("T")) else None


@methods.register
class ProgressiveStudent(cs.DistilledStudent):
  """One stage of progressive distillation from a frozen teacher export (module docstring)."""

  name = "progressive_student"
  samplers = ("ddim",)
  teacher_methods = ("entropy_sde", "reddit_teacher", "reddit_student", "progressive_student")

  def __init__(self, config):
    super().__init__(config)
    self.steps = int(config.process.steps)
    self.student = self.grid(self.steps, "ddim")
    self._teacher_process = None
    self._teacher_is_student = False

  @classmethod
  def validate_config(cls, config, *, device_count=None):
    """The family checks, then ``process`` (a ``2S``-step teacher grid within the table), ``sampling.steps`` (a
    divisor of ``S``) and ``distill`` (``weighting``, ``k``)."""
    super().validate_config(config, device_count=device_count)
    s = cu.check_int(config, "process.steps", min_value=1)
    cu.check_choice(config, "process.teacher_solver", pr.IRSDE_SOLVERS)
    size = table_size(config)
    if s is not None and size is not None and 2 * s > size - 1:
      raise cu.ConfigError("process.steps", f"must be at most {(size - 1) // 2} (the teacher's grid of 2 * steps "
                           f"must fit its table of {size} points), got {s}")
    steps = cu.check_int(config, "sampling.steps", min_value=1)
    if s is not None and steps is not None and s % steps:
      raise cu.ConfigError("sampling.steps", f"must divide process.steps ({s}), got {steps}")
    pad = cu.check_int_list(config, "sampling.pad", min_value=0)
    if pad is not None and len(pad) != 2:
      raise cu.ConfigError("sampling.pad", f"must be [rows, columns], got {list(pad)}")
    cu.check_choice(config, "distill.weighting", progressive.WEIGHTINGS)
    cu.check_float(config, "distill.w_gt", min_value=0.0)
    cu.check_choice(config, "distill.parametrization", cls.PARAMETRISATIONS)
    cu.check_int(config, "distill.first_grid", min_value=2, allow_none=True)
    k = cu.check_int(config, "distill.k", min_value=0, allow_none=True)
    if k is not None and s is not None and k > s - 1:
      raise cu.ConfigError("distill.k", f"must be a student step index in [0, {s - 1}], got {k}")

  # ---------------------------------------------------------------------------------------------- grids
  def grid(self, steps: int, solver: str = "ddim") -> pr.Process:
    """The family's process on the ``steps``-step grid (module docstring)."""
    if self.family.name == "reddit":
      return pr.DDPMGamma.from_schedule(self.base.schedule, int(steps) + 1)
    return pr.MeanReverting.from_sde(self.base.sde, int(steps) + 1, solver=solver)

  @property
  def teacher_process(self) -> pr.Process:
    """The teacher's process on the ``2S``-step grid (``process.teacher_solver``), checked to nest the student's."""
    if self._teacher_process is None:
      teacher = self.grid(2 * self.steps, self.config.process.get("teacher_solver", "ddim"))
      progressive.check_nested(teacher, self.student)
      self._teacher_process = teacher
    return self._teacher_process

  def check_teacher(self, export, path):
    """A ``progressive_student`` teacher has ``2S`` steps and is stepped with ``'ddim'``, as it samples."""
    if export.method != "progressive_student":
      return
    theirs_param = export.config.get("distill", {}).get("parametrization", "eps")
    ours_param = self.config.distill.get("parametrization", "eps")
    if theirs_param != ours_param:
      raise ValueError(f"{path}: a progressive_student teacher with distill.parametrization={theirs_param!r} cannot "
                       f"teach a student with {ours_param!r} (set the same)")
    self._teacher_is_student = True
    theirs = int(export.config.process.steps)
    if theirs != 2 * self.steps:
      raise ValueError(f"{path}: a {theirs}-step progressive student cannot teach this {self.steps}-step student "
                       f"(the teacher has twice the student's steps)")
    if self.config.process.get("teacher_solver", "ddim") != "ddim":
      raise ValueError(f"{path}: a progressive_student teacher samples with 'ddim' steps; set "
                       "process.teacher_solver=ddim")

  # ---------------------------------------------------------------------------------------------- parametrisation
  PARAMETRISATIONS = ("eps", "x0")

  def student_fn(self, params):
    """``(x_t, cond, time) -> noise`` of the student: the network's output itself (``distill.parametrization``
    ``'eps'``, the teacher's, default) or, with ``'x0'``, the output ``o`` read as the clean image's residual on the
    condition, ``x0 = cond + o``, turned into the noise it implies at ``time`` (SDE: ``(x - mu - (x0 - mu)
    e^{-Theta_t}) / sigma_bar_t``; ReDDiT's DDPM: ``(x - gamma x0) / sqrt(1 - gamma^2)``). Salimans & Ho §4: an
    ``eps`` network cannot give ``x0`` at low signal-to-noise ratios (Entropy-SDE: ``x0 = mu + (x - mu - sigma_bar
    eps) e^{Theta_t}``, an error of the noise prediction amplified ~39x at ``t = T``), which few-step students need.
    """
    fn = self.net_fn(params)
    if self.config.distill.get("parametrization", "eps") == "eps":
      return fn

    def x0_param(x, cond, time):
      x0 = cond + fn(x, cond, time)
      if self.family.name == "reddit":
        g = time.astype(jnp.float32).reshape((-1,) + (1,) * (x.ndim - 1))
        return (x - g * x0) / jnp.sqrt(jnp.maximum(1.0 - g * g, 1e-12))
      sde = self.base.sde
      return (x - cond - (x0 - cond) * sde.mean_weight(time, x.ndim)) / sde.sigma_bar(time, x.ndim)
    return x0_param

  def teacher_fn(self, frozen):
    """The frozen teacher's noise function: a ``progressive_student`` teacher with its own parametrisation
    (checked equal to this stage's by :meth:`check_teacher`), a base teacher's network otherwise."""
    if self.config.distill.get("parametrization", "eps") != "eps":
      self.teacher_export()  # reads (once) whether the teacher is a progressive_student, checked to match
    if self._teacher_is_student:
      return self.student_fn(frozen["teacher"])
    return self.net_fn(frozen["teacher"])

  def options(self) -> progressive.Options:
    k = self.config.distill.get("k")
    return progressive.Options(weighting=self.config.distill.get("weighting", "truncated_snr"),
                               k=None if k is None else int(k), w_gt=float(self.config.distill.get("w_gt", 0.0)))

  # ---------------------------------------------------------------------------------------------- objective
  def loss(self, params, frozen, batch, key, *, ema, step=None):
    """:func:`lliejax.distill.progressive.loss` on the batch in the process's range (+ the entropy term)."""
    del ema
    k_pd, k_ent = jax.random.split(key)
    data = {"x0": self.to_process(batch["gt"]), "cond": self.to_process(batch["lq"])}
    x0_loss = None
    if self._entropy is not None:
      x0_loss = lambda x0_s, x0_tgt: self.entropy_term(x0_s, x0_tgt, batch["gt"], k_ent, step)
    total, aux = progressive.loss(self.teacher_process, self.student, self.student_fn(params),
                                  self.teacher_fn(frozen), data, k_pd, options=self.options(), x0_loss=x0_loss)
    if "extra" in aux:
      aux["entropy"] = aux.pop("extra")
    return total, aux

  def sample(self, params, frozen, lq, key, *, sampler=None, steps=None):
    """The student's deterministic sampler on its grid (stride ``S / steps``), in [0, 1]."""
    del frozen
    self.check_sampler(sampler)
    steps = int(self.config.sampling.steps if steps is None else steps)
    if steps < 1 or self.steps % steps:
      raise ValueError(f"progressive_student: steps must divide process.steps={self.steps} (e.g. "
                       f"{', '.join(str(d) for d in range(1, self.steps + 1) if self.steps % d == 0)}), got {steps}")
    process = self.student
    stride = self.steps // steps
    if stride > 1:
      if self.family.name == "reddit":
        process = pr.DDPMGamma(gammas=process.gammas[::stride], data_range=process.data_range)
      else:
        process = pr.MeanReverting(sde=process.sde, ts=process.ts[::stride], solver="ddim",
                                   data_range=process.data_range)
    cond, finish = self.prepare(lq)
    return finish(progressive.sample(process, self.student_fn(params), cond, key))

  def describe(self, params):
    return (f"progressive_student: the {self.family.name} network ({methods.count_params(params):,} parameters), "
            f"a {self.steps}-step student of its {2 * self.steps}-step teacher grid "
            f"({self.config.process.get('teacher_solver', 'ddim')} teacher steps, "
            f"{self.config.distill.get('weighting', 'truncated_snr')} weighting)")
