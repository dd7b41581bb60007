"""The paper's Table 3 in miniature: the same demo training with the l1 and with the spatial-entropy objective.

``python benchmarks/ablation.py [--workdir ablation] [--steps 1500] [--variants demo,demo_entropy]``

Trains each variant of ``configs/entropy_sde.py`` on the offline demo dataset (same seed, data stream, network,
optimizer and steps; only ``config.loss`` differs), evaluates the EMA params on the demo test photos with the
posterior sampler (same sampler seed) and prints PSNR/SSIM of both next to the unenhanced input. Runs resume:
interrupt and rerun the same command. Expect roughly 10 minutes per variant on a 2-core CPU (more for the
entropy loss).
"""
from __future__ import annotations

import argparse
import json
import os


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", default="ablation")
  p.add_argument("--variants", default="demo,demo_entropy")
  p.add_argument("--steps", type=int, default=None, help="override num_train_steps for every variant")
  p.add_argument("--data-dir", default=None)
  p.add_argument("--seed", type=int, default=0, help="sampler seed")
  args = p.parse_args()

  import jax

  from lliejax import cli, evaluate, inference, runtime
  from lliejax.config_utils import load_config

  runtime.tune_host_allocator()
  runtime.setup_logging()
  rows = []
  for variant in args.variants.split(","):
    config = load_config(f"entropy_sde:{variant}")
    if args.steps:
      config.num_train_steps = args.steps
    if args.data_dir:
      config.data.data_dir = args.data_dir
    wd = os.path.abspath(os.path.join(args.workdir, variant))
    cli.train(config, wd)
    res = evaluate.evaluate_dataset(inference.load(wd), config.data, key=jax.random.key(args.seed),
                                    out_dir=os.path.join(wd, "results"), overwrite=True)
    res.pop("images")
    rows.append((variant, config.loss.name, config.loss.get("bins"), res))
  with open(os.path.join(args.workdir, "ablation.json"), "w") as f:
    json.dump([{"variant": v, "loss": l, "bins": b, **r} for v, l, b, r in rows], f, indent=2)
  first = rows[0][3]["mean"]
  print(f"\n{'variant':14s} {'loss':10s} {'PSNR':>7s} {'SSIM':>7s}   (input: PSNR {first['psnr_input']:.2f}, "
        f"SSIM {first['ssim_input']:.4f}; {rows[0][3]['num_images']} demo test photos, posterior sampler)")
  for variant, loss, bins, r in rows:
    name = f"{loss} (L={bins})" if loss != "l1" else loss
    print(f"{variant:14s} {name:10s} {r['mean']['psnr']:7.2f} {r['mean']['ssim']:7.4f}")


if __name__ == "__main__":
  main()
