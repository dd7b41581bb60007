"""Tests for lliejax.entropy: official test vector, chunked == dense reference (values and gradients), invariants."""
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lliejax.losses import entropy as E

# ----------------------------------------------------------------------------------------------------------------
# Dense reference, built like the official PyTorch code (materialises the (B, L*L, C, H, n_windows*W) density).
# Kept here only; independent of the library internals (lax.conv for the neighbour and box filters).


def _ref_sigmoid1(v):
  s = jax.nn.sigmoid(v)
  return s * (1 - s)


def _ref_gaussian(v):
  return 1 / np.sqrt(2 * np.pi) * jnp.exp(-0.5 * v**2)


def _depthwise(x, kernel, pad):
  return jax.lax.conv_general_dilated(x, kernel, (1, 1), ((pad, pad), (pad, pad)),
                                      dimension_numbers=("NCHW", "OIHW", "NCHW"), feature_group_count=x.shape[1])


def dense_density(img, weights, *, bins, h=0.5, kernel="sigmoid", windows=(1, 3, 5), norm="official", clamp=True):
  x = jnp.moveaxis(img, -1, 1)
  if clamp:  # torch.clamp gradient semantics: 1 on the closed interval [0, 1]
    x = jnp.where((x >= 0) & (x <= 1), x, jnp.clip(x, 0, 1))
  x = x * (bins - 1)
  b, c, hh, ww = x.shape
  k = jnp.ones((3, 3)).at[1, 1].set(0.0)
  if weights is not None:
    k = jnp.asarray(weights) * k
  kern = jnp.broadcast_to(k, (c, 1, 3, 3))
  kern = kern / (jnp.sum(kern) if norm == "official" else jnp.sum(k))
  xn = _depthwise(x, kern, 1)
  xs = jnp.arange(bins, dtype=jnp.float32)
  gi, gj = jnp.meshgrid(xs, xs, indexing="xy")  # q = i + L*j
  gi, gj = gi.reshape(-1), gj.reshape(-1)
  kf = _ref_sigmoid1 if kernel == "sigmoid" else _ref_gaussian
  k1 = kf((gi[None, :, None, None, None] - x[:, None]) / h)
  k2 = kf((gj[None, :, None, None, None] - xn[:, None]) / h)
  k12 = (k1 * k2).reshape(b, bins * bins * c, hh, ww)
  outs = []
  for win in windows:
    box = jnp.ones((bins * bins * c, 1, win, win)) / (0.5 * h * win**2)
    outs.append(_depthwise(k12, box, win // 2))
  return jnp.concatenate(outs, axis=-1).reshape(b, bins * bins, c, hh, len(windows) * ww)


def _ref_safe_sqrt(x):  # sqrt with zero derivative at 0 (double-where), for gradient comparisons
  pos = x > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, x, 1.0)), 0.0)


def dense_loss(pred, target, weights, *, kind, bins, eps=None, safe=False, **kw):
  q = dense_density(pred, weights, bins=bins, **kw)
  p = dense_density(target, weights, bins=bins, **kw)
  if kind == "kl":
    e = 1e-10 if eps is None else eps
    val = jnp.sum(p * (jnp.log(p + e) - jnp.log(q + e)), axis=1)
  elif kind == "cross":  # official order: P = prediction density
    val = -jnp.sum(q * jnp.log(p if not eps else p + eps), axis=1)
  else:
    sq = _ref_safe_sqrt if safe else jnp.sqrt
    val = 1 / np.sqrt(2) * sq(jnp.sum((sq(p) - sq(q)) ** 2, axis=1))
  loss = jnp.mean(jnp.mean(val, axis=(1, 2, 3)))
  if kind == "hellinger_smooth":
    g = jnp.asarray(E.gaussian_window(3, 1.5))
    c = pred.shape[-1]
    gk = jnp.broadcast_to(g, (c, 1, 3, 3))
    sx = _depthwise(jnp.moveaxis(pred, -1, 1), gk, 1)
    sy = _depthwise(jnp.moveaxis(target, -1, 1), gk, 1)
    loss = loss + jnp.mean(jnp.abs(sx - sy))
  return loss


# ----------------------------------------------------------------------------------------------------------------
# Fixtures.


def _pair(shape=(2, 6, 7, 3), seed=0):
  rng = np.random.default_rng(seed)
  pred = rng.uniform(-0.05, 1.05, shape).astype(np.float32)  # some values outside [0, 1]
  target = np.clip(pred + rng.normal(0, 0.15, shape), 0, 1).astype(np.float32)
  return jnp.asarray(pred), jnp.asarray(target)


W_ASYM = np.array([[0.3, -1.2, 0.8], [1.5, 0.7, -0.4], [0.9, 2.0, 0.6]], np.float32)  # sum of 8 neighbours > 0


def _ref_vector():
  x = np.linspace(0, 1, 210, dtype=np.float32).reshape(2, 3, 5, 7).transpose(0, 2, 3, 1)  # NCHW -> NHWC
  y = np.ascontiguousarray(x[:, :, ::-1])
  return jnp.asarray(x), jnp.asarray(y)


def _assert_rel(a, b, rtol):
  a, b = float(a), float(b)
  assert abs(a - b) <= rtol * abs(b), (a, b, abs(a - b) / abs(b))


def _assert_grad_close(g, g_ref, rtol=2e-4):
  g, g_ref = np.asarray(g), np.asarray(g_ref)
  assert np.all(np.isfinite(g))
  scale = np.abs(g_ref).max()
  np.testing.assert_allclose(g, g_ref, rtol=0, atol=rtol * scale)


# ----------------------------------------------------------------------------------------------------------------
# Official test vector (REFERENCE.md 1.7).


def test_reference_vector_density():
  x, _ = _ref_vector()
  d = E.kde_density(x, weights=np.ones((3, 3), np.float32), bins=8, bandwidth=0.5)
  assert d.shape == (2, 64, 3, 5, 21)
  s = jnp.sum(d, axis=1)
  _assert_rel(s[0, 0, 2, 3], 0.73971480, 1e-5)
  _assert_rel(s[0, 0, 2, 10], 0.73592979, 1e-5)  # 3x3 window at column 3
  _assert_rel(s[0, 0, 2, 17], 0.72020239, 1e-5)  # 5x5 window at column 3


@pytest.mark.parametrize("chunk_size", [None, 1, 3, 8])
def test_reference_vector_divergences(chunk_size):
  x, y = _ref_vector()
  w = np.ones((3, 3), np.float32)
  # relative_entropy(P=p(y), Q=p(x)): KL(target || pred) with target = y.
  kl = E.spatial_entropy_loss(x, y, kind="kl", weights=w, bins=8, chunk_size=chunk_size)
  _assert_rel(kl, 0.0061382912, 1e-5)
  # cross_entropy(P=p(y), Q=p(x)): official order, P = prediction density -> pred = y.
  ce = E.spatial_entropy_loss(y, x, kind="cross", weights=w, bins=8, chunk_size=chunk_size)
  _assert_rel(ce, 1.8997579, 1e-5)
  ce_tf = E.spatial_entropy_loss(x, y, kind="cross", weights=w, bins=8, chunk_size=chunk_size,
                                 cross_order="target_first")
  _assert_rel(ce_tf, 1.8997579, 1e-5)


def test_neighbour_map_official_normalisation():
  img = jnp.full((1, 4, 5, 3), 15.5)
  n = E.neighbour_map(img)  # ones, divided by C * 8
  np.testing.assert_allclose(n[0, 1, 1], 15.5 / 3, rtol=1e-6)
  np.testing.assert_allclose(n[0, 0, 0], 15.5 * 3 / 24, rtol=1e-6)  # corner: 3 of 8 neighbours inside
  m = E.neighbour_map(img, norm="mean")
  np.testing.assert_allclose(m[0, 1, 1], 15.5, rtol=1e-6)


def test_kde_density_matches_dense_and_grid_order():
  pred, _ = _pair()
  d = E.kde_density(pred, weights=W_ASYM, bins=5)
  ref = dense_density(pred, W_ASYM, bins=5)
  np.testing.assert_allclose(d, ref, rtol=2e-5, atol=1e-7)


# ----------------------------------------------------------------------------------------------------------------
# Chunked loss == dense reference, values and gradients.

_LOSS_CASES = [
    # (kind, chunk sizes to try, extra options)
    ("kl", (1, 4, 6, None), {}),
    ("cross", (1, 4, None), {}),
    ("hellinger", (1, 4, None), {}),
    ("hellinger_smooth", (4,), {}),
    ("kl", (2,), {"kernel": "gaussian"}),
    ("hellinger", (5,), {"kernel": "gaussian"}),
    ("kl", (4,), {"windows": (11,)}),
    ("hellinger", (3,), {"windows": (11, 1)}),
    ("kl", (4,), {"neighbour_norm": "mean"}),
    ("cross", (2,), {"neighbour_norm": "mean", "windows": (3, 7)}),
]


@pytest.mark.parametrize("kind,chunks,opts", _LOSS_CASES)
def test_chunked_matches_dense(kind, chunks, opts):
  bins = 6
  pred, target = _pair()
  w = W_ASYM if kind != "cross" else None
  dense_kw = {k: v for k, v in opts.items() if k != "neighbour_norm"}
  dense_kw["norm"] = opts.get("neighbour_norm", "official")
  if "kernel" in opts:
    dense_kw["kernel"] = opts["kernel"]
  ref_fn = jax.jit(jax.value_and_grad(
      lambda p, t: dense_loss(p, t, w, kind=kind, bins=bins, safe=True, **dense_kw), argnums=(0, 1)))
  ref_val, (ref_gp, ref_gt) = ref_fn(pred, target)
  for cs in chunks:
    fn = jax.jit(jax.value_and_grad(
        lambda p, t, cs=cs: E.spatial_entropy_loss(
            p, t, kind=kind, bins=bins, weights=w if w is not None else "mean", chunk_size=cs, **opts),
        argnums=(0, 1)))
    val, (gp, gt) = fn(pred, target)
    _assert_rel(val, ref_val, 2e-5)
    _assert_grad_close(gp, ref_gp)
    _assert_grad_close(gt, ref_gt)


@pytest.mark.slow
def test_chunked_matches_dense_larger_bins():
  pred, target = _pair((1, 9, 8, 3), seed=3)
  ref = dense_loss(pred, target, W_ASYM, kind="kl", bins=16)
  vals = [E.spatial_entropy_loss(pred, target, kind="kl", weights=W_ASYM, bins=16, chunk_size=cs)
          for cs in (1, 3, 7, 16)]
  for v in vals:
    _assert_rel(v, ref, 2e-5)


# ----------------------------------------------------------------------------------------------------------------
# Invariants and numerics.


def test_fast_log_matches_log():
  """:func:`E._log` (the polynomial logarithm of the divergence terms) against float64 ``log``: 4e-7 relative over
  the float32 normal range, full relative accuracy next to 1, exactly 0 at 1, and ``jnp.log``'s special values."""
  xs = np.concatenate([np.logspace(-37.9, 38.5, 200001), np.linspace(0.5, 2.0, 100001),
                       1.0 + np.arange(-3000, 3000) * 2.0**-24]).astype(np.float32)
  xs = xs[xs != 1.0]
  ref = np.log(xs.astype(np.float64))
  got = np.asarray(jax.jit(E._log)(jnp.asarray(xs)), np.float64)
  rel = np.abs(got - ref) / np.abs(ref)
  assert rel.max() < 4e-7, rel.max()
  special = jnp.asarray(np.array([1.0, 0.0, -0.0, -1.0, np.inf, -np.inf, np.nan, 1e-45], np.float32))
  got, want = np.asarray(jax.jit(E._log)(special)), np.asarray(jax.jit(jnp.log)(special))
  np.testing.assert_array_equal(got, want)  # 0, -inf, -inf, nan, inf, nan, nan, and XLA's flushed subnormal
  assert got[0] == 0.0


def test_identical_inputs():
  pred, _ = _pair()
  key = jax.random.PRNGKey(0)
  for kind in ("kl", "hellinger"):
    f = lambda p, kind=kind: E.spatial_entropy_loss(p, jnp.clip(pred, 0, 1), key=key, kind=kind, bins=8)
    val, g = jax.jit(jax.value_and_grad(f))(jnp.clip(pred, 0, 1))
    assert float(val) == 0.0
    assert np.all(np.isfinite(np.asarray(g)))


def test_hellinger_safe_sqrt_value_and_finite_gradients():
  # Dark images at L = 32: far bins underflow to exactly 0, where d sqrt / dx = inf.
  rng = np.random.default_rng(1)
  pred = jnp.asarray(rng.uniform(0, 0.1, (1, 6, 6, 3)).astype(np.float32))
  target = jnp.asarray(rng.uniform(0, 0.1, (1, 6, 6, 3)).astype(np.float32))
  bins = 32
  dens = E.kde_density(pred, bins=bins)
  assert np.any(np.asarray(dens) == 0)
  val, g = jax.jit(jax.value_and_grad(lambda p: E.spatial_entropy_loss(p, target, kind="hellinger", weights="mean",
                                                                       bins=bins)))(pred)
  plain_fn = lambda p: dense_loss(p, target, None, kind="hellinger", bins=bins)
  plain, g_plain = jax.jit(jax.value_and_grad(plain_fn))(pred)
  assert float(val) == pytest.approx(float(plain), rel=1e-5)  # value unchanged
  assert np.all(np.isfinite(np.asarray(g)))
  assert not np.all(np.isfinite(np.asarray(g_plain)))  # the plain formula (as the official code) gives NaN
  g_safe = jax.jit(jax.grad(lambda p: dense_loss(p, target, None, kind="hellinger", bins=bins, safe=True)))(pred)
  _assert_grad_close(g, g_safe)


@pytest.mark.parametrize("kernel,norm", [("sigmoid", "official"), ("gaussian", "mean")])
def test_hellinger_point_window_closed_form(kernel, norm):
  """The O(L) Hellinger sum of the 1x1 window equals the tiled L^2 pass, value and gradients (both fields), and is
  exactly 0 for equal inputs (with finite gradients); dark images have kernels that underflow to exactly 0."""
  rng = np.random.default_rng(4)
  pred = jnp.asarray(rng.uniform(0, 1, (2, 7, 9, 3)).astype(np.float32)).at[0].multiply(0.05)
  target = jnp.clip(pred + 0.1 * jnp.asarray(rng.standard_normal(pred.shape).astype(np.float32)), 0, 1)
  bins = 32
  kde = E._kde_options(bins, 0.5, kernel, (1,), None)
  w = E.neighbour_weights(jax.random.key(2), "normal")

  def fields(p, t):
    return tuple(E._prepare(a, w, bins=bins, norm=norm, clamp="official") for a in (p, t))

  def loss(fn, p, t):  # a non-uniform cotangent per pixel, as the Hellinger loss applies
    return jnp.sum(jnp.sqrt(fn(fields(p, t)) + 1e-3) * jnp.linspace(0.5, 1.5, p.size).reshape(2, 3, 7, 9))

  closed = lambda f: E._hellinger_point_window(f, kde)
  tiled = lambda f: E._bin_sums(f, E._term("hellinger", None), kde)[0]
  np.testing.assert_allclose(closed(fields(pred, target)), tiled(fields(pred, target)), rtol=2e-5, atol=1e-7)
  (vc, gc), (vt, gt) = (jax.value_and_grad(functools.partial(loss, fn), argnums=(0, 1))(pred, target)
                        for fn in (closed, tiled))
  assert float(vc) == pytest.approx(float(vt), rel=1e-6)
  for a, b in zip(gc, gt):
    _assert_grad_close(a, b)
  # and w.r.t. each field (values and neighbour maps of both images) directly, tighter
  flds = fields(pred, target)
  ct = jnp.linspace(0.5, 1.5, pred.size).reshape(2, 3, 7, 9)
  gfc, gft = (jax.grad(lambda f, fn=fn: jnp.sum(fn(f) * ct))(flds) for fn in (closed, tiled))
  for a, b in zip(jax.tree.leaves(gfc), jax.tree.leaves(gft)):
    _assert_grad_close(a, b, rtol=1e-5)
  same = closed(fields(pred, pred))
  assert float(jnp.max(jnp.abs(same))) == 0.0
  g_same = jax.grad(lambda p: jnp.sum(E.safe_sqrt(closed(fields(p, pred)))))(pred)
  assert np.all(np.isfinite(np.asarray(g_same)))


def test_safe_sqrt():
  x = jnp.array([0.0, 1e-30, 4.0])
  np.testing.assert_array_equal(E.safe_sqrt(x), jnp.sqrt(x))
  g = jax.grad(lambda x: jnp.sum(E.safe_sqrt(x)))(x)
  assert g[0] == 0.0 and np.all(np.isfinite(np.asarray(g)))
  np.testing.assert_allclose(g[2], 0.25)


def test_same_key_same_weights():
  pred, target = _pair()
  key = jax.random.PRNGKey(42)
  a = E.spatial_entropy_loss(pred, target, key=key, kind="kl", bins=6)
  b = E.spatial_entropy_loss(pred, target, key=key, kind="kl", bins=6)
  c = E.spatial_entropy_loss(pred, target, kind="kl", bins=6, weights=E.neighbour_weights(key, "normal"))
  d = E.spatial_entropy_loss(pred, target, key=jax.random.PRNGKey(43), kind="kl", bins=6)
  assert float(a) == float(b) == float(c)
  assert float(a) != float(d)
  # Prediction and target share the draw: the loss of identical inputs is exactly 0 for any key.
  t = jnp.clip(target, 0, 1)
  assert float(E.spatial_entropy_loss(t, t, key=key, kind="kl", bins=6)) == 0.0


def test_weight_kinds():
  key = jax.random.PRNGKey(3)
  w = E.neighbour_weights(key, "shuffled_gaussian")
  np.testing.assert_allclose(np.sort(np.asarray(w).ravel()), np.sort(E.gaussian_window(3, 1.5).ravel()), rtol=1e-7)
  g = E.gaussian_window(3, 1.5)
  np.testing.assert_allclose(g[[0, 0, 1], [0, 1, 1]], [0.0947417, 0.1183180, 0.1477613], rtol=1e-5)
  assert E.neighbour_weights(key, "mean") is None
  assert E.neighbour_weights(key, "normal").shape == (3, 3)
  pred, target = _pair()
  # cross defaults to no weights (c_entropy_loss); 'mean' == ones.
  a = E.spatial_entropy_loss(pred, target, kind="cross", bins=6)
  b = E.spatial_entropy_loss(pred, target, kind="cross", bins=6, weights=np.ones((3, 3), np.float32))
  _assert_rel(a, b, 1e-6)
  s = E.spatial_entropy_loss(pred, target, key=key, kind="kl", bins=6, weights="shuffled_gaussian")
  _assert_rel(s, E.spatial_entropy_loss(pred, target, kind="kl", bins=6, weights=w), 1e-6)


def test_errors():
  pred, target = _pair()
  with pytest.raises(ValueError, match="key"):
    E.spatial_entropy_loss(pred, target, kind="kl", bins=6)
  with pytest.raises(ValueError, match="odd"):
    E.spatial_entropy_loss(pred, target, kind="kl", bins=6, weights="mean", windows=(4,))
  with pytest.raises(ValueError, match="kind"):
    E.spatial_entropy_loss(pred, target, kind="js", bins=6, weights="mean")


def test_clamp_zero_gradient_outside():
  pred, target = _pair()
  g = jax.jit(jax.grad(lambda p: E.spatial_entropy_loss(p, target, kind="kl", bins=6, weights="mean")))(pred)
  outside = (np.asarray(pred) < 0) | (np.asarray(pred) > 1)
  assert outside.any()
  assert np.all(np.asarray(g)[outside] == 0)
  assert np.any(np.asarray(g)[~outside] != 0)
  # torch.clamp semantics: the boundary values 0 and 1 themselves pass the gradient.
  edge = jnp.asarray(np.array([0.0, 1.0, 0.5, 0.2], np.float32)).reshape(1, 2, 2, 1)
  ge = jax.jit(jax.grad(lambda p: E.spatial_entropy_loss(p, edge * 0.9, kind="kl", bins=6, weights="mean")))(edge)
  assert np.all(np.asarray(ge) != 0)
  # Without clamping, values outside change the loss.
  a = E.spatial_entropy_loss(pred, target, kind="kl", bins=6, weights="mean", clamp=False)
  b = E.spatial_entropy_loss(pred, target, kind="kl", bins=6, weights="mean")
  assert float(a) != float(b)


def test_hellinger_smooth_is_sum():
  pred, target = _pair()
  key = jax.random.PRNGKey(0)
  h = E.spatial_entropy_loss(pred, target, key=key, kind="hellinger", bins=6)
  hs = E.spatial_entropy_loss(pred, target, key=key, kind="hellinger_smooth", bins=6)
  _assert_rel(hs, h + E.smoothness_loss(pred, target), 1e-6)


def test_spatial_entropy_metric():
  pred, _ = _pair()
  img = jnp.clip(pred, 0, 1)
  ent = E.spatial_entropy(img, bins=6)
  assert ent.shape == (2,)
  dens = dense_density(img, None, bins=6)
  ref = -jnp.mean(jnp.sum(dens * jnp.log(dens + 1e-10), axis=1), axis=(1, 2, 3))
  np.testing.assert_allclose(ent, ref, rtol=2e-5)
  single = E.spatial_entropy(img[0], bins=6, chunk_size=4)
  _assert_rel(single, ent[0], 1e-5)
  # Symmetric neighbourhood and windows: a left-right flip does not change the entropy.
  flipped = E.spatial_entropy(img[:, :, ::-1], bins=6)
  np.testing.assert_allclose(flipped, ent, rtol=1e-5)


def test_jit_vmap_grad():
  pred, target = _pair()
  loss = functools.partial(E.spatial_entropy_loss, kind="hellinger", bins=6, chunk_size=4)
  keys = jax.random.split(jax.random.PRNGKey(0), 3)
  per_key = jax.jit(jax.vmap(lambda k: loss(pred, target, key=k)))(keys)
  for i in range(3):
    _assert_rel(per_key[i], loss(pred, target, key=keys[i]), 1e-5)
  # vmap over the batch == per-example losses
  f = lambda p, t: loss(p[None], t[None], weights="mean")
  vb = jax.vmap(f)(pred, target)
  _assert_rel(jnp.mean(vb), loss(pred, target, weights="mean"), 1e-5)
  g = jax.jit(jax.grad(lambda p, k: loss(p, target, key=k)))(pred, keys[0])
  assert g.shape == pred.shape and np.all(np.isfinite(np.asarray(g)))


def test_cross_official_nan_without_eps():
  # The official cross-entropy has no epsilon: 0 * ln 0 = NaN where far bins underflow. eps fixes it.
  x = jnp.zeros((1, 5, 5, 3))
  y = jnp.full((1, 5, 5, 3), 0.01)
  assert math.isnan(float(E.spatial_entropy_loss(x, y, kind="cross", bins=32)))
  assert math.isfinite(float(E.spatial_entropy_loss(x, y, kind="cross", bins=32, eps=1e-10)))


def test_straight_through_clamp_same_value_gradient_everywhere():
  """straight_through: the official clamped value, but pixels outside [0, 1] get a gradient (they used not to)."""
  pred, target = _pair()
  kw = dict(kind="kl", bins=6, weights="mean")
  official = E.spatial_entropy_loss(pred, target, **kw)
  st = E.spatial_entropy_loss(pred, target, clamp="straight_through", **kw)
  assert float(st) == float(official)
  assert float(E.spatial_entropy_loss(pred, target, clamp="official", **kw)) == float(official)
  g = jax.jit(jax.grad(lambda p: E.spatial_entropy_loss(p, target, clamp="straight_through", **kw)))(pred)
  outside = (np.asarray(pred) < 0) | (np.asarray(pred) > 1)
  assert outside.any() and np.all(np.asarray(g)[outside] != 0)
  # The straight-through gradient at p equals the official gradient at clamp(p) (the value's own gradient).
  clamped = jnp.clip(pred, 0.0, 1.0)
  g_at_clamped = jax.grad(lambda p: E.spatial_entropy_loss(p, target, **kw))(clamped)
  np.testing.assert_allclose(np.asarray(g), np.asarray(g_at_clamped), rtol=1e-5, atol=1e-9)
  with pytest.raises(ValueError, match="unknown clamp 'soft'"):
    E.spatial_entropy_loss(pred, target, clamp="soft", **kw)


def test_combined_objective_and_warmup_from_config():
  import ml_collections

  from lliejax import losses
  pred, target = _pair()
  key = jax.random.key(3)
  base = dict(name="kl", weight=0.05, bins=6, bandwidth=0.5, kernel="sigmoid", windows=(1, 3), weights="mean",
              neighbour_norm="official", chunk_size=0)
  ent = float(losses.get(ml_collections.ConfigDict(base))(pred, target, key))
  l1 = float(jnp.mean(jnp.abs(pred - target)))
  combined = losses.get(ml_collections.ConfigDict({**base, "pixel": "l1", "pixel_weight": 2.0}))
  assert float(combined(pred, target, key)) == pytest.approx(2.0 * l1 + ent, rel=1e-6)
  warm = jax.jit(losses.get(ml_collections.ConfigDict({**base, "pixel": "l1", "entropy_start": 5})))
  assert float(warm(pred, target, key, step=jnp.int32(4))) == pytest.approx(l1, rel=1e-6)  # l1 alone
  assert float(warm(pred, target, key, step=jnp.int32(5))) == pytest.approx(l1 + ent, rel=1e-6)
  with pytest.raises(ValueError, match="entropy warm-up needs a pixel loss"):
    losses.get(ml_collections.ConfigDict({**base, "entropy_start": 5}))


def test_entropy_sde_step_reaches_the_loss_warmup():
  """Through the method and the train step: before entropy_start the gradient is the l1 objective's alone."""
  from lliejax import methods
  from lliejax.configs.entropy_sde import get_config
  config = get_config("tiny")
  config.loss.name, config.loss.bins, config.loss.pixel, config.loss.entropy_start = "kl", 6, "l1", 10
  method = methods.build(config)
  params = method.init_params(jax.random.key(0))
  rng = np.random.default_rng(0)
  batch = {"gt": jnp.asarray(rng.random((2, 16, 16, 3)), jnp.float32),
           "lq": jnp.asarray(rng.random((2, 16, 16, 3)) * 0.3, jnp.float32)}
  f = jax.jit(lambda p, s: method.loss(p, {}, batch, jax.random.key(1), ema={}, step=s)[0])
  config_l1 = get_config("tiny")
  l1_only = methods.build(config_l1).loss(params, {}, batch, jax.random.key(1), ema={}, step=jnp.int32(0))[0]
  assert float(f(params, jnp.int32(9))) == pytest.approx(float(l1_only), rel=1e-6)
  assert float(f(params, jnp.int32(10))) > float(l1_only)


def test_sharded_batch_stays_data_parallel():
  """With the batch sharded over the ('data',) mesh the loss and its gradient compile without gathering the batch
  (the bin scan runs over channels and bins, never over the sharded batch axis) and agree with one device."""
  from lliejax import parallel
  n = min(4, jax.device_count())
  if n < 2:
    pytest.skip("needs several (simulated) devices")
  mesh = parallel.make_mesh(jax.devices()[:n])
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
  rng = np.random.default_rng(5)
  target = jnp.asarray(rng.random((n, 10, 12, 3)), jnp.float32)
  pred = jnp.clip(target + 0.1 * jnp.asarray(rng.standard_normal(target.shape), jnp.float32), 0, 1)
  for kind in ("kl", "hellinger"):
    f = jax.jit(jax.value_and_grad(lambda p, t, kind=kind: E.spatial_entropy_loss(
        p, t, key=jax.random.key(1), kind=kind, bins=6)))
    ps, ts = jax.device_put(pred, sharding), jax.device_put(target, sharding)
    hlo = f.lower(ps, ts).compile().as_text()
    assert "all-gather" not in hlo, kind
    val, grad = f(ps, ts)
    ref_val, ref_grad = f(pred, target)
    _assert_rel(val, ref_val, 1e-6)
    np.testing.assert_allclose(np.asarray(grad), np.asarray(ref_grad), rtol=1e-5, atol=1e-9)


# ----------------------------------------------------------------------------------------------------------------
# Banded evaluation: bin tiles with negligible kernel products are skipped (entropy._active_tiles).


def _edge_pair(shape, seed):
  """Prediction with exact 0s, 1s and values outside [0, 1]; a nearby target (also with 0s and 1s)."""
  rng = np.random.default_rng(seed)
  pred = rng.uniform(-0.1, 1.1, shape).astype(np.float32)
  flat = pred.reshape(-1)
  flat[::7] = 0.0
  flat[3::11] = 1.0
  target = np.clip(pred + rng.normal(0, 0.05, shape), 0, 1).astype(np.float32)
  target.reshape(-1)[5::13] = 0.0
  return jnp.asarray(pred), jnp.asarray(target)


def _small_blocks(monkeypatch, values=256):
  """Blocks of 2 neighbour bins for small test images (so that whole tiles can be skipped)."""
  monkeypatch.setattr(E, "_BLOCK_VALUES", values)


def _skipped_fraction(pred, target, weights, *, bins, kernel="sigmoid"):
  fields = tuple(E._prepare(a, weights, bins=bins, norm="official", clamp=True) for a in (pred, target))
  b, h, w, _ = pred.shape
  kde = E._kde_options(bins, 0.5, kernel, (1, 3, 5), None)
  return 1.0 - float(jnp.mean(E._active_tiles(fields, kde, E._j_blocks(bins, b * h * w))))


@pytest.mark.parametrize("kind,kernel,weights", [
    ("kl", "sigmoid", None), ("hellinger", "sigmoid", None), ("kl", "gaussian", W_ASYM),
    ("hellinger_smooth", "gaussian", None), ("cross", "sigmoid", None)])
def test_banded_matches_dense(monkeypatch, kind, kernel, weights):
  """Skipping tiles changes values and gradients by less than 1e-5 (relative; gradients relative to their largest
  entry) against the dense reference, with inputs at exactly 0 and 1 and outside [0, 1]."""
  _small_blocks(monkeypatch)
  bins = 24
  pred, target = _edge_pair((2, 10, 9, 3), seed=7)
  assert _skipped_fraction(pred, target, weights, bins=bins, kernel=kernel) > 0.2  # the test exercises skipping
  eps = 1e-10 if kind == "cross" else None
  lw = "mean" if weights is None else weights
  f = jax.jit(jax.value_and_grad(lambda p, t: E.spatial_entropy_loss(
      p, t, kind=kind, bins=bins, kernel=kernel, weights=lw, eps=eps), argnums=(0, 1)))
  ref = jax.jit(jax.value_and_grad(lambda p, t: dense_loss(
      p, t, weights, kind=kind, bins=bins, kernel=kernel, eps=eps, safe=True), argnums=(0, 1)))
  val, (gp, gt) = f(pred, target)
  ref_val, (ref_gp, ref_gt) = ref(pred, target)
  _assert_rel(val, ref_val, 1e-5)
  _assert_grad_close(gp, ref_gp, rtol=1e-5)
  _assert_grad_close(gt, ref_gt, rtol=1e-5)
  # ... and against the same engine with every tile evaluated.
  monkeypatch.setattr(E, "_SKIP_LOG2", float("inf"))
  full_val, (full_gp, full_gt) = jax.jit(jax.value_and_grad(lambda p, t: E.spatial_entropy_loss(
      p, t, kind=kind, bins=bins, kernel=kernel, weights=lw, eps=eps), argnums=(0, 1)))(pred, target)
  _assert_rel(val, full_val, 1e-6)
  _assert_grad_close(gp, full_gp, rtol=1e-6)
  _assert_grad_close(gt, full_gt, rtol=1e-6)


@pytest.mark.parametrize("kernel", ["sigmoid", "gaussian"])
def test_skipped_tiles_have_negligible_products(monkeypatch, kernel):
  """Every kernel product u_i(p) v_j(p) in a skipped tile is below 2^-24 of kappa(0)^2 (the bound the skip uses)."""
  _small_blocks(monkeypatch)
  bins = 32
  pred, target = _edge_pair((2, 8, 8, 3), seed=3)
  fields = tuple(E._prepare(a, W_ASYM, bins=bins, norm="official", clamp=True) for a in (pred, target))
  kde = E._kde_options(bins, 0.5, kernel, (1, 3, 5), 2)
  blocks = E._j_blocks(bins, 2 * 8 * 8)
  active = np.asarray(E._active_tiles(fields, kde, blocks))  # (C, chunks, blocks)
  assert not active.all() and active.any()
  kmax = 0.25 if kernel == "sigmoid" else 1 / np.sqrt(2 * np.pi)
  worst = 0.0
  for x, xn in fields:
    u, _ = E._kernel_and_derivative(x.reshape(-1, *x.shape[2:]), kde)  # (B*C, L, H, W)
    v, _ = E._kernel_and_derivative(xn.reshape(-1, *xn.shape[2:]), kde)
    u = np.asarray(u, np.float64).reshape(2, 3, bins, -1)
    v = np.asarray(v, np.float64).reshape(2, 3, bins, -1)
    prod = np.einsum("bcip,bcjp->cijbp", u, v).max(axis=(3, 4))  # (C, L, L): largest product over the batch
    for c in range(3):
      for ci in range(active.shape[1]):
        for bi, (j0, j1) in enumerate(blocks):
          if not active[c, ci, bi]:
            worst = max(worst, prod[c, 2 * ci:2 * ci + 2, j0:j1].max())
  assert worst < 2.0**-24 * kmax**2


def test_banded_keeps_nan_and_official_cross_nan(monkeypatch):
  """A NaN input keeps the loss NaN (no tile is skipped), and the official cross-entropy without epsilon still
  evaluates every bin (its 0 * ln 0 NaN), whatever could be skipped."""
  _small_blocks(monkeypatch)
  pred, target = _edge_pair((1, 8, 8, 3), seed=5)
  bad = pred.at[0, 3, 4, 1].set(jnp.nan)
  assert math.isnan(float(E.spatial_entropy_loss(bad, target, kind="kl", bins=32, weights="mean", clamp=False)))
  x = jnp.zeros((1, 8, 8, 3))
  y = jnp.full((1, 8, 8, 3), 0.01)
  assert math.isnan(float(E.spatial_entropy_loss(x, y, kind="cross", bins=32)))
  assert math.isfinite(float(E.spatial_entropy_loss(x, y, kind="cross", bins=32, eps=1e-10)))


def test_block_sizes():
  """Neighbour-bin blocks cover 0..L-1 in order; about _BLOCK_VALUES values per block array, at least 2 bins."""
  for bins, pixels in ((32, 2 * 128 * 128), (32, 8 * 128 * 128), (32, 64 * 64), (6, 84), (5, 10**7), (33, 1000)):
    blocks = E._j_blocks(bins, pixels)
    assert blocks[0][0] == 0 and blocks[-1][1] == bins
    assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    size = blocks[0][1] - blocks[0][0]
    assert size == bins or (size >= 2 and size * pixels <= max(E._BLOCK_VALUES, 2 * pixels))
  assert E._j_blocks(32, 2 * 128 * 128)[0] == (0, 4)
  # default tiles: chunk x block bins of about _BLOCK_VALUES values, chunk <= block, chunk a divisor of L
  for bins, pixels, shape in ((32, 2 * 128 * 128, (2, 2)), (32, 8 * 128 * 128, (1, 2)), (32, 64 * 64, (4, 8)),
                              (16, 2 * 128 * 128, (2, 2)), (6, 84, (6, 6)), (5, 10**7, (1, 2))):
    chunk = E._kde_options(bins, 0.5, "sigmoid", (1, 3, 5), None, pixels=pixels).chunk
    block = E._j_blocks(bins, pixels, chunk)[0][1]
    assert (chunk, block) == shape and bins % chunk == 0
    assert chunk * block * pixels <= max(E._BLOCK_VALUES, 2 * pixels) or block == bins
  assert E._kde_options(32, 0.5, "sigmoid", (1,), None).chunk == 1  # no pixel count: one bin per step


def test_tile_values_per_backend(monkeypatch):
  """Cache-sized tiles on the CPU, 2^22-value tiles on an accelerator (chosen when the loss is traced)."""
  pixels = 2 * 128 * 128
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  assert E._tile_values() == E._BLOCK_VALUES == 2**17
  assert E._kde_options(32, 0.5, "sigmoid", (1, 3, 5), None, pixels=pixels).chunk == 2
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  assert E._tile_values() == E._ACCELERATOR_BLOCK_VALUES == 2**22
  chunk = E._kde_options(32, 0.5, "sigmoid", (1, 3, 5), None, pixels=pixels).chunk
  blocks = E._j_blocks(32, pixels, chunk)
  assert (chunk, blocks[0][1]) == (8, 16) and len(blocks) == 2 and chunk * 16 * pixels == 2**22
  assert E._kde_options(32, 0.5, "sigmoid", (1, 3, 5), None, pixels=8 * 128 * 128).chunk == 4
