"""``lliejax-enhance``: enhance image files or folders with a trained workdir or exported params.

Any size, RGB / grayscale / RGBA / palette, 8- or 16-bit PNG and JPEG (converted to RGB float with a note).
Outputs are 8-bit PNGs named after the inputs in ``--out``. An input file is never overwritten; existing
outputs are refused unless ``--overwrite``. An unreadable file is reported by name, the others are still
processed, and the exit status is 1 at the end.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow (pulled in by clu writers) is chatty

import argparse
import logging
import sys


def plan_outputs(inputs: list[str], out_dir: str, *, overwrite: bool) -> list[tuple[str, str]]:
  """Map every input file to ``out_dir/<stem>.png``; refuse collisions, inputs as outputs and existing files."""
  from lliejax import image_io  # pylint: disable=import-outside-toplevel

  files = []
  for item in inputs:
    if os.path.isdir(item):
      files.extend(str(f) for f in image_io.list_images(item))
    elif os.path.exists(item):
      files.append(item)
    else:
      raise FileNotFoundError(f"input {item} does not exist")
  if not files:
    raise FileNotFoundError(f"no image files found in {', '.join(inputs)}")
  out_dir = os.path.abspath(os.path.expanduser(out_dir))
  real_inputs = {os.path.realpath(f) for f in files}
  plan, seen = [], {}
  for f in files:
    out = os.path.join(out_dir, os.path.splitext(os.path.basename(f))[0] + ".png")
    if out in seen:
      raise ValueError(f"{f} and {seen[out]} would both be written to {out}; enhance them into separate --out "
                       "folders")
    seen[out] = f
    if os.path.realpath(out) in real_inputs:
      raise ValueError(f"refusing to write {out}: it is one of the input files (choose another --out)")
    if os.path.exists(out) and not overwrite:
      raise FileExistsError(f"{out} already exists; pass --overwrite to replace existing outputs")
    plan.append((f, out))
  return plan


def run(argv=None) -> int:
  p = argparse.ArgumentParser(prog="lliejax-enhance", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("inputs", nargs="+", help="image files and/or folders (non-recursive)")
  p.add_argument("--model", required=True, help="a training workdir or an export directory (lliejax-convert output)")
  p.add_argument("--out", required=True, help="output folder (created if missing)")
  p.add_argument("--sampler", choices=("posterior", "sde", "ode"), default="posterior",
                 help="reverse sampler (default posterior, as the official test.py)")
  p.add_argument("--seed", type=int, default=0, help="sampler seed (outputs are reproducible per seed)")
  p.add_argument("--overwrite", action="store_true", help="replace existing output files (never input files)")
  p.add_argument("--online", action="store_true", help="use the online instead of the EMA params of a workdir")
  p.add_argument("--bit-depth", type=int, choices=(8, 16), default=8, help="output PNG bit depth")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  args = p.parse_args(argv)
  logging.basicConfig(level=logging.WARNING)

  try:
    plan = plan_outputs(args.inputs, args.out, overwrite=args.overwrite)
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    print(f"lliejax-enhance: error: {e}", file=sys.stderr)
    return 2

  import jax  # pylint: disable=import-outside-toplevel
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  from lliejax import image_io, inference  # pylint: disable=import-outside-toplevel

  try:
    enhancer = inference.load_enhancer(args.model, ema=not args.online)
  except (FileNotFoundError, ValueError) as e:
    print(f"lliejax-enhance: error: {e}", file=sys.stderr)
    return 2
  os.makedirs(os.path.abspath(args.out), exist_ok=True)
  key = jax.random.key(args.seed)
  failed = []
  for i, (src, dst) in enumerate(tqdm(plan, desc="enhance", unit="img", disable=args.quiet)):
    try:
      image, notes = image_io.read_image(src)
    except image_io.ImageReadError as e:
      failed.append(src)
      tqdm.write(f"lliejax-enhance: skipped {src}: {e}", file=sys.stderr)
      continue
    for note in notes:
      tqdm.write(f"{src}: {note}")
    out = enhancer.enhance(image, jax.random.fold_in(key, i), sampler=args.sampler)
    image_io.write_png(dst, out, overwrite=args.overwrite, bit_depth=args.bit_depth)
  done = len(plan) - len(failed)
  print(f"wrote {done} image(s) to {os.path.abspath(args.out)}")
  if failed:
    print(f"lliejax-enhance: {len(failed)} file(s) could not be read: {', '.join(failed)}", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  sys.exit(run())
