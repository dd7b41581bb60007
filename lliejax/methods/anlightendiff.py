"""AnlightenDiff (Chan et al., IEEE TIP 2024) as two :class:`lliejax.methods.Method` s: ``anlightendiff_fs``
(from scratch) and ``anlightendiff_ts`` (two step).

Both diffuse the residual ``x0 = 2 (GT - LQ) - 1`` with the anchored forward process DRDA and sample with DRDS
(:mod:`lliejax.diffusion.anlightendiff`), conditioned on the LQ image (``concat[x_t, LQ]``); the anchor phi comes
from networks that read the hand-crafted 12-channel condition (:func:`lliejax.data.condition.hand_crafted_condition`).
Networks: :mod:`lliejax.models.anlightendiff_unet`; losses: :mod:`lliejax.losses.anlightendiff`; the official code is
allanchan339/AnlightenDiff (REFERENCE §2, §6 items 12-22).

**FS** (``FS/diffusion_fromscratch.py: LitDiffusion.training_step``, ``cfg/train/FS/train.yaml``): per batch,

1. ``t ~ U{0..T-1}`` per sample, ``x0 = img2res(GT, LQ)``;
2. the encoder ``Unet_cond`` (``cond_on_res``) maps the 12-channel condition to ``(out, feats)``, ``out`` =
   conv + HE(LQ) (no clamp);
3. phi = ``out`` ("pred") or **the ground truth itself** ("ref"), one choice per batch with probability 1/2 each
   (``random.choice``; ``objective.anchor_gt_prob``);
4. ``(x_t, eps*) = q_sample(x0, t, phi, eps)`` with ``eps* = eps + c1_t (2 phi - 1)`` (the in-place target),
   ``eps_hat = Unet(x_t, t, LQ, feats)`` (``stronger_cond``: the encoder features enter every down level);
5. the loss ``objective.loss``: ``dfpl`` (the yaml's; LPIPS-VGG between the re-imaged states, with the double anchor
   shift of the target), ``l1`` (smooth L1) or ``l2`` between ``eps_hat`` and ``eps*``.

``objective.variant`` (REFERENCE §6 item 12):

=============  ===============================================================================================
``released``   what the released code trains: ``configure_optimizers`` builds Lion on ``self.model.parameters()``
               only, so the encoder **stays at its initialisation** (it receives gradients, never an update).
               Here the encoder's parameters are cut from the gradient (``stop_gradient``): its gradient is
               exactly zero, so the clipping norm is the denoiser's (as Lightning clips the optimiser's
               parameters) and the optimiser's update of it is exactly zero (Lion and Adam map a zero gradient
               history to a zero step), provided there is no weight decay (``optim.weight_decay`` must be 0, as
               lion-pytorch's default). Both networks stay in ``params`` (checkpointed and exported together).
``fixed``      the paper's method: the encoder is trained jointly, through the features (always) and through phi
               (in the "pred" branch; nothing is detached, as in the code).
=============  ===============================================================================================

**TS** (``TS/diffusion_twostep.py``, ``TS/cond.py``, ``cfg/train/TS/two_step.yaml``): three networks trained in
three stages (``objective.stage``), each stage one ``lliejax train`` run whose export the next one reads
(``objective.init_from``; :func:`train_two_step` chains them):

=============  ===============================================================================================
``encoder``    ``LitCond``: ``img_c = sigmoid(Unet_cond(condition))`` against the colour map of the GT with
               ``1 - MS-SSIM`` (4 scales, torchmetrics betas; :func:`lliejax.losses.anlightendiff.encoder_loss`),
               Lion 4e-4.
``he``         ``LitHE``: ``zeta = clamp(Unet_he(concat[HE(LQ), img_c]) + HE(LQ), 0, 1)`` (the stage-1 encoder
               frozen) against the GT with LPIPS-VGG, AdamW 4e-4 (PyTorch defaults: weight decay 0.01). (The
               released ``LitHE.training_step`` unpacks two items from the dataset's three-item batches and cannot
               run as released; the objective is what it states.)
``diffusion``  ``LitDiffusion`` with the encoder (and refiner) frozen: ``eps_hat = Unet(x_t, t, LQ)`` (no feature
               injection), loss ``l2`` (the yaml's), Lion 4e-4; no "ref" branch (phi always from the networks).
=============  ===============================================================================================

The TS ``objective.variant`` concerns the diffusion stage's anchor (REFERENCE §6 item 20): the released
``LitDiffusion.__init__`` builds its histogram refiner ``histroEncoder`` only when ``diffusion_path`` is set, which
the released ``two_step.yaml`` leaves empty, so its ``training_step`` cannot run.

=============  ===============================================================================================
``released``   the training path as the yaml leaves it, with the missing refiner read as absent
               (``on_cond_or_center_selector(..., histro=None)``): phi = ``img_c`` during training, while
               sampling (the released ``test.py`` with ``test.yaml``, which does load the refiner) uses
               ``(1 - zeta) img_c + zeta``. The three stages still run in the yaml's order.
``fixed``      the refiner path repaired: the diffusion stage trains with phi = ``(1 - zeta) img_c + zeta`` from the
               he stage's refiner (what the yaml's unused ``he_path`` points at), the anchor it samples with.
=============  ===============================================================================================

Sampling (both methods, ``sample_mode: ddpm``): the full DRDS sampler of ``p_sample_loop`` in one ``lax.scan``, all
``diffusion.timesteps`` steps from ``x_T = 2 phi - 1`` (no noise), phi computed once from the LQ image: FS the
encoder output, TS ``(1 - zeta) img_c + zeta``. The input is reflect-padded at the bottom / right to a multiple of
:attr:`size_multiple` (32 for the released networks; FS ``test.py`` with ``padding: True``, ``pad_to_multiple``) and
the output cropped back; the TS protocol center-crops to x32 before (``lliejax.metrics.conventions``
``anlightendiff_ts``), so its images need no padding. An export of a TS stage before ``diffusion`` samples that
stage's own output (``img_c``, ``zeta``; what ``LitCond`` / ``LitHE`` validate), so the generic loop can validate it.

Pytrees: FS ``params = {'unet', 'encoder'}`` in both variants. TS ``params`` holds the network of the stage, and
``frozen`` the earlier stages' (read from ``objective.init_from``, exported with the stage's network). ``frozen`` also
holds the LPIPS-VGG parameters of the loss (``'lpips'``, left out of exports). Sampling uses the union of the
networks in ``params`` and ``frozen``; a converted official checkpoint (``lliejax convert --config
anlightendiff_ts:lol``) has all of them in ``params``. There is no EMA (the official code has none): the online
parameters are exported. Initialisation draws from an ``rbg`` key derived from the init key
(:meth:`_AnlightenDiff.init_network`): XLA:CPU compiles the per-parameter threefry draws of these networks slowly.

Config sections: ``model`` (``name: anlightendiff`` and the fields of :data:`lliejax.interop.anlightendiff.KEYMAP`),
``diffusion`` (``timesteps``, ``rescale_ratio``, ``clip_denoised``), ``objective``, ``optim``, ``data``; see
``configs/anlightendiff_fs.py`` and ``configs/anlightendiff_ts.py``.
"""
from __future__ import annotations

import os
from typing import ClassVar

import jax
import jax.numpy as jnp

from lliejax import config_utils as cu
from lliejax import methods
from lliejax.data import condition
from lliejax.diffusion import anlightendiff as ad
from lliejax.losses import anlightendiff as la
from lliejax.methods.base import Method
from lliejax.metrics import conventions
from lliejax.models import anlightendiff_unet as au

MODELS = ("anlightendiff",)
#: ``objective.variant`` (module docstring).
VARIANTS = ("released", "fixed")
#: ``objective.stage`` of ``anlightendiff_ts``, in training order.
TS_STAGES = ("encoder", "he", "diffusion")
#: The networks of each method (params + frozen together), in key-map order.
NETWORKS = {"fs": ("unet", "encoder"), "ts": ("unet", "encoder", "he")}
#: TS: the networks each stage reads from ``objective.init_from`` (trained by the earlier stages).
TS_INPUTS = {"encoder": (), "he": ("encoder",), "diffusion": ("encoder", "he")}
#: TS: the network each stage trains.
TS_TRAINED = {"encoder": "encoder", "he": "he", "diffusion": "unet"}


def pad_to_multiple(x: jax.Array, multiple: int) -> jax.Array:
  """``utils/utils.py: pad_to_multiple``: reflect-pad the bottom and right of NHWC ``x`` to multiples of ``multiple``
  (``F.pad(..., mode='reflect')``: mirror without repeating the edge)."""
  h, w = x.shape[1:3]
  ph, pw = (-h) % multiple, (-w) % multiple
  if not ph and not pw:
    return x
  return jnp.pad(x, ((0, 0), (0, ph), (0, pw), (0, 0)), mode="reflect")


class _AnlightenDiff(Method):
  """What FS and TS share: networks, schedule, config checks, padding, the DRDS sampler."""

  architecture_sections = ("model", "diffusion")
  samplers = ("drds",)
  export_ema = None
  #: ``'fs'`` or ``'ts'``.
  layout: ClassVar[str] = ""

  def __init__(self, config):
    super().__init__(config)
    m = config.model
    if m.name not in MODELS:
      raise ValueError(f"config.model.name={m.name!r}: {self.name} implements {', '.join(MODELS)}")
    common = dict(unet_dim=int(m.unet_dim), unet_outdim=int(m.unet_outdim),
                  dim_mults=tuple(int(x) for x in m.dim_mults),
                  use_instance_norm=bool(m.get("use_instance_norm", True)),
                  weight_init=bool(m.get("weight_init", True)))
    self.nets = {"unet": au.Unet(in_dim=int(m.in_dim), stronger_cond=bool(m.stronger_cond), **common),
                 "encoder": au.UnetCond(in_dim=int(m.cond_in_dim), on_res=self.layout == "fs", **common)}
    if self.layout == "ts":
      self.nets["he"] = au.UnetHE(in_dim=int(m.in_dim), on_res=True, **common)
    self.schedule = ad.make_schedule(int(config.diffusion.timesteps))
    self.rescale_ratio = float(config.diffusion.get("rescale_ratio", 1.0))
    self.clip_denoised = bool(config.diffusion.get("clip_denoised", True))
    self.variant = config.objective.get("variant", "released")

  # ---------------------------------------------------------------------------------------------- config
  @classmethod
  def validate_config(cls, config, *, device_count=None):
    """The generic checks, then ``model``, ``diffusion``, ``objective`` and the crop size."""
    super().validate_config(config, device_count=device_count)
    cu.check_choice(config, "model.name", MODELS)
    two_step = cu.check_int(config, "model.two_step", min_value=0, max_value=1)
    if two_step is not None and two_step != int(cls.layout == "ts"):
      raise cu.ConfigError("model.two_step", f"must be {int(cls.layout == 'ts')} for {cls.name} (the "
                           f"{'TS layout with the HE refiner' if cls.layout == 'ts' else 'FS layout'}), got {two_step}")
    for key in ("model.unet_dim",):
      cu.check_int(config, key, min_value=1)
    cu.check_int(config, "model.stronger_cond", min_value=0, max_value=1)
    for key, want in (("model.unet_outdim", 3), ("model.in_dim", 6), ("model.cond_in_dim", 12)):
      value = cu.check_int(config, key, min_value=1)
      if value is not None and value != want:
        raise cu.ConfigError(key, f"must be {want} (RGB residual; concat[x_t, LQ]; the 12-channel hand-crafted "
                             f"condition), got {value}")
    mults = cu.check_int_list(config, "model.dim_mults", min_value=1)
    if mults is not None and (len(mults) < 2 or mults[0] != 1):
      raise cu.ConfigError("model.dim_mults", f"must have >= 2 levels and start with 1 (final_conv takes unet_dim "
                           f"channels), got {list(mults)}")
    for key in ("model.use_instance_norm", "model.weight_init"):
      cu.check_bool(config, key)
    cu.check_int(config, "diffusion.timesteps", min_value=1)
    cu.check_float(config, "diffusion.rescale_ratio", min_value=0, min_open=True)
    cu.check_bool(config, "diffusion.clip_denoised")
    cu.check_choice(config, "objective.variant", VARIANTS)
    cu.check_choice(config, "objective.loss", la.DIFFUSION_LOSSES)
    cu.check_float(config, "objective.anchor_gt_prob", min_value=0, max_value=1)
    patch = cu.check_int(config, "data.patch_size", min_value=1)
    if patch is not None and mults is not None:
      m = 2 ** (len(mults) - 1)
      if patch % m or patch < 2 * m:
        raise cu.ConfigError("data.patch_size", f"must be a multiple of {m} and at least {2 * m} (the U-Nets have "
                             f"{len(mults)} levels), got {patch}")
    cu.check_bool(config, "data.flip_or_rot")
    data = config.get("data")
    if data is not None and data.get("rot90") and data.get("flip_or_rot"):
      raise cu.ConfigError("data.flip_or_rot", "data.rot90 is set too; they are two rotation policies, set one")

  @property
  def size_multiple(self) -> int:
    """The U-Nets halve the resolution ``levels - 1`` times: 32 for the released networks."""
    return int(self.nets["unet"].padder_size)

  @property
  def convention(self):
    return conventions.get(f"anlightendiff_{self.layout}")

  # ---------------------------------------------------------------------------------------------- params
  def init_network(self, name: str, key: jax.Array):
    """Fresh parameters of network ``name`` (``'unet'``, ``'encoder'``, ``'he'``) from ``key`` (shape-only inputs of
    the smallest valid size; the official initialisation, see :mod:`lliejax.models.anlightendiff_unet`)."""
    net = self.nets[name]
    # One threefry draw seeds an rbg key for the per-parameter draws (threefry's compile slowly on XLA:CPU).
    key = jax.random.wrap_key_data(jax.random.bits(key, (4,), jnp.uint32), impl="rbg")
    m = net.padder_size
    side = 2 * m
    if name == "unet":
      dims = [net.unet_dim * k for k in net.dim_mults]
      feats = [jnp.zeros((1, side // 2 ** i, side // 2 ** i, d), jnp.float32) for i, d in enumerate(dims)]
      x = jnp.zeros((1, side, side, net.unet_outdim), jnp.float32)
      cond = jnp.zeros((1, side, side, net.in_dim - net.unet_outdim), jnp.float32)
      return net.init(key, x, jnp.zeros((1,), jnp.int32), cond, feats if net.stronger_cond else None)["params"]
    return net.init(key, jnp.zeros((1, side, side, net.in_dim), jnp.float32))["params"]

  def network_keys(self, key: jax.Array) -> dict[str, jax.Array]:
    """One key per network, split from the init key in a fixed order (so a network's initialisation does not depend
    on which of them a variant trains)."""
    names = NETWORKS[self.layout]
    return dict(zip(names, jax.random.split(key, len(names))))

  def trained_networks(self) -> tuple[str, ...]:
    """The networks in ``params`` (the rest of :data:`NETWORKS` is frozen)."""
    raise NotImplementedError

  def init_params(self, key):
    """Fresh parameters of :meth:`trained_networks`."""
    keys = self.network_keys(key)
    return {name: self.init_network(name, keys[name]) for name in self.trained_networks()}

  def inference_frozen(self, frozen):
    """The frozen networks (sampling needs them); the loss's LPIPS parameters stay out of exports."""
    return {k: v for k, v in frozen.items() if k in NETWORKS[self.layout]}

  def networks(self, params, frozen) -> dict:
    """The union of the networks in ``frozen`` and ``params`` (``params`` first)."""
    nets = {k: v for k, v in (frozen or {}).items() if k in NETWORKS[self.layout]}
    nets.update({k: v for k, v in params.items() if k in NETWORKS[self.layout]})
    return nets

  def _lpips_frozen(self) -> dict:
    from lliejax.losses import perceptual  # pylint: disable=import-outside-toplevel
    return {"lpips": perceptual.lpips_frozen("vgg")}

  # ---------------------------------------------------------------------------------------------- pieces
  def encode(self, encoder_params, lq):
    """``Unet_cond(cond_data_transforms(LQ))`` -> ``(out, feats)`` (FS: conv + HE(LQ); TS: ``img_c``)."""
    return self.nets["encoder"].apply({"params": encoder_params}, condition.hand_crafted_condition(lq))

  def eps_fn(self, unet_params, feats):
    """``(x_t, LQ, t) -> eps_hat`` of the denoiser, the encoder features closed over."""
    unet = self.nets["unet"]
    feats = feats if unet.stronger_cond else None
    return lambda x, cond, t: unet.apply({"params": unet_params}, x, t, cond, feats)

  def anchor(self, nets, lq):
    """``(phi, feats)`` of the sampler for NHWC ``lq`` (sizes multiples of :attr:`size_multiple`)."""
    raise NotImplementedError

  def check_sample_args(self, sampler, steps):
    mode = sampler or self.default_sampler("test")
    if mode not in self.samplers:
      raise ValueError(f"{self.name}: unknown sampler {mode!r}; choose one of {', '.join(self.samplers)}")
    if steps is not None and int(steps) != self.schedule.T:
      raise ValueError(f"{self.name} samples all diffusion.timesteps={self.schedule.T} steps (DRDS), got "
                       f"steps={steps}")

  def drds(self, nets, lq, key, **kwargs):
    """The padded DRDS sample of :func:`lliejax.diffusion.anlightendiff.sample` (``kwargs``), with phi."""
    phi, feats = self.anchor(nets, lq)
    out = ad.sample(self.schedule, self.eps_fn(nets["unet"], feats), lq, phi, key, clip_x0=self.clip_denoised,
                    rescale_ratio=self.rescale_ratio, **kwargs)
    return out, phi

  def sample(self, params, frozen, lq, key, *, sampler=None, steps=None):
    """DRDS (module docstring) on the bottom/right reflect-padded ``lq``, cropped back; in [0, 1]."""
    self.check_sample_args(sampler, steps)
    h, w = lq.shape[1:3]
    x = pad_to_multiple(jnp.asarray(lq, jnp.float32), self.size_multiple)
    out, _ = self.drds(self.networks(params, frozen), x, key)
    return out[:, :h, :w]

  def sample_trajectory(self, params, frozen, lq, key, *, intermediate_ts=None):
    """``(output, anchor phi, trajectory)`` of :meth:`sample`: phi in the image domain and the trajectory of
    :func:`lliejax.diffusion.anlightendiff.sample` (``t``, ``x0`` = res2img of x0_hat, ``x_t``), all cropped to
    ``lq``'s size (notebooks: the anchor and x0_hat at a few steps)."""
    h, w = lq.shape[1:3]
    x = pad_to_multiple(jnp.asarray(lq, jnp.float32), self.size_multiple)
    (out, traj), phi = self.drds(self.networks(params, frozen), x, key, return_intermediates=True,
                                 intermediate_ts=intermediate_ts)
    traj = {"t": traj["t"], "x0": traj["x0"][:, :, :h, :w], "x_t": traj["x_t"][:, :, :h, :w]}
    return out[:, :h, :w], phi[:, :h, :w], traj

  def diffusion_objective(self, unet_params, frozen, batch, draws, phi, feats):
    """Steps 4-5 of the module docstring for an anchor ``phi`` and encoder ``feats``: ``(loss, eps_hat, eps*)``."""
    lq, gt = batch["lq"], batch["gt"]
    x0 = ad.img_to_res(gt, lq, rescale_ratio=self.rescale_ratio)
    t = draws["t"]
    x_t, eps_star = ad.q_sample(self.schedule, x0, t, phi, draws["noise"])
    eps_hat = self.eps_fn(unet_params, feats)(x_t, lq, t)
    name = self.config.objective.loss
    value = la.diffusion_loss(name, eps_hat=eps_hat, eps_star=eps_star, lpips_params=frozen.get("lpips"),
                              sched=self.schedule, x0=x0, t=t, phi=phi, lq=lq, rescale_ratio=self.rescale_ratio)
    return value, eps_hat, eps_star

  def draws(self, key, shape) -> dict:
    """The random draws of one diffusion training step: ``t`` (B,), ``anchor_gt`` (one bool: phi = GT, the "ref"
    branch, with probability ``objective.anchor_gt_prob``), ``noise`` (``shape``)."""
    k_t, k_a, k_n = jax.random.split(key, 3)
    p = float(self.config.objective.get("anchor_gt_prob", 0.0))
    return {"t": self.schedule.sample_timesteps(k_t, shape[0]), "anchor_gt": jax.random.bernoulli(k_a, p),
            "noise": jax.random.normal(k_n, shape, jnp.float32)}

  def describe(self, params):
    trained = ", ".join(f"{k} {methods.count_params(v):,}" for k, v in params.items())
    return (f"{self.name} ({self.variant}): trains {trained} parameters; T = {self.schedule.T}, "
            f"loss {self.config.objective.get('loss')}")


@methods.register
class AnlightenDiffFS(_AnlightenDiff):
  """AnlightenDiff from scratch: encoder (anchor + features) and denoiser, DFPL (module docstring)."""

  name = "anlightendiff_fs"
  layout = "fs"

  @classmethod
  def validate_config(cls, config, *, device_count=None):
    """As the base, and no weight decay with the ``released`` variant (which would move the encoder)."""
    super().validate_config(config, device_count=device_count)
    if cu.lookup(config, "objective.variant", "released") == "released":
      wd = cu.lookup(config, "optim.weight_decay", 0.0)
      if cu.is_number(wd) and wd > 0:
        raise cu.ConfigError("optim.weight_decay", f"must be 0 with objective.variant='released' (the released "
                             f"code keeps the encoder out of its optimiser; weight decay would shrink it here), "
                             f"got {wd}")

  def trained_networks(self):
    return ("unet", "encoder")

  def init_frozen(self, key):
    """The LPIPS-VGG parameters for ``dfpl``."""
    del key
    return self._lpips_frozen() if self.config.objective.loss == "dfpl" else {}

  def anchor(self, nets, lq):
    """FS: phi = the encoder output (conv + HE(LQ)), and its features."""
    return self.encode(nets["encoder"], lq)

  def loss(self, params, frozen, batch, key, *, ema, step=None):
    """The FS training step (module docstring, steps 1-5)."""
    del ema, step
    return self.loss_from_draws(params, frozen, batch, self.draws(key, batch["gt"].shape))

  def loss_from_draws(self, params, frozen, batch, draws):
    """:meth:`loss` with given :meth:`draws`: ``(value, aux)``."""
    nets = self.networks(params, frozen)
    if self.variant == "released":  # never updated by the released code (module docstring)
      nets["encoder"] = jax.lax.stop_gradient(nets["encoder"])
    out, feats = self.anchor(nets, batch["lq"])
    phi = jnp.where(draws["anchor_gt"], batch["gt"], out)
    value, _, _ = self.diffusion_objective(nets["unet"], frozen, batch, draws, phi, feats)
    return value, {self.config.objective.loss: value, "anchor_gt": draws["anchor_gt"].astype(jnp.float32)}


@methods.register
class AnlightenDiffTS(_AnlightenDiff):
  """AnlightenDiff two step: colour-map encoder, HE refiner, denoiser, each trained in its stage (module docstring)."""

  name = "anlightendiff_ts"
  layout = "ts"

  def __init__(self, config):
    super().__init__(config)
    self.stage = config.objective.get("stage", "diffusion")
    self._init_from = None

  @classmethod
  def validate_config(cls, config, *, device_count=None):
    """As FS, then ``objective.stage`` / ``init_from`` and the MS-SSIM crop size of the encoder stage."""
    super().validate_config(config, device_count=device_count)
    stage = cu.check_choice(config, "objective.stage", TS_STAGES)
    cu.check_str(config, "objective.init_from", nonempty=False, allow_none=True)
    for key in ("objective.ssim_crop_sim", "objective.ssim_clamp_variance"):
      cu.check_bool(config, key)
    patch = cu.check_int(config, "data.patch_size", min_value=1)
    if stage == "encoder" and patch is not None and patch // 9 <= 10:
      raise cu.ConfigError("data.patch_size", f"the encoder stage's 4-scale MS-SSIM needs crops larger than 99 "
                           f"pixels (torchmetrics' check), got {patch}")

  def trained_networks(self):
    return (TS_TRAINED[self.stage],)

  def init_from(self) -> dict:
    """The networks of :data:`TS_INPUTS` for this stage, from the export ``objective.init_from`` (its params and
    frozen networks together), loaded once.

    Raises:
      ValueError: no export named where the stage needs one, an export of another method or model, or one without
        the networks the stage needs.
    """
    if self._init_from is not None:
      return self._init_from
    need = TS_INPUTS[self.stage]
    path = self.config.objective.get("init_from") or ""
    if not need:
      self._init_from = {}
      return self._init_from
    if not path:
      raise ValueError(f"anlightendiff_ts stage {self.stage!r} needs the export of the previous stage "
                       f"(objective.init_from=DIR, with {', '.join(need)}); train the stages in order "
                       f"({' -> '.join(TS_STAGES)}), e.g. with lliejax.methods.anlightendiff.train_two_step")
    from lliejax import checkpoint  # pylint: disable=import-outside-toplevel
    export = checkpoint.load_export(os.path.expanduser(path))
    if export.method != self.name:
      raise ValueError(f"{path}: an export of method {export.method!r}, expected {self.name!r}")
    if export.config is not None:
      keys = ("two_step", "in_dim", "cond_in_dim", "unet_dim", "unet_outdim", "dim_mults", "stronger_cond")
      theirs = {k: export.config.model.get(k) for k in keys}
      ours = {k: self.config.model.get(k) for k in keys}
      if {k: list(v) if isinstance(v, (list, tuple)) else v for k, v in theirs.items()} != {
          k: list(v) if isinstance(v, (list, tuple)) else v for k, v in ours.items()}:
        raise ValueError(f"{path}: the export's model {theirs} differs from this config's {ours}")
    nets = self.networks(export.params, export.frozen)
    missing = [n for n in need if n not in nets]
    if missing:
      raise ValueError(f"{path}: the export has no {', '.join(missing)} network (it has {', '.join(nets) or 'none'});"
                       f" stage {self.stage!r} reads {', '.join(need)} from the earlier stages")
    self._init_from = {n: jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), nets[n]) for n in need}
    return self._init_from

  def init_frozen(self, key):
    """The earlier stages' networks (:meth:`init_from`), and the LPIPS-VGG parameters where the stage's loss needs
    them (``he``; ``diffusion`` with ``dfpl``)."""
    del key
    frozen = dict(self.init_from())
    if self.stage == "he" or (self.stage == "diffusion" and self.config.objective.loss == "dfpl"):
      frozen.update(self._lpips_frozen())
    return frozen

  def refine(self, he_params, lq, img_c):
    """``Unet_he(concat[HE(LQ), img_c])`` -> zeta (``LitHE.forward``; clamped to [0, 1])."""
    he_in = jnp.concatenate([condition.histogram_equalize(lq), img_c], axis=-1)
    zeta, _ = self.nets["he"].apply({"params": he_params}, he_in)
    return zeta

  def anchor(self, nets, lq):
    """TS: ``phi = (1 - zeta) img_c + zeta`` (``on_cond_or_center_selector`` with the refiner) and the encoder
    features (used by the denoiser only with ``stronger_cond``)."""
    img_c, feats = self.encode(nets["encoder"], lq)
    return ad.two_step_anchor(img_c, self.refine(nets["he"], lq, img_c)), feats

  def sample(self, params, frozen, lq, key, *, sampler=None, steps=None):
    """DRDS for the ``diffusion`` stage (and converted checkpoints); the stage's own output before (``img_c`` for
    ``encoder``, zeta for ``he``: the images ``LitCond`` / ``LitHE`` validate)."""
    if self.stage == "diffusion":
      return super().sample(params, frozen, lq, key, sampler=sampler, steps=steps)
    self.check_sample_args(sampler, None)
    h, w = lq.shape[1:3]
    x = pad_to_multiple(jnp.asarray(lq, jnp.float32), self.size_multiple)
    nets = self.networks(params, frozen)
    img_c, _ = self.encode(nets["encoder"], x)
    out = img_c if self.stage == "encoder" else self.refine(nets["he"], x, img_c)
    return out[:, :h, :w]

  def loss(self, params, frozen, batch, key, *, ema, step=None):
    """The loss of ``objective.stage`` (module docstring)."""
    del ema, step
    draws = self.draws(key, batch["gt"].shape) if self.stage == "diffusion" else None
    return self.loss_from_draws(params, frozen, batch, draws)

  def loss_from_draws(self, params, frozen, batch, draws):
    """:meth:`loss` with given :meth:`draws` (None for the encoder and he stages): ``(value, aux)``."""
    nets = self.networks(params, frozen)
    lq, gt = batch["lq"], batch["gt"]
    obj = self.config.objective
    if self.stage == "encoder":
      img_c, _ = self.encode(nets["encoder"], lq)
      value = la.encoder_loss(img_c, condition.color_map(gt), crop_sim=bool(obj.get("ssim_crop_sim", True)),
                              clamp_variance=bool(obj.get("ssim_clamp_variance", False)))
      return value, {"ms_ssim": 1.0 - value}
    img_c, feats = self.encode(nets["encoder"], lq)  # frozen (not in params) in the two later stages
    if self.stage == "he":
      value = la.he_loss(frozen["lpips"], self.refine(nets["he"], lq, img_c), gt)
      return value, {"lpips": value}
    phi = img_c if self.variant == "released" else ad.two_step_anchor(img_c, self.refine(nets["he"], lq, img_c))
    phi = jnp.where(draws["anchor_gt"], gt, phi)
    value, _, _ = self.diffusion_objective(nets["unet"], frozen, batch, draws, phi, feats)
    return value, {obj.loss: value}

  def describe(self, params):
    return f"{super().describe(params)}, stage {self.stage}"


# ------------------------------------------------------------------------------------------------ TS chaining
def train_two_step(spec: str, workdir: str, *, stages=TS_STAGES, train_fn=None) -> list[str]:
  """Train the TS stages in order, each in ``workdir/<stage>`` and initialised from the previous stage's export.

  Stage ``s`` trains ``load_config(spec + ',stage=s,init_from=<previous export>')`` (so the stage's defaults, e.g.
  the he stage's AdamW, apply, and the overrides of ``spec`` win over them) with ``train_fn(config, stage_dir)``
  (default :func:`lliejax.train.train_and_evaluate`, which writes ``stage_dir/export``).

  Args:
    spec: an ``anlightendiff_ts`` config spec (``anlightendiff_ts:lol,variant=fixed``).
    workdir: the stages' workdirs go under it.
    stages: the stages to run (a suffix of :data:`TS_STAGES` continues a chain: the first one reads
      ``workdir/<previous stage>/export``).
    train_fn: ``(config, workdir) -> anything``; must leave an export in ``workdir/export``.

  Returns:
    The stages' export directories.
  """
  from lliejax import config_utils  # pylint: disable=import-outside-toplevel
  if train_fn is None:
    from lliejax import train  # pylint: disable=import-outside-toplevel
    train_fn = train.train_and_evaluate
  stages = tuple(stages)
  if not stages or stages != TS_STAGES[TS_STAGES.index(stages[0]):][:len(stages)]:
    raise ValueError(f"stages must be consecutive stages of {TS_STAGES}, got {stages}")
  root = os.path.abspath(os.path.expanduser(workdir))
  first = TS_STAGES.index(stages[0])
  previous = os.path.join(root, TS_STAGES[first - 1], "export") if first else ""
  if ":" not in spec:
    spec += ":lol"
  exports = []
  for stage in stages:
    config = config_utils.load_config(f"{spec},stage={stage},init_from={previous}")
    stage_dir = os.path.join(root, stage)
    train_fn(config, stage_dir)
    previous = os.path.join(stage_dir, "export")
    exports.append(previous)
  return exports
