"""Evaluation of any method on a dataset split: full-resolution enhancement, scores under the method's convention.

The images of the split (sorted by name, as the official test scripts list files) are divided across processes
(:func:`lliejax.parallel.process_share`) and, within a process, across its devices
(:meth:`lliejax.inference.Enhancer.enhance_many`); image ``i`` is drawn with ``fold_in(key, i)`` wherever it runs,
so the numbers do not depend on the number of devices or hosts. Scores follow the method's
:class:`lliejax.metrics.Convention` (Entropy-SDE: IR-SDE's ``tensor2img`` rounding, PSNR, MATLAB-style SSIM, no
border crop) and are gathered on every process; process 0 writes ``metrics.json``.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

from lliejax import checkpoint, inference, metrics, parallel

SCORES = ("psnr", "ssim", "psnr_input", "ssim_input")


def evaluate_dataset(enhancer: inference.Enhancer, data_cfg: Any, *, key: jax.Array, sampler: str | None = None,
                     steps: int | None = None, max_images: int | None = None, split: str | None = None,
                     out_dir: str | None = None, overwrite: bool = False, crop_border: int | None = None,
                     convention: metrics.Convention | None = None, progress: bool = False) -> dict:
  """Enhance the images of ``data_cfg`` (``split``, default its ``eval_split``) and score them.

  Args:
    enhancer: the method and its parameters (:func:`lliejax.inference.load`).
    data_cfg: a ``config.data`` section.
    key: sampler key; image ``i`` (in name order) uses ``fold_in(key, i)``.
    sampler, steps: passed to ``method.sample`` (default: the method's test sampler and step count).
    max_images: only the first images in name order (default ``data_cfg.eval_max_images``; None = all).
    out_dir: write the enhanced PNGs (each process its own) and ``metrics.json`` (process 0) there; refused if it
      holds files and ``overwrite`` is false.
    crop_border: pixels removed on every side before scoring (default: the convention's).
    convention: default the method's.

  Returns:
    ``{"dataset", "split", "sampler", "num_images", "crop_border", "convention", "mean": {...}, "per_image":
    [{"name", "psnr", "ssim", "psnr_input", "ssim_input"}...], "images": [(name, (LQ, output clamped, GT))...]}``;
    ``images`` holds this process's images only.
  """
  from lliejax.data import image_io, source  # pylint: disable=import-outside-toplevel

  method = enhancer.method
  convention = convention or method.convention
  crop = convention.crop_border if crop_border is None else int(crop_border)
  sampler = sampler or method.default_sampler("test")
  split = split or data_cfg.get("eval_split", "test")
  if out_dir is not None:
    out_dir = os.path.abspath(os.path.expanduser(out_dir))
    if os.path.exists(out_dir) and os.listdir(out_dir) and not overwrite:
      raise FileExistsError(f"output directory {out_dir} is not empty; pass --overwrite to replace its files")
    checkpoint.sync_processes("evaluate-out-dir")
    os.makedirs(out_dir, exist_ok=True)
  items = source.eval_items(data_cfg, split=split, max_images=max_images)
  if not items:
    raise ValueError(f"dataset {data_cfg.get('name')!r} split {split!r} has no images")
  mine = parallel.process_share(list(enumerate(items)))
  loaded: dict[int, dict] = {}

  def images():
    for i, item in mine:
      loaded[i] = item.load()
      yield i, loaded[i]["lq"]

  outputs = enhancer.enhance_many(images(), key, sampler=sampler, steps=steps)
  if progress:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    outputs = tqdm(outputs, total=len(mine), desc=f"eval {split}", unit="img")
  scores = np.zeros((len(items), len(SCORES)), np.float64)
  images = []
  for i, out in outputs:
    ex = loaded.pop(i)
    row = convention.score(out, ex["gt"], ex["lq"], crop_border=crop)
    scores[i] = [row[k] for k in SCORES]
    images.append((ex["name"], (ex["lq"], np.clip(out, 0, 1), ex["gt"])))
    if out_dir is not None:
      image_io.write_png(os.path.join(out_dir, f"{ex['name']}.png"), out, overwrite=overwrite)
  checkpoint.sync_processes("evaluate-scores")  # processes finish their shares at different times
  scores = parallel.process_sum(scores)
  rows = [{"name": item.name, **dict(zip(SCORES, map(float, s)))} for item, s in zip(items, scores)]
  mean = {k: float(np.mean([r[k] for r in rows])) for k in SCORES}
  result = {"dataset": data_cfg.get("name"), "split": split, "sampler": sampler, "num_images": len(rows),
            "crop_border": crop, "convention": convention.name, "mean": mean, "per_image": rows}
  if out_dir is not None and jax.process_index() == 0:
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
      json.dump(result, f, indent=2)
  result["images"] = images
  return result


def metrics_table(result: dict) -> str:
  """The per-image and mean scores of :func:`evaluate_dataset` as a Markdown table."""
  lines = ["| image | PSNR input | PSNR output | SSIM input | SSIM output |", "|---|---|---|---|---|"]
  for r in result["per_image"]:
    lines.append(f"| {r['name']} | {r['psnr_input']:.2f} | {r['psnr']:.2f} | {r['ssim_input']:.4f} | "
                 f"{r['ssim']:.4f} |")
  m = result["mean"]
  lines.append(f"| **mean** | {m['psnr_input']:.2f} | {m['psnr']:.2f} | {m['ssim_input']:.4f} | {m['ssim']:.4f} |")
  return "\n".join(lines)


def write_report(result: dict, out_dir: str, *, label: str = "lliejax") -> dict[str, str]:
  """``side_by_side.png`` (rows of LQ | output | GT) and ``metrics.md`` in ``out_dir``; returns their paths."""
  from lliejax.data import image_io  # pylint: disable=import-outside-toplevel

  rows = [image_io.side_by_side(list(triple), labels=[f"{name}: LQ", label, "GT"])
          for name, triple in result["images"]]
  picture = os.path.join(out_dir, "side_by_side.png")
  image_io.write_png(picture, image_io.stack_rows(rows), overwrite=True)
  table = os.path.join(out_dir, "metrics.md")
  with open(table, "w") as f:
    f.write(metrics_table(result) + "\n")
  return {"picture": picture, "table": table}
