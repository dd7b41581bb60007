"""A second, test-only method: a conditional DDPM on the demo set, written against the Method interface alone.

It exercises what the next methods need from the core, with no change to the core:

* several networks (``params = {'denoiser': ConditionalNAFNet, 'head': a 1x1 output correction}``);
* frozen pytrees: a fixed random colour ``prior`` applied to the low-light condition (needed at inference, so it is
  exported) and, for the ``student`` variant, a ``teacher`` restored from another export (not exported) whose
  prediction the loss distils;
* its own EMA rule (:class:`lliejax.ema.Constant`), optimiser (Adam), augmentation (``crop_flip``), samplers
  (ancestral, strided DDIM with ``steps``) and metric convention (truncating uint8, skimage SSIM).

Configs: ``get_config('teacher' | 'student')``. The method registers itself on import; exports record this module,
so ``lliejax enhance --checkpoint EXPORT`` finds it when ``tests/`` is on the Python path.
"""
from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from lliejax import checkpoint, config_utils, ema, methods, metrics
from lliejax.diffusion import ddpm
from lliejax.methods.base import Method
from lliejax.models import layers, nafnet

CONVENTION = metrics.Convention("test_ddpm", rounding="truncate", ssim="skimage")


class Head(nn.Module):
  """A 1x1 convolution added to the denoiser's output (a second network with its own parameters)."""

  @nn.compact
  def __call__(self, x):
    return x + layers.Conv1x1(x.shape[-1], name="conv")(x) * 0.1


@methods.register
class ConditionalDDPM(Method):
  """epsilon-prediction DDPM conditioned on ``prior(LQ)``, images in [-1, 1]."""

  name = "test_ddpm"
  architecture_sections = ("model", "ddpm")
  samplers = ("ddim", "ancestral")

  def __init__(self, config):
    super().__init__(config)
    self.denoiser = nafnet.nafnet_from_config(config.model)
    self.head = Head()
    self.ddpm = ddpm.make_ddpm_from_config(config.ddpm)

  def init_params(self, key):
    k1, k2 = jax.random.split(key)
    size = self.denoiser.padder_size
    x = jnp.zeros((1, size, size, 3), jnp.float32)
    return {"denoiser": self.denoiser.init(k1, x, x, jnp.ones((1,), jnp.int32))["params"],
            "head": self.head.init(k2, x)["params"]}

  def init_frozen(self, key):
    """A fixed colour mixing matrix near the identity; the teacher's params from its export (student)."""
    frozen = {"prior": jnp.eye(3) + 0.05 * jax.random.normal(jax.random.fold_in(key, 7), (3, 3))}
    if self.config.teacher.export:
      teacher = checkpoint.load_export(self.config.teacher.export)
      if teacher.method != self.name or teacher.config.model.to_dict() != self.config.model.to_dict():
        raise ValueError(f"{self.config.teacher.export}: the teacher must be a {self.name} of the same model")
      frozen["teacher"] = jax.tree_util.tree_map(jnp.asarray, teacher.params)
    return frozen

  def inference_frozen(self, frozen):
    return {"prior": frozen["prior"]}

  def ema_rules(self):
    return {"ema": ema.Constant(decay=float(self.config.ema.decay), start=int(self.config.ema.start))}

  @property
  def convention(self):
    return CONVENTION

  def eps(self, params, prior, x, lq, t):
    cond = jnp.einsum("bhwc,dc->bhwd", lq, prior) * 2.0 - 1.0
    out = self.denoiser.apply({"params": params["denoiser"]}, x, cond, t)
    return self.head.apply({"params": params["head"]}, out)

  def loss(self, params, frozen, batch, key, *, ema, step):
    del ema, step
    x0 = batch["gt"] * 2.0 - 1.0
    kt, kn = jax.random.split(key)
    t = self.ddpm.sample_timesteps(kt, x0.shape[0])
    noise = jax.random.normal(kn, x0.shape, jnp.float32)
    xt = self.ddpm.q_sample(x0, t, noise)
    pred = self.eps(params, frozen["prior"], xt, batch["lq"], t)
    mse = jnp.mean(jnp.square(pred - noise))
    aux = {"mse": mse}
    loss = mse
    if "teacher" in frozen:
      target = jax.lax.stop_gradient(self.eps(frozen["teacher"], frozen["prior"], xt, batch["lq"], t))
      aux["distill"] = jnp.mean(jnp.square(pred - target))
      loss = loss + float(self.config.teacher.weight) * aux["distill"]
    return loss, aux

  def sample(self, params, frozen, lq, key, *, sampler=None, steps=None):
    mode = sampler or self.default_sampler("test")
    eps_fn = lambda x, cond, t: self.eps(params, frozen["prior"], x, cond, t)
    if mode == "ddim":
      steps = steps or int(self.config.ddpm.sample_steps)
    out = ddpm.sample(self.ddpm, eps_fn, lq, key, mode=mode, steps=steps)
    return (out + 1.0) / 2.0


VARIANTS = ("teacher", "student")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  """``teacher`` (default) or ``student`` (set ``teacher.export``), with ``key=value`` overrides."""
  variant, overrides = config_utils.parse_arg(arg, "teacher", VARIANTS, name="test_ddpm")
  c = ml_collections.ConfigDict()
  c.method = "test_ddpm"
  c.method_module = __name__
  c.seed = 1
  c.batch_size = 8
  c.num_train_steps = 6
  c.model = ml_collections.ConfigDict(dict(name="conditional_nafnet", img_channel=3, width=8, enc_blk_nums=[1, 1],
                                           middle_blk_num=1, dec_blk_nums=[1, 1]))
  c.ddpm = ml_collections.ConfigDict(dict(T=20, schedule="cosine", sample_steps=5))
  c.teacher = ml_collections.ConfigDict(dict(export="", weight=0.5))
  c.optim = ml_collections.ConfigDict(dict(name="adam", learning_rate=2e-3, b1=0.9, b2=0.999, eps=1e-8,
                                           weight_decay=0.0, schedule="constant", eta_min=0.0, grad_clip=1.0))
  c.ema = ml_collections.ConfigDict(dict(decay=0.9, start=2))
  c.data = ml_collections.ConfigDict(dict(name="lliejax_demo", data_dir="~/tensorflow_datasets", augment="crop_flip",
                                          patch_size=32, rot90=True, eval_split="test"))
  c.log_every = 2
  c.checkpoint_every = 3
  c.keep_checkpoints = 2
  c.eval_every = 3
  c.eval_num_images = 1
  c.eval_sampler = "ddim"
  c.test_sampler = "ddim"
  c.write_images = True
  config_utils.apply_overrides(c, overrides, {"steps": "num_train_steps"})
  return c
