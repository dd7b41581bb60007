"""``lliejax_demo``: an offline paired low-light dataset synthesised from the photos bundled with scikit-image.

It needs no download and builds in a few seconds, so that training, evaluation and the Colab demo run anywhere.
The normal-light references (``gt``) are scikit-image's colour photos, optionally downscaled so that the longer
side is at most ``max_side`` (Lanczos, PIL); the low-light inputs (``lq``) are made from them by :func:`darken`.

Photos (all shipped inside the scikit-image wheel and loaded without network access; the functions of
``skimage.data`` that need ``pooch`` downloads are deliberately not used, and ``skimage.data.cat`` is skipped
because it is the same photo as ``chelsea``):

* train (6): ``astronaut``, ``immunohistochemistry``, ``hubble_deep_field``, ``retina``, ``motorcycle_left``,
  ``motorcycle_right`` (the two views of ``skimage.data.stereo_motorcycle``);
* test (3): ``coffee``, ``chelsea``, ``rocket``.

Training uses each photo whole (the input pipeline crops random patches). Builder configs: ``small``
(default, ``max_side=256``) and ``full`` (original sizes); :func:`build_demo` makes other sizes/seeds.

Low-light model (:func:`darken`), on ``x = gt / 255`` per image, with parameters drawn from ``rng`` in this order:

* exposure ``a ~ U(exposure)`` (default 0.15..0.35), gamma ``g ~ U(gamma)`` (default 1.5..2.2),
  per-channel colour cast ``c_k ~ U(1 - cast, 1 + cast)`` (default ``cast = 0.08``, RGB order),
  photons at full scale ``K ~ U(photons)`` (default 200..800), read noise ``s ~ U(read_noise)``
  (default 0.002..0.008);
* clean dark signal ``y = clip(c_k * a * x ** g, 0, 1)`` (gamma compresses the mid-tones as in a badly exposed
  tone curve, ``a`` scales the exposure);
* Poisson-Gaussian sensor noise ``z = Poisson(K * y) / K + s * N(0, 1)`` (shot noise with variance ``y / K``
  plus signal-independent read noise);
* quantisation ``lq = round(255 * clip(z, 0, 1))`` as uint8.

Each photo gets its own generator ``np.random.default_rng([seed, crc32(name)])``, so the dataset is
deterministic for a given ``seed`` and independent of the photo order.
"""
from __future__ import annotations

import dataclasses
import os
import zlib
from typing import Iterator

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from lliejax.data import common, image_io

TRAIN_PHOTOS = ("astronaut", "immunohistochemistry", "hubble_deep_field", "retina", "motorcycle_left",
                "motorcycle_right")
TEST_PHOTOS = ("coffee", "chelsea", "rocket")
DEFAULT_MAX_SIDE = 256

Range = float | tuple[float, float]


def _draw(rng: np.random.Generator, value: Range, n: int | None = None):
  if isinstance(value, (tuple, list)):
    lo, hi = value
    return rng.uniform(lo, hi, size=n)
  return np.full(n, float(value)) if n is not None else float(value)


def darken(image: np.ndarray, rng: np.random.Generator, *, exposure: Range = (0.15, 0.35),
           gamma: Range = (1.5, 2.2), cast: float = 0.08, photons: Range = (200.0, 800.0),
           read_noise: Range = (0.002, 0.008)) -> np.ndarray:
  """Synthesises a low-light version of a uint8 RGB image (see the module docstring for the model).

  ``lq = round(255 * clip(Poisson(K * y) / K + s * N(0, 1), 0, 1))`` with
  ``y = clip(c_k * a * (image / 255) ** g, 0, 1)``.

  Args:
    image: uint8 ``(H, W, 3)`` normal-light image.
    rng: numpy generator; the parameters are drawn from it in the order a, g, c (3 values), K, s, then the
      Poisson and Gaussian noise fields. Passing a fixed value instead of a ``(lo, hi)`` range uses it as is
      (without a draw); ``cast = 0`` disables the colour cast (its 3 draws still happen).
    exposure: exposure scale ``a`` (range or value).
    gamma: tone-curve exponent ``g`` (range or value).
    cast: half-width of the per-channel gain interval around 1.
    photons: photon count ``K`` of a full-scale pixel (smaller = noisier).
    read_noise: std ``s`` of the additive Gaussian read noise, in [0, 1] units.

  Returns:
    uint8 ``(H, W, 3)`` low-light image.
  """
  image = np.asarray(image)
  if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
    raise ValueError(f"darken expects a uint8 (H, W, 3) image, got {image.dtype} {image.shape}")
  a = _draw(rng, exposure)
  g = _draw(rng, gamma)
  c = rng.uniform(1.0 - cast, 1.0 + cast, size=3)
  k = _draw(rng, photons)
  s = _draw(rng, read_noise)
  x = image.astype(np.float64) / 255.0
  y = np.clip(c * a * x ** g, 0.0, 1.0)
  z = rng.poisson(k * y) / k + s * rng.standard_normal(y.shape)
  return np.round(255.0 * np.clip(z, 0.0, 1.0)).astype(np.uint8)


def load_photo(name: str) -> np.ndarray:
  """One of the bundled scikit-image colour photos as uint8 ``(H, W, 3)`` (no network access)."""
  import skimage.data  # pylint: disable=g-import-not-at-top

  if name not in TRAIN_PHOTOS + TEST_PHOTOS:
    raise ValueError(f"unknown demo photo {name!r}; expected one of {TRAIN_PHOTOS + TEST_PHOTOS}")
  if name.startswith("motorcycle_"):
    left, right, _ = skimage.data.stereo_motorcycle()
    img = left if name == "motorcycle_left" else right
  else:
    img = getattr(skimage.data, name)()
  img = np.asarray(img)
  if img.dtype != np.uint8 or img.ndim != 3 or img.shape[-1] < 3:
    raise ValueError(f"skimage.data photo {name!r} is not a uint8 colour image: {img.dtype} {img.shape}")
  return np.ascontiguousarray(img[..., :3])


def downscale(image: np.ndarray, max_side: int | None) -> np.ndarray:
  """Lanczos-downscales so that the longer side is at most ``max_side`` (no-op when it already is, or None)."""
  h, w = image.shape[:2]
  if max_side is None or max(h, w) <= max_side:
    return image
  s = max_side / max(h, w)
  size = (max(1, round(w * s)), max(1, round(h * s)))
  return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


@dataclasses.dataclass(eq=False)
class DemoConfig(tfds.core.BuilderConfig):
  """``max_side``: longer side of the stored photos (None = original size); ``seed``: darkening seed."""

  max_side: int | None = DEFAULT_MAX_SIDE
  seed: int = 0


def config_name(max_side: int | None, seed: int) -> str:
  """Name of the builder config for ``(max_side, seed)`` (``small``/``full`` for the predefined ones)."""
  if seed == 0 and max_side == DEFAULT_MAX_SIDE:
    return "small"
  if seed == 0 and max_side is None:
    return "full"
  return f"max{max_side if max_side is not None else 'full'}_seed{seed}"


class LliejaxDemo(common.LocalCodePath, tfds.core.GeneratorBasedBuilder):
  """Synthetic low-light pairs from scikit-image photos (see module docstring)."""

  name = "lliejax_demo"
  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  BUILDER_CONFIGS = [
      DemoConfig(name="small", description=f"photos downscaled to max side {DEFAULT_MAX_SIDE}",
                 max_side=DEFAULT_MAX_SIDE, seed=0),
      DemoConfig(name="full", description="photos at their original size", max_side=None, seed=0),
  ]
  DEFAULT_CONFIG_NAME = "small"

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self, features=common.pair_features(),
        description=("Offline low-light demo: scikit-image photos darkened by exposure scaling, gamma, colour "
                     "cast and Poisson-Gaussian noise (lliejax.data.demo.darken)."),
        homepage="https://scikit-image.org/docs/stable/api/skimage.data.html")

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager
    return {"train": self._generate_examples(photos=TRAIN_PHOTOS),
            "test": self._generate_examples(photos=TEST_PHOTOS)}

  def _generate_examples(self, photos: tuple[str, ...]) -> Iterator[tuple[str, dict]]:
    cfg = self.builder_config
    for name in photos:
      gt = downscale(load_photo(name), cfg.max_side)
      rng = np.random.default_rng([cfg.seed, zlib.crc32(name.encode())])
      lq = darken(gt, rng)
      yield name, {"lq": image_io.encode_png(lq), "gt": image_io.encode_png(gt), "name": name}


def demo_builder(data_dir: str | os.PathLike[str], *, max_side: int | None = DEFAULT_MAX_SIDE,
                 seed: int = 0) -> LliejaxDemo:
  """The (not necessarily prepared) demo builder for ``(max_side, seed)`` writing array_record files."""
  name = config_name(max_side, seed)
  if any(c.name == name for c in LliejaxDemo.BUILDER_CONFIGS):
    config = name  # by name, so that pickled builders (grain workers) resolve the same class config
  else:
    config = DemoConfig(name=name, description=f"max_side={max_side}, seed={seed}", max_side=max_side,
                        seed=seed)
  return LliejaxDemo(config=config, data_dir=os.path.expanduser(os.fspath(data_dir)),
                     file_format="array_record")


def build_demo(data_dir: str | os.PathLike[str], *, max_side: int | None = DEFAULT_MAX_SIDE,
               seed: int = 0) -> LliejaxDemo:
  """Builds ``lliejax_demo`` under ``data_dir`` if needed (idempotent) and returns the prepared builder."""
  builder = demo_builder(data_dir, max_side=max_side, seed=seed)
  builder.download_and_prepare(file_format="array_record")
  return builder
