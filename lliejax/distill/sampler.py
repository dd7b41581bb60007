"""Sampler distillation: a few-step student whose whole sampler (stochastic for Entropy-SDE, ReDDiT's deterministic
DDIM) is trained, unrolled, to reproduce the output of its teacher's many-step sampler (knowledge distillation of an
iterative sampler, Luhman & Luhman, "Knowledge Distillation in Iterative Generative Models for Improved Sampling
Speed", 2021, there with a one-step deterministic student; here any number of steps, a possibly stochastic student
sampler and a conditional teacher).

Why a third distiller: the trajectory (:mod:`lliejax.distill.progressive`) and consistency
(:mod:`lliejax.distill.consistency`) distillers both follow the teacher's **probability-flow ODE**. For the
mean-reverting SDE of Entropy-SDE that ODE is a poor sampler of a small teacher (the demo teacher scores 16.6 dB with
100 official Euler ODE steps against 21.4 dB with its 100 stochastic posterior steps), so both students start several
dB below the teacher they are meant to match. This distiller targets what the user actually runs, the teacher's
stochastic sampler, and trains the student's own sampler end to end.

Per batch ``{x0: GT, cond: LQ}`` and key (:func:`loss`):

1. the initial state ``x_T`` is drawn once (``init_fn(key, cond)``; the SDE: ``mu + lambda z``) and, with
   ``shared_init`` (default), given to both samplers: the student learns the map from the teacher's starting noise
   to the teacher's sample, as Luhman & Luhman's student does;
2. the target ``y = teacher_sample(cond, x_T, k_teacher)``: the teacher's sampler (for Entropy-SDE the official
   posterior sampler on the full grid, or :func:`lliejax.diffusion.irsde.sample_strided` with fewer steps), no
   gradient;
3. the student ``x = student_sample(cond, x_T, k_student)``: its own ``S``-step sampler (for Entropy-SDE
   :func:`~lliejax.diffusion.irsde.sample_strided` with ``eta``), differentiated through all ``S`` network calls;
4. the loss ``metric(x, y)`` (``'l2'``: the per-image mean squared error, so the student learns the conditional mean
   of the teacher's samples, what PSNR rewards; ``'l1'``), averaged over the batch, plus ``w_gt * metric(x, x0)``
   with ``w_gt > 0`` (a ground-truth term as ReDDiT's ``w_gt``; off by default: the student then sees only the
   teacher, never the ground truth).

All functions are pure and traceable; the samplers are closures the caller binds to the student's (differentiated)
and the frozen teacher's parameters (:class:`lliejax.methods.sampler_student.SamplerStudent`).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping

import jax
import jax.numpy as jnp

#: ``distill.metric``.
METRICS = ("l2", "l1")

#: ``(cond, x_init, key) -> sample`` in the process's range.
SampleFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
#: ``(key, cond) -> x_T``.
InitFn = Callable[[jax.Array, jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class Options:
  """Static options of :func:`loss`.

  Attributes:
    metric: one of :data:`METRICS` (module docstring, step 4).
    w_gt: weight of the ground-truth term (0 skips it).
    shared_init: give the teacher and the student the same ``x_T`` (step 1); False draws the student's own.
  """

  metric: str = "l2"
  w_gt: float = 0.0
  shared_init: bool = True

  def __post_init__(self):
    if self.metric not in METRICS:
      raise ValueError(f"sampler distillation: metric={self.metric!r}; choose one of {', '.join(METRICS)}")
    if not self.w_gt >= 0.0:
      raise ValueError(f"sampler distillation: w_gt must be >= 0, got {self.w_gt}")


def distance(a: jax.Array, b: jax.Array, metric: str = "l2") -> jax.Array:
  """Per-image ``mean((a - b)^2)`` (``'l2'``) or ``mean(|a - b|)`` (``'l1'``): shape ``(B,)``."""
  d = a - b
  d = jnp.square(d) if metric == "l2" else jnp.abs(d)
  return jnp.mean(d.reshape(d.shape[0], -1), axis=-1)


def loss(student_sample: SampleFn, teacher_sample: SampleFn, init_fn: InitFn, batch: Mapping[str, jax.Array],
         key: jax.Array, *, options: Options = Options()) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The sampler-distillation loss of one batch (module docstring): ``(scalar, aux)``.

  Args:
    student_sample: the student's sampler ``(cond, x_init, key) -> sample`` (the caller differentiates through it).
    teacher_sample: the frozen teacher's sampler (its output is put under ``stop_gradient``).
    init_fn: ``(key, cond) -> x_T``, the processes' initial state.
    batch: ``{'x0': GT, 'cond': LQ}``, NHWC in the process's range.
    key: the step's key, split into ``(k_init, k_teacher, k_student)`` (and ``k_init2`` for the student's own
      ``x_T`` without ``shared_init``).
    options: :class:`Options`.

  Returns:
    The total and ``aux``: ``distill`` (the metric against the teacher), ``teacher_gt_mse`` / ``student_gt_mse``
    (each sample's MSE to the ground truth, batch mean), ``gt`` with ``w_gt``.
  """
  x0, cond = batch["x0"], batch["cond"]
  k_init, k_teacher, k_student, k_init2 = jax.random.split(key, 4)
  x_init = init_fn(k_init, cond)
  target = jax.lax.stop_gradient(teacher_sample(cond, x_init, k_teacher))
  student_init = x_init if options.shared_init else init_fn(k_init2, cond)
  out = student_sample(cond, student_init, k_student)
  distill = jnp.mean(distance(out, target, options.metric))
  aux = {"distill": distill, "teacher_gt_mse": jnp.mean(distance(target, x0)),
         "student_gt_mse": jnp.mean(distance(jax.lax.stop_gradient(out), x0))}
  total = distill
  if options.w_gt:
    gt = jnp.mean(distance(out, x0, options.metric))
    total = total + options.w_gt * gt
    aux["gt"] = gt
  return total, aux


__all__ = ["METRICS", "Options", "distance", "loss"]
