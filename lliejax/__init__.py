"""lliejax: diffusion-based low-light image enhancement in JAX/Flax.

Modules: :mod:`lliejax.sde` (mean-reverting SDE), :mod:`lliejax.models.nafnet` (ConditionalNAFNet),
:mod:`lliejax.entropy` (KDE spatial-entropy losses), :mod:`lliejax.train`, :mod:`lliejax.evaluate`,
:mod:`lliejax.data`, :mod:`lliejax.metrics`, :mod:`lliejax.convert` (PyTorch interop). Nothing is imported here so
that ``import lliejax.<module>`` stays light (and torch is never imported unless you use the converter).
"""
__version__ = "0.1.0"
