"""flax.linen networks, NHWC, with parameter names that map by rule to the official PyTorch keys.

* :mod:`~lliejax.models.layers`: PyTorch-initialised convolutions in their fastest forms, embeddings, the XLA:CPU
  fusion barrier;
* :mod:`~lliejax.models.nafnet`: ConditionalNAFNet (Refusion / Entropy-SDE).
* :mod:`~lliejax.models.sr3_unet`: the SR3 UNet of ReDDiT / GSAD (gamma-conditioned);
* :mod:`~lliejax.models.anlightendiff_unet`: AnlightenDiff's denoiser, conditioning encoder and HE refiner.
"""
