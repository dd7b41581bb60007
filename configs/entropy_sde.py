"""Entropy-SDE / Refusion configurations: ``--config configs/entropy_sde.py:<variant>[,key=value...]``.

The definitions live in :mod:`lliejax.configs.entropy_sde` (so an installed lliejax carries them); this file is
the path you pass on the command line. Copy it and edit ``get_config`` to make your own variant.
"""
from lliejax.configs.entropy_sde import VARIANTS, base_config, get_config  # noqa: F401
