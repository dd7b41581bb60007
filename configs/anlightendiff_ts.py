"""AnlightenDiff TS ("two step") configurations: ``--config configs/anlightendiff_ts.py:<variant>``, the packaged
``anlightendiff_ts:<variant>``; method ``anlightendiff_ts`` (:mod:`lliejax.methods.anlightendiff`).

TS trains three networks in three stages (``objective.stage``, alias ``stage``), each one ``lliejax train`` run
initialised from the previous stage's export (``objective.init_from``, alias ``init_from``):
``encoder`` (colour-map encoder, 1 - MS-SSIM) -> ``he`` (histogram refiner, LPIPS-VGG) -> ``diffusion`` (the
denoiser, l2). ``lliejax train --config anlightendiff_ts:demo,variant=fixed --workdir /tmp/ts --stages all``
(:func:`lliejax.methods.anlightendiff.train_two_step`) runs the chain, each stage in ``/tmp/ts/<stage>``;
``--stages diffusion`` continues from the exports already there. The default stage is ``diffusion`` (what a
converted ``twostep_final.ckpt`` samples with: ``lliejax convert twostep_final.ckpt OUT --config
anlightendiff_ts:lol``).

Variants (the part after ``:``; ``,key=value`` overrides may follow):

=====================  ===========================================================================================
``lol``                ``TS/cfg/train/TS/two_step.yaml``: the released networks (TS denoiser 37,769,798
                       parameters without feature injection, ``Unet_cond`` 37,773,638 with a sigmoid output,
                       ``Unet_he`` 37,769,798), T = 100, batch 32, 160x160 crops with the flip / rotation policy,
                       global-norm clip 1.0, seed 3407, 1,000 epochs of the 1,574-pair union ``LOL+LOLv2+VELOL``
                       per stage (50 batches an epoch: 50,000 steps). Stage defaults: ``encoder`` Lion 4e-4
                       (``cond_optimizer``, ``cond_lr``), ``he`` AdamW 4e-4 with PyTorch's defaults (0.9, 0.999,
                       eps 1e-8, weight decay 0.01; ``he_optimizer``, ``he_lr``), ``diffusion`` Lion 4e-4 (0.9, 0.99)
                       with the ``l2`` loss (``loss_type``). **Data**: the union ``lol_v1_v2_velol`` (see
                       ``anlightendiff_fs``; ``test`` = LOL ``eval15``, the yaml's ``test_folder``).
``demo``               small networks (``unet_dim`` 16, four levels) on the offline demo photos: batch 8, 64x64
                       crops (112x112 in the encoder stage: the 4-scale MS-SSIM needs more than 99 pixels), 300
                       steps for the encoder and he stages, 1,500 for the diffusion stage at T = 20 (as
                       ``anlightendiff_fs:demo``, whose samples are still noisy after 600 steps at T = 100). Not an
                       official configuration. Measured (README "AnlightenDiff"; ``--stages all``, 3 test photos):
                       ``fixed`` 16.61 dB / SSIM 0.618 / LPIPS 0.427, ``released`` 5.53 / 0.371 / 0.677 (input
                       9.26 / 0.147): the released anchor mismatch washes the outputs out.
``tiny``               very small networks (``unet_dim`` 8, two levels), T = 8, for tests (100x100 crops in the
                       encoder stage).
=====================  ===========================================================================================

``objective.variant`` (alias ``variant``): ``released`` (default: the diffusion stage trains with phi = ``img_c``,
the released training path with its missing refiner read as absent, REFERENCE §6 item 20) or ``fixed`` (phi =
``(1 - zeta) img_c + zeta`` from the he stage, as sampling uses). ``objective.ssim_crop_sim`` /
``ssim_clamp_variance`` select the torchmetrics version of the encoder's MS-SSIM
(:func:`lliejax.losses.anlightendiff.ms_ssim`; default: the versions of the Lightning-1.x era, < 1.3).

The stage defaults are applied before the overrides, so ``lol,stage=he,lr=1e-4`` trains the refiner with AdamW at
1e-4.
"""
from __future__ import annotations

import ml_collections

from lliejax import config_utils

ALIASES = {"steps": "num_train_steps", "batch": "batch_size", "lr": "optim.learning_rate", "dataset": "data.name",
           "manual_dir": "data.manual_dir", "variant": "objective.variant", "loss": "objective.loss",
           "stage": "objective.stage", "init_from": "objective.init_from", "timesteps": "diffusion.timesteps",
           "patch": "data.patch_size"}
VARIANTS = ("lol", "demo", "tiny")


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.method = "anlightendiff_ts"
  c.seed = 3407
  c.batch_size = 32  # train_batch_size
  c.num_train_steps = 50_000  # max_epochs 1000 x 50 batches of the 1,574-pair union

  c.model = m = ml_collections.ConfigDict()  # two_step.yaml
  m.name = "anlightendiff"
  m.two_step = 1  # the TS Lightning layout (encoder.model., histroEncoder.model.)
  m.in_dim = 6  # the denoiser's concat[x_t, LQ]; also the refiner's concat[HE(LQ), img_c] (he_in_dim)
  m.cond_in_dim = 12
  m.unet_dim = 64
  m.unet_outdim = 3
  m.dim_mults = [1, 2, 2, 4, 4, 8]
  m.stronger_cond = 0
  m.use_instance_norm = True
  m.weight_init = True

  c.diffusion = d = ml_collections.ConfigDict()
  d.timesteps = 100
  d.rescale_ratio = 1.0
  d.clip_denoised = True

  c.objective = ob = ml_collections.ConfigDict()
  ob.variant = "released"  # released | fixed (lliejax.methods.anlightendiff)
  ob.stage = "diffusion"  # encoder | he | diffusion
  ob.init_from = ""  # the previous stage's export (he: the encoder's; diffusion: the he stage's)
  ob.loss = "l2"  # the diffusion stage's loss_type: l2 | l1 | dfpl (TS calls it lpips)
  ob.anchor_gt_prob = 0.0  # TS has no "ref" branch
  ob.ssim_crop_sim = True  # torchmetrics < 1.4: SSIM averaged over the window-cropped map
  ob.ssim_clamp_variance = False  # torchmetrics >= 1.3 clamps the variances at 0

  c.optim = o = ml_collections.ConfigDict()  # the stage defaults of _stage_defaults
  o.name = "lion"
  o.learning_rate = 4e-4
  o.b1 = 0.9
  o.b2 = 0.99
  o.eps = 1e-8
  o.weight_decay = 0.0
  o.schedule = "constant"
  o.grad_clip = 1.0

  c.data = da = ml_collections.ConfigDict()
  da.name = "lol_v1_v2_velol"  # use_dataset: 'LOL+LOLv2+VELOL'
  da.data_dir = "~/tensorflow_datasets"
  da.manual_dir = ml_collections.config_dict.placeholder(str)
  da.augment = "crop_flip"
  da.patch_size = 160
  da.rot90 = False
  da.flip_or_rot = True
  da.worker_count = 0
  da.eval_split = "test"
  da.eval_max_images = ml_collections.config_dict.placeholder(int)

  c.log_every = 100
  c.checkpoint_every = 5_000
  c.keep_checkpoints = 3
  c.eval_every = 500
  c.eval_num_images = 15
  c.eval_sampler = "drds"
  c.test_sampler = "drds"
  c.write_images = True
  return c


def _peek(overrides, keys, default):
  """The last value an override gives one of ``keys`` (before the overrides are applied), else ``default``."""
  value = default
  for item in overrides:
    key, sep, text = item.partition("=")
    if sep and key.strip() in keys:
      value = text.strip().strip("'\"")
  return value


def _stage_defaults(c: ml_collections.ConfigDict, stage: str, variant: str) -> None:
  """The optimiser of each stage (two_step.yaml: ``cond_*``, ``he_*``, the diffusion's) and the encoder stage's
  crop size (4-scale MS-SSIM needs > 99 pixels)."""
  if stage == "he":  # torch.optim.AdamW(lr=he_lr) defaults
    c.optim.name = "adamw"
    c.optim.b2 = 0.999
    c.optim.weight_decay = 0.01
  if stage == "encoder" and variant in ("demo", "tiny"):
    c.data.patch_size = 112 if variant == "demo" else 100
  if variant == "demo":
    c.num_train_steps = 1500 if stage == "diffusion" else 300


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """``arg`` = ``<variant>[,key=value...]``; default ``lol``."""
  variant, overrides = config_utils.parse_arg(arg, "lol", VARIANTS, name="anlightendiff_ts")
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
    c.data.patch_size = 64
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
  _stage_defaults(c, _peek(overrides, ("stage", "objective.stage"), c.objective.stage), variant)
  config_utils.apply_overrides(c, overrides, ALIASES)
  return c
