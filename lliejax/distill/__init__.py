"""Distillation of diffusion samplers into fewer steps.

* :mod:`~lliejax.distill.trajectory`: ReDDiT's reflectance-aware trajectory distillation (one pure loss over a
  student and a frozen teacher network, the official learning-rate schedule, and the 16 -> 8 -> 4 -> 2 stage
  driver). The ``reddit_student`` method (:mod:`lliejax.methods.reddit_student`) trains it with the generic loop.
* :mod:`~lliejax.distill.processes`: the teachers' processes (ReDDiT's gamma-DDPM, Entropy-SDE's mean-reverting
  SDE) behind one interface: grids, forward marginals, deterministic ODE steps.
* :mod:`~lliejax.distill.consistency`: consistency distillation (Song et al. 2023) on any process: the
  parametrisation, the CD loss, multistep consistency sampling. The ``consistency_student`` method
  (:mod:`lliejax.methods.consistency_student`) trains it from any teacher export.
* :mod:`~lliejax.distill.progressive`: progressive distillation (Salimans & Ho 2022) with ReDDiT's two-teacher-step
  target on any process (the closed-form target of an affine student step), and its stage driver; the
  ``progressive_student`` method (:mod:`lliejax.methods.progressive_student`) trains a stage, for the Entropy-SDE
  teacher in particular.
* :mod:`~lliejax.distill.sampler`: sampler distillation (Luhman & Luhman 2021): a few-step student sampler
  (stochastic for Entropy-SDE) trained, unrolled, on the output of the teacher's many-step sampler; the
  ``sampler_student`` method (:mod:`lliejax.methods.sampler_student`) trains it from an Entropy-SDE or ReDDiT
  teacher export.

:func:`run` is ``lliejax distill``: one teacher export, one distiller, the same command for every teacher
(:func:`default_config` picks the student config when none is given).
"""
from __future__ import annotations

import os
from typing import Callable

from lliejax.distill import consistency, processes, progressive, sampler, trajectory

__all__ = ["DISTILLERS", "consistency", "default_config", "processes", "progressive", "run", "sampler", "trajectory"]

#: ``lliejax distill --distiller``: the student methods each distiller trains.
DISTILLERS = {"trajectory": ("reddit_student", "progressive_student"), "consistency": ("consistency_student",),
              "sampler": ("sampler_student",)}


def _teacher_info(teacher: str) -> tuple[dict, str]:
  from lliejax import checkpoint  # pylint: disable=import-outside-toplevel
  from lliejax.methods import consistency_student as cs  # pylint: disable=import-outside-toplevel
  info = checkpoint.read_export_info(os.path.abspath(os.path.expanduser(teacher)))
  return info, cs.family_of_export(info, teacher)


def default_config(teacher: str, distiller: str) -> str:
  """The packaged student config for ``teacher`` and ``distiller`` (``lliejax distill`` without ``--config``).

  ``trajectory``: ``reddit_student`` for a ReDDiT teacher (``reddit_teacher`` / ``reddit_student``; ``lolv1``,
  ``lolv2_real`` or ``lolv2_syn`` by the teacher's dataset), ``progressive_student`` for an Entropy-SDE teacher
  (``entropy_sde`` / ``progressive_student``; ``lolv1`` with the teacher's dataset). ``consistency``:
  ``consistency_student:lolv1_<family>`` with the teacher's dataset. ``sampler``: ``sampler_student:lolv1`` with
  the teacher's dataset (``demo`` / ``demo_reddit`` for demo teachers). A teacher trained on the demo photos
  (``data.name = lliejax_demo``) gets the ``demo`` variant (``demo_<family>`` for consistency).

  Raises:
    ValueError: an unknown distiller or an export of no known family.
  """
  if distiller not in DISTILLERS:
    raise ValueError(f"unknown distiller {distiller!r}; choose one of {', '.join(DISTILLERS)}")
  info, family = _teacher_info(teacher)
  method = info.get("method")
  data = ((info.get("config") or {}).get("data") or {}).get("name")
  demo = data == "lliejax_demo"
  if distiller == "consistency":
    return f"consistency_student:{'demo' if demo else 'lolv1'}_{family}" + ("" if demo or not data else
                                                                            f",data.name={data}")
  if distiller == "sampler":
    variant = ("demo_reddit" if family == "reddit" else "demo") if demo else "lolv1"
    return f"sampler_student:{variant}" + ("" if demo or not data else f",data.name={data}")
  if family == "reddit" and method != "progressive_student":
    variants = {"lliejax_demo": "demo", "lol_v2_real": "lolv2_real", "lol_v2_synthetic": "lolv2_syn"}
    return f"reddit_student:{variants.get(data, 'lolv1')}"
  return f"progressive_student:{'demo' if demo else 'lolv1'}" + ("" if demo or not data else f",data.name={data}")


def run(config, teacher: str, workdir: str, *, distiller: str = "trajectory", steps: int = 2,
        train_fn: Callable | None = None) -> list[str]:
  """Distils the export ``teacher`` into ``steps``-step students under ``workdir`` (``lliejax distill``).

  * ``trajectory`` with a ``reddit_student`` config: ReDDiT's stages (:func:`lliejax.distill.trajectory.distill_stages`,
    ``n -> n/2 -> ... -> steps``);
  * ``trajectory`` with a ``progressive_student`` config: progressive stages on the teacher's process
    (:func:`lliejax.distill.progressive.distill_stages`; Entropy-SDE ``100 -> 64-step grid -> ... -> steps``);
  * ``consistency`` (a ``consistency_student`` config) and ``sampler`` (a ``sampler_student`` config): one run of
    the config made for the teacher (:func:`lliejax.methods.consistency_student.student_config`) with
    ``sampling.steps = steps``.

  Each run trains in ``workdir/<S>step`` (``S``: that student's step count; resuming) and exports there.

  Args:
    config: the student config (a ConfigDict; :func:`default_config` names one).
    teacher: the teacher's export directory.
    workdir: the runs go under it.
    distiller: ``trajectory``, ``consistency`` or ``sampler`` (:data:`DISTILLERS`).
    steps: the step count of the (last) student.
    train_fn: ``(config, workdir) -> anything`` leaving an export in ``workdir/export`` (default
      :func:`lliejax.train.train_and_evaluate`).

  Returns:
    The students' export directories, first stage first.

  Raises:
    ValueError: a config of another distiller, or a teacher / step count the distiller cannot use.
  """
  if distiller not in DISTILLERS:
    raise ValueError(f"unknown distiller {distiller!r}; choose one of {', '.join(DISTILLERS)}")
  method = config.get("method")
  if method not in DISTILLERS[distiller]:
    raise ValueError(f"--distiller {distiller} trains {' or '.join(DISTILLERS[distiller])}; the config is one of "
                     f"{method!r} (give a config of the distiller, or leave --config out)")
  if method == "reddit_student":
    return trajectory.distill_stages(config, teacher, workdir, final_steps=steps, train_fn=train_fn)
  if method == "progressive_student":
    return progressive.distill_stages(config, teacher, workdir, final_steps=steps, train_fn=train_fn)
  from lliejax import config_utils  # pylint: disable=import-outside-toplevel
  from lliejax.methods import consistency_student as cs  # pylint: disable=import-outside-toplevel
  if train_fn is None:
    from lliejax import train  # pylint: disable=import-outside-toplevel
    train_fn = train.train_and_evaluate
  steps = int(steps)
  if steps < 1:
    raise ValueError(f"steps must be >= 1, got {steps}")
  stage = cs.student_config(config, teacher)
  stage.sampling.steps = steps
  config_utils.validate_config(stage)
  stage_dir = os.path.join(os.path.abspath(os.path.expanduser(workdir)), f"{steps}step")
  train_fn(stage, stage_dir)
  return [os.path.join(stage_dir, "export")]
