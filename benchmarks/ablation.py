"""Entropy-SDE objectives on the demo set: l1 vs KL vs Hellinger vs the combined / straight-through variants.

``python benchmarks/ablation.py [--workdir ablation] [--variants all|name,...] [--seeds 0,1,2] [--steps N]``

Every variant is ``configs/entropy_sde.py:demo`` (the l1 row) or ``:demo_kl`` (KL alone, L = 16 bins) with the
overrides in :data:`VARIANTS`: the same network, data stream, optimizer and 1,500 steps; only ``config.loss``
differs. Each (variant, seed) trains in ``WORKDIR/<variant>/s<seed>`` (``config.seed = seed``; runs resume, so an interrupted
ablation continues where it stopped), then its EMA export enhances the demo test photos with the posterior
sampler (sampler seed 0) and is scored under the ``standard`` protocol (PSNR, SSIM, LPIPS-Alex, DISTS; no NIQE:
the photos are too small for it). The last logged training diagnostics of the loss input x_hat_{t-1} are read back
from the TensorBoard events: its mean and the fraction of pixels below 0 / above 1, which is where the official
KDE clamp gives no gradient.

``--summary-only`` trains nothing and tabulates every finished run found. Writes ``WORKDIR/ablation.json`` (every run), ``WORKDIR/ablation.md`` (mean +- sample std over seeds) and
``WORKDIR/outputs.png`` (the first test photo: input, GT and every variant's output for the first seed).
Expect ~3 minutes per l1 run and ~5 per entropy run on a 2-core CPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import glob
import json
import math
import os

#: name -> (config variant, overrides). ``weight=0.05`` is the lambda of l1 + lambda * entropy.
VARIANTS = {
    "l1": ("demo", ""),
    "kl": ("demo_kl", ""),
    "hellinger": ("demo_kl", "loss=hellinger"),
    "kl_st": ("demo_kl", "loss.clamp=straight_through"),
    "hellinger_st": ("demo_kl", "loss=hellinger,loss.clamp=straight_through"),
    "l1+kl": ("demo_kl", "loss.weight=0.05,loss.pixel=l1"),
    "l1+kl_st": ("demo_kl", "loss.weight=0.05,loss.pixel=l1,loss.clamp=straight_through"),
    "l1+hellinger_st": ("demo_kl", "loss=hellinger,loss.weight=0.05,loss.pixel=l1,loss.clamp=straight_through"),
    "l1>l1+kl_st": ("demo_kl", "loss.weight=0.05,loss.pixel=l1,loss.clamp=straight_through,"
                                    "loss.entropy_start=750"),
}
METRICS = (("psnr", "PSNR", "{:.2f}"), ("ssim", "SSIM", "{:.3f}"), ("lpips", "LPIPS ↓", "{:.3f}"),
           ("dists", "DISTS ↓", "{:.3f}"))
DIAGNOSTICS = ("pred_mean", "pred_below_0", "pred_above_1")
#: Timesteps at which :func:`diagnose` measures the network's implied clean image x_hat_0 on the test photos.
DIAGNOSE_T = (10, 50, 100)


def diagnose(workdir: str, images, *, seed: int = 0) -> dict:
  """What the trained network implies at timesteps :data:`DIAGNOSE_T`, on the test photos (LQ, GT pairs).

  For each t: x_t ~ q(x_t | GT, LQ), the predicted noise, ``x_hat_0 = sde.x0_from_noise`` (what the posterior
  sampler steps towards) and the loss input ``x_hat_{t-1}``. Returns ``x0_t<t>_mean``, ``x0_t<t>_below_0``,
  ``x0_t<t>_above_1`` and ``pred_t<t>_outside`` (fraction of x_hat_{t-1} outside [0, 1], where the official KDE
  clamp gives zero gradient), averaged over the photos.
  """
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel

  from lliejax import inference  # pylint: disable=import-outside-toplevel

  enh = inference.load(workdir)
  method = enh.method
  sde, noise_fn = method.sde, method.noise_fn(enh.params)

  @jax.jit
  def stats(lq, gt, t, key):
    tt = jnp.full((1,), t, jnp.int32)
    xt = sde.forward_sample(gt, lq, tt, jax.random.normal(key, gt.shape, jnp.float32))
    noise = noise_fn(xt, lq, tt)
    x0 = sde.x0_from_noise(xt, noise, lq, tt)
    pred = sde.reverse_sde_step_mean(xt, lq, sde.score_from_noise(noise, tt), tt)
    return (jnp.mean(x0), jnp.mean((x0 < 0).astype(jnp.float32)), jnp.mean((x0 > 1).astype(jnp.float32)),
            jnp.mean(((pred < 0) | (pred > 1)).astype(jnp.float32)))

  out = {}
  for t in DIAGNOSE_T:
    vals = np.array([[float(v) for v in stats(jnp.asarray(lq)[None], jnp.asarray(gt)[None], t,
                                               jax.random.fold_in(jax.random.key(seed), i))]
                     for i, (_, (lq, _, gt)) in enumerate(images)])
    for name, v in zip(("mean", "below_0", "above_1"), vals.mean(axis=0)[:3]):
      out[f"x0_t{t}_{name}"] = float(v)
    out[f"pred_t{t}_outside"] = float(vals[:, 3].mean())
  return out


def last_scalars(workdir: str, tags) -> dict:
  """The last logged value of each of ``tags`` in the TensorBoard events of ``workdir`` (missing tags omitted)."""
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=import-outside-toplevel

  out = {}
  for path in sorted(glob.glob(os.path.join(workdir, "events.out.tfevents.*"))):
    acc = event_accumulator.EventAccumulator(path, size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    for tag in tags:
      if tag in acc.Tags().get("tensors", []):
        from tensorboard.util import tensor_util  # pylint: disable=import-outside-toplevel
        out[tag] = float(tensor_util.make_ndarray(acc.Tensors(tag)[-1].tensor_proto))
      elif tag in acc.Tags().get("scalars", []):
        out[tag] = float(acc.Scalars(tag)[-1].value)
  return out


def run_one(name: str, seed: int, workdir: str, steps: int | None, data_dir: str | None) -> dict:
  import jax  # pylint: disable=import-outside-toplevel

  from lliejax import cli, evaluate, inference, metrics  # pylint: disable=import-outside-toplevel
  from lliejax.config_utils import load_config  # pylint: disable=import-outside-toplevel

  variant, overrides = VARIANTS[name]
  spec = f"entropy_sde:{variant}" + (f",{overrides}" if overrides else "") + f",seed={seed}"
  if steps:
    spec += f",steps={steps}"
  config = load_config(spec)
  if data_dir:
    config.data.data_dir = data_dir
  wd = os.path.abspath(os.path.join(workdir, name, f"s{seed}"))
  result_file = os.path.join(wd, "ablation_result.json")
  if os.path.exists(result_file):
    with open(result_file) as f:
      return json.load(f)
  cli.train(config, wd)
  # The standard protocol without NIQE (its 96x96 patches need photos of at least 194 pixels a side).
  protocol = dataclasses.replace(metrics.conventions.get("standard"), metrics=("psnr", "ssim", "lpips", "dists"))
  res = evaluate.evaluate_dataset(inference.load(wd), config.data, key=jax.random.key(0),
                                  out_dir=os.path.join(wd, "results"), overwrite=True, convention=protocol)
  root = os.path.abspath(workdir)
  if res.get("images") and not os.path.exists(os.path.join(root, "input.png")):
    from lliejax.data import image_io  # pylint: disable=import-outside-toplevel
    _, (lq, _, gt) = res["images"][0]
    image_io.write_png(os.path.join(root, "input.png"), lq)
    image_io.write_png(os.path.join(root, "ground_truth.png"), gt)
  row = {"variant": name, "seed": seed, "config": spec, "num_images": res["num_images"],
         **{k: float(v) for k, v in res["mean"].items()}, **last_scalars(wd, DIAGNOSTICS),
         **diagnose(wd, [(n, (lq, None, gt)) for n, (lq, _, gt) in res["images"]])}
  with open(result_file, "w") as f:
    json.dump(row, f, indent=2)
  return row


def summarise(rows: list[dict], names: list[str]) -> str:
  """A markdown table: mean +- sample std over seeds, per variant."""
  head = (["objective", "seeds"] + [m[1] for m in METRICS]
          + [f"x̂0 mean (t={DIAGNOSE_T[-1]})", "x̂0 < 0", "x̂0 > 1", f"x̂0 mean (t={DIAGNOSE_T[1]})"])
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for name in names:
    rs = [r for r in rows if r["variant"] == name]
    if not rs:
      continue
    cells = [f"`{name}`", ",".join(str(r["seed"]) for r in rs)]
    t_hi, t_mid = DIAGNOSE_T[-1], DIAGNOSE_T[1]
    diag = (f"x0_t{t_hi}_mean", f"x0_t{t_hi}_below_0", f"x0_t{t_hi}_above_1", f"x0_t{t_mid}_mean")
    for key, _, fmt in METRICS + tuple((d, d, "{:.2f}") for d in diag):
      vals = [r[key] for r in rs if key in r and math.isfinite(r[key])]
      if not vals:
        cells.append("–")
        continue
      mean = sum(vals) / len(vals)
      if len(vals) > 1:
        std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (len(vals) - 1))
        cells.append(f"{fmt.format(mean)} ± {fmt.format(std)}")
      else:
        cells.append(fmt.format(mean))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def picture(workdir: str, names: list[str], seed: int, out: str) -> None:
  """Input, GT and each variant's output (first test photo, seed ``seed``) side by side, labelled."""
  from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel

  tiles = []
  for name in names:
    pngs = sorted(glob.glob(os.path.join(workdir, name, f"s{seed}", "results", "*.png")))
    if pngs:
      tiles.append((name, Image.open(pngs[0]).convert("RGB")))
  if not tiles:
    return
  for label, fname in (("ground truth", "ground_truth.png"), ("input", "input.png")):
    if os.path.exists(os.path.join(workdir, fname)):
      tiles.insert(0, (label, Image.open(os.path.join(workdir, fname)).convert("RGB")))
  w, h = tiles[0][1].size
  scale = max(1, 160 // max(1, h))
  w, h = w * scale, h * scale
  canvas = Image.new("RGB", (w * len(tiles), h + 18), "white")
  draw = ImageDraw.Draw(canvas)
  for i, (name, img) in enumerate(tiles):
    canvas.paste(img.resize((w, h), Image.NEAREST), (i * w, 18))
    draw.text((i * w + 3, 3), name, fill="black")
  canvas.save(out)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", default="ablation")
  p.add_argument("--variants", default="all", help=f"'all' or a comma list of {', '.join(VARIANTS)}")
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--steps", type=int, default=None, help="override num_train_steps (default: the demo's 1,500)")
  p.add_argument("--data-dir", default=None)
  p.add_argument("--summary-only", action="store_true",
                 help="train nothing: tabulate the finished runs of --variants (every seed found) and draw the picture")
  args = p.parse_args(argv)
  names = list(VARIANTS) if args.variants == "all" else args.variants.split(",")
  unknown = [n for n in names if n not in VARIANTS]
  if unknown:
    p.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
  seeds = [int(s) for s in args.seeds.split(",")]

  from lliejax import runtime  # pylint: disable=import-outside-toplevel

  runtime.tune_host_allocator()
  runtime.setup_logging()
  os.makedirs(args.workdir, exist_ok=True)
  for seed in [] if args.summary_only else seeds:  # all variants of one seed first: a partial run compares them all
    for name in names:
      run_one(name, seed, args.workdir, args.steps, args.data_dir)
  rows = collect(args.workdir, names, args.data_dir)
  with open(os.path.join(args.workdir, "ablation.json"), "w") as f:
    json.dump(rows, f, indent=2)
  table = summarise(rows, names)
  with open(os.path.join(args.workdir, "ablation.md"), "w") as f:
    f.write(table + "\n")
  picture(args.workdir, names, seeds[0], os.path.join(args.workdir, "outputs.png"))
  print(table)


def collect(workdir: str, names: list[str], data_dir: str | None) -> list[dict]:
  """Every finished run of ``names`` under ``workdir`` (all seeds found), with :func:`diagnose` added where a run
  predates it."""
  from lliejax import config_utils  # pylint: disable=import-outside-toplevel
  from lliejax.data import source  # pylint: disable=import-outside-toplevel

  rows, images = [], None
  for name in names:
    for path in sorted(glob.glob(os.path.join(workdir, name, "s*", "ablation_result.json"))):
      with open(path) as f:
        row = json.load(f)
      if f"x0_t{DIAGNOSE_T[-1]}_mean" not in row:
        if images is None:
          cfg = config_utils.load_config("entropy_sde:demo")
          if data_dir:
            cfg.data.data_dir = data_dir
          items = source.eval_items(cfg.data, split=cfg.data.get("eval_split", "test"))
          images = [(str(i), (ex["lq"], None, ex["gt"])) for i, ex in enumerate(it.load() for it in items)]
        row.update(diagnose(os.path.dirname(path), images))
        with open(path, "w") as f:
          json.dump(row, f, indent=2)
      rows.append(row)
  return rows


if __name__ == "__main__":
  main()
