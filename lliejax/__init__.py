"""lliejax: diffusion-based low-light image enhancement in JAX/Flax.

Modules: :mod:`lliejax.sde` (mean-reverting SDE), :mod:`lliejax.models.nafnet` (ConditionalNAFNet),
:mod:`lliejax.entropy` (KDE spatial-entropy losses), :mod:`lliejax.train`, :mod:`lliejax.evaluate`,
:mod:`lliejax.data`, :mod:`lliejax.metrics`, :mod:`lliejax.convert` (PyTorch interop). Nothing else is imported here
so that ``import lliejax.<module>`` stays light (and torch is never imported unless you use the converter).
"""
__version__ = "0.1.0"

# Before any JAX computation: keep XLA:CPU's per-run buffers out of fresh page faults (see lliejax.runtime).
from lliejax import runtime as _runtime  # noqa: E402

_runtime.tune_host_allocator()
