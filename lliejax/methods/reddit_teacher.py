"""The teacher of ReDDiT (CVPR 2025): a gamma-conditioned epsilon-prediction DDPM with the SR3 UNet.

**ReDDiT releases no teacher training code and no teacher checkpoint** (README TODO "Journal Version & Teacher
Model"; REFERENCE §3.3, §6 item 30): its distillation starts from a given ``*_4step_gen.pth``. The code base
(``GaussianDiffusion`` + SR3 ``UNet``, gamma conditioning) is GSAD's, so GSAD's teacher objective
(``global_aware_losses`` of jinnh/GSAD) is the orientation here, without its uncertainty weighting and its
SVD-of-clustered-patches regulariser:

1. ``t ~ U{1..N}`` (one per batch as GSAD, or per sample with ``diffusion.t_per_sample``) and a continuous level
   ``gamma ~ U(gamma_prev[t-1], gamma_prev[t])`` per sample (:func:`lliejax.diffusion.reddit.sample_gamma`);
2. ``x_t = gamma x0 + sqrt(1 - gamma^2) eps`` with ``x0 = GT`` in [-1, 1];
3. ``eps_hat = UNet(concat[LQ, x_t], gamma)`` (condition first, both in [-1, 1]; :mod:`lliejax.models.sr3_unet`);
4. ``loss.weight * mean |eps_hat - eps|`` (``loss.name = l1``, GSAD's norm, here a mean instead of GSAD's
   ``10 * sum``) or the mean square (``l2``).

Sampling: the official strided DDIM (``GaussianDiffusion.ddim``, :func:`lliejax.diffusion.reddit.ddim_sample`) on
the ``(n, s)`` grid of ``config.diffusion`` (16 x 32 for the first distillation stage's teacher), from
``x ~ N(0, I)``; ``steps`` (default ``sampling.steps``) must divide ``n`` and picks the stride ``n / steps``, the
step grid of a ``steps``-step student (4 -> ``gamma_prev[{512, 384, 256, 128}]``). The input is padded with OpenCV
``BORDER_REFLECT`` (numpy ``symmetric``) by ``sampling.pad = [rows, cols]`` on every side and then up to a multiple
of 16 (``2 ** (levels - 1)``), split evenly; the output is cropped back. ``pad = [8, 4]`` is ReDDiT's test padding
of LOL-v1 / LOL-v2-real (400x600 -> 416x608, ``test.py`` + ``tensor2img``); LOL-v2-synthetic is not padded.
Metrics follow ReDDiT's ``test.py`` (:data:`lliejax.metrics.conventions` ``reddit``).

Config sections: ``model`` (``name: sr3_unet`` and the UNet fields), ``diffusion`` (``num_timesteps``,
``time_scale``, ``linear_start``, ``linear_end``, ``t_per_sample``), ``sampling`` (``steps``, ``pad``), ``loss``
(``name``, ``weight``), ``optim``, ``ema``, ``data``; see ``configs/reddit_teacher.py``.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from lliejax import config_utils as cu
from lliejax import methods
from lliejax.diffusion import reddit as rd
from lliejax.methods.base import Method
from lliejax.metrics import conventions
from lliejax.models import sr3_unet

MODELS = ("sr3_unet",)
LOSSES = ("l1", "l2")


def padding(height: int, width: int, multiple: int, extra: tuple[int, int] = (0, 0)) -> tuple[int, int, int, int]:
  """``(top, bottom, left, right)``: ``extra = (rows, cols)`` on every side, then up to the next ``multiple`` split
  evenly between the two sides (LOL 400x600 with ``extra = (8, 4)``, 16: ``(8, 8, 4, 4)``, as ReDDiT's test)."""
  eh, ew = int(extra[0]), int(extra[1])
  ph, pw = (-(height + 2 * eh)) % multiple, (-(width + 2 * ew)) % multiple
  return eh + ph // 2, eh + ph - ph // 2, ew + pw // 2, ew + pw - pw // 2


@methods.register
class ReDDiTTeacher(Method):
  """gamma-conditioned epsilon-prediction DDPM (SR3 UNet), sampled with ReDDiT's strided DDIM."""

  name = "reddit_teacher"
  architecture_sections = ("model", "diffusion")
  samplers = ("ddim",)

  def __init__(self, config):
    super().__init__(config)
    if config.model.name not in MODELS:
      raise ValueError(f"config.model.name={config.model.name!r}: reddit_teacher implements {', '.join(MODELS)}")
    self.model = sr3_unet.sr3_unet_from_config(config.model)
    self.schedule = rd.make_schedule_from_config(config.diffusion)

  @classmethod
  def validate_config(cls, config, *, device_count=None):
    """The generic checks (:meth:`Method.validate_config`), then ``model``, ``diffusion`` and ``loss``."""
    super().validate_config(config, device_count=device_count)
    cu.check_choice(config, "model.name", MODELS)
    for key in ("model.in_channel", "model.out_channel", "model.inner_channel", "model.res_blocks",
                "model.norm_groups", "model.image_size"):
      cu.check_int(config, key, min_value=1)
    mults = cu.check_int_list(config, "model.channel_mults", min_value=1)
    cu.check_int_list(config, "model.attn_res", min_value=1, nonempty=False)
    cu.check_float(config, "model.dropout", min_value=0, max_value=0)
    cu.check_choice(config, "model.init", sr3_unet.INITS)
    model = config.get("model")
    if model is not None and model.get("inner_channel") and model.get("norm_groups"):
      if int(model.inner_channel) % int(model.norm_groups):
        raise cu.ConfigError("model.inner_channel", f"must be a multiple of model.norm_groups "
                             f"({model.norm_groups}), got {model.inner_channel}")
    if model is not None and model.get("in_channel") is not None and model.get("out_channel") is not None:
      if int(model.in_channel) != 2 * int(model.out_channel):
        raise cu.ConfigError("model.in_channel", f"must be 2 * model.out_channel (concat[LQ, x_t]), got "
                             f"{model.in_channel} and {model.out_channel}")

    n = cu.check_int(config, "diffusion.num_timesteps", min_value=1)
    cu.check_int(config, "diffusion.time_scale", min_value=1)
    for key in ("diffusion.linear_start", "diffusion.linear_end"):
      cu.check_float(config, key, min_value=0, max_value=1, min_open=True, max_open=True)
    cu.check_bool(config, "diffusion.t_per_sample")
    steps = cu.check_int(config, "sampling.steps", min_value=1)
    if n is not None and steps is not None and n % steps:
      raise cu.ConfigError("sampling.steps", f"must divide diffusion.num_timesteps ({n}), got {steps}")
    pad = cu.check_int_list(config, "sampling.pad", min_value=0)
    if pad is not None and len(pad) != 2:
      raise cu.ConfigError("sampling.pad", f"must be [rows, columns], got {list(pad)}")

    cu.check_choice(config, "loss.name", LOSSES)
    cu.check_float(config, "loss.weight", min_value=0, min_open=True)
    patch = cu.check_int(config, "data.patch_size", min_value=1)
    if patch is not None and mults is not None and patch % 2 ** (len(mults) - 1):
      raise cu.ConfigError("data.patch_size", f"must be a multiple of {2 ** (len(mults) - 1)} (the UNet has "
                           f"{len(mults)} levels), got {patch}")

  @property
  def size_multiple(self) -> int:
    """The UNet halves the resolution ``levels - 1`` times: 16 for the released configuration."""
    return int(self.model.padder_size)

  @property
  def convention(self):
    """ReDDiT's ``test.py`` protocol (GT-mean, skimage SSIM, LPIPS-VGG on BGR [0, 255])."""
    return conventions.get("reddit")

  def init_params(self, key):
    """``SR3UNet.init`` on zeros of one padding multiple (orthogonal weights by default, as the official code)."""
    size = self.model.padder_size
    x = jnp.zeros((1, size, size, self.model.in_channel), jnp.float32)
    return self.model.init(key, x, jnp.ones((1,), jnp.float32))["params"]

  def eps_fn(self, params):
    """``(x_t, y, gamma) -> eps_hat`` of the UNet with ``params`` (``y``, ``x_t`` in [-1, 1], NHWC)."""
    return lambda x, y, gamma: self.model.apply({"params": params}, jnp.concatenate([y, x], axis=-1), gamma)

  def loss(self, params, frozen, batch, key, *, ema, step=None):
    """The epsilon-prediction loss at continuous levels (module docstring)."""
    del frozen, ema, step
    x0 = batch["gt"] * 2.0 - 1.0
    y = batch["lq"] * 2.0 - 1.0
    kg, kn = jax.random.split(key)
    gamma = rd.sample_gamma(self.schedule, kg, x0.shape[0],
                            per_sample_t=bool(self.config.diffusion.get("t_per_sample", False)))
    noise = jax.random.normal(kn, x0.shape, jnp.float32)
    eps = self.eps_fn(params)(rd.q_sample(x0, gamma, noise), y, gamma)
    diff = eps - noise
    name = self.config.loss.name
    value = jnp.mean(jnp.abs(diff)) if name == "l1" else jnp.mean(jnp.square(diff))
    return float(self.config.loss.get("weight", 1.0)) * value, {name: value}

  def stride(self, steps: int | None) -> int:
    """The DDIM stride of a ``steps``-step sample (``steps`` must divide ``diffusion.num_timesteps``)."""
    n = self.schedule.num_timesteps
    steps = int(steps if steps is not None else self.config.sampling.get("steps", n))
    if steps < 1 or n % steps:
      raise ValueError(f"{self.name}: steps must divide diffusion.num_timesteps={n} (the step grid of a "
                       f"{n}-step model; e.g. {', '.join(str(d) for d in range(1, n + 1) if n % d == 0)}), "
                       f"got {steps}")
    return n // steps

  def sample(self, params, frozen, lq, key, *, sampler=None, steps=None):
    """Strided DDIM from ``N(0, I)`` on the reflect-padded ``lq`` (module docstring); cropped back, in [0, 1]."""
    del frozen
    mode = sampler or self.default_sampler("test")
    if mode not in self.samplers:
      raise ValueError(f"{self.name}: unknown sampler {mode!r}; choose one of {', '.join(self.samplers)}")
    stride = self.stride(steps)
    _, h, w, _ = lq.shape
    top, bottom, left, right = padding(h, w, self.size_multiple, tuple(self.config.sampling.get("pad", (0, 0))))
    pads = ((0, 0), (top, bottom), (left, right), (0, 0))
    y = jnp.pad(lq * 2.0 - 1.0, pads, mode="symmetric")  # cv2.BORDER_REFLECT
    out = rd.ddim_sample(self.schedule, self.eps_fn(params), y, key, stride=stride)
    return (out[:, top:top + h, left:left + w, :] + 1.0) / 2.0

  def describe(self, params):
    d = self.config.diffusion
    return (f"{self.name}: SR3 UNet with {methods.count_params(params):,} parameters, "
            f"{d.num_timesteps} steps x time scale {d.time_scale} (N = {self.schedule.N})")
