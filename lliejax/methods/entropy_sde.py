"""Entropy-SDE (Lian et al., CVPRW 2024) and its base Refusion / IR-SDE, as a :class:`lliejax.methods.Method`.

The official training step (``DenoisingModel.optimize_parameters`` of
``codes/config/low-light/models/denoising_model.py``, shermanlian/spatial-entropy-loss):

1. ``t ~ U{1..T}`` and ``x_t ~ q(x_t | GT, LQ)`` of the mean-reverting SDE (:mod:`lliejax.diffusion.irsde`);
2. the ConditionalNAFNet (:mod:`lliejax.models.nafnet`) predicts the noise of ``x_t`` given ``mu = LQ`` and ``t``;
3. the loss ``weight * D(x_hat_{t-1}, x*_{t-1})`` between the noise-free reverse-SDE step and the optimum reverse
   state, ``D`` from ``config.loss`` (:mod:`lliejax.losses`: ``l1`` for Refusion, the spatial-entropy losses for
   Entropy-SDE);
4. AdamW with cosine annealing (``config.optim``, :mod:`lliejax.optim`) and the ``ema_pytorch`` EMA (``config.ema``).

Sampling: ``posterior`` (``IRSDE.reverse_posterior``, what the official ``test.py`` runs), ``sde`` (Euler-Maruyama,
the official validation during training) or ``ode``, all ``T`` steps from ``x_T = LQ + lambda * noise``.
Metrics follow the IR-SDE convention (:data:`lliejax.metrics.IRSDE`).

Config sections: ``model`` (``name: conditional_nafnet`` and its widths / block counts), ``sde`` (``max_sigma``,
``T``, ``schedule``, ``eps``), ``loss``, ``optim``, ``ema``, ``data`` (augmentation policy ``lqgt``, the official
``LQGT_dataset``); see ``configs/entropy_sde.py``.
"""
from __future__ import annotations

import typing

import jax
import jax.numpy as jnp

from lliejax import config_utils as cu
from lliejax import losses, methods
from lliejax.diffusion import irsde
from lliejax.losses import entropy
from lliejax.methods.base import Method
from lliejax.models import nafnet

MODELS = ("conditional_nafnet",)
#: ``config.model.dtype``: the compute dtypes of the NAFNet.
DTYPES = ("float32", "bfloat16", "float16")
#: ``config.loss.weights``: the neighbour weights of the entropy losses (None: the official choice per loss).
NEIGHBOUR_WEIGHTS = ("normal", "shuffled_gaussian", "mean")


@methods.register
class EntropySDE(Method):
  """Mean-reverting SDE + ConditionalNAFNet, trained with the maximum-likelihood objective and ``config.loss``."""

  name = "entropy_sde"
  architecture_sections = ("model", "sde")
  samplers = ("posterior", "sde", "ode", "strided")

  def __init__(self, config):
    super().__init__(config)
    if config.model.name not in MODELS:
      raise ValueError(f"config.model.name={config.model.name!r}: entropy_sde implements {', '.join(MODELS)}")
    self.model = nafnet.nafnet_from_config(config.model)
    self.sde = irsde.make_sde_from_config(config.sde)
    self._loss = losses.get(config.loss) if config.get("loss") is not None else None

  @classmethod
  def validate_config(cls, config, *, device_count=None):
    """The generic checks (:meth:`Method.validate_config`), then ``model``, ``sde`` and ``loss``."""
    super().validate_config(config, device_count=device_count)
    cu.check_choice(config, "model.name", MODELS)
    for key in ("model.img_channel", "model.width"):
      cu.check_int(config, key, min_value=1)
    cu.check_int(config, "model.middle_blk_num", min_value=0)
    enc = cu.check_int_list(config, "model.enc_blk_nums", min_value=0)
    dec = cu.check_int_list(config, "model.dec_blk_nums", min_value=0)
    if enc is not None and dec is not None and len(enc) != len(dec):
      raise cu.ConfigError("model.dec_blk_nums", f"must have as many levels as model.enc_blk_nums ({len(enc)}), "
                           f"got {len(dec)}")
    cu.check_choice(config, "model.dtype", DTYPES)
    for key in ("model.remat", "model.fusion_barriers"):
      cu.check_bool(config, key)

    cu.check_int(config, "sde.T", min_value=1)
    cu.check_float(config, "sampling.eta", min_value=0, max_value=1)  # the 'strided' sampler (absent: 1)
    cu.check_float(config, "sde.max_sigma", min_value=0, min_open=True)
    cu.check_choice(config, "sde.schedule", typing.get_args(irsde.Schedule))
    cu.check_float(config, "sde.eps", min_value=0, max_value=1, min_open=True, max_open=True)

    cu.check_choice(config, "loss.name", losses.names())
    cu.check_float(config, "loss.weight", min_value=0, min_open=True)
    cu.check_int(config, "loss.bins", min_value=2)
    cu.check_float(config, "loss.bandwidth", min_value=0, min_open=True)
    cu.check_choice(config, "loss.kernel", typing.get_args(entropy.KernelName))
    cu.check_int_list(config, "loss.windows", min_value=1, odd=True)
    cu.check_choice(config, "loss.weights", NEIGHBOUR_WEIGHTS, allow_none=True)
    cu.check_choice(config, "loss.neighbour_norm", typing.get_args(entropy.NeighbourNorm))
    cu.check_int(config, "loss.chunk_size", min_value=0)  # 0: the loss module's default
    cu.check_float(config, "loss.eps", min_value=0, allow_none=True)  # None: the official epsilon per loss
    cu.check_choice(config, "loss.pixel", tuple(losses.PIXEL_LOSSES), allow_none=True)
    cu.check_float(config, "loss.pixel_weight", min_value=0)
    cu.check_int(config, "loss.entropy_start", min_value=0)
    cu.check_choice(config, "loss.clamp", entropy.CLAMP_MODES)
    if config.get("loss") is not None and int(config.loss.get("entropy_start", 0) or 0) > 0:
      if config.loss.get("pixel") is None:
        raise cu.ConfigError("loss.entropy_start", "an entropy warm-up needs a pixel loss: set loss.pixel=l1")

  @property
  def size_multiple(self) -> int:
    """The NAFNet pads its input to a multiple of ``2 ** levels`` (``padder_size``)."""
    return int(self.model.padder_size)

  def init_params(self, key):
    """``ConditionalNAFNet.init`` on zero inputs of one padding multiple (PyTorch's default initialisers)."""
    size = self.model.padder_size
    x = jnp.zeros((1, size, size, self.config.model.img_channel), jnp.float32)
    return self.model.init(key, x, x, jnp.ones((1,), jnp.int32))["params"]

  def noise_fn(self, params):
    """``(x_t, mu, t) -> predicted noise`` of the network with ``params``."""
    return lambda x, mu, t: self.model.apply({"params": params}, x, mu, t)

  def loss(self, params, frozen, batch, key, *, ema, step=None):
    """``weight * D(x_hat_{t-1}, x*_{t-1})`` of the maximum-likelihood objective (module docstring)."""
    del ema
    if self._loss is None:
      raise ValueError("entropy_sde: the config has no 'loss' section")
    k_sde, k_loss = jax.random.split(key)
    pred, target, _ = irsde.ml_pair(self.sde, self.noise_fn(params), batch["gt"], batch["lq"], k_sde)
    pred_sg = jax.lax.stop_gradient(pred)
    # Diagnostics of the loss input x_hat_{t-1}: the official KDE clamp gives pixels outside [0, 1] no gradient, and
    # entropy-only training fails by drifting there (README, "Why entropy-only training collapses").
    aux = {"pred_mean": jnp.mean(pred_sg), "pred_below_0": jnp.mean((pred_sg < 0).astype(jnp.float32)),
           "pred_above_1": jnp.mean((pred_sg > 1).astype(jnp.float32))}
    return self._loss(pred, target, k_loss, frozen=frozen.get("loss"), step=step), aux

  def init_frozen(self, key):
    """The pretrained parameters of ``config.loss`` (LPIPS), under ``'loss'``; none for the other losses."""
    del key
    loss_params = losses.frozen_params(self.config.loss) if self.config.get("loss") is not None else None
    return {} if loss_params is None else {"loss": loss_params}

  def inference_frozen(self, frozen):
    """Sampling needs no frozen parameters (the loss's stay out of exports)."""
    del frozen
    return {}

  def sample(self, params, frozen, lq, key, *, sampler=None, steps=None):
    """From ``x_T = lq + lambda * noise``: all ``T`` reverse steps (``sampler``: posterior, sde or ode, the official
    samplers), or ``steps`` steps of the ``'strided'`` sampler (:func:`lliejax.diffusion.irsde.sample_strided`,
    ``eta`` = ``config.sampling.eta``, default 1: the posterior step on a coarser grid; ``steps`` default ``T``)."""
    del frozen
    mode = sampler or self.default_sampler("test")
    if mode not in self.samplers:
      raise ValueError(f"entropy_sde: unknown sampler {mode!r}; choose one of {', '.join(self.samplers)}")
    if mode == "strided":
      eta = float(self.config.get("sampling", {}).get("eta", 1.0))
      return irsde.sample_strided(self.sde, self.noise_fn(params), lq, key,
                                  steps=self.sde.T if steps is None else int(steps), eta=eta)
    if steps is not None and int(steps) != self.sde.T:
      raise ValueError(f"entropy_sde: the {mode} sampler runs all sde.T={self.sde.T} steps (got steps={steps}); "
                       "--sampler strided runs fewer")
    return irsde.sample(self.sde, self.noise_fn(params), lq, key, mode=mode)

  def describe(self, params):
    return f"entropy_sde: ConditionalNAFNet with {methods.count_params(params):,} parameters, T={self.sde.T}"


  @classmethod
  def legacy_config(cls, info):
    """The full config of a lliejax 0.1 export (``lliejax-params`` v1), which recorded only ``model`` and ``sde``.

    The other sections come from ``configs/entropy_sde.py:lolv1`` (they do not enter sampling). An export without
    an ``sde`` section (possible with 0.1's Python API) gets lolv1's, the SDE of every released Entropy-SDE
    checkpoint.
    """
    from lliejax.configs import entropy_sde as cfg_lib  # pylint: disable=import-outside-toplevel

    config = cfg_lib.get_config("lolv1")
    config.model.update(info["model"])
    if info.get("sde"):
      config.sde.update(info["sde"])
    return config
