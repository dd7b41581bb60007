"""Diffusion processes and their samplers, one module per family; every sampler is one ``lax.scan``.

* :mod:`~lliejax.diffusion.irsde`: the mean-reverting SDE of IR-SDE / Refusion / Entropy-SDE;
* :mod:`~lliejax.diffusion.ddpm`: discrete DDPMs (beta schedules, forward process, ancestral and strided DDIM
  sampling), the family of AnlightenDiff's anchored DDPM and ReDDiT's gamma-conditioned DDPM.

The modules know nothing about networks: samplers and objectives take the network as a callable.
"""
