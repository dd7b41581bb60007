"""Sampler distillation (:mod:`lliejax.distill.sampler`) of a diffusion teacher as a :class:`lliejax.methods.Method`:
``sampler_student``, trained by ``lliejax distill --distiller sampler``.

A student of the teacher's family (:mod:`lliejax.methods.consistency_student`: the teacher's network and process,
the frozen teacher export in ``frozen['teacher']``, the start from its parameters, the exported EMA, the optional
spatial-entropy term of ``distill.entropy``, here on the student's sample against the ground truth or the teacher's
sample) whose few-step sampler is trained, unrolled, on the output of the teacher's many-step sampler:

=================  =====================================================  =========================================
family             the student's ``S``-step sampler (``sampling.steps``)   the teacher's sampler (the target)
=================  =====================================================  =========================================
``entropy_sde``    :func:`lliejax.diffusion.irsde.sample_strided` with    ``sample_strided`` with
                   ``sampling.eta`` (default 1: posterior steps on the    ``distill.teacher_steps`` steps (None: all
                   coarse grid, the few-step sampler that loses least)    ``sde.T``; with ``distill.teacher_eta =
                                                                          1`` the official posterior sampler of
                                                                          ``test.py``, the same scan)
``reddit``         ReDDiT's strided DDIM                                  the same DDIM with ``distill.
                   (:func:`lliejax.diffusion.reddit.ddim_sample`, stride  teacher_steps`` steps (None: all
                   ``n / S``; deterministic, ``eta`` unused)              ``diffusion.num_timesteps``, the
                                                                          teacher's own 16-step sampler)
=================  =====================================================  =========================================

* the loss: :func:`lliejax.distill.sampler.loss` (``distill.metric``, ``distill.w_gt``, ``distill.shared_init``:
  both samplers start from the same ``x_T``, ``mu + lambda z`` for the SDE, ``N(0, I)`` for the DDPM), gradients
  through all ``S`` student calls, with the student's sampler unrolled (reverse mode through a scanned network was up
  to 20x slower on XLA:CPU); ``model.remat`` checkpoints each network call where the network has it;
* sampling (``'strided'``): the student's own sampler (``steps`` default ``sampling.steps``; any count the family
  allows runs, the student is trained for its own); ReDDiT students reflect-pad as their teacher.

For ReDDiT teachers this is an alternative to ReDDiT's own trajectory distillation (``reddit_student``): its target
is the teacher's whole deterministic sample instead of two teacher steps, so one run gives an ``S``-step student
without the 16 -> 8 -> 4 -> 2 chain (no RATR, no LPIPS term).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lliejax import config_utils as cu
from lliejax import methods
from lliejax.diffusion import irsde
from lliejax.diffusion import reddit as rd
from lliejax.distill import sampler as sd
from lliejax.methods import consistency_student as cs


@methods.register
class SamplerStudent(cs.DistilledStudent):
  """A few-step sampler distilled from the whole sampler of a frozen teacher export (module docstring)."""

  name = "sampler_student"
  samplers = ("strided",)
  teacher_methods = ("entropy_sde", "reddit_teacher", "reddit_student")

  @classmethod
  def validate_config(cls, config, *, device_count=None):
    """The family checks, then ``sampling`` (``steps`` within ``sde.T``, or a divisor of ReDDiT's
    ``diffusion.num_timesteps``; ``eta`` in [0, 1]) and ``distill`` (``teacher_steps`` likewise, ``teacher_eta``,
    ``metric``, ``w_gt``, ``shared_init``)."""
    super().validate_config(config, device_count=device_count)
    family = config.get("family")
    for key in ("sampling.steps", "distill.teacher_steps"):
      v = cu.check_int(config, key, min_value=1, allow_none=key.startswith("distill"))
      if v is None:
        continue
      if family == "entropy_sde" and "sde" in config and cu.is_int(config.sde.get("T")) and v > config.sde.T:
        raise cu.ConfigError(key, f"must be at most sde.T={config.sde.T}, got {v}")
      n = config.diffusion.get("num_timesteps") if family == "reddit" and "diffusion" in config else None
      if cu.is_int(n) and n % v:
        raise cu.ConfigError(key, f"must divide diffusion.num_timesteps={n} (ReDDiT's strided DDIM), got {v}")
    cu.check_float(config, "sampling.eta", min_value=0, max_value=1)
    cu.check_float(config, "distill.teacher_eta", min_value=0, max_value=1)
    cu.check_choice(config, "distill.metric", sd.METRICS)
    cu.check_float(config, "distill.w_gt", min_value=0.0)
    cu.check_bool(config, "distill.shared_init")

  # ---------------------------------------------------------------------------------------------- samplers
  @property
  def native_steps(self) -> int:
    """``sde.T`` or ReDDiT's ``diffusion.num_timesteps``: the teacher's full step count."""
    return cs.native_steps(self.config)

  def init_state(self, key, cond):
    """``x_T``: ``mu + lambda z`` (SDE) or ``N(0, I)`` (DDPM), as the family's sampler draws it from ``key``."""
    if self.family.name == "reddit":
      return jax.random.normal(key, cond.shape, jnp.float32)
    return self.base.sde.init_state(key, cond)

  def strided(self, params, *, steps: int, eta: float, unroll: bool = False):
    """``(cond, x_init, key) -> sample`` of the family's ``steps``-step sampler with the network's ``params`` (in the
    process's range; ``x_init`` None draws it from ``key`` as the family's sampler does). ``unroll``: the steps as
    straight-line code (the same values; the loss differentiates through the student's sampler, and reverse mode
    through a scanned network was up to 20x slower on XLA:CPU, :func:`lliejax.diffusion.reddit.ddim_sample`)."""
    noise_fn = self.net_fn(params)
    if self.family.name == "reddit":
      stride = self.base.stride(steps)
      return lambda cond, x_init, key: rd.ddim_sample(self.base.schedule, noise_fn, cond, key, stride=stride,
                                                      x_init=x_init, unroll=unroll)
    return lambda cond, x_init, key: irsde.sample_strided(self.base.sde, noise_fn, cond, key, steps=int(steps),
                                                          eta=float(eta), x_init=x_init, unroll=unroll)

  def student_sampler(self, params, steps: int | None = None, *, unroll: bool = False):
    sa = self.config.sampling
    return self.strided(params, steps=int(sa.steps if steps is None else steps), eta=float(sa.get("eta", 1.0)),
                        unroll=unroll)

  def teacher_sampler(self, teacher_params):
    d = self.config.distill
    steps = d.get("teacher_steps")
    return self.strided(teacher_params, steps=self.native_steps if steps is None else int(steps),
                        eta=float(d.get("teacher_eta", 1.0)))

  def options(self) -> sd.Options:
    d = self.config.distill
    return sd.Options(metric=d.get("metric", "l2"), w_gt=float(d.get("w_gt", 0.0)),
                      shared_init=bool(d.get("shared_init", True)))

  # ---------------------------------------------------------------------------------------------- objective
  def loss(self, params, frozen, batch, key, *, ema, step=None):
    """:func:`lliejax.distill.sampler.loss` (+ the entropy term on the student's sample)."""
    del ema
    k_sd, k_ent = jax.random.split(key)
    data = {"x0": self.to_process(batch["gt"]), "cond": self.to_process(batch["lq"])}
    outputs = {}

    def student(cond, x_init, k):
      outputs["student"] = out = self.student_sampler(params, unroll=True)(cond, x_init, k)
      return out

    def teacher(cond, x_init, k):
      outputs["teacher"] = out = self.teacher_sampler(frozen["teacher"])(cond, x_init, k)
      return out

    total, aux = sd.loss(student, teacher, self.init_state, data, k_sd, options=self.options())
    return self.with_entropy(total, aux, outputs["student"], jax.lax.stop_gradient(outputs["teacher"]), batch["gt"],
                             k_ent, step)

  def sample(self, params, frozen, lq, key, *, sampler=None, steps=None):
    """The student's sampler (``steps`` default ``sampling.steps``; SDE: ``eta`` = ``sampling.eta``), in [0, 1]."""
    del frozen
    self.check_sampler(sampler)
    if steps is not None and self.family.name == "entropy_sde" and not 1 <= int(steps) <= self.native_steps:
      raise ValueError(f"sampler_student: steps must be in 1..{self.native_steps} (sde.T), got {steps}")
    cond, finish = self.prepare(lq)
    return finish(self.student_sampler(params, steps)(cond, None, key))

  def describe(self, params):
    d, sa = self.config.distill, self.config.sampling
    teacher = d.get("teacher_steps") or self.native_steps
    return (f"sampler_student: the {self.family.name} network ({methods.count_params(params):,} parameters), a "
            f"{sa.steps}-step strided sampler (eta {float(sa.get('eta', 1.0)):g}) trained on its teacher's "
            f"{teacher}-step sampler (eta {float(d.get('teacher_eta', 1.0)):g}), {d.get('metric', 'l2')} metric")


__all__ = ["SamplerStudent"]
