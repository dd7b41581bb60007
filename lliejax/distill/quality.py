"""Quality against the number of network calls: teachers sampled with fewer steps next to their distilled students.

What a distillation is judged by (ReDDiT's Tables 1-2 and its speed figure; Consistency Models' Fig. 4): the same test
images enhanced by the teacher with its full step count and with fewer steps, and by each student with its own step
count, scored under one protocol, with the wall time per image. :func:`score_steps` makes the rows,
:func:`steps_table` the markdown table, :func:`plot_quality_vs_steps` the figure (PSNR / LPIPS against network
calls and against seconds per image) and :func:`steps_picture` the same test image at every row side by side.

Network calls (``nfe``) are the sampler's steps for the DDIM samplers of ReDDiT's teacher and students (one UNet
call per step); a method may say otherwise with a ``network_calls(steps)`` method.
"""
from __future__ import annotations

import os
import time
from typing import Any, Sequence

import jax
import numpy as np

#: The columns of :func:`steps_table`: (key, header, format).
COLUMNS = (("label", "model", "{}"), ("steps", "steps", "{}"), ("nfe", "network calls", "{}"),
           ("psnr", "PSNR", "{:.2f}"), ("ssim", "SSIM", "{:.3f}"), ("lpips", "LPIPS ↓", "{:.3f}"),
           ("seconds_per_image", "s / image", "{:.3f}"), ("images_per_second", "images / s", "{:.2f}"))


def network_calls(method, steps: int) -> int:
  """Network evaluations of a ``steps``-step sample of ``method`` (``method.network_calls`` if it has one)."""
  fn = getattr(method, "network_calls", None)
  return int(fn(steps)) if fn is not None else int(steps)


def score_steps(source: str | Any, steps: Sequence[int | None], data_cfg, *, label: str, key: jax.Array,
                convention=None, sampler: str | None = None, max_images: int | None = None,
                keep_images: bool = False) -> list[dict]:
  """Score the export (or :class:`~lliejax.inference.Enhancer`) ``source`` at each step count of ``steps``.

  Every step count enhances the test images of ``data_cfg`` twice with the same keys: the first pass compiles and
  is scored (:func:`lliejax.evaluate.evaluate_dataset`), the second is timed (wall time until the outputs are on
  the host, compilation excluded).

  Returns:
    One row per step count: ``label``, ``steps`` (the resolved count), ``nfe``, the protocol's mean scores, the
    input's PSNR (``psnr_input``), ``seconds_per_image``, ``images_per_second``, ``source``; with
    ``keep_images`` also ``images`` (``[(name, (LQ, output, GT))...]``).
  """
  from lliejax import evaluate, inference  # pylint: disable=import-outside-toplevel
  from lliejax.data import source as data_source  # pylint: disable=import-outside-toplevel

  enh = source if isinstance(source, inference.Enhancer) else inference.load(source)
  method = enh.method
  sampler = sampler or method.default_sampler("test")  # the same program for the scored and the timed pass
  rows = []
  for s in steps:
    res = evaluate.evaluate_dataset(enh, data_cfg, key=key, sampler=sampler, steps=s, max_images=max_images,
                                    convention=convention)
    items = data_source.eval_items(data_cfg, split=res["split"], max_images=max_images)
    lqs = [(i, item.load()["lq"]) for i, item in enumerate(items)]
    start = time.perf_counter()
    for _, out in enh.enhance_many(iter(lqs), key, sampler=sampler, steps=s):
      np.asarray(out)
    seconds = (time.perf_counter() - start) / len(lqs)
    resolved = int(s if s is not None else method.config.get("sampling", {}).get("steps", 0) or 0)
    row = {"label": label, "steps": resolved, "nfe": network_calls(method, resolved),
           **{k: float(v) for k, v in res["mean"].items()}, "seconds_per_image": seconds,
           "images_per_second": 1.0 / seconds if seconds > 0 else float("inf"), "num_images": res["num_images"],
           "source": enh.source}
    if keep_images:
      row["images"] = res["images"]
    rows.append(row)
  return rows


def steps_table(rows: Sequence[dict], *, input_row: bool = True) -> str:
  """A markdown table of :func:`score_steps` rows (first an ``input`` row with the unenhanced PSNR / SSIM)."""
  head = [h for _, h, _ in COLUMNS]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  if input_row and rows and "psnr_input" in rows[0]:
    cells = ["input (unenhanced)", "–", "0", f"{rows[0]['psnr_input']:.2f}",
             f"{rows[0]['ssim_input']:.3f}" if "ssim_input" in rows[0] else "–"] + ["–"] * (len(head) - 5)
    lines.append("| " + " | ".join(cells) + " |")
  for r in rows:
    cells = [fmt.format(r[k]) if k in r and r[k] is not None else "–" for k, _, fmt in COLUMNS]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot_quality_vs_steps(rows: Sequence[dict], path: str, *, metrics: Sequence[str] = ("psnr", "lpips"),
                          title: str | None = None) -> str:
  """PSNR (and the other ``metrics``) against network calls (log2 axis) and against seconds per image, one line
  per ``label`` (a teacher at several step counts is one line; a chain of students one line each, or one line when
  they share a label). Writes a PNG to ``path`` and returns it."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg", force=False)
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  labels = list(dict.fromkeys(r["label"] for r in rows))
  fig, axes = plt.subplots(len(metrics), 2, figsize=(10, 3.4 * len(metrics)), squeeze=False)
  for i, m in enumerate(metrics):
    for label in labels:
      rs = sorted((r for r in rows if r["label"] == label and m in r), key=lambda r: r["nfe"])
      if not rs:
        continue
      axes[i, 0].plot([r["nfe"] for r in rs], [r[m] for r in rs], "o-", label=label)
      axes[i, 1].plot([r["seconds_per_image"] for r in rs], [r[m] for r in rs], "o-", label=label)
    if rows and m == "psnr" and "psnr_input" in rows[0]:
      for ax in axes[i]:
        ax.axhline(rows[0]["psnr_input"], color="gray", ls=":", label="input")
    axes[i, 0].set_xscale("log", base=2)
    axes[i, 0].set_xlabel("network calls")
    axes[i, 1].set_xscale("log")
    axes[i, 1].set_xlabel("seconds / image")
    for ax in axes[i]:
      ax.set_ylabel(m.upper() + (" (lower is better)" if m in ("lpips", "dists", "niqe") else ""))
      ax.grid(alpha=0.3)
  axes[0, 0].legend(fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def labelled_row(tiles: Sequence[tuple[str, np.ndarray]], *, min_height: int = 160, header: int = 18):
  """A PIL image of ``(label, HxWx3 float image in [0, 1] or uint8)`` tiles side by side, each labelled above.
  Tiles are resized (nearest) to the first one's size, scaled up by an integer factor to at least ``min_height``."""
  from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel

  def pil(x):
    x = np.asarray(x)
    if x.dtype != np.uint8:
      x = np.round(np.clip(x, 0, 1) * 255).astype(np.uint8)
    return Image.fromarray(x).convert("RGB")

  images = [(name, pil(x)) for name, x in tiles]
  if not images:
    raise ValueError("labelled_row: no tiles")
  w, h = images[0][1].size
  scale = max(1, -(-min_height // max(1, h)))
  w, h = w * scale, h * scale
  canvas = Image.new("RGB", (w * len(images), h + header), "white")
  draw = ImageDraw.Draw(canvas)
  for i, (name, img) in enumerate(images):
    canvas.paste(img.resize((w, h), Image.NEAREST), (i * w, header))
    draw.text((i * w + 3, 3), name, fill="black")
  return canvas


def steps_picture(rows: Sequence[dict], path: str, *, index: int = 0) -> str:
  """Test image ``index`` as input, each row's output (rows made with ``keep_images``) and GT, side by side."""
  rows = [r for r in rows if r.get("images")]
  if not rows:
    raise ValueError("steps_picture: no row has images (score_steps(..., keep_images=True))")
  _, (lq, _, gt) = rows[0]["images"][index]
  tiles = [("input", lq)] + [(f"{r['label']} {r['steps']}", r["images"][index][1][1]) for r in rows] + [("GT", gt)]
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  labelled_row(tiles).save(path)
  return path


def strip_images(rows: Sequence[dict]) -> list[dict]:
  """``rows`` without their ``images`` (JSON-serialisable)."""
  return [{k: v for k, v in r.items() if k != "images"} for r in rows]


__all__ = ["COLUMNS", "network_calls", "score_steps", "steps_table", "plot_quality_vs_steps", "labelled_row",
           "steps_picture", "strip_images"]
