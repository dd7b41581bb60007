"""Paired training augmentation policies: the same random geometry for the LQ and GT images of a pair.

A policy is a frozen dataclass built from ``config.data`` (:func:`from_config`; ``config.data.augment`` names it,
the other fields are read from keys of the same name) and called as ``policy(lq, gt, rng, name=...) -> (lq, gt)``
with uint8 or float images and a ``numpy.random.Generator``; it returns float32 patches in [0, 1]. Its draws
come from ``rng`` in a fixed order, so the training stream is a pure function of the seed and the step.

=============  ===============================================================================================
``lqgt``       The official Entropy-SDE / IR-SDE training augmentation (``codes/data/LQGT_dataset.py:
               LQGTDataset.__getitem__`` and ``codes/data/util.py: augment``), identical for LQ and GT:

               1. with probability ``resize_prob`` (0.2) both are resized to ``(floor(s W), floor(s H))``,
                  ``s = resize_scale`` (0.8), bilinear with OpenCV ``INTER_LINEAR`` semantics (half-pixel centres,
                  edge replication, no anti-aliasing). Only the crop window of the resized image is computed, which
                  gives the same values as resizing the whole image and cropping;
               2. a random ``P x P`` crop (``patch_size``) at the same position (top offset drawn first, then left);
               3. horizontal flip, vertical flip and H<->W transpose, each with probability 0.5, three independent
                  draws in this order. ``flip`` gates both flips, ``transpose`` the transpose (all three numbers are
                  always drawn).

               When the random resize would make an image smaller than the patch, that resize is skipped (the
               official code would produce an undersized crop there; it never happens for LOL at P = 128).
``crop_flip``  A random ``P x P`` crop (top, then left), a horizontal flip with probability 0.5 and, with
               ``rot90``, a rotation by a uniform multiple of 90 degrees: the generic policy of DDPM-style code.
               With ``flip_or_rot`` instead, AnlightenDiff's ``dataset.py: augment`` (REFERENCE §2.9): after
               the horizontal flip, with probability 0.5 either a vertical flip or a 90-degree
               counter-clockwise rotation (torchvision ``rotate(img, 90)`` of the square crop), equally likely.
=============  ===============================================================================================

Images smaller than the patch raise a ``ValueError`` naming the example (no padding).
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from lliejax.data import image_io, source


def _linear_taps(out_idx: np.ndarray, in_size: int, out_size: int):
  """Source taps and weights of OpenCV INTER_LINEAR for output positions ``out_idx`` (float32 weights)."""
  scale = in_size / out_size
  f = ((out_idx + 0.5) * scale - 0.5).astype(np.float32)
  i0 = np.floor(f).astype(np.int64)
  w = (f - i0).astype(np.float32)
  w = np.where(i0 < 0, np.float32(0), w)
  i0 = np.clip(i0, 0, in_size - 1)
  w = np.where(i0 >= in_size - 1, np.float32(0), w)
  i1 = np.minimum(i0 + 1, in_size - 1)
  return i0, i1, w


def resize_window(image: np.ndarray, out_hw: tuple[int, int], top: int, left: int, size: int) -> np.ndarray:
  """Rows ``top:top+size``, cols ``left:left+size`` of ``image`` bilinearly resized to ``out_hw``.

  OpenCV ``cv2.resize(..., INTER_LINEAR)`` semantics on a float image (half-pixel centres, replicated border,
  no anti-aliasing), evaluated only on the window.
  """
  h, w = image.shape[:2]
  r = np.arange(top, top + size)
  c = np.arange(left, left + size)
  y0, y1, wy = _linear_taps(r, h, out_hw[0])
  x0, x1, wx = _linear_taps(c, w, out_hw[1])
  wy = wy[:, None, None]
  rows = image[y0] * (1 - wy) + image[y1] * wy
  wx = wx[None, :, None]
  return (rows[:, x0] * (1 - wx) + rows[:, x1] * wx).astype(np.float32)


def paired_augment(lq: np.ndarray, gt: np.ndarray, rng: np.random.Generator, *, patch_size: int,
                   resize_prob: float = 0.2, resize_scale: float = 0.8, flip: bool = True,
                   transpose: bool = True, name: str = "") -> tuple[np.ndarray, np.ndarray]:
  """The official ``LQGT`` augmentation (module docstring) of a uint8/float pair -> float32 patches.

  Draw order from ``rng``: resize decision, crop top, crop left, h-flip, v-flip, transpose.
  """
  p = int(patch_size)
  h, w = _check(lq, gt, p, name)
  resize = rng.random() < resize_prob
  rh, rw = int(h * resize_scale), int(w * resize_scale)
  resize = resize and rh >= p and rw >= p
  ch, cw = (rh, rw) if resize else (h, w)
  top = int(rng.integers(0, ch - p + 1))
  left = int(rng.integers(0, cw - p + 1))
  hflip, vflip, trans = rng.random() < 0.5, rng.random() < 0.5, rng.random() < 0.5

  def one(img):
    if resize:
      x = resize_window(image_io.to_float(img), (rh, rw), top, left, p)
    else:
      x = image_io.to_float(img[top:top + p, left:left + p])
    if flip and hflip:
      x = x[:, ::-1]
    if flip and vflip:
      x = x[::-1]
    if transpose and trans:
      x = x.transpose(1, 0, 2)
    return np.ascontiguousarray(x, dtype=np.float32)

  return one(lq), one(gt)


def _check(lq: np.ndarray, gt: np.ndarray, patch_size: int, name: str) -> tuple[int, int]:
  if lq.shape != gt.shape:
    raise ValueError(f"example {name!r}: LQ {lq.shape} and GT {gt.shape} differ in shape")
  h, w = lq.shape[:2]
  if h < patch_size or w < patch_size:
    raise ValueError(f"example {name!r} is {h}x{w}, smaller than patch_size {patch_size}; use a smaller "
                     "data.patch_size (or a larger lliejax_demo max_side)")
  return h, w


@dataclasses.dataclass(frozen=True)
class LQGT:
  """The official ``LQGTDataset`` augmentation (:func:`paired_augment`)."""

  patch_size: int = 128
  resize_prob: float = 0.2
  resize_scale: float = 0.8
  flip: bool = True
  transpose: bool = True

  def __call__(self, lq, gt, rng, *, name: str = ""):
    return paired_augment(lq, gt, rng, patch_size=self.patch_size, resize_prob=self.resize_prob,
                          resize_scale=self.resize_scale, flip=self.flip, transpose=self.transpose, name=name)


@dataclasses.dataclass(frozen=True)
class CropFlip:
  """Random crop, horizontal flip with probability 0.5 and (``rot90``) a random multiple of 90 degrees, or
  (``flip_or_rot``) AnlightenDiff's "vertical flip or 90-degree rotation" with probability 0.5.

  Draw order: crop top, crop left, flip, rotation (drawn only with ``rot90``); with ``flip_or_rot``, after the
  flip: whether to apply it, then vertical flip (< 0.5) or rotation (both numbers always drawn). AnlightenDiff's
  ``augment`` (``FS/dataset.py``) draws ``random.random() > 0.5`` for each decision; the probabilities are the same.
  """

  patch_size: int = 128
  rot90: bool = False
  flip_or_rot: bool = False

  def __post_init__(self):
    if self.rot90 and self.flip_or_rot:
      raise ValueError("config.data.rot90 and config.data.flip_or_rot are two different rotation policies; set one")

  def __call__(self, lq, gt, rng, *, name: str = ""):
    p = int(self.patch_size)
    h, w = _check(lq, gt, p, name)
    top = int(rng.integers(0, h - p + 1))
    left = int(rng.integers(0, w - p + 1))
    hflip = rng.random() < 0.5
    k = int(rng.integers(0, 4)) if self.rot90 else 0
    vflip = False
    if self.flip_or_rot:
      apply, which = rng.random() < 0.5, rng.random() < 0.5
      vflip, k = apply and which, int(apply and not which)  # torchvision rotate(img, 90): counter-clockwise

    def one(img):
      x = image_io.to_float(img[top:top + p, left:left + p])
      x = x[:, ::-1] if hflip else x
      x = x[::-1] if vflip else x
      return np.ascontiguousarray(np.rot90(x, k), dtype=np.float32)

    return one(lq), one(gt)


POLICIES = {"lqgt": LQGT, "crop_flip": CropFlip}


def from_config(data_cfg: Any):
  """The policy ``data_cfg.augment`` with its fields taken from the keys of ``data_cfg`` that exist."""
  name = source.setting(data_cfg, "augment")
  if name not in POLICIES:
    raise ValueError(f"config.data.augment={name!r}: choose one of {', '.join(POLICIES)}")
  cls = POLICIES[name]
  cast = {"int": int, "float": float, "bool": bool}
  kwargs = {}
  for f in dataclasses.fields(cls):
    value = data_cfg.get(f.name) if data_cfg is not None else None
    if value is not None:
      kwargs[f.name] = cast[f.type](value)
  return cls(**kwargs)
