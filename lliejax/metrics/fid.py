"""Fréchet Inception Distance (FID) as computed by ``pytorch-fid`` 0.3.0, with the Inception network in Flax.

What is reproduced (``pytorch_fid/inception.py`` and ``pytorch_fid/fid_score.py``):

* :class:`FIDInceptionV3` = ``InceptionV3(output_blocks=[3], resize_input=True, normalize_input=True,
  use_fid_inception=True)``: bilinear resize to 299x299 (``F.interpolate(mode='bilinear', align_corners=False)``,
  no anti-aliasing even when shrinking), ``2x - 1``, the stem and ``Mixed_5b .. Mixed_7c`` of ``fid_inception_v3``
  (the FID-specific ``FIDInceptionA`` / ``FIDInceptionC`` / ``FIDInceptionE_1`` whose 3x3 average pools ignore the
  padding, ``count_include_pad=False``, and ``FIDInceptionE_2`` whose pool branch is a 3x3 *max* pool; torchvision's
  ``InceptionB`` / ``InceptionD`` for ``Mixed_6a`` / ``Mixed_7a``), every convolution followed by BatchNorm in
  inference mode (eps 1e-3) and ReLU (torchvision ``BasicConv2d``), then the global average pool: 2048 features
  ("pool3"). The classifier ``fc`` is not used.
* :func:`activation_statistics`: ``calculate_activation_statistics`` (mean and ``np.cov(rowvar=False)`` of the
  float64 features); :func:`frechet_distance`: ``calculate_frechet_distance`` (``scipy.linalg.sqrtm`` of
  ``sigma1 @ sigma2``, retried with ``eps`` added to both diagonals when the root is not finite, the imaginary-part
  check with ``atol=1e-3``).
* Images: float in [0, 1] (uint8 is divided by 255, like ``torchvision.transforms.ToTensor`` in
  ``ImagePathDataset``), RGB, NHWC (or single HWC images; sizes may differ, each is resized to 299x299 anyway).

Weights: the user supplies pytorch-fid's ``pt_inception-2015-12-05-6726825d.pth`` (:data:`FID_WEIGHTS_FILE`, from
:data:`FID_WEIGHTS_URL`; lliejax never downloads it). :func:`load_inception` reads it with
:func:`lliejax.interop.torch_io.load_state_dict` (needs torch) or reads a ``.npz`` with the same keys written by
:func:`convert_inception` (no torch). torch ``OIHW`` convolution weights become Flax ``HWIO`` kernels; the BatchNorm
``weight``/``bias``/``running_mean``/``running_var`` become ``scale``/``bias``/``mean``/``var``. Parameter paths
mirror the torch keys: ``Mixed_5b.branch5x5_2.conv.weight`` is ``params['Mixed_5b']['branch5x5_2']['conv']
['kernel']``. The state_dict of pytorch-fid's ``InceptionV3`` module itself (keys ``blocks.2.0...``) is accepted as
well.

Numerics (``tests/test_fid.py``, float32 on CPU): with the same (random) weights, the features agree with
pytorch-fid's to ~2e-6 of their largest magnitude (elementwise < 1e-4 relative; the two libraries' convolution
algorithms sum in different orders); the bilinear resize (``jax.image.resize(antialias=False)``) agrees with
``F.interpolate`` to 1 ulp. Convolutions default to ``precision='highest'`` (exact float32 on accelerators, where
the default may use TF32/bf16 passes). :func:`frechet_distance` performs the same float64 operations as
pytorch-fid and gives the same value to rounding.

Usage::

  variables = load_inception("pt_inception-2015-12-05-6726825d.pth")
  score = fid(outputs, ground_truths, variables)          # two NHWC arrays or lists of HWC images
  acc = FIDAccumulator(variables)                           # or streaming, one image at a time
  for out, gt in pairs:
    acc.update(out, gt)
  score = acc.compute()
"""
from __future__ import annotations

import functools
import hashlib
import os
import tempfile
import warnings
from typing import Any, Iterable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from lliejax import fileutil
from lliejax.interop.keymap import ConversionError, StateDictMismatchError

Precision = Any

FID_WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_WEIGHTS_URL = ("https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
                   "pt_inception-2015-12-05-6726825d.pth")
# torch.hub's convention: the hex digits in the file name are a prefix of the file's sha256.
FID_WEIGHTS_SHA256_PREFIX = "6726825d"
WEIGHTS_ENV = "LLIEJAX_FID_WEIGHTS"
FEATURE_DIM = 2048
INPUT_SIZE = 299
BN_EPS = 1e-3

# Keys of the file that the 2048-d features do not use (classifier, BatchNorm counters).
_IGNORED_SUFFIXES = (".num_batches_tracked",)
_IGNORED_KEYS = ("fc.weight", "fc.bias")
_FID_NUM_CLASSES = 1008
# pytorch-fid's InceptionV3 module stores the same layers under ``blocks.<block>.<index>``.
_BLOCK_NAMES = {
    "blocks.0.0": "Conv2d_1a_3x3", "blocks.0.1": "Conv2d_2a_3x3", "blocks.0.2": "Conv2d_2b_3x3",
    "blocks.1.0": "Conv2d_3b_1x1", "blocks.1.1": "Conv2d_4a_3x3",
    "blocks.2.0": "Mixed_5b", "blocks.2.1": "Mixed_5c", "blocks.2.2": "Mixed_5d", "blocks.2.3": "Mixed_6a",
    "blocks.2.4": "Mixed_6b", "blocks.2.5": "Mixed_6c", "blocks.2.6": "Mixed_6d", "blocks.2.7": "Mixed_6e",
    "blocks.3.0": "Mixed_7a", "blocks.3.1": "Mixed_7b", "blocks.3.2": "Mixed_7c",
}
_BN_NAMES = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}


def _missing_weights_message(detail: str) -> str:
  return (f"{detail}. FID needs pytorch-fid's Inception-v3 weights, the file {FID_WEIGHTS_FILE} (about 91 MB). "
          f"lliejax never downloads it: get it from {FID_WEIGHTS_URL} (pytorch-fid itself caches it in "
          f"$TORCH_HOME/hub/checkpoints/, by default ~/.cache/torch/hub/checkpoints/) and pass its path, or set "
          f"${WEIGHTS_ENV}. A .npz written by lliejax.metrics.fid.convert_inception works without torch.")


class InceptionWeightsError(StateDictMismatchError):
  """The weights file does not hold pytorch-fid's FID Inception-v3 (keys, shapes or checksum differ).

  Attributes ``missing``, ``unexpected`` and ``mismatched`` hold all problems; the message lists the first few.
  """

  def __init__(self, source: str, missing: Sequence[str] = (), unexpected: Sequence[str] = (),
               mismatched: Sequence[tuple] = (), *, hint: str | None = None, limit: int = 8):
    # pylint: disable=super-init-not-called,non-parent-init-called
    self.missing, self.unexpected, self.mismatched = list(missing), list(unexpected), list(mismatched)
    self.source = source
    lines = [f"{source}: not pytorch-fid's FID Inception-v3 weights ({FID_WEIGHTS_FILE}): "
             f"{len(self.missing)} missing, {len(self.unexpected)} unexpected, {len(self.mismatched)} mis-shaped "
             f"keys"]
    if hint:
      lines.append(f"  hint: {hint}")

    def listed(title, items):
      if items:
        lines.append(f"  {title}:")
        lines.extend(f"    {k}" for k in items[:limit])
        if len(items) > limit:
          lines.append(f"    ... and {len(items) - limit} more")

    listed("missing keys", self.missing)
    listed("unexpected keys", self.unexpected)
    listed("mis-shaped keys (got vs expected)", [f"{k}: {got} vs {exp}" for k, got, exp in self.mismatched])
    ConversionError.__init__(self, "\n".join(lines))


# ------------------------------------------------------------------------------------------------ network
class BasicConv2d(nn.Module):
  """Convolution without bias, BatchNorm (inference, eps 1e-3), ReLU: torchvision ``inception.BasicConv2d``.

  Parameters ``conv/kernel`` ``(kH, kW, in, out)`` and ``bn/{scale, bias, mean, var}``. The BatchNorm is applied as
  ``x * a + (bias - mean * a)`` with ``a = scale / sqrt(var + eps)``, the form of PyTorch's CPU inference kernel.
  """

  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: tuple[int, int] = (0, 0)
  precision: Precision = "highest"

  @nn.compact
  def __call__(self, x):
    ph, pw = self.padding
    x = nn.Conv(self.features, self.kernel_size, strides=self.strides, padding=((ph, ph), (pw, pw)),
                use_bias=False, precision=self.precision, name="conv")(x)
    x = _BatchNormInference(self.features, name="bn")(x)
    return nn.relu(x)


class _BatchNormInference(nn.Module):
  """``torch.nn.BatchNorm2d(eps=1e-3)`` in ``eval()`` mode; the running statistics are plain parameters."""

  features: int
  eps: float = BN_EPS

  @nn.compact
  def __call__(self, x):
    shape = (self.features,)
    scale = self.param("scale", nn.initializers.ones, shape, jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, shape, jnp.float32)
    mean = self.param("mean", nn.initializers.zeros, shape, jnp.float32)
    var = self.param("var", nn.initializers.ones, shape, jnp.float32)
    alpha = scale / jnp.sqrt(var + self.eps)
    return x * alpha + (bias - mean * alpha)


def _avg_pool_3x3(x):
  """3x3 average pool, stride 1, padding 1, padded zeros not counted (``count_include_pad=False``)."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_3x3_s2(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


class FIDInceptionA(nn.Module):
  """``pytorch_fid/inception.py: FIDInceptionA`` (``Mixed_5b/5c/5d``): 1x1 | 1x1-5x5 | 1x1-3x3-3x3 | avgpool-1x1.

  The pool branch averages over the valid pixels only (``count_include_pad=False``, like TensorFlow).
  """

  pool_features: int
  precision: Precision = "highest"

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b1 = conv(64, (1, 1), name="branch1x1")(x)
    b5 = conv(48, (1, 1), name="branch5x5_1")(x)
    b5 = conv(64, (5, 5), padding=(2, 2), name="branch5x5_2")(b5)
    b3 = conv(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(b3)
    b3 = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_3")(b3)
    bp = conv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


class InceptionB(nn.Module):
  """torchvision ``inception.InceptionB`` (``Mixed_6a``, unchanged by pytorch-fid): grid reduction 35 -> 17."""

  precision: Precision = "highest"

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b3 = conv(384, (3, 3), strides=(2, 2), name="branch3x3")(x)
    bd = conv(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = conv(96, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = conv(96, (3, 3), strides=(2, 2), name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_3x3_s2(x)], axis=-1)


class FIDInceptionC(nn.Module):
  """``pytorch_fid/inception.py: FIDInceptionC`` (``Mixed_6b..6e``): factorised 7x7 branches, pool without pads."""

  channels_7x7: int
  precision: Precision = "highest"

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv2d, precision=self.precision)
    c7 = self.channels_7x7
    b1 = conv(192, (1, 1), name="branch1x1")(x)
    b7 = conv(c7, (1, 1), name="branch7x7_1")(x)
    b7 = conv(c7, (1, 7), padding=(0, 3), name="branch7x7_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7_3")(b7)
    bd = conv(c7, (1, 1), name="branch7x7dbl_1")(x)
    bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_2")(bd)
    bd = conv(c7, (1, 7), padding=(0, 3), name="branch7x7dbl_3")(bd)
    bd = conv(c7, (7, 1), padding=(3, 0), name="branch7x7dbl_4")(bd)
    bd = conv(192, (1, 7), padding=(0, 3), name="branch7x7dbl_5")(bd)
    bp = conv(192, (1, 1), name="branch_pool")(_avg_pool_3x3(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


class InceptionD(nn.Module):
  """torchvision ``inception.InceptionD`` (``Mixed_7a``, unchanged by pytorch-fid): grid reduction 17 -> 8."""

  precision: Precision = "highest"

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b3 = conv(192, (1, 1), name="branch3x3_1")(x)
    b3 = conv(320, (3, 3), strides=(2, 2), name="branch3x3_2")(b3)
    b7 = conv(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = conv(192, (1, 7), padding=(0, 3), name="branch7x7x3_2")(b7)
    b7 = conv(192, (7, 1), padding=(3, 0), name="branch7x7x3_3")(b7)
    b7 = conv(192, (3, 3), strides=(2, 2), name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_3x3_s2(x)], axis=-1)


class FIDInceptionE(nn.Module):
  """``pytorch_fid/inception.py: FIDInceptionE_1`` (``pool='avg'``, ``Mixed_7b``) / ``FIDInceptionE_2``
  (``pool='max'``, ``Mixed_7c``).

  Branches 1x1 | 1x1-(1x3, 3x1) | 1x1-3x3-(1x3, 3x1) | pool-1x1 (2048 channels). ``FIDInceptionE_1`` averages
  without the padded zeros; ``FIDInceptionE_2`` takes a 3x3 max pool (stride 1, padding 1), as the TensorFlow FID
  graph does.
  """

  pool: str = "avg"
  precision: Precision = "highest"

  @nn.compact
  def __call__(self, x):
    conv = functools.partial(BasicConv2d, precision=self.precision)
    b1 = conv(320, (1, 1), name="branch1x1")(x)
    b3 = conv(384, (1, 1), name="branch3x3_1")(x)
    b3 = [conv(384, (1, 3), padding=(0, 1), name="branch3x3_2a")(b3),
          conv(384, (3, 1), padding=(1, 0), name="branch3x3_2b")(b3)]
    bd = conv(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = conv(384, (3, 3), padding=(1, 1), name="branch3x3dbl_2")(bd)
    bd = [conv(384, (1, 3), padding=(0, 1), name="branch3x3dbl_3a")(bd),
          conv(384, (3, 1), padding=(1, 0), name="branch3x3dbl_3b")(bd)]
    if self.pool == "avg":
      pooled = _avg_pool_3x3(x)
    elif self.pool == "max":
      pooled = nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))
    else:
      raise ValueError(f"unknown pool {self.pool!r}; expected 'avg' or 'max'")
    bp = conv(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, *b3, *bd, bp], axis=-1)


def resize_bilinear(x: jax.Array, size: int = INPUT_SIZE) -> jax.Array:
  """``F.interpolate(x, (size, size), mode='bilinear', align_corners=False)`` of an NHWC batch (no anti-aliasing).

  ``jax.image.resize(antialias=False)`` samples at half-pixel centres and clamps at the borders like PyTorch (equal
  to 1 ulp in ``tests/test_fid.py``). An input already ``size x size`` is returned unchanged, which is what
  PyTorch computes (every sample lands on a pixel centre with weight 1).
  """
  n, h, w, c = x.shape
  if (h, w) == (size, size):
    return x
  return jax.image.resize(x, (n, size, size, c), method="bilinear", antialias=False)


class FIDInceptionV3(nn.Module):
  """``pytorch_fid/inception.py: InceptionV3(output_blocks=[3], resize_input=True, normalize_input=True,
  use_fid_inception=True)``, NHWC.

  Input: float NHWC RGB in [0, 1], any spatial size. Output: ``(N, 2048)`` pool3 features (pytorch-fid returns
  them as ``(N, 2048, 1, 1)``).

  Attributes:
    resize_input: bilinearly resize to 299x299 first (:func:`resize_bilinear`).
    normalize_input: map [0, 1] to [-1, 1] (``2x - 1``, after the resize).
    precision: convolution precision; ``'highest'`` = exact float32 everywhere.
  """

  resize_input: bool = True
  normalize_input: bool = True
  precision: Precision = "highest"

  @nn.compact
  def __call__(self, x):
    if x.ndim != 4 or x.shape[-1] != 3:
      raise ValueError(f"FIDInceptionV3 expects an NHWC batch of RGB images, got shape {x.shape}")
    x = x.astype(jnp.float32)
    if self.resize_input:
      x = resize_bilinear(x)
    if self.normalize_input:
      x = 2 * x - 1
    conv = functools.partial(BasicConv2d, precision=self.precision)
    p = dict(precision=self.precision)
    # Block 0 (up to maxpool1) and block 1 (up to maxpool2).
    x = conv(32, (3, 3), strides=(2, 2), name="Conv2d_1a_3x3")(x)
    x = conv(32, (3, 3), name="Conv2d_2a_3x3")(x)
    x = conv(64, (3, 3), padding=(1, 1), name="Conv2d_2b_3x3")(x)
    x = _max_pool_3x3_s2(x)
    x = conv(80, (1, 1), name="Conv2d_3b_1x1")(x)
    x = conv(192, (3, 3), name="Conv2d_4a_3x3")(x)
    x = _max_pool_3x3_s2(x)
    # Block 2 (up to the auxiliary classifier's input).
    x = FIDInceptionA(32, name="Mixed_5b", **p)(x)
    x = FIDInceptionA(64, name="Mixed_5c", **p)(x)
    x = FIDInceptionA(64, name="Mixed_5d", **p)(x)
    x = InceptionB(name="Mixed_6a", **p)(x)
    x = FIDInceptionC(128, name="Mixed_6b", **p)(x)
    x = FIDInceptionC(160, name="Mixed_6c", **p)(x)
    x = FIDInceptionC(160, name="Mixed_6d", **p)(x)
    x = FIDInceptionC(192, name="Mixed_6e", **p)(x)
    # Block 3, then the adaptive average pool to 1x1.
    x = InceptionD(name="Mixed_7a", **p)(x)
    x = FIDInceptionE("avg", name="Mixed_7b", **p)(x)
    x = FIDInceptionE("max", name="Mixed_7c", **p)(x)
    return jnp.mean(x, axis=(1, 2))


# ------------------------------------------------------------------------------------------------ weights
@functools.lru_cache(maxsize=1)
def _expected_shapes() -> dict[str, tuple[int, ...]]:
  """``{torch key: torch shape}`` of every parameter the features use, from the Flax module's own shapes."""
  shapes = jax.eval_shape(FIDInceptionV3().init, jax.random.PRNGKey(0),
                          jax.ShapeDtypeStruct((1, 75, 75, 3), jnp.float32))["params"]
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(shapes)[0]:
    names = [k.key for k in path]
    *module, layer, name = names
    prefix = ".".join(module + [layer])
    if layer == "conv":
      kh, kw, cin, cout = leaf.shape
      out[f"{prefix}.weight"] = (cout, cin, kh, kw)
    else:
      torch_name = {v: k for k, v in _BN_NAMES.items()}[name]
      out[f"{prefix}.{torch_name}"] = tuple(leaf.shape)
  return out


def _canonical_key(key: str) -> str:
  """A key of pytorch-fid's ``InceptionV3`` module (``blocks.2.0.…``) as the ``fid_inception_v3`` key."""
  for block, name in _BLOCK_NAMES.items():
    if key.startswith(block + "."):
      return name + key[len(block):]
  return key


def _to_numpy(v) -> np.ndarray:
  if type(v).__module__.startswith("torch"):
    return v.detach().cpu().numpy()
  return np.asarray(v)


def _checked_arrays(state_dict: Mapping[str, Any], source: str) -> dict[str, np.ndarray]:
  """The used entries of ``state_dict`` as float32 numpy arrays, keyed like ``fid_inception_v3``; all checked."""
  expected = _expected_shapes()
  sd = {_canonical_key(k): v for k, v in state_dict.items()}
  unexpected = sorted(k for k in sd if k not in expected and k not in _IGNORED_KEYS
                      and not k.endswith(_IGNORED_SUFFIXES))
  missing = [k for k in expected if k not in sd]
  mismatched = [(k, tuple(sd[k].shape), shape) for k, shape in expected.items()
                if k in sd and tuple(sd[k].shape) != shape]
  hint = None
  if "fc.weight" in sd and tuple(sd["fc.weight"].shape)[:1] != (_FID_NUM_CLASSES,):
    mismatched.append(("fc.weight", tuple(sd["fc.weight"].shape), (_FID_NUM_CLASSES, FEATURE_DIM)))
    hint = ("a classifier with other than 1008 classes: this looks like torchvision's ImageNet Inception-v3 "
            "(inception_v3_google-*.pth), whose weights and pooling differ; FID needs " + FID_WEIGHTS_FILE)
  elif any(k.startswith("AuxLogits.") for k in sd):
    hint = "AuxLogits keys: this looks like torchvision's Inception-v3, not pytorch-fid's FID weights"
  if missing or unexpected or mismatched:
    raise InceptionWeightsError(source, missing, unexpected, mismatched, hint=hint)
  return {k: np.asarray(_to_numpy(sd[k]), dtype=np.float32) for k in expected}


def inception_variables(state_dict: Mapping[str, Any], *, source: str = "state_dict") -> dict:
  """Flax variables ``{'params': ...}`` of :class:`FIDInceptionV3` from pytorch-fid's Inception state_dict.

  Args:
    state_dict: ``{key: tensor or array}`` with the keys of ``fid_inception_v3()`` (the layout of
      :data:`FID_WEIGHTS_FILE`; ``fc.*`` and ``*.num_batches_tracked`` are optional and ignored) or of
      pytorch-fid's ``InceptionV3`` module (``blocks.<i>.<j>.…``).
    source: name used in error messages (e.g. the file path).

  Raises:
    InceptionWeightsError: listing (the first few) missing, unexpected and mis-shaped keys.
  """
  params: dict = {}
  for key, value in _checked_arrays(state_dict, source).items():
    *module, layer, name = key.split(".")
    node = params
    for part in module + [layer]:
      node = node.setdefault(part, {})
    if layer == "conv":
      node["kernel"] = jnp.asarray(value.transpose(2, 3, 1, 0))  # OIHW -> HWIO
    else:
      node[_BN_NAMES[name]] = jnp.asarray(value)
  return {"params": params}


def default_weights_path() -> str | None:
  """``$LLIEJAX_FID_WEIGHTS``, else pytorch-fid's torch.hub cache copy if it exists, else ``None``.

  The cache is ``$TORCH_HOME/hub/checkpoints/`` (``TORCH_HOME`` defaults to ``$XDG_CACHE_HOME/torch``, i.e.
  ``~/.cache/torch``), where ``pytorch_fid`` stores the file after its own first run.
  """
  env = os.environ.get(WEIGHTS_ENV)
  if env:
    return env
  torch_home = os.environ.get("TORCH_HOME") or os.path.join(
      os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "torch")
  cached = os.path.join(torch_home, "hub", "checkpoints", FID_WEIGHTS_FILE)
  return cached if os.path.isfile(cached) else None


def _check_digest(path: str) -> None:
  """The torch.hub integrity check for a file bearing the official name (sha256 prefix in the name)."""
  if os.path.basename(path) != FID_WEIGHTS_FILE:
    return
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 22), b""):
      digest.update(chunk)
  if not digest.hexdigest().startswith(FID_WEIGHTS_SHA256_PREFIX):
    raise InceptionWeightsError(
        path, hint=f"sha256 {digest.hexdigest()[:16]}... does not start with {FID_WEIGHTS_SHA256_PREFIX} as the "
        f"file name promises: a truncated/corrupt download or another file under the official name; fetch it "
        f"again from {FID_WEIGHTS_URL} (or pass check_hash=False)")


def _read_state_dict(path: str) -> dict:
  if path.endswith(".npz"):
    try:
      with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}
    except (OSError, ValueError, EOFError) as e:
      raise InceptionWeightsError(path, hint=f"cannot read as .npz: {type(e).__name__}: {e}") from e
  from lliejax.interop.torch_io import load_state_dict  # pylint: disable=import-outside-toplevel
  return load_state_dict(path)


def load_inception(path: str | os.PathLike | None = None, *, check_hash: bool = True) -> dict:
  """Flax variables of :class:`FIDInceptionV3` read from pytorch-fid's weights.

  Args:
    path: :data:`FID_WEIGHTS_FILE` (a torch state_dict, read safely with
      :func:`lliejax.interop.torch_io.load_state_dict`; needs torch) or a ``.npz`` with the same keys (see
      :func:`convert_inception`; no torch needed). ``None``: :func:`default_weights_path` (``$LLIEJAX_FID_WEIGHTS``
      or pytorch-fid's torch.hub cache). Nothing is ever downloaded.
    check_hash: for a file named exactly :data:`FID_WEIGHTS_FILE`, check that its sha256 starts with
      ``6726825d`` (torch.hub's convention; ~0.3 s).

  Returns:
    ``{'params': ...}`` for ``FIDInceptionV3().apply``, :func:`fid`, :class:`FIDAccumulator`.

  Raises:
    FileNotFoundError: no path given and none found, or no such file (the message names :data:`FID_WEIGHTS_FILE`
      and :data:`FID_WEIGHTS_URL`).
    InceptionWeightsError: the keys/shapes are not those of the FID Inception (lists a few of each), a wrong
      checksum, or an unreadable ``.npz``.
    lliejax.interop.torch_io.CheckpointFormatError: an unreadable ``.pth`` or torch not installed.
  """
  if path is None:
    path = default_weights_path()
    if path is None:
      raise FileNotFoundError(_missing_weights_message("no Inception weights path given"))
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(_missing_weights_message(f"{path}: no such file"))
  if check_hash:
    _check_digest(path)
  return inception_variables(_read_state_dict(path), source=path)


def convert_inception(pth: str | os.PathLike, npz_out: str | os.PathLike, *, overwrite: bool = False,
                      check_hash: bool = True) -> str:
  """Writes the used weights of :data:`FID_WEIGHTS_FILE` to a ``.npz`` (torch keys, float32), so that
  :func:`load_inception` works without torch. Needs torch. Returns the absolute output path.

  Raises:
    ValueError: ``npz_out`` does not end in ``.npz``. FileExistsError: it exists and ``overwrite`` is false.
    Otherwise as :func:`load_inception`.
  """
  pth = os.fspath(pth)
  out = os.path.abspath(os.path.expanduser(os.fspath(npz_out)))
  if not out.endswith(".npz"):
    raise ValueError(f"{out}: the output name must end in .npz (load_inception picks the reader by extension)")
  if os.path.exists(out) and not overwrite:
    raise FileExistsError(f"{out} already exists; pass overwrite=True to replace it")
  if not os.path.isfile(pth):
    raise FileNotFoundError(_missing_weights_message(f"{pth}: no such file"))
  if check_hash:
    _check_digest(pth)
  arrays = _checked_arrays(_read_state_dict(pth), pth)
  os.makedirs(os.path.dirname(out), exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".lliejax-", suffix=".npz.tmp", dir=os.path.dirname(out))
  try:
    fileutil.make_public(tmp)  # mkstemp makes 0600; the result follows the umask
    with os.fdopen(fd, "wb") as f:  # a file object: np.savez would append ".npz" to a name
      np.savez(f, **arrays)
    os.replace(tmp, out)
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)
  return out


# ------------------------------------------------------------------------------------------------ features
@functools.partial(jax.jit, static_argnames=("precision",))
def _features_299(variables, x, precision="highest"):
  return FIDInceptionV3(resize_input=False, precision=precision).apply(variables, x)


@jax.jit
def _prepare(image):
  """One HWC image (float [0, 1] or uint8) -> float32 299x299x3 (the resize of ``InceptionV3.forward``)."""
  x = image.astype(jnp.float32) / 255 if image.dtype == jnp.uint8 else image.astype(jnp.float32)
  return resize_bilinear(x[None])[0]


def _as_images(images) -> Iterable:
  """One HWC image, an NHWC batch, or an iterable of HWC images -> iterable of HWC images."""
  if isinstance(images, (np.ndarray, jax.Array)):
    if images.ndim == 3:
      return [images]
    if images.ndim == 4:
      return images
    raise ValueError(f"expected an HWC image or an NHWC batch, got shape {images.shape}")
  return images


def _check_image(img) -> Any:
  if not isinstance(img, (np.ndarray, jax.Array)):
    img = np.asarray(img)
  if img.ndim == 2:
    img = img[..., None]
  if img.ndim != 3 or img.shape[-1] not in (1, 3):
    raise ValueError(f"FID expects RGB HWC images (grayscale is repeated), got shape {img.shape}")
  if not (jnp.issubdtype(img.dtype, jnp.floating) or img.dtype == jnp.uint8):
    raise ValueError(f"FID expects float images in [0, 1] or uint8, got dtype {img.dtype}")
  if img.shape[-1] == 1:  # like pytorch-fid's PIL .convert('RGB')
    img = jnp.repeat(jnp.asarray(img), 3, axis=-1)
  return img


class InceptionFeatures:
  """Streams images through :class:`FIDInceptionV3` in batches; collects the ``(N, 2048)`` float64 features.

  Each image is resized on its own (a jit per distinct input size), so sizes may differ; full batches of
  ``batch_size`` run at once and the remainder is padded to the next power of two (at most ``batch_size``), so the
  network compiles for a few batch shapes only.
  """

  def __init__(self, variables: Mapping, *, batch_size: int = 50, precision: Precision = "highest"):
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    self.variables, self.batch_size, self.precision = variables, batch_size, precision
    self.reset()

  def reset(self) -> None:
    self._pending: list[jax.Array] = []
    self._done: list[np.ndarray] = []
    self._count = 0

  def __len__(self) -> int:
    return self._count

  def add(self, images) -> None:
    """Adds one HWC image, an NHWC batch or an iterable of HWC images (float in [0, 1], or uint8)."""
    for img in _as_images(images):
      self._pending.append(_prepare(jnp.asarray(_check_image(img))))
      self._count += 1
      if len(self._pending) == self.batch_size:
        self._run()

  def _run(self) -> None:
    n = len(self._pending)
    if not n:
      return
    size = min(self.batch_size, 1 << (n - 1).bit_length())
    batch = jnp.stack(self._pending + [jnp.zeros_like(self._pending[0])] * (size - n))
    feats = _features_299(self.variables, batch, precision=self.precision)
    self._done.append(np.asarray(feats, dtype=np.float64)[:n])
    self._pending = []

  def features(self) -> np.ndarray:
    """All features so far, ``(N, 2048)`` float64, in the order the images were added."""
    self._run()
    if not self._done:
      return np.zeros((0, FEATURE_DIM), np.float64)
    if len(self._done) > 1:
      self._done = [np.concatenate(self._done)]
    return self._done[0]


def inception_features(images, variables: Mapping, *, batch_size: int = 50,
                       precision: Precision = "highest") -> np.ndarray:
  """``(N, 2048)`` float64 pool3 features (``pytorch_fid/fid_score.py: get_activations``).

  Args:
    images: an NHWC batch or an iterable of HWC images (sizes may differ), RGB, float in [0, 1] or uint8.
    variables: from :func:`load_inception`.
    batch_size: images per network call.
    precision: convolution precision (``'highest'`` = exact float32).
  """
  stream = InceptionFeatures(variables, batch_size=batch_size, precision=precision)
  stream.add(images)
  return stream.features()


# ------------------------------------------------------------------------------------------------ distance
def activation_statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """``(mu, sigma)``: mean and covariance (``np.cov(rowvar=False)``, N-1) of ``(N, D)`` features, in float64.

  ``pytorch_fid/fid_score.py: calculate_activation_statistics``.

  Raises:
    ValueError: fewer than 2 feature vectors (the covariance is undefined; pytorch-fid would give NaN).
  """
  act = np.asarray(features, dtype=np.float64)
  if act.ndim != 2 or act.shape[0] < 2:
    raise ValueError(f"FID statistics need at least 2 feature vectors (N, D), got shape {act.shape}")
  return np.mean(act, axis=0), np.cov(act, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
  """Fréchet distance ``|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 sqrt(sigma1 sigma2))`` of two Gaussians.

  ``pytorch_fid/fid_score.py: calculate_frechet_distance``, same float64 operations: ``scipy.linalg.sqrtm`` of
  ``sigma1 @ sigma2``; if the root has non-finite entries (a singular product), a warning and a retry with ``eps``
  added to both diagonals; a complex root is accepted when the imaginary parts of its diagonal are within 1e-3 of
  zero (then its real part is used), otherwise ``ValueError``.

  Raises:
    ValueError: mismatched shapes, or a significant imaginary component.
  """
  from scipy import linalg  # pylint: disable=import-outside-toplevel
  mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
  sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
  if mu1.shape != mu2.shape:
    raise ValueError(f"mean vectors of different lengths: {mu1.shape} vs {mu2.shape}")
  if sigma1.shape != sigma2.shape:
    raise ValueError(f"covariances of different shapes: {sigma1.shape} vs {sigma2.shape}")
  diff = mu1 - mu2
  covmean = linalg.sqrtm(sigma1.dot(sigma2))
  if not np.isfinite(covmean).all():
    warnings.warn(f"FID: the product of the covariances is singular; adding {eps} to their diagonals",
                  RuntimeWarning, stacklevel=2)
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = linalg.sqrtm((sigma1 + offset).dot(sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f"FID: imaginary component {np.max(np.abs(covmean.imag))} in sqrt(sigma1 sigma2)")
    covmean = covmean.real
  return float(diff.dot(diff) + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def fid(images_a, images_b, variables: Mapping, *, batch_size: int = 50, precision: Precision = "highest") -> float:
  """FID between two image sets (pytorch-fid's ``calculate_fid_given_paths`` on in-memory images).

  Args:
    images_a, images_b: NHWC batches or iterables of HWC images (sizes may differ), float in [0, 1] or uint8;
      at least 2 images each. The value is symmetric in the two sets.
    variables: from :func:`load_inception`.
    batch_size: images per network call.
    precision: convolution precision.
  """
  kw = dict(batch_size=batch_size, precision=precision)
  mu1, s1 = activation_statistics(inception_features(images_a, variables, **kw))
  mu2, s2 = activation_statistics(inception_features(images_b, variables, **kw))
  return frechet_distance(mu1, s1, mu2, s2)


class FIDAccumulator:
  """Streaming FID between generated ("fake") images and references ("real"), fed one image or batch at a time.

  ``update(output, target)`` adds to both sets (either may be ``None``); :meth:`compute` gives the FID of the
  outputs against the targets, or against precomputed reference statistics (e.g. ``mu``/``sigma`` of a
  pytorch-fid ``.npz``).
  """

  def __init__(self, variables: Mapping, *, batch_size: int = 50, precision: Precision = "highest"):
    kw = dict(batch_size=batch_size, precision=precision)
    self.fake = InceptionFeatures(variables, **kw)
    self.real = InceptionFeatures(variables, **kw)

  def update(self, fake=None, real=None) -> None:
    """Adds images (each: one HWC image, an NHWC batch, or an iterable of HWC images) to either or both sets."""
    if fake is not None:
      self.fake.add(fake)
    if real is not None:
      self.real.add(real)

  def reset(self) -> None:
    self.fake.reset()
    self.real.reset()

  def statistics(self, which: str = "fake") -> tuple[np.ndarray, np.ndarray]:
    """``(mu, sigma)`` of the ``'fake'`` or ``'real'`` set."""
    if which not in ("fake", "real"):
      raise ValueError(f"which must be 'fake' or 'real', got {which!r}")
    return activation_statistics((self.fake if which == "fake" else self.real).features())

  def compute(self, real_statistics: tuple[np.ndarray, np.ndarray] | None = None) -> float:
    """FID of the fake set against the real set, or against ``real_statistics = (mu, sigma)`` if given."""
    mu1, s1 = self.statistics("fake")
    mu2, s2 = real_statistics if real_statistics is not None else self.statistics("real")
    return frechet_distance(mu1, s1, mu2, s2)


__all__ = [
    "FID_WEIGHTS_FILE", "FID_WEIGHTS_URL", "FIDAccumulator", "FIDInceptionV3", "InceptionFeatures",
    "InceptionWeightsError", "activation_statistics", "convert_inception", "default_weights_path", "fid",
    "frechet_distance", "inception_features", "inception_variables", "load_inception", "resize_bilinear",
]
