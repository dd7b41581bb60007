"""One process of the multi-process test (tests/test_distributed.py): train, export and evaluate the tiny config.

``python distributed_worker.py TFDS_DIR WORKDIR OUT_JSON`` with ``XLA_FLAGS`` (simulated CPU devices) and, for a
multi-process job, ``JAX_COORDINATOR_ADDRESS`` / ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` in the environment,
exactly as a user launches ``lliejax train`` on several hosts.
"""
import json
import sys

from lliejax import parallel, runtime


def main(tfds_dir: str, workdir: str, out: str) -> None:
  runtime.tune_host_allocator()
  parallel.initialize_distributed()
  import jax
  import numpy as np

  from lliejax import evaluate, inference, train
  from lliejax.configs.entropy_sde import get_config

  config = get_config("tiny,steps=4,eval_every=2,checkpoint_every=2")
  config.data.data_dir = tfds_dir
  state = train.train_and_evaluate(config, workdir)
  params = [np.asarray(x).tolist() for x in jax.tree_util.tree_leaves(jax.device_get(state.ema["ema"]))]
  result = evaluate.evaluate_dataset(inference.load(workdir), config.data, key=jax.random.key(0), max_images=3)
  if jax.process_index() == 0:
    with open(out, "w") as f:
      json.dump({"processes": jax.process_count(), "devices": jax.device_count(), "params": params,
                 "per_image": result["per_image"], "local_images": [name for name, _ in result["images"]]}, f)
  else:  # every process scored its own share of the images; all hold the gathered table
    assert len(result["per_image"]) == 3 and len(result["images"]) < 3, result
  jax.distributed.shutdown()  # together, not at interpreter exit


if __name__ == "__main__":
  main(*sys.argv[1:4])
