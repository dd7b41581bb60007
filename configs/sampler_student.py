"""Sampler-distillation configurations (``--config configs/sampler_student.py:<variant>``, or the packaged
``sampler_student:<variant>``): method ``sampler_student`` (:mod:`lliejax.methods.sampler_student`), a few-step
sampler of a teacher (Entropy-SDE: stochastic strided posterior steps; ReDDiT: strided DDIM) trained, unrolled, on
the teacher's own many-step sampler (:mod:`lliejax.distill.sampler`).

``lliejax distill --teacher EXPORT --distiller sampler --steps N --workdir DIR [--config SPEC]`` makes the config for
the teacher (:func:`lliejax.methods.consistency_student.student_config`: ``family``, ``model`` and ``sde`` (or
ReDDiT's ``diffusion``) become the teacher's, ``distill.teacher`` its path), sets ``sampling.steps = N`` and trains
it in ``DIR/<N>step``; without ``--config`` it picks ``demo`` for a teacher trained on the demo photos, else
``lolv1`` with the teacher's dataset.
The model, SDE, optimiser, EMA and data sections are those of ``progressive_student`` (the same teachers).

Variants (the part after ``:``; ``,key=value`` overrides may follow, e.g. ``demo,steps=300,teacher_steps=25``):

=====================  ===========================================================================================
``lolv1``              the student of ``entropy_sde:lolv1`` (or a converted released Entropy-SDE checkpoint): the
                       5-level width-64 ConditionalNAFNet and its SDE (T = 100); targets from the official 100-step
                       posterior sampler; 5,000 iterations of AdamW 1e-5 from the teacher's weights (0.9 / 0.99,
                       gradient-norm clip 1), batch 8, 128x128 ``lqgt`` crops, ``ema_pytorch`` 0.995 / 10 exported;
                       ``model.remat`` (each of the student's unrolled network calls is recomputed in the backward
                       pass). Not an official configuration (Entropy-SDE has no distillation).
``demo``               the student of ``entropy_sde:demo`` (width-16 NAFNet, T = 100) on the offline demo photos:
                       targets from the teacher's 25-step strided posterior sampler (a CPU budget; ``teacher_steps=``
                       raises it), 1,000 iterations, Adam 2e-4 (``linear``: constant 400, decay over 600), EMA 0.995
                       from iteration 50, batch 8, 64x64 ``lqgt`` crops.
``demo_reddit``        the student of ``reddit_teacher:demo`` on the demo photos: 2 steps, targets from the teacher's
                       16-step DDIM, 500 iterations at batch 4 (the teacher's 16 UNet calls per iteration), Adam 2e-4
                       (``linear``: constant 200, decay over 300), EMA 0.995 from iteration 50, 64x64 ``lqgt`` crops.
``tiny``               tests: the tiny NAFNet of ``entropy_sde:tiny`` (T = 8; a tiny teacher's model and SDE replace
                       it), a 2-step student of the 8-step posterior sampler, 16x16 crops, 4 iterations.
=====================  ===========================================================================================

Keys of the method (the rest is the generic training config):

* ``family``, ``model``, ``sde`` / ``diffusion``: the teacher's, set from the export;
* ``sampling.steps``: the student's step count ``S`` (what it is trained for and samples with by default; ReDDiT: a
  divisor of ``diffusion.num_timesteps``); ``sampling.eta``: the SDE's strided sampler's ``eta`` (1: posterior steps
  on the coarse grid; 0: deterministic; ReDDiT's DDIM is deterministic); ``sampling.pad``: ReDDiT's reflect padding;
* ``distill.teacher``, ``distill.init_from_teacher``: as ``consistency_student``; ``distill.teacher_steps`` (None:
  all ``sde.T``, the official posterior sampler with ``teacher_eta = 1``; ReDDiT: all ``num_timesteps`` DDIM steps)
  and ``distill.teacher_eta``: the teacher's sampler, whose output is the target; ``distill.metric``: ``l2`` (the
  conditional mean of the teacher's samples) | ``l1``; ``distill.w_gt``: a ground-truth term (0: off, the student
  sees only the teacher);
  ``distill.shared_init``: the student starts from the teacher's ``x_T`` (default);
* ``distill.entropy``: the auxiliary spatial-entropy term on the student's sample (``weight`` 0: off; ``against``
  ``gt`` or ``target``, the teacher's sample).
"""
from __future__ import annotations

import ml_collections

from lliejax import config_utils

ALIASES = {"steps": "num_train_steps", "batch": "batch_size", "lr": "optim.learning_rate",
           "dataset": "data.name", "manual_dir": "data.manual_dir", "sample_steps": "sampling.steps",
           "eta": "sampling.eta", "teacher": "distill.teacher", "teacher_steps": "distill.teacher_steps",
           "teacher_eta": "distill.teacher_eta", "metric": "distill.metric", "w_gt": "distill.w_gt",
           "entropy_weight": "distill.entropy.weight"}
VARIANTS = ("lolv1", "demo", "demo_reddit", "tiny")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """``arg`` = ``<variant>[,key=value...]``; default ``lolv1``."""
  variant, overrides = config_utils.parse_arg(arg, "lolv1", VARIANTS, name="sampler_student")
  c = config_utils.load_config(f"progressive_student:{'demo' if variant == 'demo_reddit' else variant}",
                               validate=False)
  c.method = "sampler_student"
  c.variant = variant
  del c.process  # the progressive grid; here the student's steps are sampling.steps
  c.sampling.steps = 4  # the student's step count (`lliejax distill --steps` sets it)
  c.sampling.eta = 1.0  # Entropy-SDE: 1 = posterior steps on the coarse grid, 0 = deterministic
  entropy = c.distill.entropy  # the auxiliary spatial-entropy term (weight 0: off)
  c.distill = di = ml_collections.ConfigDict()
  di.teacher = ""  # the teacher's export directory (required to train; set by `lliejax distill`)
  di.init_from_teacher = True
  di.teacher_steps = ml_collections.config_dict.placeholder(int)  # None: all (the official posterior sampler)
  di.teacher_eta = 1.0
  di.metric = "l2"  # l2 | l1
  di.w_gt = 0.0  # ground-truth term (0: off, the student sees only the teacher)
  di.shared_init = True
  di.entropy = entropy
  c.eval_sampler = "strided"
  c.test_sampler = "strided"
  if variant == "lolv1":
    c.model.remat = True  # the student's unrolled network calls are recomputed in the backward pass
  if variant in ("demo", "demo_reddit"):
    c.num_train_steps = 1000
    c.optim.constant_steps = 400
    c.optim.decay_steps = 600
  if variant == "demo":
    di.teacher_steps = 25
  if variant == "demo_reddit":  # the teacher's 16 DDIM calls per iteration: half the batch, half the iterations
    c.sampling.steps = 2
    c.batch_size = 4
    c.num_train_steps = 500
    c.optim.constant_steps = 200
    c.optim.decay_steps = 300
  if variant == "tiny":
    c.sampling.steps = 2
  config_utils.apply_overrides(c, overrides, ALIASES)
  return c
