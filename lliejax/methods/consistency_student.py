"""Consistency distillation (Song, Dhariwal, Chen, Sutskever, "Consistency Models", ICML 2023) of any lliejax
diffusion teacher, as a :class:`lliejax.methods.Method`; and what every distilled student shares (the teacher
**families**, :class:`DistilledStudent`).

**Families** (:data:`FAMILIES`, ``config.family``): a student has its teacher's network and process, and is built on
the method that defines them (composition: ``self.base``, never sampled itself):

=================  ======================================  ====================================================
family             teachers (export ``method``)            network, process, image range
=================  ======================================  ====================================================
``reddit``         ``reddit_teacher``, ``reddit_student``  SR3 UNet (``ReDDiTTeacher``), gamma-DDPM of
                                                           ``config.diffusion`` (:class:`~lliejax.distill.
                                                           processes.DDPMGamma`), [-1, 1]; reflect padding of
                                                           ``sampling.pad`` as the teacher's sampler; metrics of
                                                           ReDDiT's ``test.py``
``entropy_sde``    ``entropy_sde``                         ConditionalNAFNet (``EntropySDE``), mean-reverting
                                                           SDE of ``config.sde`` (:class:`~lliejax.distill.
                                                           processes.MeanReverting`), [0, 1]; IR-SDE metrics
=================  ======================================  ====================================================

:func:`student_config` makes a student config for a teacher export, as :func:`lliejax.distill.trajectory.stage_config`
does for ReDDiT: ``family``, ``model`` and the process section (``diffusion`` / ``sde``) are copied from the export
(the other family's section is removed), ``distill.teacher`` is set; a student trained on a config that does not match
its teacher is refused with the difference named (:meth:`DistilledStudent.teacher_export`). Every student starts from
the teacher's parameters (``distill.init_from_teacher``), keeps them in ``frozen['teacher']`` (never trained, never
exported) and exports its EMA (``config.ema``).

**The consistency student** (:class:`ConsistencyStudent`, ``consistency_student``): the teacher's process on a grid
of ``N`` points (``process.num_scales``; default the teacher's own grid: ReDDiT's ``n + 1`` DDIM levels
``gamma_prev[tau s]`` (17 for a 16-step teacher), every step ``0..T`` of the SDE (101); ``process.solver`` is the
SDE's ODE step, ``'euler'`` = the official ``reverse_ode_step``), and the CD loss of
:mod:`lliejax.distill.consistency` (``distill``: ``sigma_data``, ``output``, ``metric`` (``lpips`` puts the frozen
LPIPS-VGG parameters in ``frozen['lpips']``), ``weighting``, ``huber_c``, ``n``). The target network ``theta-`` is a
second EMA of the generic loop (:meth:`lliejax.methods.Method.ema_rules`): ``'target'``, ``theta- <- mu theta- + (1 -
mu) theta`` every step with ``mu = distill.target_decay`` (0.95: ``--start_ema 0.95`` of the paper's CD runs,
openai/consistency_models ``scripts/launch.sh``); ``target_decay = 0`` uses ``theta- = stopgrad(theta)`` without a
copy (improved consistency training's ``mu = 0``). Sampling (``'consistency'``) is multistep consistency sampling
(paper Algorithm 1, :func:`lliejax.distill.consistency.sample`) with ``sampling.steps`` steps (any number in
``1..N-1``; ``clip`` clips every step's estimate to the data range).

**Auxiliary spatial-entropy term** (every student, ``distill.entropy``; ``weight`` 0 disables it): ``weight *``
:func:`lliejax.losses.entropy.spatial_entropy_loss` (``name``: ``kl``, ``cross``, ``hellinger``,
``hellinger_smooth``, the other keys as ``config.loss`` of ``entropy_sde``) between the student's clean estimate
(the consistency function's output; the progressive student's ``x0`` estimate) and, per ``against``, the ground truth
(``'gt'``) or the distillation target (``'target'``), both mapped to [0, 1]: the Entropy-SDE loss (Lian et al.,
CVPRW 2024) as a regulariser of the distilled sampler. Not in any official code.
"""
from __future__ import annotations

import copy
import dataclasses
import os
from typing import ClassVar

import jax
import jax.numpy as jnp
import ml_collections

from lliejax import checkpoint
from lliejax import config_utils as cu
from lliejax import ema as ema_lib
from lliejax import losses, methods, models
from lliejax.distill import consistency as cm
from lliejax.distill import processes as pr
from lliejax.losses import entropy as entropy_lib
from lliejax.methods.base import Method


@dataclasses.dataclass(frozen=True)
class Family:
  """A family of teachers (module docstring).

  Attributes:
    name: ``config.family``.
    base: the method whose network and process a student of this family uses.
    section: the config section of the process.
    keys: the keys of ``section`` that define the process (compared with the teacher's, copied from it).
    teachers: export methods of this family (besides distilled students that record ``family``).
    data_range: the image range of the process.
  """

  name: str
  base: str
  section: str
  keys: tuple[str, ...]
  teachers: tuple[str, ...]
  data_range: tuple[float, float]


FAMILIES = {
    "reddit": Family("reddit", "reddit_teacher", "diffusion", ("num_timesteps", "time_scale", "linear_start",
                                                               "linear_end"), ("reddit_teacher", "reddit_student"),
                     (-1.0, 1.0)),
    "entropy_sde": Family("entropy_sde", "entropy_sde", "sde", ("max_sigma", "T", "schedule", "eps"),
                          ("entropy_sde",), (0.0, 1.0)),
}
#: Distilled students whose exports record their ``family`` (and can teach the next stage).
STUDENT_METHODS = ("consistency_student", "progressive_student", "sampler_student")
#: ``config.model`` keys that do not change the parameters (left out of the teacher/student comparison).
NON_ARCH_MODEL_KEYS = ("init", "dtype", "remat", "fusion_barriers")
#: ``distill.entropy.against``.
ENTROPY_TARGETS = ("gt", "target")
#: ``distill.entropy.weights`` (None: the official choice per loss).
NEIGHBOUR_WEIGHTS = ("normal", "shuffled_gaussian", "mean")


# ------------------------------------------------------------------------------------------------ configs
def family_of_export(info: dict, path: str = "") -> str:
  """The family of an export (its ``method``, or the ``family`` a distilled student records).

  Raises:
    ValueError: an export of no known family.
  """
  method = info.get("method")
  if method in STUDENT_METHODS:
    family = (info.get("config") or {}).get("family")
    if family in FAMILIES:
      return family
  for fam in FAMILIES.values():
    if method in fam.teachers:
      return fam.name
  known = sorted({m for f in FAMILIES.values() for m in f.teachers} | set(STUDENT_METHODS))
  raise ValueError(f"{path or 'export'}: a {method!r} export is not a diffusion teacher lliejax can distil "
                   f"(known: {', '.join(known)})")


def native_steps(config, family: str | None = None) -> int:
  """The native step count of a config's process: ReDDiT's ``diffusion.num_timesteps``, the SDE's ``sde.T``."""
  fam = FAMILIES[family or config.family]
  section = config[fam.section]
  return int(section["num_timesteps"] if fam.name == "reddit" else section["T"])


def student_config(config, teacher: str, *, info: dict | None = None):
  """A copy of the student ``config`` for the teacher export ``teacher`` (module docstring).

  ``family``, ``model`` and the process section (``diffusion`` or ``sde``: the keys of :class:`Family`) are the
  teacher's, the other family's section is removed, ``sampling.pad`` is the teacher's (ReDDiT's test padding) where
  it has one, and ``distill.teacher`` is the teacher's absolute path.

  Raises:
    ValueError: not an export of a known family, or one without its model / process section.
  """
  info = checkpoint.read_export_info(teacher) if info is None else info
  family = family_of_export(info, teacher)
  fam = FAMILIES[family]
  tconf = info.get("config") or {}
  section = tconf.get(fam.section) or {}
  if "model" not in tconf or not set(fam.keys) <= set(section):
    raise ValueError(f"{teacher}: the export's config has no model / {fam.section} section ({', '.join(fam.keys)})")
  stage = copy.deepcopy(config)
  stage.family = family
  stage.model = ml_collections.ConfigDict(tconf["model"])
  for other in FAMILIES.values():
    if other.section in stage:
      del stage[other.section]
  stage[fam.section] = ml_collections.ConfigDict({k: section[k] for k in fam.keys})
  pad = (tconf.get("sampling") or {}).get("pad")
  if family == "reddit" and pad is not None and "sampling" in stage:
    stage.sampling.pad = [int(v) for v in pad]
  stage.distill.teacher = os.path.abspath(os.path.expanduser(teacher))
  return stage


def _section_dict(section) -> dict:
  return section.to_dict() if hasattr(section, "to_dict") else dict(section)


# ------------------------------------------------------------------------------------------------ shared base
class DistilledStudent(Method):
  """What the distilled students share (module docstring): the family's network and process, the frozen teacher
  export, the initialisation from it, the image range, ReDDiT's padding, the auxiliary entropy term."""

  architecture_sections = ("family", "model", "diffusion", "sde")
  #: Export methods that can teach this student.
  teacher_methods: ClassVar[tuple[str, ...]] = ()

  def __init__(self, config):
    super().__init__(config)
    family = config.get("family")
    if family not in FAMILIES:
      raise ValueError(f"config.family={family!r}: choose one of {', '.join(FAMILIES)}")
    self.family = FAMILIES[family]
    if self.family.section not in config:
      raise ValueError(f"config.family={family!r} needs the teacher's {self.family.section!r} section")
    self.base = methods.get(self.family.base)(self._base_config(config))
    ent = (config.get("distill") or {}).get("entropy")
    self._entropy = losses.get(ent) if ent is not None and float(ent.get("weight", 0.0)) > 0 else None
    self._teacher_export = None

  @staticmethod
  def _base_config(config) -> ml_collections.ConfigDict:
    """The sections the family's method needs (``model``, its process section, ``data``) as a config of it."""
    fam = FAMILIES[config.family]
    base = ml_collections.ConfigDict()
    base.method = fam.base
    for key in ("model", fam.section, "data"):
      if key in config:
        base[key] = copy.deepcopy(config[key])
    return base

  @classmethod
  def validate_config(cls, config, *, device_count=None):
    """The generic checks, ``family`` and its sections (by the family's method: the network, the process, the data
    patch size), ``distill.teacher`` / ``init_from_teacher`` and ``distill.entropy``."""
    super().validate_config(config, device_count=device_count)
    family = cu.check_choice(config, "family", tuple(FAMILIES))
    if family is not None:
      fam = FAMILIES[family]
      if fam.section not in config:
        raise cu.ConfigError(fam.section, f"family {family!r} needs the teacher's {fam.section} section "
                             f"({', '.join(fam.keys)}); make the config with lliejax.methods.consistency_student."
                             "student_config (as `lliejax distill` does)")
      for other in FAMILIES.values():
        if other.name != family and other.section in config:
          raise cu.ConfigError(other.section, f"belongs to family {other.name!r}, not to this {family!r} student")
      methods.get(fam.base).validate_config(cls._base_config(config))
    cu.check_str(config, "distill.teacher", nonempty=False, allow_none=True)
    cu.check_bool(config, "distill.init_from_teacher")
    cu.check_float(config, "distill.entropy.weight", min_value=0)
    cu.check_choice(config, "distill.entropy.name", losses.ENTROPY_LOSSES)
    cu.check_choice(config, "distill.entropy.against", ENTROPY_TARGETS)
    cu.check_int(config, "distill.entropy.bins", min_value=2)
    cu.check_float(config, "distill.entropy.bandwidth", min_value=0, min_open=True)
    cu.check_choice(config, "distill.entropy.kernel", ("sigmoid", "gaussian"))
    cu.check_int_list(config, "distill.entropy.windows", min_value=1, odd=True)
    cu.check_choice(config, "distill.entropy.weights", NEIGHBOUR_WEIGHTS, allow_none=True)
    cu.check_choice(config, "distill.entropy.neighbour_norm", ("official", "mean"))
    cu.check_int(config, "distill.entropy.chunk_size", min_value=0)
    cu.check_float(config, "distill.entropy.eps", min_value=0, allow_none=True)
    cu.check_choice(config, "distill.entropy.clamp", entropy_lib.CLAMP_MODES)

  # ---------------------------------------------------------------------------------------------- the family
  @property
  def size_multiple(self) -> int:
    return self.base.size_multiple

  @property
  def convention(self):
    """The teacher's paper's metrics (ReDDiT's ``test.py``, or IR-SDE's)."""
    return self.base.convention

  def net_fn(self, params):
    """``(x_t, cond, time) -> predicted noise`` of the family's network with ``params`` (process range)."""
    return self.base.eps_fn(params) if self.family.name == "reddit" else self.base.noise_fn(params)

  def to_process(self, img):
    """[0, 1] images -> the process's range."""
    return img * 2.0 - 1.0 if self.family.data_range == (-1.0, 1.0) else img

  def from_process(self, x):
    """The process's range -> [0, 1]."""
    return (x + 1.0) / 2.0 if self.family.data_range == (-1.0, 1.0) else x

  def prepare(self, lq):
    """``(cond, finish)``: the condition in the process's range (ReDDiT: reflect-padded by ``sampling.pad`` and up
    to :attr:`size_multiple`, as its teacher's sampler) and ``finish(x)``, which crops a sample back and maps it
    to [0, 1]."""
    if self.family.name != "reddit":
      return lq, lambda x: x
    from lliejax.methods import reddit_teacher  # pylint: disable=import-outside-toplevel
    _, h, w, _ = lq.shape
    top, bottom, left, right = reddit_teacher.padding(h, w, self.size_multiple,
                                                      tuple(self.config.sampling.get("pad", (0, 0))))
    y = jnp.pad(self.to_process(lq), ((0, 0), (top, bottom), (left, right), (0, 0)), mode="symmetric")
    return y, lambda x: self.from_process(x[:, top:top + h, left:left + w, :])

  def check_sampler(self, sampler):
    mode = sampler or self.default_sampler("test")
    if mode not in self.samplers:
      raise ValueError(f"{self.name}: unknown sampler {mode!r}; choose one of {', '.join(self.samplers)}")
    return mode

  # ---------------------------------------------------------------------------------------------- teacher
  def check_teacher(self, export: checkpoint.Export, path: str) -> None:
    """Method-specific checks of the loaded teacher export (default: none)."""

  def teacher_export(self) -> checkpoint.Export:
    """The teacher export of ``config.distill.teacher``, loaded once and checked against this student.

    Raises:
      ValueError: no teacher named, or a teacher of another method, family, network or process.
    """
    if self._teacher_export is not None:
      return self._teacher_export
    path = self.config.distill.get("teacher")
    if not path:
      raise ValueError(f"{self.name}: config.distill.teacher names no teacher export (one of "
                       f"{', '.join(self.teacher_methods)}; `lliejax distill --teacher EXPORT` sets it)")
    export = checkpoint.load_export(os.path.expanduser(path))
    if export.method not in self.teacher_methods or export.config is None:
      raise ValueError(f"{path}: a {export.method} export cannot teach {self.name} (expected one of "
                       f"{', '.join(self.teacher_methods)})")
    family = family_of_export(export.info, path)
    if family != self.family.name:
      raise ValueError(f"{path}: a teacher of family {family!r}; this student's config.family is "
                       f"{self.family.name!r} (make the config with consistency_student.student_config)")
    strip = lambda m: models.with_config_defaults(_section_dict(m), drop=NON_ARCH_MODEL_KEYS)
    if strip(export.config.model) != strip(self.config.model):
      raise ValueError(f"{path}: the teacher's model {strip(export.config.model)} differs from the student's "
                       f"{strip(self.config.model)} (the student has the teacher's network)")
    sec = self.family.section
    theirs, ours = _section_dict(export.config[sec]), _section_dict(self.config[sec])
    for k in self.family.keys:
      if theirs.get(k) != ours.get(k):
        raise ValueError(f"{path}: the teacher's {sec}.{k}={theirs.get(k)!r} differs from the student's "
                         f"{ours.get(k)!r} (the student distils the teacher's process)")
    self.check_teacher(export, path)
    self._teacher_export = export
    return export

  def init_frozen(self, key):
    """``{'teacher': the teacher's parameters}``."""
    del key
    return {"teacher": jax.tree.map(jnp.asarray, self.teacher_export().params)}

  def inference_frozen(self, frozen):
    """Nothing: a student samples alone."""
    del frozen
    return {}

  def init_params(self, key):
    """The teacher's parameters, or the family's fresh network with ``distill.init_from_teacher = False``."""
    if not self.config.distill.get("init_from_teacher", True):
      return self.base.init_params(key)
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), self.teacher_export().params)

  # ---------------------------------------------------------------------------------------------- entropy
  def entropy_term(self, estimate, target, gt, key, step):
    """``weight * spatial-entropy(from_process(estimate), against)`` (module docstring), or None when off.

    Args:
      estimate: the student's clean estimate, in the process's range.
      target: the distillation target's clean estimate, in the process's range.
      gt: the ground truth in [0, 1].
      key: the term's key (random neighbour weights).
      step: the training step (for the loss's warm-up keys).
    """
    if self._entropy is None:
      return None
    against = gt if self.config.distill.entropy.get("against", "gt") == "gt" else self.from_process(target)
    return self._entropy(self.from_process(estimate), jax.lax.stop_gradient(against), key, step=step)

  def with_entropy(self, total, aux, estimate, target, gt, key, step):
    """``(total + entropy term, aux + {'entropy': term})``, or ``(total, aux)`` unchanged when the term is off
    (:meth:`entropy_term`'s arguments)."""
    ent = self.entropy_term(estimate, target, gt, key, step)
    if ent is None:
      return total, aux
    return total + ent, {**aux, "entropy": ent}


# ------------------------------------------------------------------------------------------------ CD student
@methods.register
class ConsistencyStudent(DistilledStudent):
  """A consistency model distilled from a frozen teacher export (module docstring)."""

  name = "consistency_student"
  samplers = ("consistency",)
  teacher_methods = ("reddit_teacher", "reddit_student", "entropy_sde")

  def __init__(self, config):
    super().__init__(config)
    self.process = self.teacher_process()

  @classmethod
  def validate_config(cls, config, *, device_count=None):
    """The family checks (:class:`DistilledStudent`), then ``process``, the CD keys of ``distill`` and
    ``sampling`` (``steps`` in ``1..N-1`` of the grid)."""
    super().validate_config(config, device_count=device_count)
    cu.check_choice(config, "process.solver", pr.IRSDE_SOLVERS)
    num = cu.check_int(config, "process.num_scales", min_value=2, allow_none=True)
    family = config.get("family")
    size = None
    if family in FAMILIES and FAMILIES[family].section in config:
      sec = config[FAMILIES[family].section]
      if family == "reddit" and cu.is_int(sec.get("num_timesteps")) and cu.is_int(sec.get("time_scale")):
        size, default = sec.num_timesteps * sec.time_scale + 1, sec.num_timesteps + 1
      elif family == "entropy_sde" and cu.is_int(sec.get("T")):
        size, default = sec.T + 1, sec.T + 1
    if size is not None and num is not None and num > size:
      raise cu.ConfigError("process.num_scales", f"must be at most {size} (the teacher's table), got {num}")
    grid = (num if num is not None else default) if size is not None else None
    steps = cu.check_int(config, "sampling.steps", min_value=1)
    if steps is not None and grid is not None and steps > grid - 1:
      raise cu.ConfigError("sampling.steps", f"must be at most {grid - 1} (a grid of {grid} points; "
                           f"process.num_scales sets it), got {steps}")
    cu.check_bool(config, "sampling.clip")
    pad = cu.check_int_list(config, "sampling.pad", min_value=0)
    if pad is not None and len(pad) != 2:
      raise cu.ConfigError("sampling.pad", f"must be [rows, columns], got {list(pad)}")
    cu.check_float(config, "distill.sigma_data", min_value=0, min_open=True)
    cu.check_choice(config, "distill.output", cm.OUTPUTS)
    cu.check_choice(config, "distill.metric", cm.METRICS)
    cu.check_choice(config, "distill.weighting", cm.WEIGHTINGS)
    cu.check_float(config, "distill.huber_c", min_value=0, min_open=True, allow_none=True)
    cu.check_float(config, "distill.target_decay", min_value=0, max_value=1, max_open=True)
    n = cu.check_int(config, "distill.n", min_value=0, allow_none=True)
    if n is not None and grid is not None and n > grid - 2:
      raise cu.ConfigError("distill.n", f"must be a target grid index in [0, {grid - 2}], got {n}")

  def teacher_process(self) -> pr.Process:
    """The teacher's process on the CD grid (``process.num_scales`` points; None: the teacher's own grid)."""
    p = self.config.get("process") or {}
    num = p.get("num_scales")
    if self.family.name == "reddit":
      return pr.DDPMGamma.from_schedule(self.base.schedule, num)
    return pr.MeanReverting.from_sde(self.base.sde, num, solver=p.get("solver", "euler"))

  def options(self) -> cm.Options:
    """The :class:`lliejax.distill.consistency.Options` of ``config.distill``."""
    dc = self.config.distill
    huber, n = dc.get("huber_c"), dc.get("n")
    return cm.Options(param=cm.Parametrisation(sigma_data=float(dc.sigma_data), output=dc.output),
                      metric=dc.metric, weighting=dc.weighting, huber_c=None if huber is None else float(huber),
                      n=None if n is None else int(n))

  def ema_rules(self):
    """``'ema'`` (exported) of ``config.ema``, and ``'target'`` (``theta-``, constant ``distill.target_decay``
    every step) unless the decay is 0."""
    rules = super().ema_rules()
    decay = float(self.config.distill.get("target_decay", 0.0))
    if decay > 0:
      rules["target"] = ema_lib.Constant(decay=decay, every=1, start=0)
    return rules

  def init_frozen(self, key):
    """The teacher's parameters (+ ``'lpips'``: the LPIPS-VGG parameters with ``distill.metric = 'lpips'``)."""
    frozen = super().init_frozen(key)
    if self.config.distill.metric == "lpips":
      from lliejax.losses import perceptual  # pylint: disable=import-outside-toplevel
      frozen["lpips"] = perceptual.lpips_frozen("vgg")
    return frozen

  def loss(self, params, frozen, batch, key, *, ema, step=None):
    """:func:`lliejax.distill.consistency.loss` (the same draws from the same key, composed from its parts to
    reach the student's output for the entropy term), plus the entropy term."""
    opts, process = self.options(), self.process
    x0, cond = self.to_process(batch["gt"]), self.to_process(batch["lq"])
    k_cd, k_ent = jax.random.split(key)
    student_fn = self.net_fn(params)
    target_fn = self.net_fn(ema["target"]) if "target" in ema else student_fn
    lpips_params = frozen.get("lpips")
    if opts.metric == "lpips" and lpips_params is None:
      raise ValueError("consistency_student: distill.metric='lpips' needs the LPIPS parameters in frozen['lpips']")
    d = cm.draw(process, k_cd, x0.shape, options=opts)
    x_next = process.forward_sample(x0, cond, d.n + 1, d.noise)
    x_hat = cm.teacher_step(process, self.net_fn(frozen["teacher"]), x_next, cond, d.n)
    f_student = cm.consistency_fn(process, student_fn, x_next, cond, d.n + 1, param=opts.param)
    f_target = jax.lax.stop_gradient(cm.consistency_fn(process, target_fn, x_hat, cond, d.n, param=opts.param))
    dist = cm.distance(f_student, f_target, metric=opts.metric, huber_c=opts.huber_c, lpips_params=lpips_params,
                       data_range=process.data_range)
    lam = jnp.asarray(cm.weights(process, opts.weighting))[d.n]
    total = jnp.mean(lam * dist)
    aux = {"consistency": jnp.mean(dist), "n": jnp.mean(d.n.astype(jnp.float32)),
           "teacher_step": jnp.mean(jnp.square(x_hat - x_next))}
    return self.with_entropy(total, aux, f_student, f_target, batch["gt"], k_ent, step)

  def sample(self, params, frozen, lq, key, *, sampler=None, steps=None):
    """Multistep consistency sampling with ``steps`` (default ``sampling.steps``) steps, in [0, 1]."""
    del frozen
    self.check_sampler(sampler)
    steps = int(self.config.sampling.steps if steps is None else steps)
    cond, finish = self.prepare(lq)
    x = cm.sample(self.process, self.net_fn(params), cond, key, steps=steps, param=self.options().param,
                  clip_denoised=bool(self.config.sampling.get("clip", False)))
    return finish(x)

  def describe(self, params):
    return (f"consistency_student: the {self.family.name} network ({methods.count_params(params):,} parameters) "
            f"on a {self.process.num_scales}-point grid of its teacher's process, {self.config.distill.metric} "
            f"metric, target EMA {float(self.config.distill.get('target_decay', 0.0))}, "
            f"{self.config.sampling.steps}-step sampling")
