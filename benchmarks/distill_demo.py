"""Distillation on the demo set: a teacher, its students, quality against network calls and time.

``python benchmarks/distill_demo.py [--workdir distill_demo] [--teacher-config reddit_teacher:demo]
[--student-config reddit_student:demo] [--distiller trajectory] [--final-steps 2] [--data-dir DIR]``

1. trains the teacher config in ``WORKDIR/teacher`` (resuming; ``lliejax train``);
2. distils it stage by stage (``lliejax distill``: 16 -> 8 -> 4 -> 2 for ReDDiT's demo teacher) in
   ``WORKDIR/<distiller>/<S>step``, each student the next stage's teacher;
3. scores on the demo test photos, under one protocol (``standard`` without DISTS/NIQE: PSNR, SSIM, LPIPS-Alex; no
   GT-mean adjustment), the teacher at its full step count and at every student's step count (plain DDIM with a
   larger stride: what distillation must beat), and every student at its own step count, with the wall time per
   image on this machine (:mod:`lliejax.distill.quality`);
4. writes ``WORKDIR/steps.md`` / ``steps.json`` (the table), ``WORKDIR/quality_vs_steps.png`` (PSNR and LPIPS
   against network calls and seconds per image) and ``WORKDIR/steps.png`` (the first test photo at every row).

The done-when bar of ReDDiT's issue is checked and printed: the last student within 1 dB PSNR of the full-step
teacher and at least 6 dB over the unenhanced input. Expect ~15 minutes for the teacher and ~8 per stage on a
2-core CPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--workdir", default="distill_demo")
  p.add_argument("--teacher-config", default="reddit_teacher:demo")
  p.add_argument("--student-config", default="reddit_student:demo")
  p.add_argument("--distiller", default="trajectory", choices=("trajectory",))
  p.add_argument("--final-steps", type=int, default=2)
  p.add_argument("--data-dir", default=None)
  p.add_argument("--max-images", type=int, default=None)
  p.add_argument("--seed", type=int, default=0, help="sampler seed")
  args = p.parse_args(argv)

  import jax  # pylint: disable=import-outside-toplevel

  from lliejax import cli, config_utils, metrics, runtime  # pylint: disable=import-outside-toplevel
  from lliejax.distill import quality, trajectory  # pylint: disable=import-outside-toplevel

  runtime.tune_host_allocator()
  runtime.setup_logging()
  root = os.path.abspath(args.workdir)
  tconfig = config_utils.load_config(args.teacher_config)
  sconfig = config_utils.load_config(args.student_config)
  for c in (tconfig, sconfig):
    if args.data_dir:
      c.data.data_dir = args.data_dir
  teacher_dir = os.path.join(root, "teacher")
  cli.train(tconfig, teacher_dir)
  teacher = os.path.join(teacher_dir, "export")
  students = trajectory.distill_stages(sconfig, teacher, os.path.join(root, args.distiller),
                                       final_steps=args.final_steps, train_fn=cli.train)

  protocol = dataclasses.replace(metrics.conventions.get("standard"), metrics=("psnr", "ssim", "lpips"))
  key = jax.random.key(args.seed)
  full = int(tconfig.sampling.steps)
  student_steps = [int(os.path.basename(os.path.dirname(s)).removesuffix("step")) for s in students]
  score = lambda src, steps, label: quality.score_steps(src, steps, tconfig.data, label=label, key=key,
                                                        convention=protocol, max_images=args.max_images,
                                                        keep_images=True)
  rows = score(teacher, [full] + student_steps, "teacher (DDIM)")
  for path, steps in zip(students, student_steps):
    rows += score(path, [steps], f"{args.distiller} student")
  with open(os.path.join(root, "steps.json"), "w") as f:
    json.dump(quality.strip_images(rows), f, indent=2)
  table = quality.steps_table(rows)
  with open(os.path.join(root, "steps.md"), "w") as f:
    f.write(table + "\n")
  quality.plot_quality_vs_steps(rows, os.path.join(root, "quality_vs_steps.png"),
                                title=f"{args.teacher_config} -> {args.distiller} students, demo test photos")
  ordered = [rows[0]] + [r for r in rows if r["label"] != rows[0]["label"]] + [r for r in rows[1:]
                                                                                if r["label"] == rows[0]["label"]]
  quality.steps_picture(ordered, os.path.join(root, "steps.png"))
  print(table)
  last, top = rows[-1], rows[0]
  gap, gain = top["psnr"] - last["psnr"], last["psnr"] - last["psnr_input"]
  print(f"\n{last['steps']}-step student: {gap:+.2f} dB below the {top['steps']}-step teacher (bar: <= 1 dB), "
        f"{gain:+.2f} dB over the input (bar: >= 6 dB): {'MET' if gap <= 1 and gain >= 6 else 'NOT MET'}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
