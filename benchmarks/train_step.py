"""Train-step speed and memory of the Refusion/Entropy-SDE trainer (``python benchmarks/train_step.py``).

Cases (issue 2): the small NAFNet (width 16, enc [1,1,1,2], middle 1, dec [1,1,1,1]) at batch 8 on 64x64 and
128x128, and the low-light NAFNet (width 64, enc [1,1,1,1,28], 288M parameters) at batch 2 on 128x128, l1 loss.
Each case runs in its own subprocess so that the peak memory column (``ru_maxrss`` of that process on CPU,
``peak_bytes_in_use`` on GPU) belongs to it alone. Times are medians over ``--iters`` steps after compilation.
Also reports one forward pass of the network. ``--official PATH`` (a local checkout of the official repository;
needs ``pip install -e ".[torch]"``) adds the official PyTorch ``ConditionalNAFNet`` at the same sizes: a training
step (forward, l1 loss, backward, AdamW step) and a forward pass, in a subprocess of their own, so both columns are
measured on the same machine under the same conditions. Without it the table shows the official numbers measured
on the 2-core development machine (small 64x64 119 ms/step, 128x128 418 ms/step, low-light 2.19 s/step and
454 ms per forward).

lliejax tunes the host allocator first, as its programs do (:func:`lliejax.runtime.tune_host_allocator`). The
official network runs as shipped, with glibc's default allocator (its child process sets ``LLIEJAX_TUNE_MALLOC=0``).
``--torch-tuned-malloc`` adds a column with the official network under the same allocator settings as lliejax.
``--untuned`` adds a column with lliejax under glibc's defaults.
"""
from __future__ import annotations

import argparse
import json

from _runner import peak_memory_bytes, run_cases, timed

CASES = {
    "small-64": dict(width=16, enc=[1, 1, 1, 2], middle=1, dec=[1, 1, 1, 1], batch=8, size=64),
    "small-128": dict(width=16, enc=[1, 1, 1, 2], middle=1, dec=[1, 1, 1, 1], batch=8, size=128),
    "lowlight-128": dict(width=64, enc=[1, 1, 1, 1, 28], middle=1, dec=[1, 1, 1, 1, 1], batch=2, size=128),
    # The paper's training batch (8 x 128^2), for the entropy-loss / train-step ratio of benchmarks/entropy.py.
    "lowlight-128-b8": dict(width=64, enc=[1, 1, 1, 1, 28], middle=1, dec=[1, 1, 1, 1, 1], batch=8, size=128),
}
TORCH_REFERENCE_MS = {"small-64": (119, None), "small-128": (418, None), "lowlight-128": (2190, 454),
                      "lowlight-128-b8": (None, None)}


def run_case(name: str, iters: int, loss: str) -> dict:
  import statistics

  import jax
  import jax.numpy as jnp
  import numpy as np

  from lliejax import methods, optim, parallel, runtime, state as state_lib, train
  from lliejax.configs.entropy_sde import get_config

  runtime.tune_host_allocator()  # as the lliejax programs do (LLIEJAX_TUNE_MALLOC=0: glibc's defaults)
  c = CASES[name]
  config = get_config("lolv1_l1")
  config.model.width, config.model.enc_blk_nums = c["width"], c["enc"]
  config.model.middle_blk_num, config.model.dec_blk_nums = c["middle"], c["dec"]
  config.batch_size = c["batch"]
  config.loss.name = loss
  mesh = parallel.make_mesh()
  method, tx = methods.build(config), optim.make_optimizer(config)
  state = jax.jit(lambda k: state_lib.create(method, tx, k), out_shardings=parallel.replicated(mesh))(jax.random.key(0))
  jitted = train.jit_train_step(train.make_train_step(method, tx, lr_schedule=optim.learning_rate_schedule(config)),
                                mesh)
  step = lambda st, batch, key: jitted(st, {}, batch, key)
  rng = np.random.default_rng(0)
  gt = rng.random((c["batch"], c["size"], c["size"], 3), np.float32)
  batch = parallel.global_batch({"gt": gt, "lq": gt * 0.2}, mesh)
  key = jax.random.key(1)
  out = {}

  def run_step(_):
    out["state"], out["metrics"] = step(out.get("state", state), batch, key)
    jax.block_until_ready(out["metrics"])

  (compile_s,) = timed(run_step, 1)
  times = timed(run_step, iters)
  state, m = out["state"], out["metrics"]
  fwd = jax.jit(lambda p, x: method.model.apply({"params": p}, x, x * 0.2, jnp.full((x.shape[0],), 50)))
  x = jnp.asarray(gt)
  jax.block_until_ready(fwd(state.params, x))
  ftimes = timed(lambda _: jax.block_until_ready(fwd(state.params, x)), max(2, iters // 2))
  dev = jax.devices()[0]
  peak = peak_memory_bytes()
  med = statistics.median(times)
  return {"case": name, "params": methods.count_params(state.params), "batch": c["batch"], "size": c["size"],
          "compile_s": compile_s, "step_ms": 1000 * med, "img_per_s": c["batch"] / med,
          "fwd_ms": 1000 * statistics.median(ftimes), "peak_gib": peak / 2**30, "device": str(dev.platform),
          "loss": float(m["loss"])}


def run_torch_case(name: str, iters: int, official: str) -> dict:
  """The official PyTorch network's training step and forward at the same size (torch on all cores)."""
  import statistics

  from lliejax.interop import crosscheck

  torch = crosscheck.setup_torch()
  torch.use_deterministic_algorithms(False)
  c = CASES[name]
  arch = crosscheck.import_official(crosscheck.find_official_files(official)).arch
  net = arch.ConditionalNAFNet(img_channel=3, width=c["width"], middle_blk_num=c["middle"], enc_blk_nums=c["enc"],
                               dec_blk_nums=c["dec"])
  opt = torch.optim.AdamW(net.parameters(), lr=1e-4, betas=(0.9, 0.99))
  x = torch.rand(c["batch"], 3, c["size"], c["size"])
  mu, t = x * 0.2, torch.randint(1, 101, (c["batch"],))

  def step():
    opt.zero_grad()
    loss = (net(x, mu, t) - x).abs().mean()
    loss.backward()
    opt.step()

  step()
  times = timed(lambda _: step(), iters)
  with torch.no_grad():
    net(x, mu, t)
    ftimes = timed(lambda _: net(x, mu, t), max(2, iters // 2))
  return {"case": name, "torch_step_ms": 1000 * statistics.median(times),
          "torch_fwd_ms": 1000 * statistics.median(ftimes)}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--cases", default="small-64,small-128,lowlight-128",
                 help="comma-separated subset of " + ", ".join(CASES))
  p.add_argument("--iters", type=int, default=5)
  p.add_argument("--loss", default="l1", help="l1 or an entropy loss (kl, hellinger, ...)")
  p.add_argument("--official", default=None, help="official repository checkout: also time its PyTorch network")
  p.add_argument("--torch-tuned-malloc", action="store_true",
                 help="also time the official network with lliejax's allocator settings")
  p.add_argument("--untuned", action="store_true", help="also time lliejax with glibc's default allocator")
  p.add_argument("--_child", default=None, help=argparse.SUPPRESS)
  p.add_argument("--_torch", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args()
  if args._child and args._torch:
    print(json.dumps(run_torch_case(args._child, args.iters, args.official)))
    return
  if args._child:
    print(json.dumps(run_case(args._child, args.iters, args.loss)))
    return
  cases = args.cases.split(",")
  rows = run_cases(__file__, cases, ["--iters", str(args.iters), "--loss", args.loss])
  extra = {}  # column title -> {case: step ms}
  if args.untuned:
    extra["untuned ms"] = {r["case"]: r["step_ms"] for r in run_cases(
        __file__, cases, ["--iters", str(args.iters), "--loss", args.loss], env={"LLIEJAX_TUNE_MALLOC": "0"})}
  if args.official:
    torch_args = ["--iters", str(args.iters), "--official", args.official, "--_torch"]
    measured = {r["case"]: r for r in run_cases(__file__, cases, torch_args, env={"LLIEJAX_TUNE_MALLOC": "0"})}
    for r in rows:
      m = measured.get(r["case"])
      if m:
        TORCH_REFERENCE_MS[r["case"]] = (round(m["torch_step_ms"]), round(m["torch_fwd_ms"]))
    if args.torch_tuned_malloc:
      extra["torch tuned ms"] = {r["case"]: r["torch_step_ms"] for r in run_cases(
          __file__, cases, torch_args, env={"LLIEJAX_TUNE_MALLOC": "1"})}
  print(f"{'case':14s} {'params':>12s} {'batch':>5s} {'size':>5s} {'compile s':>9s} {'step ms':>9s} "
        f"{'img/s':>8s} {'fwd ms':>8s} {'peak GiB':>8s} {'torch step ms':>13s} {'torch fwd ms':>12s} "
        + "".join(f"{k:>15s} " for k in extra) + "device")
  print("(torch columns: " + ("official network measured now from " + args.official if args.official else
                              "official code measured on the 2-core development machine") + ")")
  for r in rows:
    ts, tf = TORCH_REFERENCE_MS[r["case"]]
    cols = "".join(f"{v.get(r['case'], float('nan')):15.1f} " for v in extra.values())
    print(f"{r['case']:14s} {r['params']:12,d} {r['batch']:5d} {r['size']:5d} {r['compile_s']:9.1f} "
          f"{r['step_ms']:9.1f} {r['img_per_s']:8.2f} {r['fwd_ms']:8.1f} {r['peak_gib']:8.2f} "
          f"{ts if ts else '-':>13} {tf if tf else '-':>12} {cols}{r['device']}")


if __name__ == "__main__":
  main()
