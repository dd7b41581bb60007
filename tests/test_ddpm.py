"""lliejax.diffusion.ddpm: schedules against their float64 formulas, the steps against each other and the samplers
against Python loops and an oracle network."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lliejax.diffusion import ddpm


def test_linear_and_cosine_schedules():
  lin = ddpm.beta_schedule("linear", 1000)
  assert lin[0] == 1e-4 and lin[-1] == 2e-2 and np.allclose(np.diff(lin), (2e-2 - 1e-4) / 999)
  cos = ddpm.beta_schedule("cosine", 50)
  f = lambda t: math.cos((t / 50 + 0.008) / 1.008 * math.pi / 2) ** 2
  abar = np.cumprod(1 - cos)
  np.testing.assert_allclose(abar[:-1], [f(t + 1) / f(0) for t in range(49)], rtol=1e-10)  # unclipped part
  assert cos[-1] == 0.999  # f(T) = 0: the last beta is clipped
  with pytest.raises(ValueError, match="schedule"):
    ddpm.beta_schedule("sigmoid", 10)
  with pytest.raises(ValueError, match="T must be"):
    ddpm.beta_schedule("linear", 0)


def test_tables():
  d = ddpm.make_ddpm(100, "linear")
  b = np.linspace(1e-4, 2e-2, 100)
  abar = np.cumprod(1 - b)
  abar_prev = np.concatenate([[1.0], abar[:-1]])
  np.testing.assert_allclose(d.alphas_cumprod, abar, rtol=1e-6)
  np.testing.assert_allclose(d.posterior_variance, b * (1 - abar_prev) / (1 - abar), rtol=1e-5)
  assert d.posterior_variance[0] == 0 and d.posterior_mean_coef1[0] == pytest.approx(1.0)
  assert d.posterior_mean_coef2[0] == 0
  assert d.betas.dtype == np.float32


def test_q_sample_inverts_and_has_the_marginal_statistics():
  d = ddpm.make_ddpm(100, "cosine")
  x0 = jnp.full((4000, 1, 1, 1), 0.6)
  t = jnp.full((4000,), 40)
  noise = jax.random.normal(jax.random.key(0), x0.shape)
  xt = d.q_sample(x0, t, noise)
  a = float(d.alphas_cumprod[40])
  assert float(jnp.mean(xt)) == pytest.approx(math.sqrt(a) * 0.6, abs=0.02)
  assert float(jnp.std(xt)) == pytest.approx(math.sqrt(1 - a), rel=0.05)
  np.testing.assert_allclose(d.x0_from_eps(xt, t, noise), x0, atol=1e-5)
  np.testing.assert_allclose(d.eps_from_x0(xt, t, x0), noise, atol=1e-4)


def test_ddim_with_eta_one_is_the_ancestral_step():
  d = ddpm.make_ddpm(30, "linear")
  rng = np.random.default_rng(0)
  xt, eps, z = (jnp.asarray(rng.standard_normal((2, 3, 4, 3)), jnp.float32) for _ in range(3))
  for t in (1, 7, 29):
    tt = jnp.full((2,), t)
    a = d.ancestral_step(xt, eps, tt, z, clip_x0=False)
    b = d.ddim_step(xt, eps, tt, tt - 1, z, eta=1.0, clip_x0=False)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_timesteps():
  d = ddpm.make_ddpm(20, "linear")
  np.testing.assert_array_equal(d.timesteps(), np.arange(19, -1, -1))
  np.testing.assert_array_equal(d.timesteps(4), [19, 14, 9, 4])
  with pytest.raises(ValueError, match="steps"):
    d.timesteps(21)


@pytest.mark.parametrize("mode,steps", [("ancestral", None), ("ddim", 5)])
def test_sampler_scan_equals_python_loop(mode, steps):
  d = ddpm.make_ddpm(10, "linear")
  cond = jax.random.uniform(jax.random.key(0), (2, 5, 7, 3))
  eps_fn = lambda x, c, t: jnp.tanh(x - c) * (t[:, None, None, None] / 10.0)
  key = jax.random.key(3)
  out, states = jax.jit(lambda c, k: ddpm.sample(d, eps_fn, c, k, mode=mode, steps=steps, eta=0.5,
                                                 return_intermediates=True))(cond, key)
  np.testing.assert_allclose(states[-1], out)
  k0, kloop = jax.random.split(key)
  x = jax.random.normal(k0, cond.shape)
  ts = d.timesteps(steps)
  for i, (t, k) in enumerate(zip(ts, jax.random.split(kloop, len(ts)))):
    tt = jnp.full((2,), t)
    z = jax.random.normal(k, x.shape)
    eps = eps_fn(x, cond, tt)
    if mode == "ancestral":
      x = d.ancestral_step(x, eps, tt, z)
    else:
      t_prev = ts[i + 1] if i + 1 < len(ts) else -1
      x = d.ddim_step(x, eps, tt, jnp.full((2,), t_prev), z, eta=0.5)
    np.testing.assert_allclose(states[i], x, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("mode,steps", [("ancestral", None), ("ddim", 4)])
def test_oracle_network_recovers_x0(mode, steps):
  """With the true noise of x0 at every state, both samplers land on x0."""
  d = ddpm.make_ddpm(25, "cosine")
  x0 = jax.random.uniform(jax.random.key(1), (1, 6, 6, 3), minval=-0.9, maxval=0.9)
  out = ddpm.sample(d, lambda x, c, t: d.eps_from_x0(x, t, x0), jnp.zeros_like(x0), jax.random.key(2), mode=mode,
                    steps=steps)
  np.testing.assert_allclose(out, x0, atol=1e-4)


def test_sampler_errors():
  d = ddpm.make_ddpm(10, "linear")
  with pytest.raises(ValueError, match="ancestral sampler runs all"):
    ddpm.sample(d, lambda x, c, t: x, jnp.zeros((1, 2, 2, 3)), jax.random.key(0), steps=5)
  with pytest.raises(ValueError, match="unknown DDPM sampler"):
    ddpm.sample(d, lambda x, c, t: x, jnp.zeros((1, 2, 2, 3)), jax.random.key(0), mode="euler")
