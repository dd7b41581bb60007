"""flax.linen networks, NHWC, with parameter names that map by rule to the official PyTorch keys.

* :mod:`~lliejax.models.layers`: PyTorch-initialised convolutions in their fastest forms, embeddings, the XLA:CPU
  fusion barrier;
* :mod:`~lliejax.models.nafnet`: ConditionalNAFNet (Refusion / Entropy-SDE).
* :mod:`~lliejax.models.sr3_unet`: the SR3 UNet of ReDDiT / GSAD (gamma-conditioned);
* :mod:`~lliejax.models.anlightendiff_unet`: AnlightenDiff's denoiser, conditioning encoder and HE refiner.
"""


# Model-config keys added after exports were written, per network name, with the value an export without them means.
CONFIG_DEFAULTS = {"sr3_unet": {"mid_attn": True}}


def with_config_defaults(model: dict, drop=()) -> dict:
  """A ``config.model`` dict with the :data:`CONFIG_DEFAULTS` of its network filled in and the keys in ``drop``
  removed, so that an export written before a key existed compares equal to a config that spells out the default."""
  return {k: v for k, v in {**CONFIG_DEFAULTS.get(model.get("name"), {}), **model}.items() if k not in drop}
