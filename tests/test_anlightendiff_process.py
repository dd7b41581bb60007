"""AnlightenDiff's process: the schedule (REFERENCE §2.2 check values, the buffers against float64), the residual
mapping, DRDA and DRDS (§2.3-2.5) against a PyTorch transcription of the official code (tests/torch_anlightendiff.py)
with the same noise, and the hand-crafted condition (§2.7) against the real torchvision ``equalize``."""
import functools
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lliejax.data import condition
from lliejax.diffusion import anlightendiff as ad

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_anlightendiff as ta  # noqa: E402

SCHED = ad.make_schedule()
RTOL, ATOL = 1e-5, 1e-6  # float32 against float32: the same operations, up to XLA's and ATen's rounding of exp


def nchw(x):
  return torch.from_numpy(np.ascontiguousarray(np.moveaxis(np.asarray(x), -1, 1)))


def nhwc(x):
  return np.moveaxis(x.detach().numpy(), 1, -1)


def images(seed, shape=(2, 8, 12, 3)):
  rng = np.random.default_rng(seed)
  lq = rng.uniform(0, 0.3, shape).astype(np.float32)
  gt = np.clip(lq + rng.uniform(-0.05, 0.7, shape), 0, 1).astype(np.float32)
  phi = rng.uniform(-0.1, 1.1, shape).astype(np.float32)  # FS's anchor is not clamped to [0, 1]
  return lq, gt, phi


# ------------------------------------------------------------------------------------------------ schedule
def test_schedule_check_values():
  """REFERENCE §2.2 [verified] table (8 significant digits), and the t = 0 / t = T-1 special values."""
  b = SCHED.buffers
  assert SCHED.T == 100 and tuple(b) == ad.BUFFER_NAMES and len(ad.BUFFER_NAMES) == 14
  assert all(v.dtype == np.float32 and v.shape == (100,) for v in b.values())
  rows = {0: (6.312816e-4, 0.99936872, 0.012564642, 0, 0, 1, 0),
          1: (1.116937e-3, 0.99825249, 0.020910775, 8.8214824e-8, 4.0348861e-4, 0.6389561, 0.36104381),
          50: (0.031546339, 0.47826463, 0.42700798, 2.7940396e-3, 0.030604369, 0.042490653, 0.95471531),
          98: (0.74993928, 2.4285723e-4, 0.98453568, 0.47692682, 0.74939294, 0.023376762, 0.49969642),
          99: (0.999, 2.4285723e-7, 0.99950732, 0.9528166, 0.99875763, 0.015568297, 0.031615104)}
  names = ("betas", "alphas_cumprod", "extra_term_coef1", "extra_term_coef2", "posterior_variance",
           "posterior_mean_coef1", "posterior_mean_coef2")
  for t, want in rows.items():
    np.testing.assert_allclose([b[n][t] for n in names], want, rtol=1e-6, atol=1e-12, err_msg=f"t={t}")
  assert b["betas"][99] == np.float32(0.999) and SCHED.betas[98] < 0.999  # only the last beta is clipped
  assert b["posterior_mean_coef1"][0] == 1 and b["posterior_mean_coef2"][0] == 0 and b["extra_term_coef2"][0] == 0
  np.testing.assert_allclose(b["posterior_log_variance_clipped"][0], np.log(1e-20), rtol=1e-7)  # -46.0517
  # c2 = 1 - m1 - m2 (float64), the DRDS mean is an affine combination of x0_hat, x_t and phi'
  s64 = ta.buffers_float64()
  np.testing.assert_allclose(s64["extra_term_coef2"], 1 - s64["posterior_mean_coef1"] - s64["posterior_mean_coef2"],
                             rtol=0, atol=1e-13)
  # the grid linspace(0, T+1, T+1) / (T+1) is k / T: the standard cosine betas of lliejax.diffusion.ddpm, bit for
  # bit in float32 (REFERENCE §6 item 15 calls the grid non-standard)
  from lliejax.diffusion import ddpm  # pylint: disable=import-outside-toplevel
  np.testing.assert_array_equal(b["betas"], ddpm.beta_schedule("cosine", 100).astype(np.float32))
  np.testing.assert_allclose(SCHED.betas, ddpm.beta_schedule("cosine", 100), rtol=1e-13)


def test_buffers_against_float64():
  """Every buffer is the float32 rounding of an independent float64 derivation (one ulp of float32 at most)."""
  s64 = ta.buffers_float64()
  assert set(s64) == set(ad.BUFFER_NAMES)
  for name in ad.BUFFER_NAMES:
    np.testing.assert_allclose(SCHED.buffers[name], s64[name], rtol=6e-8, atol=1e-13, err_msg=name)
    assert np.mean(SCHED.buffers[name] == s64[name].astype(np.float32)) > 0.95, name
  np.testing.assert_allclose(SCHED.alphas_cumprod, s64["alphas_cumprod"], rtol=1e-13)
  assert ad.make_schedule(10).buffers["betas"][-1] == np.float32(0.999) and ad.make_schedule(10).T == 10
  with pytest.raises(ValueError, match="T >= 1"):
    ad.make_schedule(0)


# ------------------------------------------------------------------------------------------------ parametrisation
def test_residual_mapping():
  lq, gt, phi = images(0)
  res = ad.img_to_res(jnp.asarray(gt), jnp.asarray(lq))
  np.testing.assert_array_equal(np.asarray(res), nhwc(ta.img2res(nchw(gt), nchw(lq))))
  back = ad.res_to_img(res, jnp.asarray(lq))
  np.testing.assert_array_equal(np.asarray(back), nhwc(ta.res2img(nchw(res), nchw(lq))))
  ok = gt >= lq
  np.testing.assert_allclose(np.asarray(back)[ok], gt[ok], atol=1e-6)  # inverse where GT - LQ in [0, 1]
  np.testing.assert_array_equal(np.asarray(back)[~ok], lq[~ok])  # a darker GT maps back to the LQ
  assert float(res.min()) < -1  # no clipping of the residual (GT < LQ somewhere)
  np.testing.assert_array_equal(np.asarray(ad.anchor_to_diffused(jnp.asarray(phi))), phi * 2 - 1)
  np.testing.assert_allclose(np.asarray(ad.res_to_img(res, jnp.asarray(lq), rescale_ratio=2.0, clip=False)),
                             lq + ((gt - lq) - 0.5 + 1) * 0.5, atol=1e-6)  # res / r, not clamped
  zeta = np.full_like(phi, 0.25)
  np.testing.assert_allclose(np.asarray(ad.two_step_anchor(jnp.asarray(phi), jnp.asarray(zeta))),
                             phi + 0.25 * (1 - phi), rtol=1e-6)


# ------------------------------------------------------------------------------------------------ DRDA
def test_q_sample_matches_official_in_place_update():
  lq, gt, phi = images(1)
  x0 = np.asarray(ad.img_to_res(gt, lq))
  eps = np.random.default_rng(2).standard_normal(x0.shape).astype(np.float32)
  t = np.array([0, 99], np.int32)
  x_t, eps_star = ad.q_sample(SCHED, jnp.asarray(x0), jnp.asarray(t), jnp.asarray(phi), jnp.asarray(eps))
  tdiff = ta.TorchDiffusion(SCHED.buffers)
  noise = nchw(eps).clone()
  xt_ref = tdiff.q_sample(nchw(x0), torch.from_numpy(t.astype(np.int64)), nchw(phi), noise)
  np.testing.assert_allclose(np.asarray(x_t), nhwc(xt_ref), rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(np.asarray(eps_star), nhwc(noise), rtol=RTOL, atol=ATOL)  # the shifted tensor
  # the closed form: the mean moves from x0 to phi'
  a = SCHED.buffers["alphas_cumprod"][t][:, None, None, None].astype(np.float64)
  want = np.sqrt(a) * x0 + (1 - np.sqrt(a)) * (2 * phi - 1) + np.sqrt(1 - a) * eps
  np.testing.assert_allclose(np.asarray(x_t), want, rtol=1e-5, atol=2e-6)
  # DFPL's second call shifts the already shifted target once more (the official in-place update, twice)
  x_tgt, _ = ad.q_sample(SCHED, jnp.asarray(x0), jnp.asarray(t), jnp.asarray(phi), eps_star)
  xtgt_ref = tdiff.q_sample(nchw(x0), torch.from_numpy(t.astype(np.int64)), nchw(phi), noise)
  np.testing.assert_allclose(np.asarray(x_tgt), nhwc(xtgt_ref), rtol=RTOL, atol=ATOL)
  # x0 is recovered from x_t by the DRDS estimate when the network predicts eps*
  # (float32 rounding of x_t amplified by sqrt(1 / abar_t): about 2000 at t = 99)
  x0_hat = np.asarray(ad.predict_x0(SCHED, x_t, jnp.asarray(t), eps_star))
  np.testing.assert_allclose(x0_hat[0], x0[0], atol=1e-6)
  np.testing.assert_allclose(x0_hat[1], x0[1], atol=2e-3)
  # no anchor: the plain DDPM draw
  xp, ep = ad.q_sample(SCHED, jnp.asarray(x0), jnp.asarray(t), None, jnp.asarray(eps))
  np.testing.assert_array_equal(np.asarray(ep), eps)
  np.testing.assert_allclose(np.asarray(xp), np.sqrt(a) * x0 + np.sqrt(1 - a) * eps, rtol=1e-5, atol=1e-6)
  ts = SCHED.sample_timesteps(jax.random.key(0), 4096)
  assert ts.dtype == jnp.int32 and int(ts.min()) == 0 and int(ts.max()) == 99


# ------------------------------------------------------------------------------------------------ DRDS
def test_drds_step_matches_official():
  lq, _, phi = images(3)
  rng = np.random.default_rng(4)
  tdiff = ta.TorchDiffusion(SCHED.buffers)
  for t in (99, 98, 50, 1, 0):
    x = rng.standard_normal(lq.shape).astype(np.float32)
    eps = rng.standard_normal(lq.shape).astype(np.float32)
    z = rng.standard_normal(lq.shape).astype(np.float32)
    tb = jnp.full((lq.shape[0],), t, jnp.int32)
    x_prev, x0 = ad.drds_step(SCHED, jnp.asarray(x), jnp.asarray(eps), tb, jnp.asarray(phi), jnp.asarray(z))
    xp_ref, x0_ref = tdiff.p_sample(nchw(x), t, nchw(phi), nchw(eps), nchw(z))
    np.testing.assert_allclose(np.asarray(x_prev), nhwc(xp_ref), rtol=RTOL, atol=ATOL, err_msg=f"t={t}")
    np.testing.assert_allclose(np.asarray(x0), nhwc(x0_ref), rtol=RTOL, atol=ATOL, err_msg=f"t={t}")
    assert float(jnp.abs(x0).max()) <= 1
  # t = 0: no noise, and the new state is the clamped x0 estimate itself (m1 = 1, m2 = c2 = 0)
  t0 = jnp.zeros((lq.shape[0],), jnp.int32)
  a, x0 = ad.drds_step(SCHED, jnp.asarray(x), jnp.asarray(eps), t0, jnp.asarray(phi), jnp.asarray(z))
  b, _ = ad.drds_step(SCHED, jnp.asarray(x), jnp.asarray(eps), t0, jnp.asarray(phi), 100 * jnp.asarray(z))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  np.testing.assert_array_equal(np.asarray(a), np.asarray(x0))
  # per-sample steps: t = (5, 0) adds noise to the first sample only
  tm = jnp.asarray([5, 0], jnp.int32)
  c, _ = ad.drds_step(SCHED, jnp.asarray(x), jnp.asarray(eps), tm, jnp.asarray(phi), jnp.asarray(z))
  d, _ = ad.drds_step(SCHED, jnp.asarray(x), jnp.asarray(eps), tm, jnp.asarray(phi), jnp.zeros_like(z))
  assert not np.allclose(np.asarray(c[0]), np.asarray(d[0])) and np.array_equal(np.asarray(c[1]), np.asarray(d[1]))


def _eps_jax(x, cond, t):
  """A toy network (the same operations as :func:`_eps_torch`) whose x0 estimates hit the clamp at times."""
  return 0.9 * x - 0.7 * cond + 0.004 * t.astype(jnp.float32)[:, None, None, None]


def _eps_torch(x, cond, t):
  return 0.9 * x - 0.7 * cond + 0.004 * t.float()[:, None, None, None]


def test_sampler_matches_official_loop_and_is_one_program():
  lq, _, phi = images(5, (2, 8, 8, 3))
  key = jax.random.key(7)
  traces = []

  def eps_fn(x, cond, t):
    traces.append(1)
    return _eps_jax(x, cond, t)

  run = jax.jit(functools.partial(ad.sample, SCHED, eps_fn, return_intermediates=True))
  out, traj = run(jnp.asarray(lq), jnp.asarray(phi), key)
  assert len(traces) == 1  # the network is traced once: one scan, one compiled program
  # one program whose size does not grow with T (a rolled loop, not 100 unrolled steps)
  lower = lambda sched: jax.jit(functools.partial(ad.sample, sched, _eps_jax, return_intermediates=True)).lower(
      jnp.asarray(lq), jnp.asarray(phi), key).as_text()
  short, full = lower(ad.make_schedule(10)), lower(SCHED)
  assert full.count("stablehlo.while") == short.count("stablehlo.while") >= 1
  assert full.count("\n") == short.count("\n")  # only the constant tables differ

  _, step_keys = ad.sampler_keys(key, SCHED.T)
  zs = [nchw(jax.random.normal(k, lq.shape, jnp.float32)) for k in step_keys]
  ref, ref_traj = ta.TorchDiffusion(SCHED.buffers).p_sample_loop(_eps_torch, nchw(lq), nchw(phi), zs)
  np.testing.assert_allclose(np.asarray(out), nhwc(ref), rtol=RTOL, atol=ATOL)
  np.testing.assert_array_equal(np.asarray(traj["t"]), np.arange(99, -1, -1))
  np.testing.assert_allclose(np.asarray(traj["x0"]), np.stack([nhwc(r) for r in ref_traj]), rtol=RTOL, atol=ATOL)
  np.testing.assert_array_equal(np.asarray(traj["x_t"][0]), phi * 2 - 1)  # x_T = phi' with no noise
  assert 0 < float(out.min()) and float(out.max()) <= 1 and np.ptp(np.asarray(traj["x0"][:, 0, 0, 0, 0])) > 0.01

  # no noise at the last step: the output is res2img of the clamped x0 estimate at t = 0, whatever its z
  x_in = traj["x_t"][-1]
  t0 = jnp.zeros((2,), jnp.int32)
  eps0 = _eps_jax(x_in, jnp.asarray(lq), t0)
  last, _ = ad.drds_step(SCHED, x_in, eps0, t0, jnp.asarray(phi), jax.random.normal(step_keys[-1], lq.shape))
  np.testing.assert_allclose(np.asarray(ad.res_to_img(last, jnp.asarray(lq))), np.asarray(out),
                             rtol=0, atol=3e-7)  # eager vs jit: 1 ulp

  # a few kept steps are the same rows; the plain output is the same; another key changes the output
  few, ftraj = ad.sample(SCHED, _eps_jax, jnp.asarray(lq), jnp.asarray(phi), key, return_intermediates=True,
                         intermediate_ts=[0, 50, 99])
  np.testing.assert_array_equal(np.asarray(ftraj["t"]), [99, 50, 0])
  np.testing.assert_allclose(np.asarray(ftraj["x0"]), np.asarray(traj["x0"])[[0, 49, 99]], rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(np.asarray(few), np.asarray(out), rtol=1e-6, atol=1e-7)
  plain = ad.sample(SCHED, _eps_jax, jnp.asarray(lq), jnp.asarray(phi), key)
  np.testing.assert_allclose(np.asarray(plain), np.asarray(out), rtol=1e-6, atol=1e-7)
  other = ad.sample(SCHED, _eps_jax, jnp.asarray(lq), jnp.asarray(phi), jax.random.key(8))
  assert not np.allclose(np.asarray(other), np.asarray(out))
  with pytest.raises(ValueError, match="intermediate_ts"):
    ad.sample(SCHED, _eps_jax, jnp.asarray(lq), jnp.asarray(phi), key, return_intermediates=True,
              intermediate_ts=[100])


def test_sampler_without_anchor_starts_from_noise():
  lq, _, _ = images(6, (1, 4, 4, 3))
  key = jax.random.key(1)
  out, traj = ad.sample(SCHED, _eps_jax, jnp.asarray(lq), None, key, return_intermediates=True,
                        intermediate_ts=[99])
  init_key, _ = ad.sampler_keys(key, SCHED.T)
  np.testing.assert_array_equal(np.asarray(traj["x_t"][0]), np.asarray(jax.random.normal(init_key, lq.shape)))
  assert np.isfinite(np.asarray(out)).all()


# ------------------------------------------------------------------------------------------------ condition
def _he_cases():
  """uint8 NCHW batches: every image of a batch is equalised on its own, so the edge cases share a shape."""
  rng = np.random.default_rng(0)
  n = 32
  edge = rng.integers(0, 256, (3, n, n), dtype=np.uint8)
  edge[0] = 0  # constant 0
  edge[1] = 255  # constant 255
  edge[2] = 77
  edge[2, :2] = 200  # two levels: the last non-empty bin is the rare one
  two = np.full((3, n, n), 3, np.uint8)
  two[0, :, :16] = 9  # two equal halves
  two[1, 0, 0] = 255  # one outlier in the top bin
  two[2] = rng.integers(0, 2, (n, n))  # binary
  odd = rng.integers(0, 256, (3, n, n), dtype=np.uint8)
  odd[0, :, :] = np.where(rng.uniform(size=(n, n)) < 0.75, 255, odd[0])  # most pixels in the last bin: small step
  odd[1, :4] = 0
  odd[1, 4:] = 1  # step = floor(128 / 255) = 0 although 1024 pixels: unchanged
  odd[2] = np.arange(n * n).reshape(n, n) % 256  # uniform histogram
  batch = np.stack([rng.integers(0, 256, (3, n, n), dtype=np.uint8),  # full range
                    rng.integers(0, 21, (3, n, n), dtype=np.uint8),  # dark (low-light) range
                    np.minimum(rng.geometric(0.08, (3, n, n)), 255).astype(np.uint8),  # skewed, heavy low bins
                    rng.integers(250, 256, (3, n, n), dtype=np.uint8),  # bright, few levels
                    edge, two, odd])
  return [batch,
          rng.integers(0, 256, (2, 3, 8, 8), dtype=np.uint8),  # 64 pixels: step = 0, unchanged
          rng.integers(0, 256, (3, 1, 17, 16), dtype=np.uint8)]  # one channel; 272 pixels: step 0 or 1


def test_equalize_equals_torchvision():
  equalize = ta.torchvision_equalize()
  jitted = jax.jit(condition.equalize_uint8)
  for x in _he_cases():
    want = equalize(torch.from_numpy(x)).numpy()
    got = np.asarray(jitted(jnp.asarray(np.moveaxis(x, 1, -1))))
    np.testing.assert_array_equal(np.moveaxis(got, -1, 1), want)
    assert (want != x).any() or x.shape[-1] == 8
  x = _he_cases()[-1][0]
  np.testing.assert_array_equal(np.asarray(condition.equalize_uint8(jnp.asarray(np.moveaxis(x, 0, -1)))),
                                np.moveaxis(equalize(torch.from_numpy(x)).numpy(), 0, -1))  # one (H, W, C) image
  with pytest.raises(TypeError, match="uint8"):
    condition.equalize_uint8(jnp.zeros((1, 4, 4, 3), jnp.float32))


def test_hand_crafted_condition_matches_official():
  rng = np.random.default_rng(9)
  lq = rng.uniform(0, 0.25, (2, 16, 24, 3)).astype(np.float32)
  lq[0, :3] = 0  # black rows: mean 0, the 1e-8 guard
  lq[1, :, :4, 2] = 1.0  # saturated blue
  lq[1, 0, 0] = (1.0, 1 / 255, 254.9999 / 255)  # truncation boundaries
  got = np.asarray(jax.jit(condition.hand_crafted_condition)(jnp.asarray(lq)))
  want = nhwc(ta.cond_data_transforms(nchw(lq)))
  assert got.shape == (2, 16, 24, 12) and got.dtype == np.float32
  np.testing.assert_array_equal(got[..., :6], want[..., :6])  # LQ and HE(LQ): exact
  # colour and gradient maps: XLA turns the divisions into multiplications by reciprocals (1 ulp)
  np.testing.assert_allclose(got[..., 6:], want[..., 6:], rtol=1e-6, atol=2e-7)
  assert got.min() >= 0 and got.max() <= 1
  np.testing.assert_array_equal(got[0, :3, :, 6:9], 0)  # 0 / (0 + 1e-8)
  q = (lq * 255).astype(np.uint8)
  np.testing.assert_array_equal(q[1, 0, 0], [255, 1, 254])
  for ablation, zeroed in (("h", slice(3, 6)), ("c", slice(6, 9)), ("g", slice(9, 12)), ("all", slice(3, 12))):
    a = np.asarray(condition.hand_crafted_condition(jnp.asarray(lq), ablation=ablation))
    np.testing.assert_array_equal(a[..., zeroed], 0)
    keep = np.ones(12, bool)
    keep[zeroed] = False
    np.testing.assert_allclose(a[..., keep], got[..., keep], rtol=0, atol=3e-7)  # eager vs jit: 1 ulp
  with pytest.raises(ValueError, match="ablation"):
    condition.hand_crafted_condition(jnp.asarray(lq), ablation="x")
