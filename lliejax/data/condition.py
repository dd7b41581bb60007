"""AnlightenDiff's hand-crafted 12-channel condition [LQ, HE(LQ), colour map, gradient map], in JAX.

What ``utils/cond_utils.py: cond_data_transforms`` (allanchan339/AnlightenDiff, identical in ``FS/`` and ``TS/``)
computes from the low-light image, as batched, jit-able functions of NHWC float images in [0, 1] (REFERENCE §2.7).
The channel order is the order of the official ``torch.cat([img, h, c, g])``; the comments of the source list
another one (REFERENCE §6 item 21):

==========  ========  ==========================================================================================
channels    name      official function, value range
==========  ========  ==========================================================================================
0-2         LQ        the input, [0, 1]
3-5         HE(LQ)    ``histro_equalize``: per image, per channel histogram equalisation of ``uint8(255 LQ)``
                      (truncation) with torchvision's tensor ``equalize``; ``k / 255`` for integers k, [0, 1]
6-8         CM(LQ)    ``color_map``: ``clamp(LQ / (mean_c LQ + 1e-8) / 3, 0, 1)``, [0, 1]
9-11        GM(CM)    ``grad_map(color_map(LQ))``: ``max(|dy|, |dx|)`` of torchmetrics' ``image_gradients``
                      (forward differences, zero last row / column), [0, 1]
==========  ========  ==========================================================================================

Everything here is pure JAX (the condition is computed inside the jitted sampler and training step, like the
official code computes it on the GPU); the histogram equalisation is exact integer arithmetic and equals
``torchvision.transforms.functional.equalize`` bit for bit.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

_LEVELS = np.arange(256, dtype=np.float32) / np.float32(255)

#: ``cond_data_transforms(img, ablation)``: the parts each ablation replaces by zeros.
ABLATIONS = {None: (), "c": ("cm",), "g": ("gm",), "h": ("he",), "all": ("cm", "gm", "he")}


def equalize_uint8(x: jax.Array) -> jax.Array:
  """``torchvision.transforms.functional.equalize`` of a uint8 tensor (``_functional_tensor._scale_channel``),
  for uint8 images ``(..., H, W, C)``: every ``(..., c)`` channel is equalised over its H x W pixels.

  Per channel, with the 256-bin histogram ``h`` and ``v_last`` its last non-empty bin:
  ``step = floor((sum(h) - h[v_last]) / 255)`` (the sum of the non-empty bins but the last); ``step = 0`` leaves
  the channel unchanged (e.g. a constant channel, or fewer than 256 pixels outside the top bin); otherwise
  ``lut[0] = 0`` and ``lut[v] = floor((cumsum(h)[v-1] + floor(step / 2)) / step)`` for v >= 1, clamped to
  [0, 255], and each pixel ``v`` becomes ``lut[v]``. All integer (int32: up to 2^31 - 1 pixels a channel).
  """
  if x.dtype != jnp.uint8:
    raise TypeError(f"equalize_uint8 expects uint8 images, got {x.dtype}")
  if x.ndim < 3:
    raise ValueError(f"equalize_uint8 expects (..., H, W, C) images, got shape {x.shape}")
  *lead, H, W, C = x.shape
  v = jnp.moveaxis(x.reshape(-1, H * W, C), -1, 1).reshape(-1, H * W).astype(jnp.int32)  # (N, P)
  n = v.shape[0]
  hist = jnp.zeros((n, 256), jnp.int32).at[jnp.arange(n)[:, None], v].add(1)
  last_nonzero = 255 - jnp.argmax(hist[:, ::-1] > 0, axis=1)
  h_last = jnp.take_along_axis(hist, last_nonzero[:, None], axis=1)[:, 0]
  step = (H * W - h_last) // 255
  safe = jnp.maximum(step, 1)[:, None]
  lut = (jnp.cumsum(hist, axis=1) + step[:, None] // 2) // safe
  lut = jnp.clip(jnp.pad(lut[:, :-1], ((0, 0), (1, 0))), 0, 255)
  out = jnp.where(step[:, None] == 0, v, jnp.take_along_axis(lut, v, axis=1)).astype(jnp.uint8)
  return jnp.moveaxis(out.reshape(-1, C, H * W), 1, -1).reshape(x.shape)


def histogram_equalize(img: jax.Array) -> jax.Array:
  """``histro_equalize``: ``equalize(uint8(255 img)) / 255`` in float32, ``img`` in [0, 1] (..., H, W, C).

  ``255 img`` is truncated (``.type(torch.uint8)``), not rounded. Values outside [0, 1] are clipped first (the
  official float -> uint8 cast of out-of-range values is platform-dependent; LQ images never have any).
  """
  q = jnp.clip(jnp.asarray(img, jnp.float32) * 255, 0, 255).astype(jnp.uint8)
  # k / 255 from a table: XLA may rewrite a division by a constant into a multiplication by its reciprocal, which
  # is one ulp off for some k; the table holds the correctly rounded quotients of ``.type(torch.float32) / 255.``
  return jnp.asarray(_LEVELS)[equalize_uint8(q).astype(jnp.int32)]


def color_map(img: jax.Array) -> jax.Array:
  """``color_map``: ``clamp(img / (mean_c(img) + 1e-8) / 3, 0, 1)`` per pixel, (..., H, W, C) in [0, 1].

  The channel mean is ``(r + g + b) / 3`` as ATen's ``mean`` computes it; XLA turns the divisions into
  multiplications by reciprocals, so the map is within 2e-7 of the official one, not bit for bit.
  """
  img = jnp.asarray(img, jnp.float32)
  channels = [img[..., c:c + 1] for c in range(img.shape[-1])]
  mean = functools.reduce(jnp.add, channels) / img.shape[-1]
  return jnp.clip(img / (mean + 1e-8) / 3, 0.0, 1.0)


def image_gradients(img: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``torchmetrics.functional.image_gradients``: forward differences ``dy = I[y+1, x] - I[y, x]`` and
  ``dx = I[y, x+1] - I[y, x]`` with a zero last row (dy) and last column (dx); (..., H, W, C)."""
  dy = jnp.concatenate([img[..., 1:, :, :] - img[..., :-1, :, :], jnp.zeros_like(img[..., :1, :, :])], axis=-3)
  dx = jnp.concatenate([img[..., :, 1:, :] - img[..., :, :-1, :], jnp.zeros_like(img[..., :, :1, :])], axis=-2)
  return dy, dx


def gradient_map(img: jax.Array) -> jax.Array:
  """``grad_map``: ``max(|dy|, |dx|)`` of :func:`image_gradients`, per channel (in [0, 1] for an image in [0, 1])."""
  dy, dx = image_gradients(jnp.asarray(img, jnp.float32))
  return jnp.maximum(jnp.abs(dy), jnp.abs(dx))


def hand_crafted_condition(lq: jax.Array, *, ablation: str | None = None) -> jax.Array:
  """``cond_data_transforms(lq, ablation)``: ``concat[LQ, HE(LQ), CM(LQ), GM(CM(LQ))]`` on the channel axis.

  Args:
    lq: the low-light image(s) in [0, 1], ``(..., H, W, 3)`` (NHWC).
    ablation: the official ablations, zeroing the colour map (``'c'``), the gradient map (``'g'``), the
      histogram-equalised image (``'h'``) or all three (``'all'``); the gradient map is always computed from the
      (unablated) colour map, as in the source.

  Returns:
    float32 ``(..., H, W, 12)`` (for RGB input), the input of AnlightenDiff's encoder ``Unet_cond``.
  """
  if ablation not in ABLATIONS:
    raise ValueError(f"unknown ablation {ablation!r}; expected one of {sorted(ABLATIONS, key=str)}")
  lq = jnp.asarray(lq, jnp.float32)
  c = color_map(lq)
  parts = {"he": histogram_equalize(lq), "cm": c, "gm": gradient_map(c)}
  for name in ABLATIONS[ablation]:
    parts[name] = jnp.zeros_like(lq)
  return jnp.concatenate([lq, parts["he"], parts["cm"], parts["gm"]], axis=-1)
