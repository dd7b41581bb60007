"""lliejax: diffusion-based low-light image enhancement in JAX/Flax.

One core for every method: :mod:`lliejax.methods` (the Method interface and registry; ``entropy_sde``), the
generic :mod:`lliejax.train`, :mod:`lliejax.evaluate`, :mod:`lliejax.inference` and :mod:`lliejax.checkpoint`,
and the building blocks :mod:`lliejax.diffusion`, :mod:`lliejax.models`, :mod:`lliejax.losses`,
:mod:`lliejax.metrics`, :mod:`lliejax.data`, :mod:`lliejax.interop` (PyTorch). ``lliejax`` on the command line is
:mod:`lliejax.cli`.

Importing the package imports nothing else and changes nothing in the process (``import lliejax.<module>`` loads
what that module needs; torch only for PyTorch files). Programs tune the host allocator explicitly
(:func:`lliejax.runtime.tune_host_allocator`).
"""
__version__ = "0.3.0"
