"""Benchmark: the spatial-entropy losses of lliejax.losses.entropy vs the official PyTorch code (and a dense JAX port).

Forward + backward (``jax.value_and_grad`` w.r.t. the prediction, jitted; the time excludes compilation; median of
``--repeats`` runs, with the median process CPU time beside it) and peak memory for each (B, C, H, W, L) case and
loss kind. Every (case, implementation, kind) runs in its own subprocess so that memory numbers are independent:

* ``peak RSS``: ``ru_maxrss`` of that subprocess (whole process: Python, the JAX runtime or PyTorch, inputs,
  compilation and execution); ``base RSS`` is the RSS after importing JAX and creating the inputs, before
  compiling, so ``peak - base`` is what the loss itself adds.
* ``XLA temp``: ``compiled.memory_analysis().temp_size_in_bytes``, the buffer XLA allocates for the computation.
* ``dev peak``: on a GPU, the device's peak allocation (JAX ``memory_stats()['peak_bytes_in_use']``, PyTorch
  ``max_memory_allocated()`` after a warm-up run), inputs included.
* ``load``: the 1-minute load average when the row finished (the development machine is shared: times measured
  under load are longer; the CPU time is less affected).

Inputs: ``pred ~ U(0, 1)``, ``target = clip(pred + 0.1 N(0, 1), 0, 1)`` and fresh N(0, 1) neighbour weights (the
official training path). Independent uniform pixels are the worst case for the banded evaluation of lliejax (every
neighbourhood spans the whole bin range, so no bin tile is skipped); ``--data photo`` uses 128x128 crops of the
scikit-image photos instead (target = the crop, prediction = the crop plus N(0, 0.03) noise).

``--official PATH`` (a local checkout of shermanlian/spatial-entropy-loss; needs torch) adds the official PyTorch
loss itself (``r_entropy_loss`` / ``hellinger_loss`` / ``c_entropy_loss`` of ``loss.py``, i.e. ``kde_utils.kde`` and
the divergence, with fresh N(0, 1) neighbour weights), forward + backward with autograd on all cores, with
``--official-repeats`` runs (default 1: it takes ~35 s at (2,3,128,128,32)). Cases whose estimated official memory
(about 100 bytes per element of the ``(B, L*L, C, H, W)`` density: 10.1 GB at (2,3,128,128,32)) exceeds
``--official-limit-gb`` are not run. ``--impls dense`` adds a dense JAX port of the official computation (it
materialises the ``(B, 2, L*L, C, H, W)`` kernel tensor; run only when its XLA temporary size is below
``--dense-limit-gb``). ``--nafnet`` adds the ratio of the lliejax loss at the paper's training setting
(8,3,128,128,32) to one train step of the low-light NAFNet (288M parameters, l1 loss, AdamW) at the same batch,
measured in a subprocess by ``benchmarks/train_step.py``.

The end of the output is a markdown table: per case, the lliejax time per kind, its peak RSS and XLA temporary
buffer, and the official time and peak RSS.

Usage::

  python benchmarks/entropy.py                                  # the four default cases, KL and Hellinger
  python benchmarks/entropy.py --kind hellinger --cases 2,3,128,128,32 8,3,128,128,32
  python benchmarks/entropy.py --official /tmp/official-sel --nafnet
  python benchmarks/entropy.py --official /tmp/official-sel --torch-device cuda --official-repeats 5   # on a GPU
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

DEFAULT_CASES = ["1,3,64,64,32", "2,3,128,128,16", "2,3,128,128,32", "8,3,128,128,32"]
# Official peak memory per element of the (B, L*L, C, H, W) density, measured: 10.1 GB at (2,3,128,128,32).
OFFICIAL_BYTES_PER_ELEMENT = 100


def _dense_loss(pred, target, key, *, kind, bins, h=0.5):
  """Dense port of the official r_entropy_loss / c_entropy_loss / hellinger_loss (NHWC inputs)."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  def kde(img, w):
    x = jnp.moveaxis(jnp.clip(img, 0, 1), -1, 1) * (bins - 1)  # NCHW
    b, c, hh, ww = x.shape
    k = jnp.ones((3, 3)).at[1, 1].set(0.0)
    if w is not None:
      k = w * k
    kern = jnp.broadcast_to(k, (c, 1, 3, 3))
    kern = kern / jnp.sum(kern)
    dn = ("NCHW", "OIHW", "NCHW")
    xn = jax.lax.conv_general_dilated(x, kern, (1, 1), ((1, 1), (1, 1)), dimension_numbers=dn, feature_group_count=c)
    xi = jnp.stack([x, xn], axis=1)  # (B, 2, C, H, W)
    xs = jnp.arange(bins, dtype=jnp.float32)
    g1, g2 = jnp.meshgrid(xs, xs, indexing="xy")
    grid = jnp.stack([g1.reshape(-1), g2.reshape(-1)])  # (2, n)
    v = (grid[None, :, :, None, None, None] - xi[:, :, None]) / h  # (B, 2, n, C, H, W)
    s = jax.nn.sigmoid(v)
    kk = s * (1 - s)
    k2 = (kk[:, 0] * kk[:, 1]).reshape(b, bins * bins * c, hh, ww)
    outs = []
    for win in (1, 3, 5):
      box = jnp.ones((bins * bins * c, 1, win, win)) / (0.5 * h * win * win)
      outs.append(jax.lax.conv_general_dilated(k2, box, (1, 1), ((win // 2, win // 2),) * 2, dimension_numbers=dn,
                                               feature_group_count=bins * bins * c))
    return jnp.concatenate(outs, axis=-1).reshape(b, bins * bins, c, hh, 3 * ww)

  w = None if kind == "cross" else jax.random.normal(key, (3, 3))
  q = kde(pred, w)
  p = kde(target, w)
  if kind == "kl":
    val = jnp.sum(p * (jnp.log(p + 1e-10) - jnp.log(q + 1e-10)), axis=1)
  elif kind == "cross":
    val = -jnp.sum(q * jnp.log(p), axis=1)
  else:
    val = 1 / np.sqrt(2) * jnp.sqrt(jnp.sum((jnp.sqrt(p) - jnp.sqrt(q)) ** 2, axis=1))
  return jnp.mean(jnp.mean(val, axis=(1, 2, 3)))


PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")


def _inputs(case: str, data: str):
  """``(pred, target)`` NHWC float32 numpy arrays for ``case`` = 'B,C,H,W,L' (see the module docstring)."""
  import numpy as np

  b, c, h, w, _ = (int(v) for v in case.split(","))
  rng = np.random.default_rng(0)
  if data == "random":
    pred = rng.random((b, h, w, c), dtype=np.float32)
    target = np.clip(pred + 0.1 * rng.standard_normal(pred.shape, dtype=np.float32), 0, 1)
    return pred, target.astype(np.float32)
  from skimage import data as skdata  # pylint: disable=import-outside-toplevel
  crops = []
  for i in range(b):
    img = getattr(skdata, PHOTOS[i % len(PHOTOS)])()[..., :c].astype(np.float32) / 255.0
    y, x = rng.integers(0, img.shape[0] - h + 1), rng.integers(0, img.shape[1] - w + 1)
    crops.append(img[y:y + h, x:x + w])
  target = np.stack(crops)
  pred = np.clip(target + 0.03 * rng.standard_normal(target.shape, dtype=np.float32), 0, 1)
  return pred.astype(np.float32), target


def _timed_runs(run, repeats: int) -> tuple[float, float]:
  """Medians of the wall and process-CPU seconds of ``run()`` over ``repeats`` calls."""
  import statistics
  import time

  wall, cpu = [], []
  for _ in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    run()
    wall.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  return statistics.median(wall), statistics.median(cpu)


def _official_worker(case: str, kind: str, repeats: int, official: str, data: str, device: str = "cpu") -> dict:
  """The official PyTorch loss, forward + backward (autograd) w.r.t. the prediction, on ``device`` (``cpu`` or
  ``cuda``)."""
  import resource

  from lliejax.interop import crosscheck

  torch = crosscheck.setup_torch()
  torch.use_deterministic_algorithms(False)
  cuda = device == "cuda"
  if cuda:
    torch.set_default_device("cuda")  # the official code creates its bin grids and weights without a device
  off = crosscheck.import_official(crosscheck.find_official_files(official))
  loss_mod = off.loss
  if loss_mod is None:
    raise SystemExit(f"{official}: no official loss.py found")
  bins = int(case.split(",")[-1])
  pred, target = (torch.from_numpy(a.transpose(0, 3, 1, 2).copy()).to(device) for a in _inputs(case, data))
  fn = {"kl": loss_mod.r_entropy_loss, "cross": loss_mod.c_entropy_loss, "hellinger": loss_mod.hellinger_loss}[kind]
  base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  last = {}

  def run():
    p = pred.clone().requires_grad_(True)
    with crosscheck._official_sqrt_of_int(off.kde_utils):  # pylint: disable=protected-access
      val = fn(p, target, bins)  # official torch.sqrt(2) TypeError patched, as in lliejax crosscheck
    val.backward()
    last["val"] = float(val)  # synchronises the device

  if cuda:
    run()  # warm-up (CUDA context, kernels)
    torch.cuda.reset_peak_memory_stats()
  wall, cpu = _timed_runs(run, repeats)
  return {"impl": "official", "case": case, "kind": kind, "temp_mib": float("nan"), "base_rss_mib": base,
          "time_s": wall, "cpu_s": cpu, "value": last["val"], "load": os.getloadavg()[0],
          "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
          "device": torch.cuda.get_device_name() if cuda else "cpu",
          "device_peak_mib": torch.cuda.max_memory_allocated() / 2**20 if cuda else float("nan")}


def _worker(impl: str, case: str, kind: str, repeats: int, dense_limit_gb: float, data: str,
            tile_values: int | None = None) -> dict:
  import resource

  if impl == "lliejax":
    from lliejax import runtime
    runtime.tune_host_allocator()  # as the lliejax programs do, before any JAX computation

  import jax
  import jax.numpy as jnp

  bins = int(case.split(",")[-1])
  pred, target = (jnp.asarray(a) for a in _inputs(case, data))
  key = jax.random.PRNGKey(0)
  jax.block_until_ready((pred, target))
  base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  if impl == "lliejax":
    from lliejax.losses import entropy
    if tile_values:
      # read when the loss is traced; on the CPU and on accelerators alike
      entropy._BLOCK_VALUES = entropy._ACCELERATOR_BLOCK_VALUES = tile_values  # pylint: disable=protected-access
    loss = lambda p, t, k: entropy.spatial_entropy_loss(p, t, key=k, kind=kind, bins=bins)
  else:
    loss = lambda p, t, k: _dense_loss(p, t, k, kind=kind, bins=bins)
  fn = jax.jit(jax.value_and_grad(loss))
  compiled = fn.lower(pred, target, key).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes / 2**20
  out = {"impl": impl, "case": case, "kind": kind, "temp_mib": temp, "base_rss_mib": base}
  if temp > dense_limit_gb * 1024:
    out["skipped"] = f"XLA temp {temp / 1024:.1f} GiB > --dense-limit-gb"
    return out
  jax.block_until_ready(compiled(pred, target, key))
  last = {}

  def run():
    last["val"], _ = compiled(pred, target, key)
    jax.block_until_ready(last["val"])

  wall, cpu = _timed_runs(run, repeats)
  dev = jax.devices()[0]
  stats = (dev.memory_stats() or {}) if dev.platform != "cpu" else {}
  out.update(time_s=wall, cpu_s=cpu, value=float(last["val"]), load=os.getloadavg()[0],
             peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
             device=dev.device_kind if dev.platform != "cpu" else "cpu",
             device_peak_mib=stats.get("peak_bytes_in_use", float("nan")) / 2**20)
  return out


def _official_estimate_gb(case: str) -> float:
  b, c, h, w, bins = (int(v) for v in case.split(","))
  return OFFICIAL_BYTES_PER_ELEMENT * b * bins * bins * c * h * w / 1e9


def _nafnet_step_s(env) -> tuple[float | None, str]:
  """Median train-step seconds of the low-light NAFNet at batch 8, 128^2 (benchmarks/train_step.py), or None."""
  script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_step.py")
  proc = subprocess.run([sys.executable, script, "--cases", "lowlight-128-b8", "--iters", "2"], capture_output=True,
                        text=True, env=env)
  for line in proc.stdout.splitlines():
    if line.startswith("lowlight-128-b8"):
      return float(line.split()[5]) / 1000, ""
  return None, ((proc.stderr.strip().splitlines() or ["?"])[-1])[:80]


def _fmt(v, spec, unit=""):
  width = "".join(ch for ch in spec.split(".")[0] if ch.isdigit())
  return f"{'–':>{width or 1}}" if v is None or v != v else f"{v:{spec}}{unit}"  # v != v: NaN


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--kind", "--kinds", nargs="+", default=["kl", "hellinger"], choices=["kl", "cross", "hellinger"],
                  dest="kinds", help="loss kinds to time (default: kl hellinger)")
  ap.add_argument("--cases", nargs="+", default=DEFAULT_CASES, help="B,C,H,W,L tuples")
  ap.add_argument("--impls", nargs="+", default=["lliejax"], choices=["lliejax", "dense", "official"],
                  help="implementations (official is added by --official)")
  ap.add_argument("--data", default="random", choices=["random", "photo"])
  ap.add_argument("--official", default=None, help="checkout of the official repository (adds --impls official)")
  ap.add_argument("--official-repeats", type=int, default=1)
  ap.add_argument("--official-limit-gb", type=float, default=14.0,
                  help="skip official cases whose estimated memory exceeds this (machine has 24 GiB)")
  ap.add_argument("--nafnet", action="store_true",
                  help="also time the low-light NAFNet train step at batch 8 (128^2) and print the loss/step ratio")
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--dense-limit-gb", type=float, default=16.0,
                  help="skip a dense run whose XLA temporary buffer exceeds this (machine has 24 GiB)")
  ap.add_argument("--tile-values", type=int, default=None,
                  help="lliejax: values per bin tile (default: the library's, entropy._tile_values())")
  ap.add_argument("--torch-device", default="cpu", choices=["cpu", "cuda"], help="device of the official code")
  ap.add_argument("--worker", nargs=2, metavar=("IMPL", "CASE"), help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.worker:
    impl, case = args.worker
    if impl == "official":
      print(json.dumps(_official_worker(case, args.kinds[0], args.official_repeats, args.official, args.data,
                                        args.torch_device)))
    else:
      print(json.dumps(_worker(impl, case, args.kinds[0], args.repeats, args.dense_limit_gb, args.data,
                               args.tile_values)))
    return
  impls = list(dict.fromkeys(args.impls + (["official"] if args.official else [])))
  if "official" in impls and not args.official:
    ap.error("--impls official needs --official PATH (a checkout of the official repository)")

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
  print(f"data={args.data}  time = median of {args.repeats} forward+backward runs after compilation "
        f"(official: {args.official_repeats}), cpu = median process CPU seconds; peak RSS = ru_maxrss of a fresh "
        "subprocess per row; XLA temp = memory_analysis().temp_size_in_bytes; load = 1-min load average")
  header = (f"{'B,C,H,W,L':>15} {'impl':>8} {'kind':>9} {'time [s]':>9} {'cpu [s]':>8} {'peak RSS':>9} "
            f"{'base RSS':>9} {'XLA temp':>9} {'dev peak':>9} {'loss':>11} {'load':>5}  device")
  print(header + "\n" + "-" * len(header))
  res = {}
  for case in args.cases:
    for impl in impls:
      for kind in args.kinds:
        if impl == "official" and _official_estimate_gb(case) > args.official_limit_gb:
          print(f"{case:>15} {impl:>8} {kind:>9}   not run: ~{_official_estimate_gb(case):.0f} GB estimated "
                f"> --official-limit-gb", flush=True)
          res[(case, impl, kind)] = {"skipped": f"~{_official_estimate_gb(case):.0f} GB"}
          continue
        cmd = [sys.executable, os.path.abspath(__file__), "--kind", kind, "--repeats", str(args.repeats),
               "--dense-limit-gb", str(args.dense_limit_gb), "--official-repeats", str(args.official_repeats),
               "--data", args.data, "--torch-device", args.torch_device, "--worker", impl, case]
        cmd += (["--official", args.official] if args.official else [])
        cmd += (["--tile-values", str(args.tile_values)] if args.tile_values else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        try:
          r = json.loads(proc.stdout.strip().splitlines()[-1])
        except (IndexError, json.JSONDecodeError):
          tail = (proc.stderr.strip().splitlines() or ["?"])[-1][:60]
          print(f"{case:>15} {impl:>8} {kind:>9} failed ({tail})", flush=True)
          continue
        res[(case, impl, kind)] = r
        if r.get("skipped"):
          print(f"{case:>15} {impl:>8} {kind:>9}   skipped ({r['skipped']})", flush=True)
          continue
        print(f"{case:>15} {impl:>8} {kind:>9} {r['time_s']:9.3f} {r['cpu_s']:8.2f} {r['peak_rss_mib']:9.0f} "
              f"{r['base_rss_mib']:9.0f} {_fmt(r['temp_mib'], '9.0f')} {_fmt(r.get('device_peak_mib'), '9.0f')} "
              f"{r['value']:11.6g} {r['load']:5.2f}  {r.get('device', 'cpu')}", flush=True)
  step_s = None
  if args.nafnet:
    step_s, why = _nafnet_step_s(env)
    print(f"low-light NAFNet train step, batch 8, 128^2: {step_s:.2f} s (load {os.getloadavg()[0]:.2f})"
          if step_s else f"NAFNet step: failed ({why})")
  # Summary (markdown).
  got = lambda case, impl, kind: res.get((case, impl, kind), {})
  kinds = args.kinds
  cols = [f"lliejax {k}" for k in kinds] + ["lliejax peak RSS (base)", "XLA temp"]
  if "official" in impls:
    cols += [f"official {k}" for k in kinds] + ["official peak RSS"]
  print("\n| B, C, H, W, L | " + " | ".join(cols) + " |\n|" + "---|" * (len(cols) + 1))
  for case in args.cases:
    cells = []
    for k in kinds:
      r = got(case, "lliejax", k)
      cells.append(f"{r['time_s']:.3f} s (load {r['load']:.1f})" if "time_s" in r else "–")
    r = max((got(case, "lliejax", k) for k in kinds if "peak_rss_mib" in got(case, "lliejax", k)),
            key=lambda r: r["peak_rss_mib"], default={})
    cells.append(f"{r['peak_rss_mib']:.0f} MiB ({r['base_rss_mib']:.0f})" if r else "–")
    cells.append(f"{max(got(case, 'lliejax', k).get('temp_mib', 0) for k in kinds):.0f} MiB" if r else "–")
    if "official" in impls:
      for k in kinds:
        r = got(case, "official", k)
        cells.append(f"{r['time_s']:.1f} s (load {r['load']:.1f})" if "time_s" in r else
                     f"not run ({r['skipped']})" if r.get("skipped") else "–")
      r = max((got(case, "official", k) for k in kinds if "peak_rss_mib" in got(case, "official", k)),
              key=lambda r: r["peak_rss_mib"], default={})
      cells.append(f"{r['peak_rss_mib'] / 1024:.1f} GiB" if r else "–")
    print(f"| {case.replace(',', ', ')} | " + " | ".join(cells) + " |")
  for case in args.cases:
    for k in kinds:
      a, o = got(case, "lliejax", k), got(case, "official", k)
      if "time_s" in a and "time_s" in o:
        print(f"{case} {k}: official / lliejax = {o['time_s'] / a['time_s']:.0f}x")
  if step_s:
    for k in kinds:
      r = got("8,3,128,128,32", "lliejax", k)
      if "time_s" in r:
        print(f"entropy loss {k} (8,3,128,128,32) / NAFNet train step = {r['time_s'] / step_s:.3f}")


if __name__ == "__main__":
  main()
