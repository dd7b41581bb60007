"""Entropy-SDE / Refusion configurations (``--config configs/entropy_sde.py:<variant>``).

Variants (the part after ``:``; ``,key=value`` overrides may follow, e.g. ``demo,steps=200`` or
``tiny,model.enc_blk_nums=(1,1),loss.eps=1e-10``; values take the declared type of their key (a None default is a
``placeholder(type)``) and :func:`lliejax.config_utils.load_config` validates the result):

=====================  ===========================================================================================
``lolv1``              LOL-v1 with the released hyper-parameters (AdamW 1e-4, cosine to 1e-6 over 500k iters,
                       batch 8, 128x128 patches, EMA 0.995/10, 5-level NAFNet width 64) and the *paper's* loss:
                       relative entropy (KL), L = 32 bins, h = 0.5.
``lolv2_real``         the same on LOL-v2-real.
``lolv1_released``     exactly the released ``entropy-refusion.yml``: Hellinger loss (``loss_type: en`` is
                       hard-wired to Hellinger in the official ``models/denoising_model.py``), L = 32.
``lolv1_paper``        the paper's text: KL loss, lr 5e-5, 200k iterations.
``lolv1_l1``           the Refusion baseline with the l1 maximum-likelihood loss (paper Table 3 "l1" row).
``lolv2_real_l1``      the same on LOL-v2-real.
``demo``               a small NAFNet (width 16, 4 levels) on the offline demo photos, l1 loss; trains on a
                       2-core CPU in about 10 minutes.
``demo_entropy``       ``demo`` with the working entropy recipe of the demo ablation (README): l1 + 0.05 KL (L = 16),
                       straight-through KDE clamp. Not an official configuration.
``demo_kl``            ``demo`` with the KL spatial-entropy loss alone, official clamp (L = 16 to keep CPU time
                       small): the paper's objective at demo scale; its outputs saturate (README).
``tiny``               a very small network and a handful of steps, for tests.
=====================  ===========================================================================================

Besides the official samplers (``test_sampler``: posterior / sde / ode over all ``sde.T`` steps), ``--sampler strided
--steps N`` runs N steps of :func:`lliejax.diffusion.irsde.sample_strided` with ``sampling.eta`` (1: the posterior
step on a coarser grid, default; 0: deterministic). Not in the official code.
"""
from __future__ import annotations

import ml_collections

from lliejax import config_utils

ALIASES = {"steps": "num_train_steps", "batch": "batch_size", "lr": "optim.learning_rate", "loss": "loss.name",
           "dataset": "data.name", "manual_dir": "data.manual_dir"}
VARIANTS = ("lolv1", "lolv2_real", "lolv1_released", "lolv1_paper", "lolv1_l1", "lolv2_real_l1", "demo",
            "demo_entropy", "demo_kl", "tiny")


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = "entropy_sde"
  c.seed = 0
  c.batch_size = 8  # global batch, split over all devices / processes
  c.num_train_steps = 500_000

  c.model = m = ml_collections.ConfigDict()
  m.name = "conditional_nafnet"
  m.img_channel = 3
  m.width = 64
  m.enc_blk_nums = [1, 1, 1, 1, 28]
  m.middle_blk_num = 1
  m.dec_blk_nums = [1, 1, 1, 1, 1]
  m.dtype = "float32"  # compute dtype; "bfloat16" on accelerators
  m.remat = False  # rematerialise NAFBlocks in the backward pass
  m.fusion_barriers = True  # XLA:CPU fusion barrier after each NAFBlock (same numbers; see nafnet.fusion_barrier)

  c.sde = s = ml_collections.ConfigDict()
  s.max_sigma = 50.0  # divided by 255 when >= 1
  s.T = 100
  s.schedule = "cosine"
  s.eps = 0.005

  c.loss = lo = ml_collections.ConfigDict()
  lo.name = "l1"  # l1 | kl | cross | hellinger | hellinger_smooth
  lo.weight = 1.0
  lo.bins = 32  # entropy losses: pixel levels L
  lo.bandwidth = 0.5
  lo.kernel = "sigmoid"
  lo.windows = (1, 3, 5)
  # Neighbour weights: None = the official choice per loss (fresh N(0,1) 3x3 draws for kl / hellinger, none for
  # cross) | normal | shuffled_gaussian (paper) | mean.
  lo.weights = ml_collections.config_dict.placeholder(str)
  lo.neighbour_norm = "official"
  lo.chunk_size = 0  # 0: the loss module's default
  # None: official epsilons (KL 1e-10; cross-entropy none, which gives NaN where far bins underflow, e.g. dark
  # images at L = 32, exactly as the official code); set 1e-10 to train with ``cross``.
  lo.eps = ml_collections.config_dict.placeholder(float)
  # Not in the official code (which these defaults reproduce): a combined objective pixel_weight * pixel +
  # weight * entropy (pixel: l1 | l2), an entropy warm-up (pixel loss alone before step entropy_start), and the KDE
  # input clamp: official (zero gradient outside [0, 1]) | straight_through (clamped value, identity gradient) | none.
  lo.pixel = ml_collections.config_dict.placeholder(str)
  lo.pixel_weight = 1.0
  lo.entropy_start = 0
  lo.clamp = "official"

  c.optim = o = ml_collections.ConfigDict()
  o.name = "adamw"
  o.learning_rate = 1e-4
  o.b1 = 0.9
  o.b2 = 0.99
  o.eps = 1e-8
  o.weight_decay = 0.0  # config key absent in the release -> 0
  o.schedule = "cosine"  # CosineAnnealingLR(T_max=num_train_steps, eta_min), stepped every iteration
  o.eta_min = 1e-6
  o.grad_clip = 0.0  # global-norm clipping; 0 disables (the official code does not clip)

  c.ema = e = ml_collections.ConfigDict()
  e.kind = "ema_pytorch"  # lliejax.ema: the rules of ema_pytorch.EMA, as the official denoising_model.py
  e.decay = 0.995  # ema_pytorch EMA(beta=0.995, update_every=10), other arguments default
  e.update_every = 10
  e.update_after_step = 100
  e.inv_gamma = 1.0
  e.power = 2.0 / 3.0

  c.data = d = ml_collections.ConfigDict()
  d.name = "lol_v1"
  d.data_dir = "~/tensorflow_datasets"
  d.manual_dir = ml_collections.config_dict.placeholder(str)
  d.augment = "lqgt"  # lliejax.data.augment policy: the official LQGT_dataset (resize, crop, flips, transpose)
  d.patch_size = 128
  d.resize_prob = 0.2
  d.resize_scale = 0.8
  d.flip = True
  d.transpose = True
  d.worker_count = 0
  d.eval_split = "test"
  d.eval_max_images = ml_collections.config_dict.placeholder(int)

  c.log_every = 100
  c.checkpoint_every = 5000
  c.keep_checkpoints = 3
  c.eval_every = 5000  # validation during training (0 disables)
  c.eval_num_images = 11  # the official validation uses the first 11 images
  c.eval_sampler = "sde"  # validation sampler in the official train.py
  c.test_sampler = "posterior"  # the official test.py forces posterior
  c.sampling = sa = ml_collections.ConfigDict()  # lliejax's --sampler strided (irsde.sample_strided)
  sa.eta = 1.0  # 1: the posterior step on the coarser grid; 0: deterministic (exponential integrator)
  c.write_images = True
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """``arg`` = ``<variant>[,key=value...]``; default ``lolv1``."""
  variant, overrides = config_utils.parse_arg(arg, "lolv1", VARIANTS, name="entropy_sde")
  c = base_config()
  c.variant = variant
  if variant in ("lolv1", "lolv2_real", "lolv1_paper"):
    c.loss.name = "kl"  # the paper's relative entropy
  if variant == "lolv2_real" or variant == "lolv2_real_l1":
    c.data.name = "lol_v2_real"
  if variant == "lolv1_released":
    c.loss.name = "hellinger"
  if variant == "lolv1_paper":
    c.optim.learning_rate = 5e-5
    c.num_train_steps = 200_000
  if variant in ("demo", "demo_entropy", "demo_kl", "tiny"):
    c.model.width = 16
    c.model.enc_blk_nums = [1, 1, 1, 2]
    c.model.middle_blk_num = 1
    c.model.dec_blk_nums = [1, 1, 1, 1]
    c.data.name = "lliejax_demo"
    c.data.patch_size = 64
    c.batch_size = 8
    c.num_train_steps = 1500
    c.optim.learning_rate = 1e-3
    c.optim.eta_min = 1e-5
    c.optim.grad_clip = 1.0
    c.ema.decay = 0.99
    c.ema.update_every = 1
    c.ema.update_after_step = 50
    c.log_every = 50
    c.checkpoint_every = 500
    c.eval_every = 0
    c.eval_num_images = 3
    c.test_sampler = "posterior"
    if variant in ("demo_entropy", "demo_kl"):
      c.loss.name = "kl"
      c.loss.bins = 16
    if variant == "demo_entropy":
      c.loss.weight = 0.05
      c.loss.pixel = "l1"
      c.loss.clamp = "straight_through"
  if variant == "tiny":
    c.model.width = 8
    c.model.enc_blk_nums = [1, 1]
    c.model.dec_blk_nums = [1, 1]
    c.data.patch_size = 32
    c.batch_size = 8
    c.num_train_steps = 6
    c.sde.T = 8
    c.log_every = 2
    c.checkpoint_every = 3
    c.eval_num_images = 2
    c.ema.update_after_step = 2
  config_utils.apply_overrides(c, overrides, ALIASES)
  return c
