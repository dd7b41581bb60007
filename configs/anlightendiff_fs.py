"""AnlightenDiff FS ("from scratch") configurations: ``--config configs/anlightendiff_fs.py:<variant>``, the packaged
``anlightendiff_fs:<variant>``, or ``lliejax train --method anlightendiff_fs:<variant>``; method ``anlightendiff_fs``
(:mod:`lliejax.methods.anlightendiff`).

Variants (the part after ``:``; ``,key=value`` overrides may follow, e.g. ``lol,variant=fixed`` or
``demo,steps=200``; :func:`lliejax.config_utils.load_config` validates the result):

=====================  ===========================================================================================
``lol``                the paper's setting, ``FS/cfg/train/FS/train.yaml``: the released networks (denoiser
                       42,503,366 parameters with ``stronger_cond``, encoder ``Unet_cond`` 37,773,638 with
                       ``cond_on_res``), T = 100, DFPL (LPIPS-VGG), phi = GT with probability 1/2 per batch, Lion
                       (0.9, 0.99, no weight decay) at 4e-4 with no schedule, global-norm clip 1.0, batch 24, random
                       160x160 crops with a horizontal flip and "vertical flip or 90-degree rotation" (``augment``),
                       seed 3407, validation with the full sampler. The yaml trains 1,000 epochs on the union
                       ``LOL+LOLv2+VELOL`` (LOL ``our485``, LOL-v2 ``Real_captured/Train``, VE-LOL-L-Cap-Full
                       ``train``: 485 + 689 + 400 = 1,574 pairs, 66 batches an epoch): ``num_train_steps =
                       66,000``. **Data**: ``data.name = lol_v1_v2_velol`` is that union
                       (:class:`lliejax.data.lol.LolV1V2Velol`; ``manual_dir`` = the official ``data/`` folder);
                       its ``test`` split is LOL ``eval15``, the yaml's ``test_folder``. ``dataset=lol_v1`` trains on
                       LOL alone (66,000 steps are then about 3,270 of its epochs).
``demo``               small networks (``unet_dim`` 16, four levels, 1.2 M parameters) on the offline demo
                       photos: T = 20, the smooth-L1 noise loss, batch 8, 64x64 crops, Lion 4e-4, 1,500 steps.
                       Not an official configuration. Measured on the shared 2-core machine (load 3-4):
                       ``lliejax train --config anlightendiff_fs:demo --workdir DIR`` took 10m47s and scored PSNR
                       20.26 dB / SSIM 0.637 / LPIPS 0.378 on the three test photos (input 9.29 dB / 0.147);
                       ``demo,variant=fixed`` 16.12 / 0.574 / 0.376 (one seed each).
                       With the paper's objective (``demo,loss=dfpl,timesteps=100,steps=600``, the same wall time:
                       DFPL's LPIPS-VGG makes a step 2.3x slower) the samples were still noisy: 8.13 dB.
``tiny``               very small networks (``unet_dim`` 8, two levels), T = 8, for tests.
=====================  ===========================================================================================

``objective.variant`` (alias ``variant``): ``released`` (default; the encoder stays at its initialisation, exactly
what the released code trains: REFERENCE §6 item 12) or ``fixed`` (the encoder trained jointly, the paper's method).
``objective.loss`` (alias ``loss``): ``dfpl`` (the yaml's), ``l1`` (smooth L1) or ``l2`` on the effective noise.
``diffusion.timesteps`` (alias ``timesteps``) may differ from the released 100: the schedule is the same cosine
formula on ``T`` steps (:func:`lliejax.diffusion.anlightendiff.make_schedule`), but converted official checkpoints
are for T = 100.

The model section carries the fields of the Lightning key map (:data:`lliejax.interop.anlightendiff.KEYMAP`), so
``lliejax convert FS_final.ckpt OUT --config anlightendiff_fs:lol`` imports the released checkpoint.
"""
from __future__ import annotations

import ml_collections

from lliejax import config_utils

ALIASES = {"steps": "num_train_steps", "batch": "batch_size", "lr": "optim.learning_rate", "dataset": "data.name",
           "manual_dir": "data.manual_dir", "variant": "objective.variant", "loss": "objective.loss",
           "timesteps": "diffusion.timesteps", "patch": "data.patch_size"}
VARIANTS = ("lol", "demo", "tiny")


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = "anlightendiff_fs"
  c.seed = 3407  # train.yaml: pl.seed_everything(3407)
  c.batch_size = 24  # train_batch_size
  c.num_train_steps = 66_000  # max_epochs 1000 x 66 batches of the 1,574-pair union

  c.model = m = ml_collections.ConfigDict()  # train.yaml: the denoiser Unet and the encoder Unet_cond
  m.name = "anlightendiff"
  m.two_step = 0  # the FS Lightning layout (no HE refiner)
  m.in_dim = 6  # concat[x_t, LQ]
  m.cond_in_dim = 12  # the hand-crafted condition [LQ, HE, colour map, gradient map]
  m.unet_dim = 64
  m.unet_outdim = 3
  m.dim_mults = [1, 2, 2, 4, 4, 8]
  m.stronger_cond = 1  # the encoder features enter the denoiser
  m.use_instance_norm = True
  m.weight_init = True  # the official initialisation (see lliejax.models.anlightendiff_unet)

  c.diffusion = d = ml_collections.ConfigDict()
  d.timesteps = 100
  d.rescale_ratio = 1.0
  d.clip_denoised = True  # clamp x0_hat to [-1, 1] in the sampler

  c.objective = ob = ml_collections.ConfigDict()
  ob.variant = "released"  # released | fixed (lliejax.methods.anlightendiff)
  ob.loss = "dfpl"  # loss_type: dfpl | l1 | l2
  ob.anchor_gt_prob = 0.5  # random.choice(['pred', 'ref']) per batch

  c.optim = o = ml_collections.ConfigDict()  # lion-pytorch 0.2.2 defaults; no scheduler; Lightning clipping
  o.name = "lion"
  o.learning_rate = 4e-4
  o.b1 = 0.9
  o.b2 = 0.99
  o.weight_decay = 0.0
  o.schedule = "constant"
  o.grad_clip = 1.0

  c.data = da = ml_collections.ConfigDict()
  da.name = "lol_v1_v2_velol"  # use_dataset: 'LOL+LOLv2+VELOL' (module docstring)
  da.data_dir = "~/tensorflow_datasets"
  da.manual_dir = ml_collections.config_dict.placeholder(str)
  da.augment = "crop_flip"  # dataset.py: random crop, hflip, then vflip or rot90 (flip_or_rot)
  da.patch_size = 160  # image_size
  da.rot90 = False
  da.flip_or_rot = True
  da.worker_count = 0
  da.eval_split = "test"
  da.eval_max_images = ml_collections.config_dict.placeholder(int)

  c.log_every = 100
  c.checkpoint_every = 6_600  # every 100 epochs of the union
  c.keep_checkpoints = 3
  c.eval_every = 660  # the official code validates every epoch (66 steps) with the full sampler on eval15
  c.eval_num_images = 15
  c.eval_sampler = "drds"
  c.test_sampler = "drds"
  c.write_images = True
  return c


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """``arg`` = ``<variant>[,key=value...]``; default ``lol``."""
  variant, overrides = config_utils.parse_arg(arg, "lol", VARIANTS, name="anlightendiff_fs")
  c = base_config()
  c.variant = variant
  if variant in ("demo", "tiny"):
    c.data.name = "lliejax_demo"
    c.batch_size = 8
    c.eval_every = 0
  if variant == "demo":
    c.model.unet_dim = 16
    c.model.dim_mults = [1, 2, 2, 4]
    c.diffusion.timesteps = 20
    c.objective.loss = "l1"
    c.data.patch_size = 64
    c.num_train_steps = 1500
    c.log_every = 100
    c.checkpoint_every = 500
    c.eval_num_images = 3
  if variant == "tiny":
    c.model.unet_dim = 8
    c.model.dim_mults = [1, 2]
    c.diffusion.timesteps = 8
    c.data.patch_size = 16
    c.num_train_steps = 4
    c.log_every = 2
    c.checkpoint_every = 2
    c.eval_num_images = 1
  config_utils.apply_overrides(c, overrides, ALIASES)
  return c
