"""Loading a trained network for inference from a workdir or an export directory."""
from __future__ import annotations

import dataclasses
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from lliejax import checkpoint
from lliejax import sde as sde_lib
from lliejax.evaluate import make_sampler
from lliejax.models.nafnet import ConditionalNAFNet, nafnet_from_config


@dataclasses.dataclass
class Enhancer:
  """A loaded model: ``enhance(image_hw3_float01, key) -> image`` runs the full reverse process."""

  model: ConditionalNAFNet
  sde: sde_lib.IRSDE
  params: dict
  source: str
  info: dict

  def enhance(self, image: np.ndarray, key, *, sampler: str = "posterior") -> np.ndarray:
    """``image``: (H, W, 3) float32 in [0, 1]. Returns the unclamped (H, W, 3) output."""
    run = make_sampler(self.model, self.sde, sampler)
    return np.asarray(run(self.params, jnp.asarray(image[None], jnp.float32), key))[0]


_DEFAULT_SDE = {"max_sigma": 50.0, "T": 100, "schedule": "cosine", "eps": 0.005}


def load_enhancer(source: str, *, ema: bool = True) -> Enhancer:
  """``source``: an export directory (``lliejax_export.json``) or a training workdir (``config.json``).

  A workdir's ``export/`` (written at the end of training) is used when present and ``ema`` is requested;
  otherwise the latest training checkpoint is restored (EMA or online params).
  """
  source = os.path.abspath(os.path.expanduser(source))
  if not os.path.exists(source):
    raise FileNotFoundError(f"model path {source} does not exist")
  if checkpoint.is_export_dir(source):
    params, info = checkpoint.load_exported(source)
    model_cfg = ml_collections.ConfigDict(info["model"])
    sde_cfg = ml_collections.ConfigDict(info.get("sde") or _DEFAULT_SDE)
  elif os.path.isfile(os.path.join(source, "config.json")):
    export = os.path.join(source, "export")
    if ema and checkpoint.is_export_dir(export):
      return load_enhancer(export)
    from lliejax import train  # pylint: disable=import-outside-toplevel
    params, config, step = train.load_params_from_workdir(source, ema=ema)
    model_cfg, sde_cfg = config.model, config.sde
    info = {"source": source, "step": step, "ema": ema}
  else:
    raise ValueError(f"{source} is neither a lliejax export directory (lliejax_export.json) nor a training "
                     "workdir (config.json)")
  params = jax.tree_util.tree_map(jnp.asarray, params)
  return Enhancer(model=nafnet_from_config(model_cfg), sde=sde_lib.make_sde_from_config(sde_cfg), params=params,
                  source=source, info=info)
