"""Sampler distillation of an Entropy-SDE teacher (:mod:`lliejax.distill.sampler`) as a
:class:`lliejax.methods.Method`: ``sampler_student``, trained by ``lliejax distill --distiller sampler``.

A student of the ``entropy_sde`` family (:mod:`lliejax.methods.consistency_student`: the teacher's ConditionalNAFNet
and SDE, the frozen teacher export in ``frozen['teacher']``, the start from its parameters, the exported EMA, the
optional spatial-entropy term of ``distill.entropy``, here on the student's sample against the ground truth or the
teacher's sample) whose sampler is :func:`lliejax.diffusion.irsde.sample_strided` with ``sampling.steps`` steps and
``sampling.eta`` (default 1: posterior steps on the coarse grid, the teacher's few-step sampler that loses least):

* the teacher's sampler: ``sample_strided`` with ``distill.teacher_steps`` steps (None: all ``sde.T``, which with
  ``distill.teacher_eta = 1`` is the official posterior sampler of ``test.py``, bitwise the same scan) -- the
  target is one draw of what the user of the teacher gets;
* the loss: :func:`lliejax.distill.sampler.loss` (``distill.metric``, ``distill.w_gt``, ``distill.shared_init``),
  gradients through all ``sampling.steps`` student calls (``model.remat`` checkpoints each network call);
* sampling (``'strided'``): the student's own ``sample_strided`` (``steps`` default ``sampling.steps``; any count
  runs, the student is trained for its own).

Only the ``entropy_sde`` family: ReDDiT's teachers sample deterministically, for which the trajectory distiller's
target is already the teacher's sampler.
"""
from __future__ import annotations

import jax

from lliejax import config_utils as cu
from lliejax import methods
from lliejax.diffusion import irsde
from lliejax.distill import sampler as sd
from lliejax.methods import consistency_student as cs


@methods.register
class SamplerStudent(cs.DistilledStudent):
  """A few-step stochastic sampler distilled from a frozen Entropy-SDE teacher export (module docstring)."""

  name = "sampler_student"
  samplers = ("strided",)
  teacher_methods = ("entropy_sde", "sampler_student")

  @classmethod
  def validate_config(cls, config, *, device_count=None):
    """The family checks (only ``entropy_sde``), then ``sampling`` (``steps`` within ``sde.T``, ``eta`` in [0, 1])
    and ``distill`` (``teacher_steps``, ``teacher_eta``, ``metric``, ``w_gt``, ``shared_init``)."""
    super().validate_config(config, device_count=device_count)
    if config.get("family") != "entropy_sde":
      raise cu.ConfigError("family", f"sampler_student distils the stochastic sampler of an entropy_sde teacher, "
                           f"got {config.get('family')!r} (ReDDiT teachers: --distiller trajectory)")
    t = config.sde.get("T") if "sde" in config else None
    for key in ("sampling.steps", "distill.teacher_steps"):
      v = cu.check_int(config, key, min_value=1, allow_none=key.startswith("distill"))
      if v is not None and cu.is_int(t) and v > t:
        raise cu.ConfigError(key, f"must be at most sde.T={t}, got {v}")
    cu.check_float(config, "sampling.eta", min_value=0, max_value=1)
    cu.check_float(config, "distill.teacher_eta", min_value=0, max_value=1)
    cu.check_choice(config, "distill.metric", sd.METRICS)
    cu.check_float(config, "distill.w_gt", min_value=0.0)
    cu.check_bool(config, "distill.shared_init")

  # ---------------------------------------------------------------------------------------------- samplers
  @property
  def sde(self) -> irsde.IRSDE:
    return self.base.sde

  def strided(self, params, *, steps: int, eta: float):
    """``(cond, x_init, key) -> sample_strided(...)`` of the network with ``params``."""
    noise_fn = self.net_fn(params)
    return lambda cond, x_init, key: irsde.sample_strided(self.sde, noise_fn, cond, key, steps=int(steps),
                                                          eta=float(eta), x_init=x_init)

  def student_sampler(self, params, steps: int | None = None):
    sa = self.config.sampling
    return self.strided(params, steps=int(sa.steps if steps is None else steps), eta=float(sa.get("eta", 1.0)))

  def teacher_sampler(self, teacher_params):
    d = self.config.distill
    steps = d.get("teacher_steps")
    return self.strided(teacher_params, steps=self.sde.T if steps is None else int(steps),
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
    data = {"x0": batch["gt"], "cond": batch["lq"]}
    outputs = {}

    def student(cond, x_init, k):
      outputs["student"] = out = self.student_sampler(params)(cond, x_init, k)
      return out

    def teacher(cond, x_init, k):
      outputs["teacher"] = out = self.teacher_sampler(frozen["teacher"])(cond, x_init, k)
      return out

    total, aux = sd.loss(student, teacher, self.sde.init_state, data, k_sd, options=self.options())
    ent = self.entropy_term(outputs["student"], jax.lax.stop_gradient(outputs["teacher"]), batch["gt"], k_ent, step)
    if ent is not None:
      total = total + ent
      aux["entropy"] = ent
    return total, aux

  def sample(self, params, frozen, lq, key, *, sampler=None, steps=None):
    """The student's ``sample_strided`` (``steps`` default ``sampling.steps``, ``eta`` = ``sampling.eta``)."""
    del frozen
    self.check_sampler(sampler)
    if steps is not None and not 1 <= int(steps) <= self.sde.T:
      raise ValueError(f"sampler_student: steps must be in 1..{self.sde.T} (sde.T), got {steps}")
    return self.student_sampler(params, steps)(lq, None, key)

  def describe(self, params):
    d, sa = self.config.distill, self.config.sampling
    teacher = d.get("teacher_steps") or self.sde.T
    return (f"sampler_student: the entropy_sde network ({methods.count_params(params):,} parameters), a "
            f"{sa.steps}-step strided sampler (eta {float(sa.get('eta', 1.0)):g}) trained on its teacher's "
            f"{teacher}-step sampler (eta {float(d.get('teacher_eta', 1.0)):g}), {d.get('metric', 'l2')} metric")


__all__ = ["SamplerStudent"]
