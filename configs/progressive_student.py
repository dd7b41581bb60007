"""Progressive-distillation configurations (``--config configs/progressive_student.py:<variant>``, or the packaged
``progressive_student:<variant>``): method ``progressive_student`` (:mod:`lliejax.methods.progressive_student`), one
stage of progressive distillation (Salimans & Ho, ICLR 2022) with ReDDiT's two-teacher-step target, for the
Entropy-SDE teacher (:mod:`lliejax.distill.progressive`).

``lliejax distill --teacher EXPORT --distiller trajectory --steps N --workdir DIR [--config SPEC]`` with an
``entropy_sde`` (or ``progressive_student``) teacher chains the stages
(:func:`lliejax.distill.progressive.distill_stages`): the first uses the teacher on the grid of ``G = N * 2^m`` steps,
the largest ``<= T`` (64 of Entropy-SDE's ``T = 100`` for ``N = 4``), and each stage halves it (``64 -> 32 -> 16 ->
8 -> 4``), training in ``DIR/<S>step`` with the previous stage's export as teacher. Per stage the family, model and
process section (``sde``) are the teacher's (:func:`lliejax.methods.consistency_student.student_config`) and
``process.steps`` / ``sampling.steps`` the stage's. Without ``--config`` it picks ``demo`` for a teacher trained on the
demo photos, else ``lolv1`` with the teacher's dataset.

Variants (the part after ``:``; ``,key=value`` overrides may follow, e.g. ``demo,steps=300``):

=====================  ===========================================================================================
``lolv1``              a stage of the student of ``entropy_sde:lolv1`` (or a converted released Entropy-SDE
                       checkpoint): the 5-level width-64 ConditionalNAFNet, the SDE (T = 100, lambda = 50 / 255,
                       cosine); the first stage's grid (``process.steps`` 32 of a 64-step teacher grid);
                       truncated-SNR weighting; Salimans & Ho's per-stage budget scaled down: 5,000 iterations (as a
                       ReDDiT stage), AdamW 1e-5 constant from the teacher's weights (0.9 / 0.99, gradient-norm clip
                       1), batch 8, 128x128 ``lqgt`` crops, ``ema_pytorch`` 0.995 / 10 exported. Not an official
                       configuration (Entropy-SDE has no distillation).
``demo``               the student of ``entropy_sde:demo`` (width-16 NAFNet, T = 100) on the offline demo photos: 500
                       iterations per stage, Adam 2e-4 (``linear``: constant 200, decay over 300), EMA 0.995 from
                       iteration 50, batch 8, 64x64 ``lqgt`` crops (the ``reddit_student:demo`` stage budget).
``tiny``               tests: the tiny NAFNet of ``entropy_sde:tiny`` (T = 8; any tiny teacher's family, model and
                       process replace it), a 4-step student of its 8-step grid, 16x16 crops, 4 iterations.
=====================  ===========================================================================================

Keys of the method (the rest is the generic training config):

* ``family``, ``model``, ``sde`` (or ``diffusion`` for a ReDDiT teacher): the teacher's, set from the export;
* ``process.steps``: the student's grid ``S`` (its teacher's is ``2S``; ``S + 1`` points ``round(linspace(0, T,
  S + 1))`` of the SDE); ``process.teacher_solver``: the teacher's deterministic step on its grid, ``ddim`` (the
  exponential integrator, default) | ``euler`` (the official ``reverse_ode_step``; first stage only: a
  ``progressive_student`` teacher steps with ``ddim``, as it samples);
* ``distill.teacher``, ``distill.init_from_teacher``: as ``consistency_student``;
* ``distill.weighting``: ``truncated_snr`` (``max(x0 MSE, eps MSE)``, Salimans & Ho §4) | ``x0`` | ``eps``;
  ``distill.k``: force the student's step index (tests); ``distill.w_gt``: ReDDiT's ground-truth term
  ``w_gt mean_b max(MSE(x0, x0_s), MSE(z, eps_s))`` (0: off, as Salimans & Ho; ReDDiT's LOL-v1 uses 0.1);
  ``distill.first_grid``: the first stage's teacher grid (default the largest ``final * 2^m <= T``; e.g. ``8`` for
  one ``8 -> 4`` stage);
* ``distill.entropy``: the auxiliary spatial-entropy term on the student's ``x0`` estimate (``weight`` 0: off; the
  keys of ``consistency_student``'s);
* ``sampling.steps``: the exported student's step count (a divisor of ``process.steps``; ``S`` by default);
  ``sampling.pad``: ReDDiT's reflect padding (ReDDiT teachers only).
"""
from __future__ import annotations

import ml_collections

from lliejax import config_utils

ALIASES = {"steps": "num_train_steps", "batch": "batch_size", "lr": "optim.learning_rate",
           "dataset": "data.name", "manual_dir": "data.manual_dir", "sample_steps": "sampling.steps",
           "teacher": "distill.teacher", "weighting": "distill.weighting",
           "teacher_solver": "process.teacher_solver", "entropy_weight": "distill.entropy.weight",
           "w_gt": "distill.w_gt", "first_grid": "distill.first_grid",
           "parametrization": "distill.parametrization"}
VARIANTS = ("lolv1", "demo", "tiny")


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = "progressive_student"
  c.seed = 0
  c.batch_size = 8  # the official Entropy-SDE batch
  c.num_train_steps = 5_000  # per stage

  c.family = "entropy_sde"  # the teacher's (set from the export)
  c.model = m = ml_collections.ConfigDict()  # entropy_sde:lolv1's ConditionalNAFNet (the teacher's replaces it)
  m.name = "conditional_nafnet"
  m.img_channel = 3
  m.width = 64
  m.enc_blk_nums = [1, 1, 1, 1, 28]
  m.middle_blk_num = 1
  m.dec_blk_nums = [1, 1, 1, 1, 1]
  m.dtype = "float32"
  m.remat = False
  m.fusion_barriers = True
  c.sde = s = ml_collections.ConfigDict()  # the teacher's SDE
  s.max_sigma = 50.0
  s.T = 100
  s.schedule = "cosine"
  s.eps = 0.005

  c.process = p = ml_collections.ConfigDict()
  p.steps = 32  # the student's grid S (the teacher's: 2 S); set per stage
  p.teacher_solver = "ddim"  # ddim | euler (first stage only)

  c.sampling = sa = ml_collections.ConfigDict()
  sa.steps = 32  # a divisor of process.steps; set per stage
  sa.pad = [0, 0]

  c.distill = di = ml_collections.ConfigDict()
  di.teacher = ""  # the teacher's export directory (required to train; set per stage)
  di.init_from_teacher = True
  di.weighting = "truncated_snr"  # truncated_snr | x0 | eps
  di.k = ml_collections.config_dict.placeholder(int)  # force the student's step index (tests)
  di.w_gt = 0.0  # ReDDiT's ground-truth term (0: off, Salimans & Ho)
  di.first_grid = ml_collections.config_dict.placeholder(int)  # the first teacher grid (None: largest)
  di.parametrization = "eps"  # eps (the teacher's) | x0 (the output is x0 - cond)
  di.entropy = en = ml_collections.ConfigDict()  # auxiliary spatial-entropy term (weight 0: off)
  en.weight = 0.0
  en.name = "kl"
  en.against = "gt"  # gt | target
  en.bins = 32
  en.bandwidth = 0.5
  en.kernel = "sigmoid"
  en.windows = (1, 3, 5)
  en.weights = ml_collections.config_dict.placeholder(str)
  en.neighbour_norm = "official"
  en.chunk_size = 0
  en.eps = ml_collections.config_dict.placeholder(float)
  en.clamp = "official"

  c.optim = o = ml_collections.ConfigDict()
  o.name = "adamw"
  o.learning_rate = 1e-5
  o.b1 = 0.9
  o.b2 = 0.99
  o.eps = 1e-8
  o.weight_decay = 0.0
  o.schedule = "constant"
  o.eta_min = 0.0
  o.grad_clip = 1.0

  c.ema = e = ml_collections.ConfigDict()  # the exported EMA: the official ema_pytorch rule
  e.kind = "ema_pytorch"
  e.decay = 0.995
  e.update_every = 10
  e.update_after_step = 100
  e.inv_gamma = 1.0
  e.power = 2.0 / 3.0

  c.data = da = ml_collections.ConfigDict()
  da.name = "lol_v1"
  da.data_dir = "~/tensorflow_datasets"
  da.manual_dir = ml_collections.config_dict.placeholder(str)
  da.augment = "lqgt"  # the official LQGT_dataset: resize, crop, flips, transpose
  da.patch_size = 128
  da.resize_prob = 0.2
  da.resize_scale = 0.8
  da.flip = True
  da.transpose = True
  da.worker_count = 0
  da.eval_split = "test"
  da.eval_max_images = ml_collections.config_dict.placeholder(int)

  c.log_every = 200
  c.checkpoint_every = 1_000
  c.keep_checkpoints = 3
  c.eval_every = 0  # validation during training (0 disables)
  c.eval_num_images = 11
  c.eval_sampler = "ddim"
  c.test_sampler = "ddim"
  c.write_images = True
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """``arg`` = ``<variant>[,key=value...]``; default ``lolv1``."""
  variant, overrides = config_utils.parse_arg(arg, "lolv1", VARIANTS, name="progressive_student")
  c = base_config()
  c.variant = variant
  if variant in ("demo", "tiny"):
    c.model.width = 16
    c.model.enc_blk_nums = [1, 1, 1, 2]
    c.model.dec_blk_nums = [1, 1, 1, 1]
    c.data.name = "lliejax_demo"
    c.data.patch_size = 64
    c.num_train_steps = 500
    c.optim.name = "adam"
    c.optim.learning_rate = 2e-4
    c.optim.schedule = "linear"
    c.optim.constant_steps = 200
    c.optim.decay_steps = 300
    c.ema.decay = 0.995
    c.ema.update_every = 1
    c.ema.update_after_step = 50
    c.log_every = 50
    c.checkpoint_every = 250
    c.eval_num_images = 3
  if variant == "tiny":
    c.model.width = 8
    c.model.enc_blk_nums = [1, 1]
    c.model.dec_blk_nums = [1, 1]
    c.sde.T = 8
    c.process.steps = 4
    c.sampling.steps = 4
    c.data.patch_size = 16
    c.num_train_steps = 4
    c.optim.learning_rate = 1e-3
    c.optim.schedule = "constant"
    c.ema.update_after_step = 2
    c.log_every = 2
    c.checkpoint_every = 2
    c.eval_num_images = 1
  config_utils.apply_overrides(c, overrides, ALIASES)
  return c
