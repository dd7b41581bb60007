"""The student of ReDDiT (CVPR 2025): one stage of reflectance-aware trajectory distillation.

``model/model.py:DDPM_PD`` of the official code (lgz-0713/ReDDiT, REFERENCE §3.4-3.5) with the generic loop:

* the teacher is a frozen export (``config.distill.teacher``: a ``reddit_teacher`` export, e.g. a converted
  released ``*_gen.pth``, or the previous stage's ``reddit_student`` export), loaded by :meth:`init_frozen` with
  :func:`lliejax.checkpoint.load_export` and checked to have the same UNet and twice the student's steps;
* the student starts from the teacher's parameters (``load_network`` loads ``resume_state`` into both), and so
  does its EMA (``EMA.register`` after the load; constant decay 0.9999 every step, exported);
* the objective is :func:`lliejax.distill.trajectory.loss` (``config.distill``: ``variant``, ``w_snr``,
  ``w_gt``, ``w_lpips``), with the frozen LPIPS-VGG parameters in ``frozen['lpips']`` when ``w_lpips > 0``;
* sampling is the strided DDIM of :mod:`lliejax.diffusion.reddit` on the student's own grid, as the teacher
  method's (:class:`lliejax.methods.reddit_teacher.ReDDiTTeacher`, reflect padding included); an export holds the
  student only.

``config.diffusion`` is the **student's** grid ``(S, 2s)`` (what it samples with, as every ReDDiT export records
its own grid); the teacher's is ``(2S, s / 2)``, the same ``N = 2Ss + 1`` beta table.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp

from lliejax import checkpoint
from lliejax import config_utils as cu
from lliejax import methods, models
from lliejax.diffusion import reddit as rd
from lliejax.distill import trajectory
from lliejax.methods import reddit_teacher

#: Methods whose exports can teach a student (the same UNet and gamma conditioning).
TEACHERS = ("reddit_teacher", "reddit_student")
#: ``config.model`` keys that do not change the parameters (excluded from the teacher/student comparison).
NON_ARCH_MODEL_KEYS = ("init",)


@methods.register
class ReDDiTStudent(reddit_teacher.ReDDiTTeacher):
  """A half-step student distilled from a frozen ReDDiT teacher export (module docstring)."""

  name = "reddit_student"

  def __init__(self, config):
    super().__init__(config)
    d = config.diffusion
    self.teacher_schedule = rd.make_schedule(2 * int(d.num_timesteps), max(int(d.time_scale) // 2, 1),
                                             linear_start=float(d.linear_start), linear_end=float(d.linear_end))
    self._teacher_export = None

  @classmethod
  def validate_config(cls, config, *, device_count=None):
    """The teacher method's checks, then ``diffusion.time_scale`` (even) and ``distill``."""
    super().validate_config(config, device_count=device_count)
    s = cu.check_int(config, "diffusion.time_scale", min_value=2)
    if s is not None and s % 2:
      raise cu.ConfigError("diffusion.time_scale", f"must be even (the teacher's time scale is half of it), got {s}")
    cu.check_str(config, "distill.teacher", nonempty=False, allow_none=True)
    cu.check_choice(config, "distill.variant", trajectory.VARIANTS)
    for key in ("distill.w_snr", "distill.w_gt", "distill.w_lpips"):
      cu.check_float(config, key, min_value=0)
    cu.check_bool(config, "distill.init_from_teacher")
    t = cu.check_int(config, "distill.t", min_value=2, allow_none=True)
    n = cu.lookup(config, "diffusion.num_timesteps", None)
    if t is not None and (t % 2 or (cu.is_int(n) and t > 2 * n)):
      raise cu.ConfigError("distill.t", f"must be an even teacher step in [2, {2 * n if cu.is_int(n) else '2n'}], "
                           f"got {t}")

  # ---------------------------------------------------------------------------------------------- teacher
  def options(self) -> trajectory.Options:
    """The :class:`lliejax.distill.trajectory.Options` of ``config.distill``."""
    dc = self.config.distill
    t = dc.get("t")
    return trajectory.Options(variant=dc.variant, w_snr=float(dc.w_snr), w_gt=float(dc.w_gt),
                              w_lpips=float(dc.w_lpips), t=None if t is None else int(t))

  def teacher_export(self) -> checkpoint.Export:
    """The teacher export of ``config.distill.teacher``, loaded once and checked against this student.

    Raises:
      ValueError: no teacher named, or a teacher of another method, UNet or grid.
    """
    if self._teacher_export is not None:
      return self._teacher_export
    path = self.config.distill.get("teacher")
    if not path:
      raise ValueError("reddit_student: config.distill.teacher names no teacher export (a reddit_teacher export, "
                       "e.g. `lliejax convert` of a released *_gen.pth, or a previous stage's student export)")
    export = checkpoint.load_export(os.path.expanduser(path))
    if export.method not in TEACHERS or export.config is None:
      raise ValueError(f"{path}: a {export.method} export cannot teach reddit_student (expected one of "
                       f"{', '.join(TEACHERS)})")
    strip = lambda m: models.with_config_defaults(m.to_dict(), drop=NON_ARCH_MODEL_KEYS)
    if strip(export.config.model) != strip(self.config.model):
      raise ValueError(f"{path}: the teacher's model {strip(export.config.model)} differs from the student's "
                       f"{strip(self.config.model)} (the student starts from the teacher's parameters)")
    td, ts = export.config.diffusion, self.teacher_schedule
    grid = (int(td.num_timesteps), int(td.time_scale))
    if grid != (ts.num_timesteps, ts.time_scale):
      raise ValueError(f"{path}: the teacher has {grid[0]} steps x time scale {grid[1]}; this "
                       f"{self.schedule.num_timesteps}-step student (time scale {self.schedule.time_scale}) needs "
                       f"{ts.num_timesteps} x {ts.time_scale}")
    for k in ("linear_start", "linear_end"):
      if td.get(k) is not None and float(td[k]) != float(self.config.diffusion[k]):
        raise ValueError(f"{path}: the teacher's diffusion.{k}={td[k]} differs from the student's "
                         f"{self.config.diffusion[k]}")
    self._teacher_export = export
    return export

  def init_frozen(self, key):
    """``{'teacher': teacher params}`` (+ ``'lpips'``: the LPIPS-VGG parameters when ``distill.w_lpips > 0``)."""
    del key
    frozen = {"teacher": jax.tree.map(jnp.asarray, self.teacher_export().params)}
    if float(self.config.distill.w_lpips) > 0:
      from lliejax.losses import perceptual  # pylint: disable=import-outside-toplevel
      frozen["lpips"] = perceptual.lpips_frozen("vgg")
    return frozen

  def inference_frozen(self, frozen):
    """Nothing: a student samples alone."""
    del frozen
    return {}

  def init_params(self, key):
    """The teacher's parameters (the official ``load_network`` loads them into the student), or a fresh UNet
    with ``distill.init_from_teacher = False``."""
    if not self.config.distill.get("init_from_teacher", True):
      return super().init_params(key)
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), self.teacher_export().params)

  # ---------------------------------------------------------------------------------------------- objective
  def loss(self, params, frozen, batch, key, *, ema, step=None):
    """:func:`lliejax.distill.trajectory.loss` on the batch mapped to [-1, 1]."""
    del ema, step
    data = {"x0": batch["gt"] * 2.0 - 1.0, "cond": batch["lq"] * 2.0 - 1.0}
    return trajectory.loss(self.eps_fn(params), self.eps_fn(frozen["teacher"]), self.teacher_schedule, data, key,
                           options=self.options(), lpips_params=frozen.get("lpips"))

  def describe(self, params):
    d, t = self.config.diffusion, self.teacher_schedule
    return (f"reddit_student: SR3 UNet with {methods.count_params(params):,} parameters, {d.num_timesteps} steps "
            f"x time scale {d.time_scale}, distilled from a {t.num_timesteps} x {t.time_scale} teacher "
            f"({self.config.distill.variant} variant)")
