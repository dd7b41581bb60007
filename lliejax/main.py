"""Train / evaluate entry points.

``lliejax-train --config configs/entropy_sde.py:demo --workdir DIR`` trains (resuming from the latest checkpoint
in DIR), then evaluates the EMA params on the test split. ``lliejax-eval --workdir DIR`` (or ``--params
EXPORT_DIR --config ...`` for converted official weights) writes the enhanced PNGs and ``metrics.json``.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow (pulled in by clu writers) is chatty

import argparse
import logging
import os
import sys

from lliejax.config_utils import load_config
from lliejax.logging_utils import setup_logging


def _common(p: argparse.ArgumentParser) -> None:
  p.add_argument("--config", help="config spec PATH.py:variant[,key=value...], e.g. configs/entropy_sde.py:demo "
                 "(eval: defaults to the workdir's config.json)")
  p.add_argument("--workdir", help="run directory: checkpoints, TensorBoard events, config.json, export/")
  p.add_argument("--data-dir", help="TFDS data directory (overrides config.data.data_dir)")
  p.add_argument("--manual-dir", help="folder with the raw dataset for LOL builders (overrides config.data.manual_dir)")


def _eval_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--params", help="evaluate an export directory (e.g. from lliejax-convert) instead of the "
                 "workdir's checkpoint")
  p.add_argument("--split", default=None, help="dataset split (default config.data.eval_split)")
  p.add_argument("--sampler", choices=("posterior", "sde", "ode"), default=None,
                 help="reverse sampler (default config.test_sampler = posterior, as the official test.py)")
  p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images")
  p.add_argument("--out", default=None, help="output folder for PNGs and metrics.json (default WORKDIR/eval_<split>)")
  p.add_argument("--overwrite", action="store_true", help="replace files in an existing output folder")
  p.add_argument("--crop-border", type=int, default=0, help="pixels cropped on each side before PSNR/SSIM")
  p.add_argument("--online", action="store_true", help="use the online instead of the EMA params")
  p.add_argument("--seed", type=int, default=0, help="sampler seed")


def _apply_paths(config, args) -> None:
  if args.data_dir:
    config.data.data_dir = args.data_dir
  if args.manual_dir:
    config.data.manual_dir = args.manual_dir


def train_main(config, workdir: str, *, stop_at=None) -> None:
  import jax  # pylint: disable=import-outside-toplevel
  from lliejax import parallel, train  # pylint: disable=import-outside-toplevel
  from lliejax.data import pipeline  # pylint: disable=import-outside-toplevel

  parallel.maybe_initialize_distributed()
  logging.info("devices: %s", jax.devices())
  pipeline.prepare(config.data.name, data_dir=config.data.data_dir, manual_dir=config.data.get("manual_dir"))
  train.train_and_evaluate(config, workdir, stop_at=stop_at)


def eval_main(args, config=None) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  from lliejax import evaluate, inference  # pylint: disable=import-outside-toplevel
  from lliejax.data import pipeline  # pylint: disable=import-outside-toplevel

  source = args.params or args.workdir
  if not source:
    raise SystemExit("lliejax-eval: give --workdir or --params")
  enhancer = inference.load_enhancer(source, ema=not args.online)
  if config is None:
    if args.config:
      config = load_config(args.config)
    elif args.workdir:
      from lliejax.train import load_workdir_config  # pylint: disable=import-outside-toplevel
      config = load_workdir_config(args.workdir)
    else:
      raise SystemExit("lliejax-eval: --params needs --config to know the dataset")
  _apply_paths(config, args)
  pipeline.prepare(config.data.name, data_dir=config.data.data_dir, manual_dir=config.data.get("manual_dir"))
  split = args.split or config.data.get("eval_split", "test")
  out = args.out or os.path.join(args.workdir or args.params, f"eval_{split}")
  result = evaluate.evaluate_dataset(config, enhancer.params, model=enhancer.model, sde=enhancer.sde,
                                     key=jax.random.key(args.seed), sampler=args.sampler, split=split,
                                     max_images=args.max_images, out_dir=out, overwrite=args.overwrite,
                                     crop_border=args.crop_border, progress=True)
  m = result["mean"]
  print(f"{result['num_images']} images, sampler {result['sampler']}: PSNR {m['psnr']:.3f} dB, SSIM {m['ssim']:.4f} "
        f"(input: PSNR {m['psnr_input']:.3f} dB, SSIM {m['ssim_input']:.4f})")
  print(f"enhanced PNGs and metrics.json in {out}")
  return result


def run(argv=None) -> int:
  """``lliejax-train``."""
  p = argparse.ArgumentParser(prog="lliejax-train", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  _common(p)
  p.add_argument("--mode", choices=("train", "eval", "train_eval"), default="train_eval",
                 help="train only, evaluate only, or train then evaluate (default)")
  p.add_argument("--stop-at", type=int, default=None, help="stop (as if interrupted) after this step")
  _eval_args(p)
  args = p.parse_args(argv)
  setup_logging()
  try:
    if args.mode != "eval":
      if not args.config or not args.workdir:
        p.error("training needs --config and --workdir")
      config = load_config(args.config)
      _apply_paths(config, args)
      train_main(config, args.workdir, stop_at=args.stop_at)
      if args.mode == "train" or args.stop_at:
        return 0
      eval_main(args, config)
      return 0
    eval_main(args)
  except (FileExistsError, FileNotFoundError, KeyError, ValueError) as e:
    print(f"lliejax-train: error: {e}", file=sys.stderr)
    return 2
  return 0


def run_eval(argv=None) -> int:
  """``lliejax-eval``."""
  p = argparse.ArgumentParser(prog="lliejax-eval", description="Evaluate a trained workdir or exported params: "
                              "writes the enhanced PNGs and metrics.json.")
  _common(p)
  _eval_args(p)
  args = p.parse_args(argv)
  setup_logging()
  try:
    eval_main(args)
  except (FileExistsError, FileNotFoundError, ValueError) as e:
    print(f"lliejax-eval: error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(run())
