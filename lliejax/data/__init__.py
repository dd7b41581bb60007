"""Datasets and input pipeline of lliejax (TFDS array_record + grain; TensorFlow is never needed).

* :mod:`~lliejax.data.image_io`: image files (the one extension list, listing, decoding, PNG writing);
* :mod:`~lliejax.data.registry`: dataset names -> TFDS builders (:mod:`~lliejax.data.demo`, :mod:`~lliejax.data.lol`);
* :mod:`~lliejax.data.source`: reading a split (``config.data`` settings, records, evaluation images);
* :mod:`~lliejax.data.augment`: paired augmentation policies (``config.data.augment``);
* :mod:`~lliejax.data.pipeline`: batching (the process-count-invariant training stream).

Each example has ``lq``/``gt`` uint8 RGB images and a ``name``; every dataset has ``train`` and ``test`` splits
(``lol_v1_v2_velol`` also ``test_lol_v2_real`` and ``test_velol``).
"""
from lliejax.data.augment import paired_augment
from lliejax.data.demo import build_demo, darken
from lliejax.data.lol import LolV1, LolV1V2Velol, LolV2Real, LolV2Synthetic, VeLol
from lliejax.data.pipeline import train_dataset, train_iterator
from lliejax.data.registry import get_builder, names, prepare
from lliejax.data.source import eval_items, num_examples, prepare_from_config

__all__ = [
    "LolV1", "LolV1V2Velol", "LolV2Real", "LolV2Synthetic", "VeLol", "build_demo", "darken", "eval_items", "get_builder", "names",
    "num_examples", "paired_augment", "prepare", "prepare_from_config", "train_dataset", "train_iterator",
]
