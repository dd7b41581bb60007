"""AnlightenDiff's training losses (IEEE TIP 2024): DFPL, the noise losses, and the two TS auxiliary stages.

What the official code (allanchan339/AnlightenDiff; REFERENCE §2.6-2.7) computes, as pure functions:

=====================  ==========================================================================================
:func:`dfpl`           the diffusion feature perceptual loss of ``LitDiffusion.loss_fn`` (``loss_type: dfpl`` in FS,
                       named ``lpips`` in TS): LPIPS-VGG between the predicted and the target diffused states, both
                       re-imaged with ``res2img`` (clamps included); the double anchor shift of the target is
                       explicit (:func:`dfpl_images`)
:func:`smooth_l1`      ``F.smooth_l1_loss(eps_hat, eps*)`` (``loss_type: l1``; Huber with beta 1)
:func:`mse`            ``F.mse_loss(eps_hat, eps*)`` (``loss_type: l2``, the TS yaml's)
:func:`ms_ssim`        torchmetrics ``MultiScaleStructuralSimilarityIndexMeasure(betas=(0.0448, 0.2856, 0.3001,
                       0.2363), data_range=1.0)`` per image; :func:`encoder_loss` = ``1 - mean`` of it, the TS
                       encoder stage (``TS/cond.py: LitCond.loss_fn``, ``cond_loss_type: ssim``) against the colour
                       map of the ground truth
:func:`he_loss`        LPIPS-VGG (``normalize=True``) between the refiner output zeta and the ground truth, the TS
                       histogram-refiner stage (``TS/cond.py: LitHE.loss_fn``, ``he_loss_type: lpips``)
=====================  ==========================================================================================

Both LPIPS losses are torchmetrics ``LearnedPerceptualImagePatchSimilarity(net_type='vgg', normalize=True)``
(images in [0, 1], mapped by ``2x - 1``; the batch mean), which equals the ``lpips`` 0.1.4 package (REFERENCE
§2.6): lliejax's :func:`lliejax.losses.perceptual.lpips_loss` with ``input_range='[0,1]'``; its pretrained VGG
parameters (:func:`lliejax.losses.perceptual.lpips_frozen` ``('vgg')``) are passed in, never closed over.

The diffusion pieces come from :mod:`lliejax.diffusion.anlightendiff` (``q_sample``, ``res_to_img``); the colour map
of the TS target is computed by the caller (:func:`lliejax.data.condition.color_map`).
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from lliejax.diffusion import anlightendiff as ad
from lliejax.losses import perceptual

#: The diffusion losses of ``LitDiffusion.loss_fn`` by their FS names (TS calls ``dfpl`` ``lpips``).
DIFFUSION_LOSSES = ("dfpl", "l1", "l2")
#: torchmetrics' default MS-SSIM betas (5 scales, Wang et al. 2003), of which the TS yaml keeps the first four.
MSSSIM_BETAS_5 = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
#: ``LitCond.loss_fn`` / ``LitHE.loss_fn`` (``ssim``): four scales, the first four default betas, **not
#: renormalised** (they sum to 0.8668; torchmetrics uses the betas as given).
MSSSIM_BETAS_4 = MSSSIM_BETAS_5[:4]


# ------------------------------------------------------------------------------------------------ noise losses
def smooth_l1(pred: jax.Array, target: jax.Array, *, beta: float = 1.0) -> jax.Array:
  """``F.smooth_l1_loss(pred, target)`` (``reduction='mean'``, ``beta=1``): ``0.5 d^2 / beta`` where
  ``|d| < beta``, else ``|d| - 0.5 beta``, averaged over every element."""
  d = jnp.abs(pred - target)
  return jnp.mean(jnp.where(d < beta, 0.5 * jnp.square(d) / beta, d - 0.5 * beta))


def mse(pred: jax.Array, target: jax.Array) -> jax.Array:
  """``F.mse_loss(pred, target)``: the mean squared difference over every element."""
  return jnp.mean(jnp.square(pred - target))


# ------------------------------------------------------------------------------------------------ DFPL
def dfpl_images(sched: ad.Schedule, x0: jax.Array, t: jax.Array, phi: jax.Array | None, eps_hat: jax.Array,
                eps_star: jax.Array, lq: jax.Array, *, rescale_ratio: float = 1.0) -> tuple[jax.Array, jax.Array]:
  """The two images DFPL compares: ``(res2img(x_hat_t), res2img(x_t_target))`` (``loss_dfpl`` of
  ``LitDiffusion.loss_fn``).

  The official ``loss_dfpl`` calls ``q_sample(x0, t, center, noise=...)`` once with the prediction and once with the
  noise tensor that the forward pass already shifted in place to ``eps* = eps + c1_t phi'``; ``q_sample`` adds
  ``c1_t phi'`` to the tensor it is given, so

  * ``x_hat_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) (eps_hat + c1_t phi')``,
  * ``x_t_target = sqrt(abar_t) x0 + sqrt(1 - abar_t) (eps* + c1_t phi')``
    ``= sqrt(abar_t) x0 + sqrt(1 - abar_t) eps + 2 (1 - sqrt(abar_t)) phi'``

  (REFERENCE §2.6, §6 item 14: the target carries the anchor shift twice, the network input once; both images carry
  the same extra shift, so the minimiser is still ``eps_hat = eps*``). Reproduced by calling
  :func:`lliejax.diffusion.anlightendiff.q_sample` on ``eps_hat`` and on ``eps*`` and discarding the noises it
  returns. Both states are then mapped with ``res2img(x, LQ)`` including its clamps (``clamp(res, -1, 1)`` and
  ``clamp(img, 0, 1)``), which give no gradient where they are active. Gradients flow into ``eps_hat`` and, as in
  the official code (nothing is detached), into ``phi`` and ``eps*``.

  Args:
    sched: the schedule.
    x0: the residual ``img2res(GT, LQ)``, NHWC.
    t: int32 steps (B,).
    phi: the anchor (image domain) of the forward draw; None without anchor (``use_center: False``).
    eps_hat: the network's prediction.
    eps_star: the regression target ``eps + c1_t phi'`` (the second output of ``q_sample``).
    lq: the low-light image in [0, 1] (``res2img``'s base).
    rescale_ratio: ``r`` of ``res2img``.
  """
  x_hat, _ = ad.q_sample(sched, x0, t, phi, eps_hat)
  x_tgt, _ = ad.q_sample(sched, x0, t, phi, eps_star)
  return (ad.res_to_img(x_hat, lq, rescale_ratio=rescale_ratio),
          ad.res_to_img(x_tgt, lq, rescale_ratio=rescale_ratio))


def dfpl(lpips_params, sched: ad.Schedule, x0: jax.Array, t: jax.Array, phi: jax.Array | None, eps_hat: jax.Array,
         eps_star: jax.Array, lq: jax.Array, *, rescale_ratio: float = 1.0) -> jax.Array:
  """DFPL: ``LPIPS_VGG(res2img(x_hat_t), res2img(x_t_target))`` of :func:`dfpl_images`, averaged over the batch
  (torchmetrics ``LearnedPerceptualImagePatchSimilarity(net_type='vgg', normalize=True)``, the prediction first).

  ``lpips_params``: :func:`lliejax.losses.perceptual.lpips_frozen` ``('vgg')``.
  """
  pred_img, target_img = dfpl_images(sched, x0, t, phi, eps_hat, eps_star, lq, rescale_ratio=rescale_ratio)
  return perceptual.lpips_loss(lpips_params, pred_img, target_img, net="vgg", input_range="[0,1]")


def diffusion_loss(name: str, *, eps_hat: jax.Array, eps_star: jax.Array, lpips_params=None,
                   sched: ad.Schedule | None = None, x0: jax.Array | None = None, t: jax.Array | None = None,
                   phi: jax.Array | None = None, lq: jax.Array | None = None, rescale_ratio: float = 1.0) -> jax.Array:
  """``LitDiffusion.loss_fn`` by ``loss_type``: ``dfpl`` (:func:`dfpl`, needs ``lpips_params, sched, x0, t, phi,
  lq``), ``l1`` (:func:`smooth_l1`) or ``l2`` (:func:`mse`), each between ``eps_hat`` and ``eps*``."""
  if name == "l1":
    return smooth_l1(eps_hat, eps_star)
  if name == "l2":
    return mse(eps_hat, eps_star)
  if name == "dfpl":
    if lpips_params is None:
      raise ValueError("the dfpl loss needs the LPIPS-VGG parameters (lliejax.losses.perceptual.lpips_frozen('vgg'))")
    return dfpl(lpips_params, sched, x0, t, phi, eps_hat, eps_star, lq, rescale_ratio=rescale_ratio)
  raise ValueError(f"unknown AnlightenDiff diffusion loss {name!r}; choose one of {', '.join(DIFFUSION_LOSSES)}")


# ------------------------------------------------------------------------------------------------ MS-SSIM
@functools.lru_cache(maxsize=None)
def _gaussian_kernel(sigma: float) -> tuple[np.ndarray, int]:
  """torchmetrics ``_gaussian_kernel_2d`` for the Gaussian SSIM: side ``2 int(3.5 sigma + 0.5) + 1`` (11 for 1.5),
  the outer product of the normalised 1-D Gaussian, computed in float32 as torch does; and the padding."""
  size = int(3.5 * sigma + 0.5) * 2 + 1
  dist = np.arange((1 - size) / 2, (1 + size) / 2, 1, dtype=np.float32)
  g = np.exp(-np.square(dist / np.float32(sigma)) / np.float32(2)).astype(np.float32)
  g = (g / g.sum()).astype(np.float32)
  return np.outer(g, g).astype(np.float32), (size - 1) // 2


def _ssim_and_cs(x, y, *, sigma: float, data_range: float, k1: float, k2: float, crop_sim: bool,
                 clamp_variance: bool):
  """torchmetrics ``_ssim_update(..., return_contrast_sensitivity=True)`` on NHWC: per-image ``(sim, cs)``.

  Reflect padding by ``p = (kernel - 1) / 2`` and a *valid* depthwise Gaussian filter (so the maps have the input
  size), SSIM and ``cs = (2 sigma_xy + C2) / (sigma_x^2 + sigma_y^2 + C2)`` per pixel; ``cs`` is averaged over the
  map cropped by ``p`` on every side, ``sim`` over the same crop (``crop_sim``, torchmetrics < 1.4) or over the
  whole map (torchmetrics >= 1.4). ``clamp_variance`` clamps the two variances at 0 (torchmetrics >= 1.3).
  """
  kernel2d, pad = _gaussian_kernel(float(sigma))
  c = x.shape[-1]
  b = x.shape[0]
  c1 = (k1 * data_range) ** 2
  c2 = (k2 * data_range) ** 2
  pads = ((0, 0), (pad, pad), (pad, pad), (0, 0))
  x = jnp.pad(x, pads, mode="reflect")
  y = jnp.pad(y, pads, mode="reflect")
  stack = jnp.concatenate([x, y, x * x, y * y, x * y], axis=0)
  kernel = jnp.broadcast_to(jnp.asarray(kernel2d)[:, :, None, None], kernel2d.shape + (1, c)).astype(x.dtype)
  out = jax.lax.conv_general_dilated(stack, kernel, (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                     feature_group_count=c, precision=jax.lax.Precision.HIGHEST)
  mu_x, mu_y, e_xx, e_yy, e_xy = jnp.split(out, 5, axis=0)
  mu_xx, mu_yy, mu_xy = jnp.square(mu_x), jnp.square(mu_y), mu_x * mu_y
  var_x, var_y = e_xx - mu_xx, e_yy - mu_yy
  if clamp_variance:
    var_x, var_y = jnp.maximum(var_x, 0.0), jnp.maximum(var_y, 0.0)
  cov = e_xy - mu_xy
  upper = 2 * cov + c2
  lower = var_x + var_y + c2
  ssim_map = ((2 * mu_xy + c1) * upper) / ((mu_xx + mu_yy + c1) * lower)
  cs_map = upper / lower
  inner = (slice(None), slice(pad, -pad), slice(pad, -pad), slice(None))
  sim = (ssim_map[inner] if crop_sim else ssim_map).reshape(b, -1).mean(-1)
  cs = cs_map[inner].reshape(b, -1).mean(-1)
  return sim, cs


def _avg_pool2(x):
  """``F.avg_pool2d(x, (2, 2))``: 2x2 means, an odd last row / column dropped."""
  b, h, w, c = x.shape
  x = x[:, :h // 2 * 2, :w // 2 * 2]
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def ms_ssim(pred: jax.Array, target: jax.Array, *, betas=MSSSIM_BETAS_4, data_range: float = 1.0,
            sigma: float = 1.5, kernel_size: int = 11, k1: float = 0.01, k2: float = 0.03,
            normalize: str | None = "relu", crop_sim: bool = True, clamp_variance: bool = False) -> jax.Array:
  """Per-image MS-SSIM of two NHWC batches, torchmetrics ``MultiScaleStructuralSimilarityIndexMeasure`` (``(B,)``).

  ``_multiscale_ssim_update``: for each of the ``len(betas)`` scales, ``(sim, cs)`` of :func:`_ssim_and_cs` (a
  Gaussian window, sigma 1.5, 11 x 11), ReLU'd (``normalize='relu'``, the metric class's default), then both images
  2x2 average-pooled; the value is ``prod_j cs_j ** beta_j`` over the first ``len(betas) - 1`` scales times
  ``sim ** beta_last`` of the last one, with the betas **as given** (no renormalisation: the TS yaml's four betas
  sum to 0.8668). ``normalize='simple'`` maps the stack by ``(v + 1) / 2`` before the powers; None leaves it.
  ``data_range`` is a float (``C1 = (k1 R)^2``, ``C2 = (k2 R)^2``, no clamping of the inputs).

  Version dependence: torchmetrics up to 1.3 averages ``sim`` over the map cropped by the window radius, as ``cs``;
  1.4 and later average it over the whole reflect-padded map (``crop_sim=False``). 1.3 and later clamp the
  variances at 0 (``clamp_variance=True``). The official environment pins neither (pytorch-lightning 1.x, whose
  era is torchmetrics 0.11-1.2), so the defaults follow those versions: ``crop_sim=True, clamp_variance=False``.

  Raises:
    ValueError: images too small for the scales (torchmetrics' own checks): a side smaller than
      ``2 ** len(betas)``, or ``side // (len(betas) - 1) ** 2 <= kernel_size - 1`` (at least 99 pixels for 4 betas).
  """
  if pred.shape != target.shape or pred.ndim != 4:
    raise ValueError(f"ms_ssim expects two NHWC batches of one shape, got {pred.shape} and {target.shape}")
  n = len(betas)
  h, w = pred.shape[1:3]
  if min(h, w) < 2 ** n:
    raise ValueError(f"MS-SSIM with {n} betas needs images of at least {2 ** n} pixels per side, got {h}x{w}")
  div = max(1, n - 1) ** 2
  if h // div <= kernel_size - 1 or w // div <= kernel_size - 1:
    raise ValueError(f"MS-SSIM with {n} betas and kernel size {kernel_size} needs height and width larger than "
                     f"{(kernel_size - 1) * div} (torchmetrics' check), got {h}x{w}")
  if normalize not in (None, "relu", "simple"):
    raise ValueError(f"ms_ssim: normalize={normalize!r}; expected None, 'relu' or 'simple'")
  x = jnp.asarray(pred, jnp.float32)
  y = jnp.asarray(target, jnp.float32).astype(x.dtype)
  values = []
  sim = None
  for _ in range(n):
    sim, cs = _ssim_and_cs(x, y, sigma=sigma, data_range=float(data_range), k1=k1, k2=k2, crop_sim=crop_sim,
                           clamp_variance=clamp_variance)
    if normalize == "relu":
      sim, cs = jax.nn.relu(sim), jax.nn.relu(cs)
    values.append(cs)
    x, y = _avg_pool2(x), _avg_pool2(y)
  values[-1] = sim
  stack = jnp.stack(values)
  if normalize == "simple":
    stack = (stack + 1) / 2
  return jnp.prod(stack ** jnp.asarray(betas, jnp.float32)[:, None], axis=0)


def encoder_loss(img_c: jax.Array, color_map_gt: jax.Array, **kwargs) -> jax.Array:
  """The TS encoder stage (``LitCond.loss_fn``, ``cond_loss_type: ssim``): ``1 - MS-SSIM(img_c, CM(GT))`` with the
  four betas :data:`MSSSIM_BETAS_4` and ``data_range=1.0`` (the batch mean of :func:`ms_ssim`; ``kwargs`` go to it).

  ``img_c`` is the sigmoid output of the TS ``Unet_cond`` (the official ``torch._assert(output.max() <= 1)``
  holds by construction); ``color_map_gt`` is :func:`lliejax.data.condition.color_map` of the ground truth.
  """
  kwargs.setdefault("betas", MSSSIM_BETAS_4)
  return 1.0 - jnp.mean(ms_ssim(img_c, color_map_gt, data_range=1.0, **kwargs))


def he_loss(lpips_params, zeta: jax.Array, gt: jax.Array) -> jax.Array:
  """The TS histogram-refiner stage (``LitHE.loss_fn``, ``he_loss_type: lpips``): LPIPS-VGG (``normalize=True``,
  the batch mean) between the refiner output zeta (already clamped to [0, 1] by ``Unet_he``) and the ground truth."""
  return perceptual.lpips_loss(lpips_params, zeta, gt, net="vgg", input_range="[0,1]")
