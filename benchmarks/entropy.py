"""Benchmark: chunked spatial-entropy loss (lliejax.losses.entropy) vs a dense JAX port of the official computation.

Forward + backward (``jax.value_and_grad`` w.r.t. the prediction, jitted; the time excludes compilation; median of
``--repeats`` runs) and peak memory for each (B, C, H, W, L) case. Every (case, implementation) runs in its own
subprocess so that memory numbers are independent:

* ``peak RSS``: ``ru_maxrss`` of that subprocess (whole process: JAX runtime, inputs, compilation and execution);
  ``base RSS`` is the RSS after importing JAX and creating the inputs, before compiling.
* ``XLA temp``: ``compiled.memory_analysis().temp_size_in_bytes``, the buffer XLA allocates for the computation.

The dense version materialises the ``(B, 2, L*L, C, H, W)`` kernel tensor, its product and three depthwise box
convolutions concatenated along the width, like ``kde_utils.py``. It is compiled first and only run when its XLA
temporary size is below ``--dense-limit-gb`` (otherwise reported as ``OOM/skipped``).

``--official PATH`` (a local checkout of shermanlian/spatial-entropy-loss; needs torch) adds the official PyTorch
loss itself (``r_entropy_loss`` / ``hellinger_loss`` / ``c_entropy_loss`` of ``loss.py``, i.e. ``kde_utils.kde`` and
the divergence, with fresh N(0, 1) neighbour weights), forward + backward with autograd on all cores, with
``--official-repeats`` runs (default 1: it takes ~35 s at (2,3,128,128,32)). ``--nafnet`` adds the ratio of the
lliejax loss at the paper's training setting (8,3,128,128,32) to one train step of the low-light NAFNet
(288M parameters, l1 loss, AdamW) at the same batch, measured in a subprocess by ``benchmarks/train_step.py``.

Usage::

  python benchmarks/entropy.py                                  # all default cases, kind=kl
  python benchmarks/entropy.py --kind hellinger --cases 2,3,128,128,32 8,3,128,128,32
  python benchmarks/entropy.py --impls lliejax official --official /tmp/official-sel --nafnet
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

DEFAULT_CASES = ["1,3,64,64,8", "1,3,64,64,32", "2,3,128,128,16", "2,3,128,128,32", "8,3,128,128,32"]


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


def _official_worker(case: str, kind: str, repeats: int, official: str) -> dict:
  """The official PyTorch loss, forward + backward (autograd) w.r.t. the prediction."""
  import resource
  import statistics

  from _runner import timed
  from lliejax.interop import crosscheck

  torch = crosscheck.setup_torch()
  torch.use_deterministic_algorithms(False)
  off = crosscheck.import_official(crosscheck.find_official_files(official))
  loss_mod = off.loss
  if loss_mod is None:
    raise SystemExit(f"{official}: no official loss.py found")
  b, c, h, w, bins = (int(v) for v in case.split(","))
  g = torch.Generator().manual_seed(0)
  pred = torch.rand(b, c, h, w, generator=g)
  target = (pred + 0.1 * torch.randn(b, c, h, w, generator=g)).clamp(0, 1)
  fn = {"kl": loss_mod.r_entropy_loss, "cross": loss_mod.c_entropy_loss, "hellinger": loss_mod.hellinger_loss}[kind]
  base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  last = {}

  def run(_):
    p = pred.clone().requires_grad_(True)
    with crosscheck._official_sqrt_of_int(off.kde_utils):  # pylint: disable=protected-access
      val = fn(p, target, bins)  # official torch.sqrt(2) TypeError patched, as in lliejax crosscheck
    val.backward()
    last["val"] = float(val)

  times = timed(run, repeats)
  return {"impl": "official", "case": case, "temp_mib": float("nan"), "base_rss_mib": base,
          "time_s": statistics.median(times), "value": last["val"],
          "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _worker(impl: str, case: str, kind: str, repeats: int, dense_limit_gb: float) -> dict:
  import resource
  from _runner import timed

  if impl == "lliejax":
    from lliejax import runtime
    runtime.tune_host_allocator()  # as the lliejax programs do, before any JAX computation

  import jax
  import jax.numpy as jnp
  import numpy as np

  b, c, h, w, bins = (int(v) for v in case.split(","))
  k1, k2, key = jax.random.split(jax.random.PRNGKey(0), 3)
  pred = jax.random.uniform(k1, (b, h, w, c))
  target = jnp.clip(pred + 0.1 * jax.random.normal(k2, pred.shape), 0, 1)
  jax.block_until_ready((pred, target))
  base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
  if impl == "lliejax":
    from lliejax.losses.entropy import spatial_entropy_loss
    loss = lambda p, t, k: spatial_entropy_loss(p, t, key=k, kind=kind, bins=bins)
  else:
    loss = lambda p, t, k: _dense_loss(p, t, k, kind=kind, bins=bins)
  fn = jax.jit(jax.value_and_grad(loss))
  compiled = fn.lower(pred, target, key).compile()
  temp = compiled.memory_analysis().temp_size_in_bytes / 2**20
  out = {"impl": impl, "case": case, "temp_mib": temp, "base_rss_mib": base}
  if temp > dense_limit_gb * 1024:
    out["skipped"] = True
    return out
  jax.block_until_ready(compiled(pred, target, key))
  last = {}

  def run(_):
    last["val"], _ = compiled(pred, target, key)
    jax.block_until_ready(last["val"])

  times = timed(run, repeats)
  val = last["val"]
  out.update(time_s=float(np.median(times)), value=float(val),
             peak_rss_mib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
  return out


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--kind", default="kl", choices=["kl", "cross", "hellinger"])
  ap.add_argument("--cases", nargs="+", default=DEFAULT_CASES, help="B,C,H,W,L tuples")
  ap.add_argument("--impls", nargs="+", default=["lliejax", "dense"], choices=["lliejax", "dense", "official"])
  ap.add_argument("--official", default=None, help="checkout of the official repository (for --impls official)")
  ap.add_argument("--official-repeats", type=int, default=1)
  ap.add_argument("--nafnet", action="store_true",
                  help="also time the low-light NAFNet train step at batch 8 (128^2) and print the loss/step ratio")
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--dense-limit-gb", type=float, default=16.0,
                  help="skip a run whose XLA temporary buffer exceeds this (machine has 24 GiB)")
  ap.add_argument("--worker", nargs=2, metavar=("IMPL", "CASE"), help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.worker:
    if args.worker[0] == "official":
      print(json.dumps(_official_worker(args.worker[1], args.kind, args.official_repeats, args.official)))
    else:
      print(json.dumps(_worker(args.worker[0], args.worker[1], args.kind, args.repeats, args.dense_limit_gb)))
    return
  if "official" in args.impls and not args.official:
    ap.error("--impls official needs --official PATH (a checkout of the official repository)")

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  env = dict(os.environ, PYTHONPATH=root + os.pathsep + os.environ.get("PYTHONPATH", ""))
  print(f"kind={args.kind}  time = median of {args.repeats} forward+backward runs after compilation; "
        "peak RSS = ru_maxrss of a fresh subprocess per row; XLA temp = memory_analysis().temp_size_in_bytes")
  header = f"{'B,C,H,W,L':>16} {'impl':>8} {'time [s]':>9} {'peak RSS [MiB]':>15} {'base RSS':>9} " \
           f"{'XLA temp [MiB]':>15} {'loss':>12}"
  print(header)
  print("-" * len(header))
  times = {}
  for case in args.cases:
    for impl in args.impls:
      cmd = [sys.executable, os.path.abspath(__file__), "--kind", args.kind, "--repeats", str(args.repeats),
             "--dense-limit-gb", str(args.dense_limit_gb), "--official-repeats", str(args.official_repeats),
             "--worker", impl, case] + (["--official", args.official] if args.official else [])
      proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
      try:
        r = json.loads(proc.stdout.strip().splitlines()[-1])
      except (IndexError, json.JSONDecodeError):
        tail = (proc.stderr.strip().splitlines() or ["?"])[-1][:60]
        print(f"{case:>16} {impl:>8} {'OOM/failed':>9}  ({tail})", flush=True)
        continue
      if r.get("skipped"):
        print(f"{case:>16} {impl:>8} {'OOM/skipped':>11} {'':>13} {r['base_rss_mib']:9.0f} {r['temp_mib']:15.0f}",
              flush=True)
        continue
      print(f"{case:>16} {impl:>8} {r['time_s']:9.3f} {r['peak_rss_mib']:15.0f} {r['base_rss_mib']:9.0f} "
            f"{r['temp_mib']:15.0f} {r['value']:12.6g}", flush=True)
      times[(case, impl)] = r["time_s"]
  for case in args.cases:
    if (case, "lliejax") in times and (case, "official") in times:
      print(f"{case:>16} official / lliejax = {times[(case, 'official')] / times[(case, 'lliejax')]:.0f}x")
  if args.nafnet:
    proc = subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "train_step.py"),
                           "--cases", "lowlight-128-b8", "--iters", "2"], capture_output=True, text=True, env=env)
    step_ms = None
    for line in proc.stdout.splitlines():
      if line.startswith("lowlight-128-b8"):
        step_ms = float(line.split()[5])
    if step_ms is None:
      print("NAFNet step: failed (" + ((proc.stderr.strip().splitlines() or ["?"])[-1])[:80] + ")")
    else:
      print(f"low-light NAFNet train step, batch 8, 128^2: {step_ms / 1000:.2f} s")
      ent = times.get(("8,3,128,128,32", "lliejax"))
      if ent:
        print(f"entropy loss (8,3,128,128,32) / NAFNet step = {ent / (step_ms / 1000):.3f}")


if __name__ == "__main__":
  main()
