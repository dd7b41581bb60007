"""Sampling and evaluation: the jitted reverse process on full images, PSNR/SSIM, PNG outputs, metrics JSON.

Metric conventions (REFERENCE.md section 4, Entropy-SDE / IR-SDE): outputs are clamped to [0, 1], scaled by 255
and rounded half-to-even to uint8; PSNR is ``20 log10(255 / sqrt(MSE))`` on RGB uint8 in float64; SSIM is the
MATLAB-style one (11x11 Gaussian, sigma 1.5, valid region, channel mean); no border crop by default
(``crop_border``; the upstream IR-SDE test crops 4 pixels). See :mod:`lliejax.metrics`.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from lliejax import sde as sde_lib

_SAMPLERS: dict[Any, Any] = {}


def make_sampler(model, sde: sde_lib.IRSDE, mode: str = "posterior"):
  """Jitted ``(params, lq, key) -> x_0`` running all ``T`` reverse steps in one ``lax.scan``.

  ``lq`` is NHWC float32 in [0, 1] of any size (the network pads to its multiple and crops back); the result is
  the unclamped final state. Compiled once per input shape.
  """
  cache_key = (model, id(sde), mode)
  if cache_key not in _SAMPLERS:

    def run(params, lq, key):
      noise_fn = lambda x, mu, t: model.apply({"params": params}, x, mu, t)
      return sde_lib.sample(sde, noise_fn, lq, key, mode=mode)

    _SAMPLERS[cache_key] = (sde, jax.jit(run))  # keep ``sde`` alive so its id stays unique
  return _SAMPLERS[cache_key][1]


def evaluate_dataset(config, params, *, model, sde, key, sampler: str | None = None, max_images: int | None = None,
                     split: str | None = None, out_dir: str | None = None, overwrite: bool = False,
                     crop_border: int = 0, progress: bool = False) -> dict:
  """Enhance the images of ``config.data`` (``split``, default ``config.data.eval_split``) and score them.

  Returns ``{"per_image": [{"name", "psnr", "ssim", "psnr_input", "ssim_input"}...], "mean": {...},
  "images": [(name, (LQ, output clamped, GT))...]}``. With ``out_dir`` the enhanced PNGs and ``metrics.json`` are
  written there (refused if it exists and ``overwrite`` is False).
  """
  from lliejax import image_io, metrics  # pylint: disable=import-outside-toplevel
  from lliejax.data import pipeline  # pylint: disable=import-outside-toplevel

  sampler = sampler or config.test_sampler
  split = split or config.data.get("eval_split", "test")
  if out_dir is not None:
    out_dir = os.path.abspath(os.path.expanduser(out_dir))
    if os.path.exists(out_dir) and os.listdir(out_dir) and not overwrite:
      raise FileExistsError(f"output directory {out_dir} is not empty; pass --overwrite to replace its files")
    os.makedirs(out_dir, exist_ok=True)
  run = make_sampler(model, sde, sampler)
  rows, images = [], []
  items = pipeline.eval_iterator(config.data, split=split, max_images=max_images)
  if progress:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    items = tqdm(items, desc=f"eval {split}", unit="img")
  for i, item in enumerate(items):
    lq = np.asarray(item["lq"], np.float32)
    out = np.asarray(run(params, jnp.asarray(lq), jax.random.fold_in(key, i)))[0]
    out_u8, gt_u8, lq_u8 = (metrics.to_uint8(a) for a in (out, item["gt"][0], lq[0]))
    name = str(item["name"])
    rows.append({"name": name,
                 "psnr": float(metrics.psnr(out_u8, gt_u8, crop_border=crop_border)),
                 "ssim": float(metrics.ssim(out_u8, gt_u8, crop_border=crop_border)),
                 "psnr_input": float(metrics.psnr(lq_u8, gt_u8, crop_border=crop_border)),
                 "ssim_input": float(metrics.ssim(lq_u8, gt_u8, crop_border=crop_border))})
    images.append((name, (lq[0], np.clip(out, 0, 1), item["gt"][0])))
    if out_dir is not None:
      image_io.write_png(os.path.join(out_dir, f"{name}.png"), out, overwrite=overwrite)
  if not rows:
    raise ValueError(f"dataset {config.data.name!r} split {split!r} has no images")
  mean = {k: float(np.mean([r[k] for r in rows])) for k in ("psnr", "ssim", "psnr_input", "ssim_input")}
  result = {"dataset": config.data.name, "split": split, "sampler": sampler, "num_images": len(rows),
            "crop_border": crop_border, "mean": mean, "per_image": rows}
  if out_dir is not None:
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
      json.dump(result, f, indent=2)
  result["images"] = images
  return result
