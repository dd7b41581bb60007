"""Distillation of diffusion samplers into fewer steps.

* :mod:`~lliejax.distill.trajectory`: ReDDiT's reflectance-aware trajectory distillation (one pure loss over a
  student and a frozen teacher network, the official learning-rate schedule, and the 16 -> 8 -> 4 -> 2 stage
  driver). The ``reddit_student`` method (:mod:`lliejax.methods.reddit_student`) trains it with the generic loop.
"""
from lliejax.distill import trajectory

__all__ = ["trajectory"]
