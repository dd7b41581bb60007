"""Shared pieces of the lliejax TFDS builders: the paired-image feature spec and PNG (de)coding.

Every lliejax dataset stores one example per image pair with the features

* ``lq``: the low-light input, a PNG-encoded uint8 RGB image ``(H, W, 3)``;
* ``gt``: the normally exposed reference, same shape as ``lq``;
* ``name``: the file stem of the example (the LQ file for the LOL sets, the photo name for the demo).

The builders write ``array_record`` files and never need TensorFlow: images are PNG-encoded here with PIL and
handed to ``tfds.features.Image`` as bytes (TFDS stores bytes as-is). On read, :func:`read_source` opens the
split as a TFDS ``ArrayRecordDataSource`` with image decoding skipped, and :func:`decode_png` decodes the bytes
with PIL, which keeps the read path free of TensorFlow and OpenCV as well.
"""
from __future__ import annotations

import inspect
import io
import os
from typing import Any

from etils import epath

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


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


def encode_png(image: np.ndarray) -> bytes:
  """PNG-encodes a uint8 ``(H, W, 3)`` array with PIL (lossless)."""
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"expected a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
  buf = io.BytesIO()
  Image.fromarray(image).save(buf, format="PNG", compress_level=1)
  return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
  """Decodes encoded image bytes to a uint8 ``(H, W, 3)`` RGB array with PIL."""
  with Image.open(io.BytesIO(data)) as im:
    return np.asarray(im.convert("RGB"))


def load_image_file(path: str | os.PathLike[str]) -> tuple[np.ndarray, bytes]:
  """Reads an image file as uint8 RGB and returns ``(pixels, png_bytes)``.

  8-bit RGB PNG files are passed through unchanged (their bytes decode to exactly ``pixels``); anything else
  (JPEG, BMP, palette/gray/RGBA/16-bit PNG) is decoded with PIL, converted to RGB and re-encoded as PNG.
  """
  with open(path, "rb") as f:
    data = f.read()
  with Image.open(io.BytesIO(data)) as im:
    passthrough = im.format == "PNG" and im.mode == "RGB"
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
      raise ValueError(f"{path}: 16-bit images are not supported (mode {im.mode})")
    pixels = np.asarray(im.convert("RGB"))
  return pixels, (data if passthrough else encode_png(pixels))


def read_source(builder: tfds.core.DatasetBuilder, split: str) -> Any:
  """A random-access TFDS data source of ``split`` whose ``lq``/``gt`` are left as PNG bytes."""
  if split not in builder.info.splits:
    raise ValueError(f"dataset {builder.name!r} has no split {split!r}; available: "
                     f"{sorted(builder.info.splits.keys())}")
  skip = tfds.decode.SkipDecoding()
  return builder.as_data_source(split, decoders={"lq": skip, "gt": skip})


def decode_record(record: dict[str, Any]) -> dict[str, Any]:
  """Decodes a raw record of :func:`read_source` to ``{'lq', 'gt': uint8 (H,W,3), 'name': str}``."""
  name = record["name"]
  if isinstance(name, bytes):
    name = name.decode("utf-8")
  return {"lq": decode_png(record["lq"]), "gt": decode_png(record["gt"]), "name": str(name)}
