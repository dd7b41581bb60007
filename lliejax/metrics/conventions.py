"""Evaluation conventions: how each paper turns an enhanced image into its numbers (REFERENCE §1.11, §2.10, §3.7, §4).

A :class:`Convention` fixes, per metric, everything the official evaluation code of a method does:

==================  ===============================  ==============================  ==============================
aspect              ``entropy_sde`` / ``standard``   ``anlightendiff_fs`` / ``_ts``  ``reddit``
==================  ===============================  ==============================  ==============================
output -> uint8     clamp, x255, round (half even)   x255, **truncate**              clamp, x255, round
spatial             shapes must match                GT center-cropped to the        an output padded by 8/4 px
                                                     output (``full_ref.center_      (416x608 for LOL) is cropped
                                                     crop``); TS: input and GT        ``[8:8+H, 4:4+W]``
                                                     center-cropped to x32 first
brightness          none                             none                            **GT-mean** gray rescale, then
                                                                                     ``astype(uint8)`` (truncate)
PSNR                RGB uint8, 255                   skimage, 255                    RGB uint8, 255
SSIM                MATLAB (11x11 Gaussian)          skimage (7x7 uniform)           skimage (7x7 uniform)
extra               DISTS (RGB [0,1]), NIQE (96px)   ``ssim_gray`` (RGB2GRAY on BGR,  NIQE ReDDiT 8x8 (no-reference
                                                     skimage per column)             sets only)
LPIPS               Alex, RGB, [-1,1]                Alex, **BGR**, [-1,1]           **VGG, BGR, [0,255]**
==================  ===============================  ==============================  ==============================

Sources: ``entropy_sde`` follows the upstream IR-SDE ``test.py`` (``tensor2img``, ``calculate_psnr``,
``calculate_ssim``, LPIPS-Alex on ``2x - 1``; the Entropy-SDE repository itself computes no metrics, and its
DISTS/NIQE tooling is unreleased, so the standard DISTS and NIQE are used); like upstream, LPIPS sees the unquantised,
unclamped float output (``lpips_on='float'``) and no border crop. ``anlightendiff_*`` =
``FS|TS/diffusion_fromscratch.py: _test_step/_test_epoch_end`` and ``compare/full_ref.py`` (torchmetrics LPIPS-Alex
on ``uint8 / 127.5 - 1`` of BGR arrays). ``reddit`` = ``test.py`` (``Metrics.tensor2img``, the KinD/LLFlow
GT-mean adjustment, ``util.calculate_psnr/ssim``, ``lpips.LPIPS(net='vgg')`` on float BGR [0,255] tensors) and
``test_unpaired.py`` + ``utils/niqe.py`` for NIQE. ``standard`` is what a new paper should report: the IR-SDE
pixel conventions with LPIPS-Alex (on the uint8 result, so files and in-memory outputs score alike) and DISTS as
their authors specify them (RGB), standard NIQE, no GT-mean.

Colour order matters only for LPIPS, NIQE's gray conversion and ``ssim_gray``: PSNR/SSIM average over channels.

:meth:`Convention.score` scores one image; :func:`get` returns a named convention; :data:`IRSDE` is the pixel-only
Entropy-SDE convention the training loop validates with (PSNR/SSIM, fast).
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import numpy as np

from lliejax.metrics.pixel import Rounding, SsimConvention, psnr, ssim, to_uint8

Align = Literal["exact", "center_crop_gt", "reddit_unpad"]
LpipsRange = Literal["[-1,1]", "[0,255]"]
ColorOrder = Literal["rgb", "bgr"]
NiqeVariant = Literal["standard", "reddit"]

FULL_REFERENCE = ("psnr", "ssim", "ssim_gray", "lpips", "dists")
NO_REFERENCE = ("niqe",)
ALL_METRICS = FULL_REFERENCE + NO_REFERENCE
# Lower is better for these; the others are higher-is-better.
LOWER_IS_BETTER = ("lpips", "dists", "niqe", "fid")


@dataclasses.dataclass(frozen=True)
class Convention:
  """The evaluation convention of one code base (see the module docstring for the named ones).

  Attributes:
    name: the protocol name (``metrics.json``'s ``convention``).
    rounding: output float -> uint8 (``to_uint8``): ``'round'`` or ``'truncate'``.
    ssim: ``'matlab'`` or ``'skimage'`` (:func:`lliejax.metrics.ssim`).
    crop_border: pixels removed on every side before PSNR/SSIM.
    y_channel: PSNR/SSIM on the BT.601 Y channel.
    metrics: the metrics reported, from :data:`ALL_METRICS`; with no ground truth only ``niqe`` is computed.
    align: how output and ground truth are brought to one size (``'exact'``: they must match).
    input_crop_multiple: center-crop the input and ground truth to a multiple of this before enhancement
      (AnlightenDiff-TS, torchvision ``CenterCrop``); 0 = off.
    gt_mean: ReDDiT's GT-mean brightness rescaling before all full-reference metrics.
    lpips_net, lpips_order, lpips_range: LPIPS trunk, channel order and value range of its inputs.
    lpips_on: ``'uint8'``: LPIPS of the scored uint8 images; ``'float'``: of the unquantised float output (IR-SDE
      ``test.py``: ``lpips_fn(GT * 2 - 1, SR_img * 2 - 1)``, not clamped; equal to ``'uint8'`` for uint8 outputs).
    niqe: the NIQE variant (``'standard'`` 96x96 patches, ``'reddit'`` 8x8).
    description: one line for tables and ``--help``.
  """

  name: str
  rounding: Rounding = "round"
  ssim: SsimConvention = "matlab"
  crop_border: int = 0
  y_channel: bool = False
  metrics: tuple[str, ...] = ("psnr", "ssim")
  align: Align = "exact"
  input_crop_multiple: int = 0
  gt_mean: bool = False
  lpips_net: Literal["alex", "vgg"] = "alex"
  lpips_order: ColorOrder = "rgb"
  lpips_range: LpipsRange = "[-1,1]"
  lpips_on: Literal["uint8", "float"] = "uint8"
  niqe: NiqeVariant = "standard"
  description: str = ""

  def __post_init__(self):
    unknown = [m for m in self.metrics if m not in ALL_METRICS]
    if unknown:
      raise ValueError(f"convention {self.name!r}: unknown metrics {unknown}; expected some of {list(ALL_METRICS)}")

  def replace(self, **kw) -> "Convention":
    return dataclasses.replace(self, **kw)

  # ---------------------------------------------------------------------------------------------- steps
  def quantize(self, img) -> np.ndarray:
    """An output (float in [0,1], any range; or already uint8) as the uint8 image the official code scores."""
    a = np.asarray(img)
    return a if a.dtype == np.uint8 else to_uint8(a, rounding=self.rounding)

  def crop_input(self, img: np.ndarray) -> np.ndarray:
    """The input (or ground truth) as the method's test script crops it before enhancement (TS: x32 center)."""
    m = self.input_crop_multiple
    if not m:
      return img
    h, w = img.shape[:2]
    th, tw = (h // m) * m, (w // m) * m
    if not th or not tw:
      raise ValueError(f"convention {self.name!r}: a {h}x{w} image is smaller than the crop multiple {m}")
    # torchvision CenterCrop rounds the offsets (half to even); the GT is later cut by full_ref.center_crop, which
    # truncates them: for odd size differences the two crops are one pixel apart, as in the official code.
    top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
    return img[top:top + th, left:left + tw]

  def align_pair(self, out8: np.ndarray, gt8: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Output and ground truth of one size, as the official script makes them (or a ValueError)."""
    if out8.shape == gt8.shape:
      return out8, gt8
    (ho, wo), (hg, wg) = out8.shape[:2], gt8.shape[:2]
    if self.align == "center_crop_gt" and hg >= ho and wg >= wo:
      # compare/full_ref.py center_crop: int() of the float offsets (truncation).
      y, x = int(hg / 2 - ho / 2), int(wg / 2 - wo / 2)
      return out8, gt8[y:y + ho, x:x + wo]
    if self.align == "reddit_unpad" and (ho, wo) == (hg + 16, wg + 8):
      # test.py: a non-square output is cut to rows 8:408, columns 4:604 (the reflect padding of LOL's 400x600).
      return out8[8:8 + hg, 4:4 + wg], gt8
    raise ValueError(f"convention {self.name!r}: output {out8.shape} and ground truth {gt8.shape} differ in size "
                     f"(alignment {self.align!r})")

  # ---------------------------------------------------------------------------------------------- scoring
  def score(self, output, gt=None, lq=None, *, crop_border: int | None = None,
            metrics: tuple[str, ...] | None = None) -> dict[str, float]:
    """Scores of one image under this convention.

    Args:
      output: the enhanced image, HxWx3 RGB: float (any range; quantised with ``rounding``) or uint8.
      gt: the ground truth (uint8, or float in [0,1]: rounded); None for no-reference scoring (NIQE only).
      lq: the input: adds ``psnr_input`` / ``ssim_input`` (same conversion, alignment and crop; no GT-mean).
      crop_border: overrides the convention's.
      metrics: a subset of :attr:`metrics` to compute (default all of them).

    Returns:
      ``{metric: value}`` for ``metrics`` (full-reference ones only with ``gt``), plus the ``_input`` scores.
    """
    wanted = tuple(self.metrics if metrics is None else metrics)
    crop = self.crop_border if crop_border is None else crop_border
    out8 = self.quantize(output)
    row: dict[str, float] = {}
    if gt is None:  # a no-reference set (ReDDiT's test_unpaired.py): NIQE only
      return {"niqe": _niqe(out8, self.niqe)}
    gt8 = np.asarray(gt) if np.asarray(gt).dtype == np.uint8 else to_uint8(gt, rounding="round")
    out8, gt8 = self.align_pair(out8, gt8)
    adj = gt_mean_adjust(out8, gt8) if self.gt_mean else out8
    kw = dict(crop_border=crop, y_channel=self.y_channel)
    if "psnr" in wanted:
      row["psnr"] = float(psnr(adj, gt8, **kw))
    if "ssim" in wanted:
      row["ssim"] = float(ssim(adj, gt8, convention=self.ssim, **kw))
    if "ssim_gray" in wanted:
      row["ssim_gray"] = ssim_gray_anlightendiff(gt8, adj)
    if "lpips" in wanted:
      if self.lpips_on == "float" and np.asarray(output).dtype != np.uint8:
        out_f, _ = self.align_pair(np.asarray(output, np.float32), gt8)
        row["lpips"] = self.lpips(out_f, gt8.astype(np.float32) / np.float32(255))
      else:
        row["lpips"] = self.lpips(adj, gt8)
    if "dists" in wanted:
      from lliejax.metrics import perceptual  # pylint: disable=import-outside-toplevel
      row["dists"] = float(perceptual.dists(adj.astype(np.float32) / 255.0, gt8.astype(np.float32) / 255.0))
    if "niqe" in wanted:
      row["niqe"] = _niqe(out8, self.niqe)
    if lq is not None:
      lq8, _ = self.align_pair(self.quantize(lq), gt8)
      if "psnr" in wanted:
        row["psnr_input"] = float(psnr(lq8, gt8, **kw))
      if "ssim" in wanted:
        row["ssim_input"] = float(ssim(lq8, gt8, convention=self.ssim, **kw))
    return row

  def lpips(self, a, b) -> float:
    """LPIPS of two RGB images (uint8, or float in [0,1]) with this convention's network, order and range.

    uint8 images become ``x / 127.5 - 1`` for ``'[-1,1]'`` (AnlightenDiff's ``transform``) or float ``x`` for
    ``'[0,255]'`` (ReDDiT); float images ``2x - 1`` (IR-SDE) or ``255 x``.
    """
    from lliejax.metrics import perceptual  # pylint: disable=import-outside-toplevel
    pair = []
    for x in (a, b):
      x = np.asarray(x)
      is8 = x.dtype == np.uint8
      x = x.astype(np.float32)
      if self.lpips_range == "[-1,1]":
        x = x / np.float32(127.5) - np.float32(1) if is8 else np.float32(2) * x - np.float32(1)
      elif not is8:
        x = x * np.float32(255)
      pair.append(x[..., ::-1] if self.lpips_order == "bgr" else x)
    return float(perceptual.lpips(pair[0], pair[1], net=self.lpips_net))


# ------------------------------------------------------------------------------------------------ pieces
def bgr2gray_float32(img_rgb01: np.ndarray) -> np.ndarray:
  """OpenCV ``cvtColor(float32 BGR, COLOR_BGR2GRAY)`` of an RGB float image: ``.299 R + .587 G + .114 B``, float32."""
  x = np.asarray(img_rgb01, np.float32)
  return (x[..., 2] * np.float32(0.114) + x[..., 1] * np.float32(0.587)) + x[..., 0] * np.float32(0.299)


def gt_mean_adjust(out8: np.ndarray, gt8: np.ndarray) -> np.ndarray:
  """ReDDiT ``test.py`` (after KinD/LLFlow): rescale the output's mean gray level to the ground truth's.

  On ``uint8 / 255`` (float64) images: ``m = mean(BGR2GRAY(float32))`` of each, ``clip(out * m_gt / m_out, 0, 1)``,
  then ``(x * 255).astype(uint8)`` (truncation). The means are float32 (numpy's pairwise float32 sum), their ratio
  float32, as in the official code. Returns uint8 RGB.
  """
  out = np.asarray(out8).astype(np.float64) / 255.0
  gt = np.asarray(gt8).astype(np.float64) / 255.0
  m_out = bgr2gray_float32(out).mean()
  m_gt = bgr2gray_float32(gt).mean()
  if m_out == 0:
    raise ValueError("GT-mean adjustment: the output is entirely black (mean gray level 0)")
  adj = np.clip(out * (m_gt / m_out), 0, 1)
  return (adj * 255).astype(np.uint8)


def rgb2gray_uint8_cv2(img8: np.ndarray) -> np.ndarray:
  """OpenCV ``cvtColor(uint8, COLOR_RGB2GRAY)``: fixed point ``(9798 R + 19235 G + 3735 B + 2^14) >> 15``.

  Bit-exact with OpenCV 4.x (``tests/test_conventions.py``).
  """
  x = np.asarray(img8).astype(np.int32)
  return ((x[..., 0] * 9798 + x[..., 1] * 19235 + x[..., 2] * 3735 + 16384) >> 15).astype(np.uint8)


def ssim_gray_anlightendiff(gt8: np.ndarray, out8: np.ndarray) -> float:
  """AnlightenDiff ``compare/full_ref.py: _ssim_gray`` on RGB uint8 images, with its two quirks.

  The official code applies ``COLOR_RGB2GRAY`` to **BGR** arrays (so blue gets red's weight) and calls skimage's
  SSIM with ``multichannel=True`` on the 2-D gray images, which makes skimage treat the *columns* as channels: the
  value is the mean over columns of a 1-D SSIM (7-tap uniform window along each column), data range 255.
  """
  from skimage.metrics import structural_similarity  # pylint: disable=import-outside-toplevel
  g1 = rgb2gray_uint8_cv2(np.asarray(gt8)[..., ::-1])
  g2 = rgb2gray_uint8_cv2(np.asarray(out8)[..., ::-1])
  return float(structural_similarity(g1, g2, data_range=255, channel_axis=-1))


def _niqe(out8: np.ndarray, variant: NiqeVariant) -> float:
  from lliejax.metrics import niqe  # pylint: disable=import-outside-toplevel
  return float(niqe.niqe(out8, variant=variant))


# ------------------------------------------------------------------------------------------------ named ones
#: IR-SDE / Refusion / Entropy-SDE pixel metrics (``codes/utils/img_utils.py``: ``tensor2img``, ``calculate_psnr``,
#: ``calculate_ssim``): round half to even, MATLAB-style SSIM, no border crop (the upstream ``test.py`` default of
#: ``crop_border = scale = 4`` is available as ``crop_border=4``). The convention the training loop validates with.
IRSDE = Convention("irsde", rounding="round", ssim="matlab", crop_border=0,
                   description="IR-SDE pixel metrics only (PSNR, MATLAB SSIM); the fast validation default")

CONVENTIONS: dict[str, Convention] = {
    "entropy_sde": IRSDE.replace(
        name="entropy_sde", metrics=("psnr", "ssim", "lpips", "dists", "niqe"), lpips_on="float",
        description="Entropy-SDE / IR-SDE: round, MATLAB SSIM, LPIPS-Alex RGB 2x-1 on the float output, DISTS, "
                    "NIQE 96px"),
    "anlightendiff_fs": Convention(
        "anlightendiff_fs", rounding="truncate", ssim="skimage", metrics=("psnr", "ssim", "ssim_gray", "lpips"),
        align="center_crop_gt", lpips_net="alex", lpips_order="bgr", lpips_range="[-1,1]",
        description="AnlightenDiff FS: truncate, skimage SSIM, ssim_gray, LPIPS-Alex BGR [-1,1]"),
    "anlightendiff_ts": Convention(
        "anlightendiff_ts", rounding="truncate", ssim="skimage", metrics=("psnr", "ssim", "ssim_gray", "lpips"),
        align="center_crop_gt", input_crop_multiple=32, lpips_net="alex", lpips_order="bgr", lpips_range="[-1,1]",
        description="AnlightenDiff TS: as FS, on the x32 center crop"),
    "reddit": Convention(
        "reddit", rounding="round", ssim="skimage", metrics=("psnr", "ssim", "lpips"), align="reddit_unpad",
        gt_mean=True, lpips_net="vgg", lpips_order="bgr", lpips_range="[0,255]", niqe="reddit",
        description="ReDDiT: round, GT-mean + truncate, skimage SSIM, LPIPS-VGG BGR [0,255], NIQE 8x8"),
    "standard": IRSDE.replace(
        name="standard", metrics=("psnr", "ssim", "lpips", "dists", "niqe"),
        description="recommended: round, MATLAB SSIM, LPIPS-Alex RGB [-1,1], DISTS, NIQE 96px, no GT-mean"),
}


def names() -> list[str]:
  return list(CONVENTIONS)


def get(name: str | Convention) -> Convention:
  """A named convention (``--protocol``), or ``name`` itself when it already is one."""
  if isinstance(name, Convention):
    return name
  if name not in CONVENTIONS:
    raise ValueError(f"unknown evaluation protocol {name!r}; expected one of {', '.join(CONVENTIONS)}")
  return CONVENTIONS[name]


__all__ = ["Convention", "IRSDE", "CONVENTIONS", "get", "names", "gt_mean_adjust", "ssim_gray_anlightendiff",
           "bgr2gray_float32", "rgb2gray_uint8_cv2", "ALL_METRICS", "LOWER_IS_BETTER"]
