"""Sampler latency: the full reverse process (T = 100 network evaluations in one ``lax.scan``) per image.

Through :meth:`lliejax.inference.Enhancer.enhance`, the path of ``lliejax enhance`` and ``lliejax eval``.

``python benchmarks/sampler.py [--cases small-128,lowlight-128] [--mode posterior] [--iters 3]``

Cases: the small NAFNet (width 16, enc [1,1,1,2]) and the low-light NAFNet (288M parameters) at 128x128, and
the small one at the LOL resolution 400x600, batch 1. Each case runs in a subprocess (peak memory is that
process's ``ru_maxrss`` on CPU, ``peak_bytes_in_use`` on GPU). Times are medians after compilation.
"""
from __future__ import annotations

import argparse
import json

from _runner import peak_memory_bytes, run_cases, timed

CASES = {
    "small-128": dict(width=16, enc=[1, 1, 1, 2], middle=1, dec=[1, 1, 1, 1], h=128, w=128),
    "small-400x600": dict(width=16, enc=[1, 1, 1, 2], middle=1, dec=[1, 1, 1, 1], h=400, w=600),
    "lowlight-128": dict(width=64, enc=[1, 1, 1, 1, 28], middle=1, dec=[1, 1, 1, 1, 1], h=128, w=128),
}


def run_case(name: str, mode: str, iters: int) -> dict:
  import statistics

  import jax

  import numpy as np

  from lliejax import inference, methods, runtime
  from lliejax.configs.entropy_sde import get_config

  runtime.tune_host_allocator()  # as the lliejax programs do
  c = CASES[name]
  config = get_config("lolv1_l1")
  config.model.width, config.model.enc_blk_nums = c["width"], c["enc"]
  config.model.middle_blk_num, config.model.dec_blk_nums = c["middle"], c["dec"]
  method = methods.build(config)
  sde = method.sde
  enhancer = inference.Enhancer(method=method, params=method.init_params(jax.random.key(0)), frozen={},
                                source="benchmark", info={})
  lq = np.asarray(jax.random.uniform(jax.random.key(1), (c["h"], c["w"], 3)) * 0.2)
  (compile_s,) = timed(lambda _: enhancer.enhance(lq, jax.random.key(2), sampler=mode), 1)
  times = timed(lambda i: enhancer.enhance(lq, jax.random.key(3 + i), sampler=mode), iters)
  dev = jax.devices()[0]
  peak = peak_memory_bytes()
  med = statistics.median(times)
  return {"case": name, "mode": mode, "steps": sde.T, "compile_s": compile_s, "s_per_image": med,
          "ms_per_step": 1000 * med / sde.T, "peak_gib": peak / 2**30, "device": dev.platform}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ", ".join(CASES))
  p.add_argument("--mode", default="posterior", choices=("posterior", "sde", "ode"))
  p.add_argument("--iters", type=int, default=3)
  p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
  args = p.parse_args()
  if args._child:
    print(json.dumps(run_case(args._child, args.mode, args.iters)))
    return
  rows = run_cases(__file__, args.cases.split(","), ["--mode", args.mode, "--iters", str(args.iters)])
  print(f"{'case':15s} {'mode':9s} {'steps':>5s} {'compile s':>9s} {'s/image':>8s} {'ms/step':>8s} "
        f"{'peak GiB':>8s} device")
  for r in rows:
    print(f"{r['case']:15s} {r['mode']:9s} {r['steps']:5d} {r['compile_s']:9.1f} {r['s_per_image']:8.2f} "
          f"{r['ms_per_step']:8.1f} {r['peak_gib']:8.2f} {r['device']}")


if __name__ == "__main__":
  main()
