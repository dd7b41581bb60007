"""Datasets and input pipeline of lliejax (TFDS array_record + grain; TensorFlow is never needed).

Datasets (:data:`DATASETS`): ``lliejax_demo`` (offline, synthesised from scikit-image photos, see
:mod:`lliejax.data.demo`), ``lol_v1``, ``lol_v2_real``, ``lol_v2_synthetic`` (from a ``manual_dir`` holding the
extracted official images, see :mod:`lliejax.data.lol`). Each example has ``lq``/``gt`` uint8 RGB images and a
``name``; every dataset has ``train`` and ``test`` splits.

The ``config.data`` section consumed by :func:`train_iterator` / :func:`eval_iterator` (missing keys take these
defaults): ``name`` ('lliejax_demo'), ``data_dir`` ('~/tensorflow_datasets'), ``manual_dir`` (None),
``patch_size`` (128), ``resize_prob`` (0.2), ``resize_scale`` (0.8), ``flip`` (True), ``transpose`` (True),
``worker_count`` (0: no grain worker processes), ``eval_split`` ('test'), ``eval_max_images`` (None), and the
optional ``read_threads`` (2) / ``prefetch`` (4 batches) of the grain reader.
"""
from lliejax.data.demo import build_demo, darken
from lliejax.data.lol import LolV1, LolV2Real, LolV2Synthetic
from lliejax.data.pipeline import (DATASETS, eval_iterator, get_builder, num_examples, paired_augment,
                                   prepare, prepare_from_config, train_dataset, train_iterator)

__all__ = [
    "DATASETS", "LolV1", "LolV2Real", "LolV2Synthetic", "build_demo", "darken", "eval_iterator", "get_builder",
    "num_examples", "paired_augment", "prepare", "prepare_from_config", "train_dataset", "train_iterator",
]
