"""The tiny Entropy-SDE training config that the training / workdir tests share."""
from lliejax.configs.entropy_sde import get_config


def tiny_train_config(tfds_dir: str, steps: int = 6):
  """``entropy_sde:tiny`` on the demo set in ``tfds_dir``: ``steps`` steps, a checkpoint every 3."""
  config = get_config("tiny")
  config.data.data_dir = tfds_dir
  config.num_train_steps = steps
  config.checkpoint_every = 3
  return config
