"""A direct PyTorch transcription (NCHW, written for the tests) of what AnlightenDiff's official
``FS/diffusion_fromscratch.py: EnlightDiffusion`` and ``FS/utils/cond_utils.py`` compute, operation by operation,
including the in-place noise update of ``q_sample`` and the stateful order of ``p_sample``; the per-step noise is
passed in so that the JAX sampler and this one see the same draws. The histogram equalisation calls the real
``torchvision.transforms.functional.equalize``."""
import math

import numpy as np
import torch

from lliejax.interop.crosscheck import setup_torch


def torchvision_equalize():
  """``torchvision.transforms.functional.equalize`` (torchvision's compiled ops stubbed, see ``setup_torch``)."""
  setup_torch(threads=1)
  from torchvision.transforms.functional import equalize  # pylint: disable=import-outside-toplevel
  return equalize


def buffers_float64(T: int = 100, s: float = 0.008) -> dict:
  """The schedule tables in float64, one timestep at a time with ``math`` (an independent derivation)."""
  S = T + 1
  f = [math.cos(((S * k / (S - 1)) / S + s) / (1 + s) * math.pi / 2) ** 2 for k in range(S)]
  abar_grid = [v / f[0] for v in f]
  out = {k: [] for k in ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                         "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                         "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                         "posterior_mean_coef1", "posterior_mean_coef2", "extra_term_coef1", "extra_term_coef2")}
  prod = 1.0
  for t in range(T):
    beta = min(max(1 - abar_grid[t + 1] / abar_grid[t], 0.0), 0.999)
    alpha = 1 - beta
    prev = prod
    prod *= alpha
    var = beta * (1 - prev) / (1 - prod)
    vals = dict(betas=beta, alphas_cumprod=prod, alphas_cumprod_prev=prev, sqrt_alphas_cumprod=math.sqrt(prod),
                sqrt_one_minus_alphas_cumprod=math.sqrt(1 - prod), log_one_minus_alphas_cumprod=math.log(1 - prod),
                sqrt_recip_alphas_cumprod=math.sqrt(1 / prod), sqrt_recipm1_alphas_cumprod=math.sqrt(1 / prod - 1),
                posterior_variance=var, posterior_log_variance_clipped=math.log(max(var, 1e-20)),
                posterior_mean_coef1=beta * math.sqrt(prev) / (1 - prod),
                posterior_mean_coef2=(1 - prev) * math.sqrt(alpha) / (1 - prod),
                extra_term_coef1=(1 - math.sqrt(prod)) / math.sqrt(1 - prod),
                # README form of c2 (algebraically the code's expression)
                extra_term_coef2=(1 - prod + math.sqrt(prev) * (alpha - 1)
                                  + math.sqrt(alpha) * (prev - 1)) / (1 - prod))
    for k, v in vals.items():
      out[k].append(v)
  return {k: np.array(v, np.float64) for k, v in out.items()}


class TorchDiffusion:
  """``EnlightDiffusion`` with ``use_center = use_center_sampler = clip_denoised = True``, ``rescale_ratio = 1``."""

  def __init__(self, buffers: dict):
    self.buf = {k: torch.tensor(np.asarray(v), dtype=torch.float32) for k, v in buffers.items()}
    self.T = len(self.buf["betas"])

  def _at(self, name, t, ndim=4):
    return self.buf[name].gather(-1, t).reshape(t.shape[0], *((1,) * (ndim - 1)))

  def q_sample(self, x0, t, center, noise):
    """Shifts ``noise`` in place by ``c1 (2 center - 1)`` and returns x_t."""
    noise += self._at("extra_term_coef1", t) * (center * 2 - 1)
    return self._at("sqrt_alphas_cumprod", t) * x0 + self._at("sqrt_one_minus_alphas_cumprod", t) * noise

  def p_sample(self, x_t, t: int, center, noise_pred, z):
    b = x_t.shape[0]
    tt = torch.full((b,), t, dtype=torch.long)
    x_recon = self._at("sqrt_recip_alphas_cumprod", tt) * x_t - self._at("sqrt_recipm1_alphas_cumprod", tt) * noise_pred
    x_recon.clamp_(-1, 1)
    mean = self._at("posterior_mean_coef1", tt) * x_recon + self._at("posterior_mean_coef2", tt) * x_t
    mean += self._at("extra_term_coef2", tt) * (center * 2 - 1)
    logvar = self._at("posterior_log_variance_clipped", tt)
    nonzero = (1 - (tt == 0).float()).reshape(b, 1, 1, 1)
    return mean + nonzero * (0.5 * logvar).exp() * z, x_recon

  def p_sample_loop(self, eps_fn, img_lr, center, zs):
    """``zs[i]`` is the noise of step ``t = T-1-i``; returns (image, list of res2img(x_recon) per step)."""
    x_t = center * 2 - 1
    images = []
    for i, t in enumerate(reversed(range(self.T))):
      eps = eps_fn(x_t, img_lr, torch.full((x_t.shape[0],), t, dtype=torch.long))
      x_t, x_recon = self.p_sample(x_t, t, center, eps, zs[i])
      images.append(res2img(x_recon, img_lr))
    return images[-1], images


def img2res(hr, lr):
  return (hr - lr) * 1.0 * 2 - 1


def res2img(res, lr):
  res = (res / 1.0).clamp(-1, 1)
  return (lr + (res + 1) * 0.5).clamp(0, 1)


def color_map(img):
  mean_c = img.mean(dim=1, keepdim=True)
  x = img / (mean_c + 1e-8)
  x /= 3
  return x.clamp(0, 1)


def grad_map(img):
  b, c, h, w = img.shape
  dy = torch.cat([img[..., 1:, :] - img[..., :-1, :], torch.zeros(b, c, 1, w)], dim=2)
  dx = torch.cat([img[..., :, 1:] - img[..., :, :-1], torch.zeros(b, c, h, 1)], dim=3)
  return torch.max(dy.abs(), dx.abs())


def cond_data_transforms(img):
  equalize = torchvision_equalize()
  c = color_map(img)
  g = grad_map(c)
  h = equalize((img * 255).type(torch.uint8)).type(torch.float32) / 255.
  return torch.cat([img, h, c, g], dim=1)
