"""Shared pieces of the lliejax TFDS builders: the paired-image feature spec and the builders' code path.

Every lliejax dataset stores one example per image pair with the features

* ``lq``: the low-light input, a PNG-encoded uint8 RGB image ``(H, W, 3)``;
* ``gt``: the normally exposed reference, same shape as ``lq``;
* ``name``: the file stem of the example (the LQ file for the LOL sets, the photo name for the demo).

The builders write ``array_record`` files and never need TensorFlow: images are PNG-encoded here with PIL and
handed to ``tfds.features.Image`` as bytes (TFDS stores bytes as-is). On read, :mod:`lliejax.data.source` opens
the split as a TFDS ``ArrayRecordDataSource`` with image decoding skipped, and
:func:`lliejax.data.image_io.decode_png` decodes the bytes with PIL, which keeps the read path free of TensorFlow
and OpenCV as well.
"""
from __future__ import annotations

import inspect

from etils import epath

import tensorflow_datasets as tfds

class LocalCodePath:
  """Builder mixin: ``code_path`` from ``inspect.getfile``.

  TFDS' default ``code_path`` for builders defined inside a package touches ``importlib_resources`` (an
  optional backport that may be missing); the builders here only need the plain source path.
  """

  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls) -> epath.Path | None:
    try:
      return epath.Path(inspect.getfile(cls))
    except (TypeError, OSError):
      return None


def pair_features() -> tfds.features.FeaturesDict:
  """The feature spec shared by all lliejax datasets."""
  return tfds.features.FeaturesDict({
      "lq": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
      "gt": tfds.features.Image(shape=(None, None, 3), encoding_format="png"),
      "name": tfds.features.Text(),
  })
