"""Consistency-distillation configurations (``--config configs/consistency_student.py:<variant>``, or the packaged
``consistency_student:<variant>``): method ``consistency_student`` (:mod:`lliejax.methods.consistency_student`),
a consistency model (Song et al., ICML 2023) distilled from any lliejax diffusion teacher export.

``lliejax distill --teacher EXPORT --distiller consistency --steps N --workdir DIR [--config SPEC]`` makes the config
for the teacher (:func:`lliejax.methods.consistency_student.student_config`: ``family``, ``model`` and the process
section ``diffusion`` / ``sde`` become the teacher's, ``distill.teacher`` its path), sets ``sampling.steps = N`` and
trains it in ``DIR/<N>step``; without ``--config`` it picks ``demo_<family>`` for a teacher trained on the demo
photos, else ``lolv1_<family>`` with the teacher's dataset. The model / process values below are those of the
teacher each variant is meant for; they are replaced by the teacher's.

Variants (the part after ``:``; ``,key=value`` overrides may follow, e.g. ``demo_reddit,steps=200,metric=l2``):

=======================  =========================================================================================
``lolv1_reddit``         the student of a ReDDiT teacher on LOL-v1 (``reddit_teacher:lolv1``, 16 x 32, or a
                         converted released ``*_gen.pth``): the official UNet; the teacher's 17-level DDIM grid;
                         pseudo-Huber metric (improved CT), uniform weighting, ``sigma_data`` 0.5 (images in [-1, 1]),
                         target EMA 0.95 (the paper's CD runs); the optimisation of ReDDiT's distillation stages
                         (Adam 1e-4, 0.9 / 0.999, gradient-norm clip 1, EMA 0.9999 exported, batch 16, 96x96 crops
                         with flips), 10,000 iterations (two ReDDiT stages' worth). 2-step sampling, reflect padding
                         8 / 4 (the teacher's test padding replaces it).
``lolv1_entropy_sde``    the student of ``entropy_sde:lolv1`` (or a converted released Entropy-SDE checkpoint): the
                         5-level width-64 ConditionalNAFNet; the SDE (T = 100, lambda = 50 / 255, cosine); the grid
                         of every step (101 points) with the official Euler probability-flow step; ``sigma_data``
                         0.25 (the [0, 1] analogue of 0.5 on [-1, 1]); the Entropy-SDE optimiser settings (AdamW
                         1e-4, 0.9 / 0.99, batch 8, 128x128 ``lqgt`` crops, ``ema_pytorch`` 0.995 / 10) at 1e-5
                         constant (a fine-tune from the teacher), 10,000 iterations.
``demo_reddit``          the student of ``reddit_teacher:demo`` on the offline demo photos (three-level UNet, 16 x 32
                         grid): 1,000 iterations, Adam 2e-4 (``linear``: constant 400, decay over 600), EMA 0.995
                         from iteration 50, batch 8, 64x64 crops, pseudo-Huber, target EMA 0.95. Not an official
                         configuration.
``demo_entropy_sde``     the student of ``entropy_sde:demo`` (width-16 NAFNet, T = 100) on the demo photos: the same
                         schedule, ``lqgt`` crops of 64, ``sigma_data`` 0.25.
``tiny``                 tests: the tiny UNet of ``reddit_teacher:tiny`` (4 x 4 grid; any tiny teacher's family,
                         model and process replace it), 16x16 crops, 4 iterations, l2.
=======================  =========================================================================================

Keys of the method (the rest is the generic training config):

* ``family``: ``reddit`` | ``entropy_sde`` (the teacher's; set from the export);
* ``model`` and ``diffusion`` (reddit: ``num_timesteps``, ``time_scale``, ``linear_start``, ``linear_end``) or
  ``sde`` (entropy_sde: ``max_sigma``, ``T``, ``schedule``, ``eps``): the teacher's network and process;
* ``process.num_scales``: the CD grid's number of points ``N`` (None: the teacher's own grid, ``n + 1`` DDIM levels /
  ``T + 1`` SDE steps; up to the table's ``n s + 1`` / ``T + 1``); ``process.solver``: the SDE's ODE step,
  ``euler`` (official ``reverse_ode_step``) | ``ddim`` (exponential integrator); ignored by ReDDiT's DDIM step;
* ``distill.teacher``: the teacher export (set by ``lliejax distill``); ``distill.init_from_teacher``: start from
  its parameters (default) or from a fresh network;
* ``distill.sigma_data`` / ``distill.output`` (``x0``: ``F`` is the ``x0`` estimate of the noise-predicting network;
  ``raw``) -- the parametrisation; ``distill.metric``: ``l2`` | ``pseudo_huber`` | ``lpips`` (LPIPS-VGG);
  ``distill.huber_c`` (None: ``0.00054 sqrt(d)``); ``distill.weighting``: ``uniform`` | ``ict``;
  ``distill.target_decay``: the target EMA ``mu`` (0: ``theta- = stopgrad(theta)``); ``distill.n``: force the grid
  index (tests);
* ``distill.entropy``: the auxiliary spatial-entropy term (``weight`` 0: off; ``name`` ``kl`` | ``cross`` |
  ``hellinger`` | ``hellinger_smooth``; ``against`` ``gt`` | ``target``; ``bins``, ``bandwidth``, ``kernel``,
  ``windows``, ``weights``, ``neighbour_norm``, ``chunk_size``, ``eps``, ``clamp`` as ``entropy_sde``'s ``loss``);
* ``sampling.steps``: the exported student's step count (``lliejax enhance`` / ``eval`` default; any ``1..N-1``
  with ``--steps``); ``sampling.clip``: clip each step's estimate to the data range; ``sampling.pad``: ReDDiT's
  reflect padding (rows, columns).
"""
from __future__ import annotations

import ml_collections

from lliejax import config_utils

ALIASES = {"steps": "num_train_steps", "batch": "batch_size", "lr": "optim.learning_rate",
           "dataset": "data.name", "manual_dir": "data.manual_dir", "sample_steps": "sampling.steps",
           "teacher": "distill.teacher", "metric": "distill.metric", "weighting": "distill.weighting",
           "target_decay": "distill.target_decay", "num_scales": "process.num_scales",
           "entropy_weight": "distill.entropy.weight"}
VARIANTS = ("lolv1_reddit", "lolv1_entropy_sde", "demo_reddit", "demo_entropy_sde", "tiny")


def reddit_sections(c: ml_collections.ConfigDict, variant: str) -> None:
  """``family``, ``model`` (SR3 UNet), ``diffusion`` and the data of a ReDDiT teacher (``reddit_teacher``'s)."""
  c.family = "reddit"
  c.model = m = ml_collections.ConfigDict()  # config/lolv1_train.json model.unet
  m.name = "sr3_unet"
  m.in_channel = 6
  m.out_channel = 3
  m.inner_channel = 64
  m.channel_mults = [1, 1, 2, 2, 4]
  m.attn_res = [16]
  m.res_blocks = 2
  m.norm_groups = 32
  m.image_size = 128
  m.dropout = 0.0
  m.init = "orthogonal"  # unused: the student starts from the teacher's parameters
  c.diffusion = d = ml_collections.ConfigDict()  # the teacher's grid (n, s) and betas
  d.num_timesteps = 16
  d.time_scale = 32
  d.linear_start = 1e-4
  d.linear_end = 2e-2
  c.sampling.pad = [8, 4]  # test.py: BORDER_REFLECT on LOL 400x600 (the teacher's own replaces it)
  c.distill.sigma_data = 0.5  # the paper's, for images in [-1, 1]
  c.data.augment = "crop_flip"  # random crop, horizontal flip (ReDDiT's LoL_dataset)
  c.data.patch_size = 96
  c.data.rot90 = False
  c.ema.kind = "constant"  # ReDDiT's utils/ema.py
  c.ema.decay = 0.9999
  c.ema.every = 1
  c.ema.start = 0
  c.optim.name = "adam"
  c.optim.b2 = 0.999
  c.optim.grad_clip = 1.0
  if variant in ("demo_reddit", "tiny"):
    m.inner_channel = 32
    m.channel_mults = [1, 2, 2]
    m.res_blocks = 1
    m.image_size = 64
    c.sampling.pad = [0, 0]
  if variant == "tiny":
    m.channel_mults = [1, 2]
    m.image_size = 32
    d.num_timesteps = 4
    d.time_scale = 4


def entropy_sde_sections(c: ml_collections.ConfigDict, variant: str) -> None:
  """``family``, ``model`` (ConditionalNAFNet), ``sde`` and the data of an Entropy-SDE teacher (``entropy_sde``'s)."""
  c.family = "entropy_sde"
  c.model = m = ml_collections.ConfigDict()
  m.name = "conditional_nafnet"
  m.img_channel = 3
  m.width = 64
  m.enc_blk_nums = [1, 1, 1, 1, 28]
  m.middle_blk_num = 1
  m.dec_blk_nums = [1, 1, 1, 1, 1]
  m.dtype = "float32"
  m.remat = False
  m.fusion_barriers = True
  c.sde = s = ml_collections.ConfigDict()
  s.max_sigma = 50.0
  s.T = 100
  s.schedule = "cosine"
  s.eps = 0.005
  c.distill.sigma_data = 0.25  # the [0, 1] analogue of the paper's 0.5 on [-1, 1]
  c.data.augment = "lqgt"  # the official LQGT_dataset: resize, crop, flips, transpose
  c.data.patch_size = 128
  c.data.resize_prob = 0.2
  c.data.resize_scale = 0.8
  c.data.flip = True
  c.data.transpose = True
  c.ema.kind = "ema_pytorch"  # the official denoising_model.py EMA(beta=0.995, update_every=10)
  c.ema.decay = 0.995
  c.ema.update_every = 10
  c.ema.update_after_step = 100
  c.ema.inv_gamma = 1.0
  c.ema.power = 2.0 / 3.0
  c.optim.name = "adamw"
  c.optim.b2 = 0.99
  c.optim.grad_clip = 1.0
  if variant == "demo_entropy_sde":
    m.width = 16
    m.enc_blk_nums = [1, 1, 1, 2]
    m.dec_blk_nums = [1, 1, 1, 1]
    c.data.patch_size = 64


def base_config() -> ml_collections.ConfigDict:
  """The sections every variant shares (the family sections are added per variant)."""
  c = ml_collections.ConfigDict()
  c.method = "consistency_student"
  c.seed = 0
  c.batch_size = 16
  c.num_train_steps = 10_000

  c.process = p = ml_collections.ConfigDict()
  p.num_scales = ml_collections.config_dict.placeholder(int)  # None: the teacher's own grid
  p.solver = "euler"  # the SDE's ODE step (official reverse_ode_step); ReDDiT: always its DDIM step

  c.sampling = sa = ml_collections.ConfigDict()
  sa.steps = 2  # the exported student's step count (`lliejax distill --steps` sets it)
  sa.pad = [0, 0]
  sa.clip = False

  c.distill = di = ml_collections.ConfigDict()
  di.teacher = ""  # the teacher's export directory (required to train; `lliejax distill --teacher`)
  di.init_from_teacher = True
  di.sigma_data = 0.5
  di.output = "x0"  # x0 | raw (lliejax.distill.consistency.Parametrisation)
  di.metric = "pseudo_huber"  # l2 | pseudo_huber | lpips
  di.huber_c = ml_collections.config_dict.placeholder(float)  # None: 0.00054 sqrt(d)
  di.weighting = "uniform"  # uniform | ict
  di.target_decay = 0.95  # theta- EMA (openai/consistency_models: --target_ema_mode fixed --start_ema 0.95)
  di.n = ml_collections.config_dict.placeholder(int)  # force the target grid index (tests)
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
  o.name = "adam"
  o.learning_rate = 1e-4
  o.b1 = 0.9
  o.b2 = 0.999
  o.eps = 1e-8
  o.weight_decay = 0.0
  o.schedule = "constant"
  o.eta_min = 0.0
  o.grad_clip = 1.0

  c.ema = ml_collections.ConfigDict()  # the exported EMA (the family sections fill it)

  c.data = da = ml_collections.ConfigDict()
  da.name = "lol_v1"
  da.data_dir = "~/tensorflow_datasets"
  da.manual_dir = ml_collections.config_dict.placeholder(str)
  da.worker_count = 0
  da.eval_split = "test"
  da.eval_max_images = ml_collections.config_dict.placeholder(int)

  c.log_every = 200
  c.checkpoint_every = 1_000
  c.keep_checkpoints = 3
  c.eval_every = 0  # validation during training (0 disables)
  c.eval_num_images = 15
  c.eval_sampler = "consistency"
  c.test_sampler = "consistency"
  c.write_images = True
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """``arg`` = ``<variant>[,key=value...]``; default ``lolv1_reddit``."""
  variant, overrides = config_utils.parse_arg(arg, "lolv1_reddit", VARIANTS, name="consistency_student")
  c = base_config()
  c.variant = variant
  if variant in ("lolv1_reddit", "demo_reddit", "tiny"):
    reddit_sections(c, variant)
  else:
    entropy_sde_sections(c, variant)
  if variant == "lolv1_entropy_sde":
    c.batch_size = 8  # the official batch
    c.optim.learning_rate = 1e-5
    c.eval_num_images = 11
  if variant in ("demo_reddit", "demo_entropy_sde", "tiny"):
    c.data.name = "lliejax_demo"
    c.batch_size = 8
    c.num_train_steps = 1000
    c.optim.learning_rate = 2e-4
    c.optim.schedule = "linear"  # LambdaLR 'linear' of ReDDiT's model.py: constant, then linear decay
    c.optim.constant_steps = 400
    c.optim.decay_steps = 600
    c.log_every = 50
    c.checkpoint_every = 250
    c.eval_num_images = 3
  if variant in ("demo_reddit", "tiny"):
    c.data.patch_size = 64
    c.ema.decay = 0.995
    c.ema.start = 50
  if variant == "demo_entropy_sde":
    c.ema.decay = 0.995
    c.ema.update_every = 1
    c.ema.update_after_step = 50
  if variant == "tiny":
    c.data.patch_size = 16
    c.num_train_steps = 4
    c.optim.learning_rate = 1e-3
    c.optim.schedule = "constant"
    c.distill.metric = "l2"
    c.ema.decay = 0.9
    c.ema.start = 0
    c.log_every = 2
    c.checkpoint_every = 2
    c.eval_num_images = 1
  config_utils.apply_overrides(c, overrides, ALIASES)
  return c
