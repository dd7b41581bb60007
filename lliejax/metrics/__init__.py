"""Image quality metrics and the evaluation conventions of the three code bases.

* :mod:`~lliejax.metrics.pixel`: PSNR / SSIM (numpy float64 for reporting, jax for training), uint8 conversion,
  BT.601 luma;
* :mod:`~lliejax.metrics.perceptual`: LPIPS (AlexNet, VGG16) and DISTS in Flax with the published weights;
* :mod:`~lliejax.metrics.niqe`: NIQE, standard (96x96 patches, scikit-video/MATLAB) and ReDDiT's 8x8 variant;
* :mod:`~lliejax.metrics.fid`: FID with pytorch-fid's InceptionV3 in Flax (weights supplied by the user);
* :mod:`~lliejax.metrics.conventions`: :class:`Convention`, one per paper (``entropy_sde``, ``anlightendiff_fs``,
  ``anlightendiff_ts``, ``reddit``, ``standard``), fixing quantisation, cropping, GT-mean, colour order and value
  range per metric;
* :mod:`~lliejax.metrics.collection`: the clu collection of the training loop's scalars.

The network metrics load lazily (``from lliejax.metrics import perceptual, niqe, fid``); importing this package
reads no weights.
"""
from lliejax.metrics.collection import train_collection
from lliejax.metrics.pixel import gaussian_window_1d, psnr, psnr_jax, rgb_to_y, ssim, ssim_jax, to_uint8
from lliejax.metrics.conventions import IRSDE, Convention  # pylint: disable=g-bad-import-order

__all__ = [
    "Convention", "IRSDE", "to_uint8", "rgb_to_y", "psnr", "ssim", "gaussian_window_1d", "psnr_jax", "ssim_jax",
    "train_collection",
]
