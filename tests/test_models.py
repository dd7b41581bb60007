"""ConditionalNAFNet: parameter count, names, padding/cropping, time embedding, block semantics."""
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lliejax.methods import count_params
from lliejax.models import layers, nafnet


def _init_shapes(model, size=32):
  x = jnp.zeros((1, size, size, 3))
  return jax.eval_shape(lambda: model.init(jax.random.key(0), x, x, jnp.ones((1,), jnp.int32)))["params"]


def test_lowlight_parameter_count_and_names():
  params = _init_shapes(nafnet.ConditionalNAFNet())
  assert count_params(params) == 287_965_571
  assert set(params) >= {"time_mlp_1", "time_mlp_3", "intro", "ending", "encoders_4_27", "middle_blks_0",
                         "decoders_4_0", "ups_0_0", "downs_4"}
  blk = params["encoders_4_27"]
  assert blk["conv2"]["kernel"].shape == (3, 3, 1, 2048)  # depthwise
  assert blk["mlp_1"]["kernel"].shape == (128, 4096)
  assert blk["norm1"]["g"].shape == (1024,) and blk["beta"].shape == (1024,)
  assert "bias" not in params["ups_0_0"] and params["ups_0_0"]["kernel"].shape == (1, 1, 2048, 4096)
  assert params["downs_0"]["kernel"].shape == (2, 2, 64, 128)
  # 707 tensors in the official state_dict.
  assert len(jax.tree_util.tree_leaves(params)) == 707


SMALL = dict(width=8, enc_blk_nums=(1, 1, 2), middle_blk_num=1, dec_blk_nums=(1, 1, 1))


@pytest.fixture(scope="module")
def small():
  model = nafnet.ConditionalNAFNet(**SMALL)
  x = jnp.zeros((1, 8, 8, 3))
  params = model.init(jax.random.key(0), x, x, jnp.ones((1,), jnp.int32))["params"]
  # Non-zero beta/gamma so that every branch contributes.
  params = jax.tree_util.tree_map_with_path(
      lambda p, v: jax.random.normal(jax.random.key(len(str(p))), v.shape) * 0.5
      if p[-1].key in ("beta", "gamma") else v, params)
  return model, params


def test_zero_init_beta_gamma_and_torch_like_init():
  model = nafnet.ConditionalNAFNet(**SMALL)
  x = jnp.zeros((1, 8, 8, 3))
  p = model.init(jax.random.key(1), x, x, jnp.ones((1,), jnp.int32))["params"]
  assert float(jnp.abs(p["encoders_0_0"]["beta"]).max()) == 0.0
  assert float(jnp.abs(p["encoders_0_0"]["gamma"]).max()) == 0.0
  assert bool(jnp.all(p["encoders_0_0"]["norm1"]["g"] == 1))
  k = p["encoders_2_1"]["conv1"]["kernel"]  # fan_in 32: U(+-1/sqrt(32))
  assert float(jnp.abs(k).max()) <= 1 / math.sqrt(32) + 1e-7
  assert float(jnp.std(k)) == pytest.approx(1 / math.sqrt(32) / math.sqrt(3), rel=0.15)


@pytest.mark.parametrize("h,w", [(37, 53), (8, 8), (17, 9)])
def test_padding_then_crop_equals_explicit_zero_padding(small, h, w):
  """Any size: the output equals running the padded input and cropping (bottom/right zero padding)."""
  model, params = small
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.random((2, h, w, 3)), jnp.float32)
  mu = jnp.asarray(rng.random((2, h, w, 3)), jnp.float32)
  t = jnp.array([3, 77])
  out = model.apply({"params": params}, x, mu, t)
  assert out.shape == (2, h, w, 3)
  ph, pw = (-h) % 8, (-w) % 8
  # Padding x and mu with zeros gives x - mu = 0 and mu = 0 in the pad, as the network's own padding.
  pad = lambda a: jnp.pad(a, ((0, 0), (0, ph), (0, pw), (0, 0)))
  full = model.apply({"params": params}, pad(x), pad(mu), t)
  np.testing.assert_allclose(out, full[:, :h, :w], atol=1e-5)


def test_batch_independence_and_scalar_time(small):
  model, params = small
  x = jax.random.uniform(jax.random.key(2), (3, 16, 16, 3))
  mu = x * 0.3
  t = jnp.array([5, 5, 5])
  full = model.apply({"params": params}, x, mu, t)
  one = model.apply({"params": params}, x[1:2], mu[1:2], 5)
  np.testing.assert_allclose(full[1:2], one, atol=1e-5)


def test_time_conditioning_matters(small):
  model, params = small
  x = jax.random.uniform(jax.random.key(2), (1, 16, 16, 3))
  a = model.apply({"params": params}, x, x * 0.3, jnp.array([1]))
  b = model.apply({"params": params}, x, x * 0.3, jnp.array([90]))
  assert float(jnp.abs(a - b).max()) > 1e-3


def test_sinusoidal_embedding_values():
  e = layers.sinusoidal_embedding(jnp.array([0, 7]), 64)
  f = np.exp(-np.arange(32) * math.log(10000) / 31)
  np.testing.assert_allclose(e[1], np.concatenate([np.sin(7 * f), np.cos(7 * f)]), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(e[0], np.concatenate([np.zeros(32), np.ones(32)]))


def test_pixel_shuffle_matches_torch_semantics():
  # torch: out[c, h*r+i, w*r+j] = in[c*r*r + i*r + j, h, w]
  c, r = 2, 2
  x = np.arange(1 * 3 * 4 * c * r * r, dtype=np.float32).reshape(1, 3, 4, c * r * r)
  y = np.asarray(layers.pixel_shuffle(jnp.asarray(x), r))
  for ch in range(c):
    for i in range(r):
      for j in range(r):
        np.testing.assert_array_equal(y[0, i::r, j::r, ch], x[0, :, :, ch * r * r + i * r + j])


@pytest.mark.parametrize("module,reference", [
    (lambda: layers.Conv1x1(5), lambda: nn.Conv(5, (1, 1))),
    (lambda: layers.DepthwiseConv3x3(4), lambda: nn.Conv(4, (3, 3), padding=1, feature_group_count=4)),
    (lambda: layers.Down2x2(8), lambda: nn.Conv(8, (2, 2), strides=2, padding="VALID")),
])
def test_fast_conv_forms_equal_lax_convolutions(module, reference):
  """Same params, same outputs and gradients as flax's grouped/strided convolutions."""
  x = jax.random.normal(jax.random.key(0), (2, 8, 6, 4))
  m, r = module(), reference()
  p = m.init(jax.random.key(1), x)
  np.testing.assert_allclose(m.apply(p, x), r.apply(p, x), atol=1e-5)
  loss = lambda mod: (lambda p, x: jnp.sum(jnp.sin(mod.apply(p, x))))
  gm = jax.grad(loss(m), argnums=(0, 1))(p, x)
  gr = jax.grad(loss(r), argnums=(0, 1))(p, x)
  for a, b in zip(jax.tree_util.tree_leaves(gm), jax.tree_util.tree_leaves(gr)):
    np.testing.assert_allclose(a, b, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("padding", ["same", "valid"])
@pytest.mark.parametrize("shape,chunks", [((2, 9, 7, 5, 6), 8), ((1, 3, 3, 2, 3), 8), ((3, 12, 20, 4, 4), 3)])
def test_conv3x3_gradients_against_float64(padding, shape, chunks):
  """``layers.conv3x3``: forward, input gradient and the row-shifted kernel gradient against a float64 numpy
  cross-correlation (odd sizes, one image, more chunks than rows of a tiny image)."""
  b, h, w, c, co = shape
  rng = np.random.default_rng(3)
  x = rng.standard_normal((b, h, w, c))
  k = rng.standard_normal((3, 3, c, co))
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))) if padding == "same" else x
  ho, wo = xp.shape[1] - 2, xp.shape[2] - 2
  g = rng.standard_normal((b, ho, wo, co))
  ref_y = sum(np.einsum("bhwc,cd->bhwd", xp[:, i:i + ho, j:j + wo], k[i, j]) for i in range(3) for j in range(3))
  ref_k = np.stack([np.einsum("bhwc,bhwd->cd", xp[:, i:i + ho, j:j + wo], g) for i in range(3) for j in range(3)])
  ref_xp = np.zeros_like(xp)
  for i in range(3):
    for j in range(3):
      ref_xp[:, i:i + ho, j:j + wo] += np.einsum("bhwd,cd->bhwc", g, k[i, j])
  ref_x = ref_xp[:, 1:-1, 1:-1] if padding == "same" else ref_xp
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  y, vjp = jax.vjp(lambda x, k: layers.conv3x3(x, k, padding), f32(x), f32(k))
  gx, gk = vjp(f32(g))
  np.testing.assert_allclose(y, ref_y, atol=1e-4 * np.abs(ref_y).max())
  np.testing.assert_allclose(gx, ref_x, atol=1e-4 * np.abs(ref_x).max())
  np.testing.assert_allclose(gk, ref_k.reshape(3, 3, c, co), atol=2e-6 * np.abs(ref_k).max())
  direct = layers.kernel_grad3x3(f32(xp), f32(g), chunks=chunks)
  np.testing.assert_allclose(direct, ref_k.reshape(3, 3, c, co), atol=2e-6 * np.abs(ref_k).max())
  with pytest.raises(ValueError, match="padding must be 'same' or 'valid', got 'SAME'"):
    layers.conv3x3(f32(x), f32(k), "SAME")


def test_layernorm_biased_variance():
  x = jax.random.normal(jax.random.key(0), (2, 3, 3, 6)) * 3 + 1
  ln = nafnet.LayerNorm2d(6)
  p = ln.init(jax.random.key(0), x)
  y = np.asarray(ln.apply(p, x))
  xn = np.asarray(x, np.float64)
  want = (xn - xn.mean(-1, keepdims=True)) / np.sqrt(xn.var(-1, keepdims=True) + 1e-5)
  np.testing.assert_allclose(y, want, atol=1e-5)


def test_mismatched_levels_error():
  m = nafnet.ConditionalNAFNet(width=8, enc_blk_nums=(1, 1), dec_blk_nums=(1,))
  x = jnp.zeros((1, 8, 8, 3))
  with pytest.raises(ValueError, match="same number of levels"):
    m.init(jax.random.key(0), x, x, jnp.ones((1,), jnp.int32))


def _deep_net(barriers: bool) -> nafnet.ConditionalNAFNet:
  return nafnet.ConditionalNAFNet(width=4, enc_blk_nums=(1, 6), middle_blk_num=1, dec_blk_nums=(1, 1),
                                  fusion_barriers=barriers)


def test_fusion_barriers_change_no_number():
  x = jax.random.uniform(jax.random.key(0), (2, 12, 12, 3))
  t = jnp.array([3, 70])
  params = _deep_net(True).init(jax.random.key(1), x, x * 0.3, t)["params"]
  # Non-zero beta/gamma so every block contributes.
  params = jax.tree_util.tree_map_with_path(
      lambda p, a: a + 0.1 if p[-1].key in ("beta", "gamma") else a, params)

  def loss(p, barriers):
    return jnp.mean(jnp.abs(_deep_net(barriers).apply({"params": p}, x, x * 0.3, t) - x))

  (l1, g1), (l0, g0) = (jax.jit(jax.value_and_grad(loss), static_argnums=1)(params, b) for b in (True, False))
  assert float(l1) == float(l0)
  for a, b in zip(jax.tree_util.tree_leaves(g1), jax.tree_util.tree_leaves(g0)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6, atol=1e-7)


def test_fusion_barriers_keep_xla_cpu_fusions_within_blocks():
  """Without barriers XLA:CPU fuses the residual chain of many blocks into one loop (quadratic backward)."""
  import re

  x = jnp.zeros((2, 16, 16, 3))
  t = jnp.array([1, 2])

  def spanning(barriers):
    net = _deep_net(barriers)
    params = jax.eval_shape(net.init, jax.random.key(0), x, x, t)["params"]
    loss = lambda p: jnp.mean(net.apply({"params": p}, x, x, t))
    hlo = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
    comps = [c for c in re.split(r"\n(?=%)", hlo) if c.startswith("%fused")]
    return sum(len(set(re.findall(r"encoders_1_(\d+)/", c))) > 2 for c in comps)

  without, with_ = spanning(False), spanning(True)
  # The pathology is real on this XLA version; with barriers at most the small time-embedding gradient sum
  # (one add per block, on (B, 4c) vectors) spans blocks.
  assert with_ <= 1 and without >= 5, (with_, without)
