"""Diffusion processes and their samplers, one module per family; every sampler is one ``lax.scan``.

* :mod:`~lliejax.diffusion.irsde`: the mean-reverting SDE of IR-SDE / Refusion / Entropy-SDE;
* :mod:`~lliejax.diffusion.ddpm`: discrete DDPMs (beta schedules, forward process, ancestral and strided DDIM
  sampling), the family of AnlightenDiff's anchored DDPM and ReDDiT's gamma-conditioned DDPM.
* :mod:`~lliejax.diffusion.reddit`: ReDDiT's gamma-conditioned DDPM (N = n s + 1 linear levels, continuous
  noise levels, the official strided DDIM).

The modules know nothing about networks: samplers and objectives take the network as a callable.
"""
