"""ReDDiT teacher configurations: ``--config configs/reddit_teacher.py:<variant>``, the packaged
``reddit_teacher:<variant>``, or ``lliejax train --method reddit_teacher:<variant>``.

Variants (the part after ``:``; ``,key=value`` overrides may follow, e.g. ``lolv1,steps=1000`` or
``tiny,sampling.steps=2``; :func:`lliejax.config_utils.load_config` validates the result):

=====================  ===========================================================================================
``lolv1``              the **teacher** (method ``reddit_teacher``) on LOL-v1: the official UNet (17,434,182
                       parameters), the first distillation stage's teacher grid ``n = 16``, ``s = 32``
                       (``N = 513`` linear betas 1e-4 .. 2e-2), 16-step DDIM on test images reflect-padded by
                       8 rows / 4 columns (``data/LoL_dataset.py`` at test: 400x600 -> 416x608), and the
                       optimisation settings of ReDDiT's ``config/lolv1_train.json`` / ``train.py``: Adam 1e-4
                       (0.9, 0.999, no weight decay), batch 16, 96x96 crops with horizontal flips, gradient-norm
                       clip 1, EMA 0.9999 every step.
``lolv2_real``         the same on LOL-v2-real.
``lolv2_syn``          the same on LOL-v2-synthetic (no test padding: the official code pads only real LOL).
``demo``               a small UNet (inner 32, three levels, 1.08 M parameters; attention at 16x16 of a 64x64 patch)
                       on the offline demo photos with the official first-stage grid (16 x 32, ``N = 513``) and
                       16-step DDIM; Adam 1e-3 cosine to 1e-5, batch 8, 64x64 crops, EMA 0.995: the teacher of the
                       demo distillation (README, ``benchmarks/distill_demo.py``). Not an official configuration.
``tiny``               a very small UNet (inner 32, two levels) on a 4 x 4 grid, for tests.
=====================  ===========================================================================================

Not from the official code, which releases no teacher training (REFERENCE §3.3): the objective (GSAD's
epsilon-prediction at continuous levels, L1 by default, see :mod:`lliejax.methods.reddit_teacher`), the constant
learning rate and the iteration count (1,000,000, the ``n_iter`` left in ReDDiT's test JSONs from the GSAD code
base; the distillation JSONs run 5,000 per stage).
"""
from __future__ import annotations

import ml_collections

from lliejax import config_utils

ALIASES = {"steps": "num_train_steps", "batch": "batch_size", "lr": "optim.learning_rate", "loss": "loss.name",
           "dataset": "data.name", "manual_dir": "data.manual_dir", "sample_steps": "sampling.steps"}
VARIANTS = ("lolv1", "lolv2_real", "lolv2_syn", "demo", "tiny")


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = "reddit_teacher"
  c.seed = 0
  c.batch_size = 16  # global batch (config/*_train.json: datasets.train.batch_size 16)
  c.num_train_steps = 1_000_000

  c.model = m = ml_collections.ConfigDict()  # config/*.json model.unet (identical for every LOL config)
  m.name = "sr3_unet"
  m.in_channel = 6  # concat[LQ, x_t]
  m.out_channel = 3
  m.inner_channel = 64
  m.channel_mults = [1, 1, 2, 2, 4]
  m.attn_res = [16]
  m.res_blocks = 2
  m.norm_groups = 32
  m.image_size = 128  # diffusion.image_size: the nominal size that places attention
  m.dropout = 0.0
  m.init = "orthogonal"  # init_weights(netG, 'orthogonal') of model/networks.py; "torch": PyTorch defaults
  m.mid_attn = True  # official; False (with attn_res=()) makes the UNet fully convolutional (not an official option)

  c.diffusion = d = ml_collections.ConfigDict()  # beta_schedule.train of the first stage: n = 16, s = 32
  d.num_timesteps = 16
  d.time_scale = 32
  d.linear_start = 1e-4
  d.linear_end = 2e-2
  d.t_per_sample = False  # GSAD: one t per batch, one continuous gamma per sample

  c.sampling = sa = ml_collections.ConfigDict()
  sa.steps = 16  # DDIM steps (a divisor of diffusion.num_timesteps): the stride is num_timesteps / steps
  sa.pad = [8, 4]  # BORDER_REFLECT rows / columns on every side before rounding up to x16 (test.py on LOL 400x600)

  c.loss = lo = ml_collections.ConfigDict()
  lo.name = "l1"  # l1 | l2 (mean over pixels and batch)
  lo.weight = 1.0

  c.optim = o = ml_collections.ConfigDict()
  o.name = "adam"
  o.learning_rate = 1e-4
  o.b1 = 0.9
  o.b2 = 0.999
  o.eps = 1e-8
  o.weight_decay = 0.0
  o.schedule = "constant"
  o.eta_min = 0.0
  o.grad_clip = 1.0  # clip_grad_norm_(..., 1) of model.py

  c.ema = e = ml_collections.ConfigDict()
  e.kind = "constant"  # utils/ema.py: shadow <- 0.9999 shadow + 0.0001 param every iteration
  e.decay = 0.9999
  e.every = 1
  e.start = 0

  c.data = da = ml_collections.ConfigDict()
  da.name = "lol_v1"
  da.data_dir = "~/tensorflow_datasets"
  da.manual_dir = ml_collections.config_dict.placeholder(str)
  da.augment = "crop_flip"  # data/LoL_dataset.py: random 96x96 crop, horizontal flip p = 0.5, no rotation
  da.patch_size = 96
  da.rot90 = False
  da.worker_count = 0
  da.eval_split = "test"
  da.eval_max_images = ml_collections.config_dict.placeholder(int)

  c.log_every = 100
  c.checkpoint_every = 10_000
  c.keep_checkpoints = 3
  c.eval_every = 10_000  # validation during training (0 disables)
  c.eval_num_images = 15
  c.eval_sampler = "ddim"
  c.test_sampler = "ddim"
  c.write_images = True
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """``arg`` = ``<variant>[,key=value...]``; default ``lolv1``."""
  variant, overrides = config_utils.parse_arg(arg, "lolv1", VARIANTS, name="reddit")
  c = base_config()
  c.variant = variant
  if variant == "lolv2_real":
    c.data.name = "lol_v2_real"
  if variant == "lolv2_syn":
    c.data.name = "lol_v2_synthetic"
    c.sampling.pad = [0, 0]  # test.py pads only non-square (400x600) LOL images
  if variant in ("demo", "tiny"):
    c.sampling.pad = [0, 0]
    c.data.name = "lliejax_demo"
    c.batch_size = 8
    c.eval_every = 0
  if variant == "demo":
    c.model.inner_channel = 32
    c.model.channel_mults = [1, 2, 2]
    c.model.res_blocks = 1
    c.model.image_size = 64  # attention at level 2 (nominal 16) and in the middle
    c.data.patch_size = 64
    c.num_train_steps = 1500
    c.optim.learning_rate = 1e-3
    c.optim.schedule = "cosine"
    c.optim.eta_min = 1e-5
    c.ema.decay = 0.995
    c.ema.start = 100
    c.log_every = 50
    c.checkpoint_every = 500
    c.eval_num_images = 3
  if variant == "tiny":
    c.model.inner_channel = 32
    c.model.channel_mults = [1, 2]
    c.model.res_blocks = 1
    c.model.image_size = 32  # attention at level 1 (nominal 16) and in the middle
    c.diffusion.num_timesteps = 4
    c.diffusion.time_scale = 4
    c.sampling.steps = 4
    c.data.patch_size = 16
    c.num_train_steps = 4
    c.optim.learning_rate = 1e-3
    c.ema.decay = 0.9
    c.log_every = 2
    c.checkpoint_every = 2
    c.eval_num_images = 1
  config_utils.apply_overrides(c, overrides, ALIASES)
  return c
