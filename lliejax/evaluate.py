"""Evaluation of any method on a dataset split: full-resolution enhancement, scores under the method's convention.

The images of the split (sorted by name, as the official test scripts list files) are divided across processes
(:func:`lliejax.parallel.process_share`) and, within a process, across its devices
(:meth:`lliejax.inference.Enhancer.enhance_many`); image ``i`` is drawn with ``fold_in(key, i)`` wherever it runs,
so the numbers do not depend on the number of devices or hosts. Scores follow the method's
:class:`lliejax.metrics.Convention` (Entropy-SDE: IR-SDE's ``tensor2img`` rounding, PSNR, MATLAB-style SSIM, no
border crop) or a named protocol (``entropy_sde``, ``anlightendiff_fs``, ``anlightendiff_ts``, ``reddit``,
``standard``: :mod:`lliejax.metrics.conventions`), optionally several side by side on the same outputs; they are
gathered on every process, and process 0 writes ``metrics.json`` and per-protocol CSV/JSON tables.

:func:`evaluate_folders` scores saved results against a folder of ground truths (matched by file name) without
any model: ``lliejax eval --protocol reddit --results A --gt B``.
"""
from __future__ import annotations

import json
import os
from typing import Any, Sequence

import jax
import numpy as np

from lliejax import checkpoint, inference, metrics, parallel
from lliejax.metrics import conventions

def score_keys(convention: metrics.Convention, *, with_input: bool = True) -> list[str]:
  """The per-image keys :meth:`~lliejax.metrics.Convention.score` returns for ``convention`` (with an input)."""
  keys = list(convention.metrics)
  if with_input:
    keys += [f"{m}_input" for m in ("psnr", "ssim") if m in convention.metrics]
  return keys


def _summaries(names: list[str], table: np.ndarray, conventions: list[metrics.Convention], keys: list[list[str]],
               crop: int | None) -> dict:
  """``{protocol: {"mean", "per_image"}}`` from the gathered score table (one column block per convention)."""
  out, col = {}, 0
  for conv, ks in zip(conventions, keys):
    block = table[:, col:col + len(ks)]
    col += len(ks)
    rows = [{"name": n, **dict(zip(ks, map(float, r)))} for n, r in zip(names, block)]
    out[conv.name] = {"mean": {k: float(np.mean(block[:, j])) for j, k in enumerate(ks)}, "per_image": rows,
                      "crop_border": conv.crop_border if crop is None else crop}
  return out


def evaluate_dataset(enhancer: inference.Enhancer, data_cfg: Any, *, key: jax.Array, sampler: str | None = None,
                     steps: int | None = None, max_images: int | None = None, split: str | None = None,
                     out_dir: str | None = None, overwrite: bool = False, crop_border: int | None = None,
                     convention: metrics.Convention | str | None = None, compare: Sequence[str] = (),
                     progress: bool = False) -> dict:
  """Enhance the images of ``data_cfg`` (``split``, default its ``eval_split``) and score them.

  Args:
    enhancer: the method and its parameters (:func:`lliejax.inference.load`).
    data_cfg: a ``config.data`` section.
    key: sampler key; image ``i`` (in name order) uses ``fold_in(key, i)``.
    sampler, steps: passed to ``method.sample`` (default: the method's test sampler and step count).
    max_images: only the first images in name order (default ``data_cfg.eval_max_images``; None = all).
    out_dir: write the enhanced PNGs (each process its own) and ``metrics.json`` (process 0) there; refused if it
      holds files and ``overwrite`` is false.
    crop_border: pixels removed on every side before PSNR/SSIM (default: the convention's).
    convention: a :class:`~lliejax.metrics.Convention` or a protocol name (:func:`lliejax.metrics.conventions.get`);
      default the method's. Its ``input_crop_multiple`` (AnlightenDiff-TS) crops input and GT before enhancement.
    compare: further protocols scoring the same outputs (their input crops are applied to the outputs).
    progress: a progress bar.

  Returns:
    ``{"dataset", "split", "sampler", "num_images", "crop_border", "convention", "mean": {...}, "per_image":
    [{"name", <metric>: value...}...], "protocols": {name: {"mean", "per_image", "crop_border"}},
    "images": [(name, (LQ, output clamped, GT))...]}``: ``mean``/``per_image`` are the main convention's,
    ``protocols`` holds it and each of ``compare``; ``images`` holds this process's images only.
  """
  from lliejax.data import image_io, source  # pylint: disable=import-outside-toplevel

  method = enhancer.method
  main = conventions.get(convention or method.convention)
  convs = [main] + [conventions.get(c) for c in compare if conventions.get(c).name != main.name]
  keys = [score_keys(c) for c in convs]
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
      ex = item.load()
      ex["lq"], ex["gt"] = main.crop_input(ex["lq"]), main.crop_input(ex["gt"])
      loaded[i] = ex
      yield i, ex["lq"]

  outputs = enhancer.enhance_many(images(), key, sampler=sampler, steps=steps)
  if progress:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    outputs = tqdm(outputs, total=len(mine), desc=f"eval {split}", unit="img")
  scores = np.zeros((len(items), sum(map(len, keys))), np.float64)
  images = []
  for i, out in outputs:
    ex = loaded.pop(i)
    row = []
    for conv, ks in zip(convs, keys):
      o, g, l = (conv.crop_input(x) for x in (out, ex["gt"], ex["lq"])) if conv is not main else (out, ex["gt"],
                                                                                                 ex["lq"])
      scored = conv.score(o, g, l, crop_border=crop_border)
      row += [scored[k] for k in ks]
    scores[i] = row
    images.append((ex["name"], (ex["lq"], np.clip(out, 0, 1), ex["gt"])))
    if out_dir is not None:
      image_io.write_png(os.path.join(out_dir, f"{ex['name']}.png"), out, overwrite=overwrite)
  checkpoint.sync_processes("evaluate-scores")  # processes finish their shares at different times
  scores = parallel.process_sum(scores)
  protocols = _summaries([item.name for item in items], scores, convs, keys, crop_border)
  result = {"dataset": data_cfg.get("name"), "split": split, "sampler": sampler, "num_images": len(items),
            "crop_border": protocols[main.name]["crop_border"], "convention": main.name,
            "mean": protocols[main.name]["mean"], "per_image": protocols[main.name]["per_image"],
            "protocols": protocols}
  if out_dir is not None and jax.process_index() == 0:
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
      json.dump(result, f, indent=2)
    write_tables(protocols, out_dir, overwrite=True)
  result["images"] = images
  return result


def match_folders(results_dir: str, gt_dir: str | None) -> list[tuple[str, str, str | None]]:
  """``(name, result path, GT path)`` for every image of ``results_dir``, matched to ``gt_dir`` by file stem.

  Raises:
    FileNotFoundError / ValueError: naming the folder, or the results without a ground truth.
  """
  from lliejax.data import image_io  # pylint: disable=import-outside-toplevel

  results = image_io.list_images(results_dir)
  if not results:
    raise ValueError(f"{results_dir}: no images (PNG, JPEG, ...) in the results folder")
  if gt_dir is None:
    return [(p.stem, str(p), None) for p in results]
  gts = {p.stem: p for p in image_io.list_images(gt_dir)}
  missing = [p.name for p in results if p.stem not in gts]
  if missing:
    raise ValueError(f"{len(missing)} result(s) in {results_dir} have no ground truth of the same name in {gt_dir}: "
                     f"{', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}")
  return [(p.stem, str(p), str(gts[p.stem])) for p in results]


def evaluate_folders(results_dir: str, gt_dir: str | None, protocols: Sequence[str | metrics.Convention], *,
                     crop_border: int | None = None, fid_weights: str | None = None,
                     progress: bool = False) -> dict:
  """Score saved results against ground-truth images (matched by name) under one or more protocols.

  Images are read as 8-bit RGB (``read_image_uint8``) and scored as they are (no further quantisation); the
  AnlightenDiff protocols center-crop the ground truth to the result. Without ``gt_dir`` only NIQE is computed
  (ReDDiT's ``test_unpaired.py``). With ``fid_weights`` (a pytorch-fid ``pt_inception`` file) the FID of the two
  sets is added to each protocol's means.

  Returns:
    ``{"results", "gt", "num_images", "convention", "mean", "per_image", "protocols": {name: {"mean",
    "per_image", "crop_border"}}}`` with the first protocol as ``convention``.
  """
  from lliejax.data import image_io  # pylint: disable=import-outside-toplevel

  convs = [conventions.get(p) for p in protocols]
  if not convs:
    raise ValueError("give at least one protocol")
  pairs = match_folders(results_dir, gt_dir)
  keys = [score_keys(c, with_input=False) if gt_dir else ["niqe"] for c in convs]
  table = np.zeros((len(pairs), sum(map(len, keys))), np.float64)
  fid_acc = None
  if fid_weights and gt_dir:
    from lliejax.metrics import fid  # pylint: disable=import-outside-toplevel
    fid_acc = fid.FIDAccumulator(fid.load_inception(fid_weights))
  it = enumerate(pairs)
  if progress:
    from tqdm import tqdm  # pylint: disable=import-outside-toplevel
    it = tqdm(it, total=len(pairs), desc="eval", unit="img")
  for i, (name, rpath, gpath) in it:
    res = image_io.read_image_uint8(rpath)[0]
    gt = image_io.read_image_uint8(gpath)[0] if gpath else None
    row = []
    for conv, ks in zip(convs, keys):
      scored = conv.score(res, gt, crop_border=crop_border)
      row += [scored[k] for k in ks]
    table[i] = row
    if fid_acc is not None:
      fid_acc.update(fake=res, real=gt)
  protocols_out = _summaries([n for n, _, _ in pairs], table, convs, keys, crop_border)
  if fid_acc is not None:
    value = float(fid_acc.compute())
    for summary in protocols_out.values():
      summary["mean"]["fid"] = value
  main = protocols_out[convs[0].name]
  return {"results": os.path.abspath(results_dir), "gt": os.path.abspath(gt_dir) if gt_dir else None,
          "num_images": len(pairs), "convention": convs[0].name, "mean": main["mean"],
          "per_image": main["per_image"], "protocols": protocols_out}


def compare_table(protocols: dict) -> str:
  """Mean of every metric (rows) under every protocol (columns), as Markdown; '-' where a protocol lacks it."""
  names = list(protocols)
  metric_names: list[str] = []
  for summary in protocols.values():
    metric_names += [k for k in summary["mean"] if k not in metric_names]
  lines = ["| metric | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
  for m in metric_names:
    arrow = "↓" if m.split("_")[0] in conventions.LOWER_IS_BETTER else "↑"
    cells = []
    for n in names:
      v = protocols[n]["mean"].get(m)
      cells.append("-" if v is None else (f"{v:.3f}" if m.startswith(("psnr", "fid", "niqe")) else f"{v:.4f}"))
    lines.append(f"| {m} {arrow} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def write_tables(protocols: dict, out_dir: str, *, overwrite: bool = False) -> list[str]:
  """``metrics_<protocol>.csv`` and ``.json`` (per image and mean) for every protocol, plus ``compare.md``.

  Existing files are refused unless ``overwrite``; returns the written paths.
  """
  import csv  # pylint: disable=import-outside-toplevel

  os.makedirs(out_dir, exist_ok=True)
  targets = [os.path.join(out_dir, f"metrics_{n}.{ext}") for n in protocols for ext in ("csv", "json")]
  targets.append(os.path.join(out_dir, "compare.md"))
  clash = [t for t in targets if os.path.exists(t)]
  if clash and not overwrite:
    raise FileExistsError(f"{clash[0]} exists; pass --overwrite to replace it")
  for name, summary in protocols.items():
    rows = summary["per_image"]
    fields = ["name"] + [k for k in (rows[0] if rows else {}) if k != "name"]
    fields += [k for k in summary["mean"] if k not in fields]  # set-level scores (FID): the mean row only
    with open(os.path.join(out_dir, f"metrics_{name}.csv"), "w", newline="") as f:
      w = csv.DictWriter(f, fieldnames=fields)
      w.writeheader()
      w.writerows(rows)
      w.writerow({"name": "mean", **summary["mean"]})
    with open(os.path.join(out_dir, f"metrics_{name}.json"), "w") as f:
      json.dump({"protocol": name, **summary}, f, indent=2)
  with open(targets[-1], "w") as f:
    f.write(compare_table(protocols) + "\n")
  return targets


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
