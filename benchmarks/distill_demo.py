"""Distillation on the demo set: a teacher, its students, quality against network calls and time.

``python benchmarks/distill_demo.py [--workdir distill_demo] [--teacher-config reddit_teacher:demo]
[--distillers trajectory,consistency,sampler] [--final-steps 2] [--student-config SPEC] [--data-dir DIR]``

1. trains the teacher config in ``WORKDIR/teacher`` (resuming; ``lliejax train``);
2. distils it with each distiller (``lliejax distill``, :func:`lliejax.distill.run`; the student config defaults
   to :func:`lliejax.distill.default_config`) in ``WORKDIR/<distiller>/<S>step``: trajectory distillation stage by
   stage (16 -> 8 -> 4 -> 2 for ReDDiT's demo teacher, each student the next stage's teacher), consistency
   and sampler distillation in one run each;
3. scores on the demo test photos, under one protocol (``standard`` without DISTS/NIQE: PSNR, SSIM, LPIPS-Alex; no
   GT-mean adjustment), the teacher at its full step count and at every smaller student step count its sampler
   allows (plain DDIM with a larger stride: what distillation must beat; for Entropy-SDE its ``strided`` posterior
   sampler), every trajectory student at its own step count, the consistency student at ``--consistency-steps``
   and the sampler student at ``--sampler-steps``, with the wall time per image on this machine
   (:mod:`lliejax.distill.quality`);
4. writes ``WORKDIR/steps.md`` / ``steps.json`` (the table), ``WORKDIR/quality_vs_steps.png`` (PSNR and LPIPS
   against network calls and seconds per image) and ``WORKDIR/steps.png`` (the first test photo at every row).

The bar of the distillation issues is checked and printed for each ``--final-steps`` student: within 1 dB PSNR of
the full-step teacher and at least 6 dB over the unenhanced input. ReDDiT's demo: about 15 minutes for the teacher
and 20 per 500-iteration stage on a loaded 2-core CPU.
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
  p.add_argument("--student-config", default=None,
                 help="the student config of every distiller (default: lliejax.distill.default_config)")
  p.add_argument("--distillers", default="trajectory",
                 help="comma list of trajectory, consistency, sampler (each distils the same teacher)")
  p.add_argument("--consistency-steps", default="1,2,4",
                 help="step counts a consistency student is scored at (it samples with any count)")
  p.add_argument("--sampler-steps", default="1,2,4,8",
                 help="step counts a sampler student is scored at (it samples with any count)")
  p.add_argument("--final-steps", type=int, default=2)
  p.add_argument("--data-dir", default=None)
  p.add_argument("--max-images", type=int, default=None)
  p.add_argument("--seed", type=int, default=0, help="sampler seed")
  args = p.parse_args(argv)

  import jax  # pylint: disable=import-outside-toplevel

  from lliejax import cli, config_utils, methods, metrics, runtime  # pylint: disable=import-outside-toplevel
  from lliejax import distill  # pylint: disable=import-outside-toplevel
  from lliejax.distill import quality  # pylint: disable=import-outside-toplevel

  runtime.tune_host_allocator()
  runtime.setup_logging()
  root = os.path.abspath(args.workdir)
  tconfig = config_utils.load_config(args.teacher_config)
  if args.data_dir:
    tconfig.data.data_dir = args.data_dir
  teacher_dir = os.path.join(root, "teacher")
  cli.train(tconfig, teacher_dir)
  teacher = os.path.join(teacher_dir, "export")
  students = []  # (distiller, export, the step counts it is scored at)
  for name in [d.strip() for d in args.distillers.split(",") if d.strip()]:
    sconfig = config_utils.load_config(args.student_config or distill.default_config(teacher, name))
    if args.data_dir:
      sconfig.data.data_dir = args.data_dir
    exports = distill.run(sconfig, teacher, os.path.join(root, name), distiller=name, steps=args.final_steps,
                          train_fn=cli.train)
    if name in ("consistency", "sampler"):
      counts = args.consistency_steps if name == "consistency" else args.sampler_steps
      students.append((name, exports[-1], [int(k) for k in counts.split(",")]))
    else:
      students += [(name, e, [int(os.path.basename(os.path.dirname(e)).removesuffix("step"))]) for e in exports]

  protocol = dataclasses.replace(metrics.conventions.get("standard"), metrics=("psnr", "ssim", "lpips"))
  key = jax.random.key(args.seed)
  # the teacher's own step count: its DDIM steps (ReDDiT), or all T steps of the SDE samplers (Entropy-SDE)
  sampling = tconfig.get("sampling") or {}
  full = int(sampling["steps"] if "steps" in sampling else tconfig.sde.T)
  score = lambda src, steps, label, sampler=None: quality.score_steps(
      src, steps, tconfig.data, label=label, key=key, convention=protocol, sampler=sampler,
      max_images=args.max_images, keep_images=True)
  fewer = sorted({k for _, _, ks in students for k in ks if k < full}, reverse=True)
  rows = score(teacher, [full], "teacher")
  for k in fewer:
    try:
      rows += score(teacher, [k], "teacher")
    except ValueError as e:  # a sampler without that step count (the SDE samplers of Entropy-SDE)
      if "strided" in methods.get(tconfig.method).samplers:  # Entropy-SDE's few-step posterior sampler
        rows += score(teacher, [k], "teacher, strided", "strided")
      else:
        print(f"teacher at {k} steps: skipped ({e})")
  for name, path, steps in students:
    rows += score(path, steps, f"{name} student")
  with open(os.path.join(root, "steps.json"), "w") as f:
    json.dump(quality.strip_images(rows), f, indent=2)
  table = quality.steps_table(rows)
  with open(os.path.join(root, "steps.md"), "w") as f:
    f.write(table + "\n")
  quality.plot_quality_vs_steps(rows, os.path.join(root, "quality_vs_steps.png"),
                                title=f"{args.teacher_config} and its students, demo test photos")
  ordered = [rows[0]] + [r for r in rows if r["label"] != rows[0]["label"]] + [r for r in rows[1:]
                                                                                if r["label"] == rows[0]["label"]]
  quality.steps_picture(ordered, os.path.join(root, "steps.png"))
  print(table)
  top = rows[0]
  for r in rows[1:]:
    if r["label"] == top["label"] or r["steps"] != args.final_steps:
      continue
    gap, gain = top["psnr"] - r["psnr"], r["psnr"] - r["psnr_input"]
    print(f"{r['label']}, {r['steps']} steps: {gap:+.2f} dB below the {top['steps']}-step teacher (bar: <= 1 dB), "
          f"{gain:+.2f} dB over the input (bar: >= 6 dB): {'MET' if gap <= 1 and gain >= 6 else 'NOT MET'}")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
