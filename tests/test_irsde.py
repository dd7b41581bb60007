"""IR-SDE tables and steps against the check values of REFERENCE.md 1.2, 1.5, 1.6 (measured on the official code)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lliejax.diffusion import irsde as sde_lib

# schedule: dt, theta_0, theta_1, theta_50, theta_100, thetas_cumsum[100], sigma_bar_1, _50, _100, sigma_50
CHECK = {
    "cosine": (0.1040938050, 6.1428547e-4, 1.6945601e-3, 0.50615633, 0.99976659, 50.899448, 3.6826239e-3,
               0.18286957, 0.19607598, 0.19728185),
    "linear": (0.5272476673, 9.9009904e-4, 2.9603962e-3, 0.09950494, 0.1980198, 10.04901, 1.0946808e-2,
               0.18938346, 0.19607598, 0.08747161),
    "constant": (0.0529831722, 1, 1, 1, 1, 100, 6.2174212e-2, 0.19558762, 0.19607598, 0.27729678),
}
RTOL = 1e-6


def rel(a, b):
  return abs(float(a) - float(b)) / abs(float(b))


@pytest.mark.parametrize("schedule", sorted(CHECK))
def test_schedule_check_values(schedule):
  s = sde_lib.make_sde(50, 100, schedule, 0.005)
  dt, th0, th1, th50, th100, cum, sb1, sb50, sb100, sig50 = CHECK[schedule]
  assert s.thetas.shape == (101,) and s.thetas.dtype == np.float32
  got = [s.dt, s.thetas[0], s.thetas[1], s.thetas[50], s.thetas[100], s.thetas_cumsum[100], s.sigma_bars[1],
         s.sigma_bars[50], s.sigma_bars[100], s.sigmas[50]]
  want = [dt, th0, th1, th50, th100, cum, sb1, sb50, sb100, sig50]
  for name, g, w in zip(["dt", "th0", "th1", "th50", "th100", "cum", "sb1", "sb50", "sb100", "sig50"], got, want):
    assert rel(g, w) <= RTOL, (schedule, name, g, w)
  assert s.max_sigma == pytest.approx(50 / 255, rel=1e-7)
  assert s.thetas_cumsum[0] == 0
  assert float(jnp.exp(-s.thetas_cumsum[100] * s.dt)) == pytest.approx(0.005, rel=RTOL)


def test_cosine_mean_weights_and_optimum_coefficients():
  s = sde_lib.make_sde()
  w = s.mean_weight(jnp.array([1, 50, 100]), 1)
  for g, want in zip(w, [0.99982363, 0.36082169, 0.005]):
    assert rel(g, want) <= RTOL
  t1, t2 = s.optimum_coefficients(jnp.array([50, 100]), 1)
  for g, want in zip([t1[0], t2[0], t1[1], t2[1]], [0.93289644, 0.043733042, 0.9011575, 0.0010426004]):
    assert rel(g, want) <= RTOL
  # At t = 1 the optimum state is x0 exactly.
  a, b = s.optimum_coefficients(jnp.array([1]), 1)
  assert float(a[0]) == 0.0 and float(b[0]) == pytest.approx(1.0, abs=1e-7)


def test_posterior_std_check_values():
  s = sde_lib.make_sde()
  assert rel(s.posterior_stds[50], 0.061491728) <= RTOL
  assert rel(s.posterior_stds[100], 0.084996045) <= RTOL
  # t = 1: variance 0 is clamped to 1e-20 dt -> std ~6.3e-12 (noise still added).
  assert s.posterior_stds[1] == pytest.approx(np.sqrt(1e-20 * s.dt) * 50 / 255, rel=1e-4)


def test_linear_endpoints():
  s = sde_lib.make_sde(schedule="linear")
  np.testing.assert_allclose(s.thetas[[0, -1]], [1000 / 101 * 1e-4, 1000 / 101 * 0.02], rtol=1e-6)


def test_bad_schedule_and_args():
  with pytest.raises(ValueError, match="schedule"):
    sde_lib.make_sde(schedule="sigmoid")
  with pytest.raises(ValueError, match="eps"):
    sde_lib.make_sde(eps=0)


def _ref_steps(s, x, mu, noise, t, z):
  """Straight float64 restatement of the reference formulas (REFERENCE 1.5/1.6)."""
  th, cum, dt, lam = s.thetas.astype(np.float64), s.thetas_cumsum.astype(np.float64), float(s.dt), s.max_sigma
  sb = lam * np.sqrt(1 - np.exp(-2 * cum * dt))
  sig2 = 2 * lam**2 * th
  score = -noise / sb[t]
  sde = x - (th[t] * (mu - x) - sig2[t] * score) * dt - np.sqrt(sig2[t]) * np.sqrt(dt) * z
  ode = x - (th[t] * (mu - x) - 0.5 * sig2[t] * score) * dt
  x0 = (x - mu - sb[t] * noise) * np.exp(cum[t] * dt) + mu
  a, b, c = np.exp(-th[t] * dt), np.exp(-cum[t] * dt), np.exp(-cum[t - 1] * dt)
  mean = mu + a * (1 - c**2) / (1 - b**2) * (x - mu) + c * (1 - a**2) / (1 - b**2) * (x0 - mu)
  var = (1 - a**2) * (1 - c**2) / (1 - b**2)
  post = mean + np.sqrt(max(var, 1e-20 * dt)) * lam * z
  return sde, ode, post


@pytest.mark.parametrize("t", [1, 2, 37, 100])
def test_steps_match_float64_formulas(t):
  s = sde_lib.make_sde()
  rng = np.random.default_rng(t)
  x, mu, noise, z = (rng.standard_normal((1, 5, 4, 3)) * 0.3 + 0.3 for _ in range(4))
  want = _ref_steps(s, x, mu, noise, t, z)
  tt = jnp.array([t])
  f = lambda a: jnp.asarray(a, jnp.float32)
  score = s.score_from_noise(f(noise), tt)
  got = [s.reverse_sde_step(f(x), f(mu), score, tt, f(z)), s.reverse_ode_step(f(x), f(mu), score, tt),
         s.reverse_posterior_step(f(x), f(noise), f(mu), tt, f(z))]
  # float32 (as the official code) vs float64: at small t, 1 - exp(-2 cum dt) cancels, so allow 2e-4 there.
  atol = 2e-4 if t <= 2 else 2e-6
  for g, w in zip(got, want):
    np.testing.assert_allclose(np.asarray(g), w, rtol=2e-5, atol=atol)


def test_forward_sample_statistics_and_true_noise():
  s = sde_lib.make_sde()
  key = jax.random.key(0)
  x0 = jnp.full((4000, 1, 1, 1), 0.8)
  mu = jnp.full_like(x0, 0.1)
  t = jnp.full((4000,), 50)
  noise = jax.random.normal(key, x0.shape)
  xt = s.forward_sample(x0, mu, t, noise)
  assert float(jnp.mean(xt)) == pytest.approx(0.1 + 0.7 * 0.36082169, abs=0.01)
  assert float(jnp.std(xt)) == pytest.approx(0.18286957, rel=0.05)
  np.testing.assert_allclose(s.noise_from_state(xt, x0, mu, t), noise, atol=1e-4)


def test_ml_pair_targets_optimum_and_prediction_with_true_noise():
  """With the true noise the predicted mean equals the reverse-SDE mean; target is the optimum step."""
  s = sde_lib.make_sde()
  key = jax.random.key(3)
  x0 = jax.random.uniform(jax.random.key(1), (2, 6, 6, 3))
  mu = x0 * 0.2
  captured = {}

  def oracle(xt, m, t):
    captured["xt"], captured["t"] = xt, t
    return s.noise_from_state(xt, x0, m, t)

  pred, target, t = sde_lib.ml_pair(s, oracle, x0, mu, key)
  assert t.shape == (2,) and bool(jnp.all((t >= 1) & (t <= 100)))
  np.testing.assert_allclose(target, s.reverse_optimum_step(captured["xt"], x0, mu, t), rtol=1e-6)
  score = s.score_from_noise(oracle(captured["xt"], mu, t), t)
  np.testing.assert_allclose(pred, s.reverse_sde_step_mean(captured["xt"], mu, score, t), rtol=1e-6)


@pytest.mark.parametrize("mode", ["posterior", "sde", "ode"])
def test_sampler_scan_equals_python_loop(mode):
  s = sde_lib.make_sde(T=6)
  mu = jax.random.uniform(jax.random.key(0), (2, 5, 7, 3))
  noise_fn = lambda x, m, t: jnp.tanh(x - m) * (t[:, None, None, None] / 6.0)
  key = jax.random.key(11)
  out, states = jax.jit(lambda m, k: sde_lib.sample(s, noise_fn, m, k, mode=mode, return_intermediates=True))(mu, key)
  assert states.shape == (6,) + mu.shape
  np.testing.assert_allclose(states[-1], out)
  # Python loop with the same key usage.
  k0, kloop = jax.random.split(key)
  x = mu + np.float32(s.max_sigma) * jax.random.normal(k0, mu.shape)
  for i, (t, k) in enumerate(zip(range(6, 0, -1), jax.random.split(kloop, 6))):
    tt = jnp.full((2,), t)
    eps = noise_fn(x, mu, tt)
    z = jax.random.normal(k, x.shape)
    if mode == "posterior":
      x = s.reverse_posterior_step(x, eps, mu, tt, z)
    elif mode == "sde":
      x = s.reverse_sde_step(x, mu, s.score_from_noise(eps, tt), tt, z)
    else:
      x = s.reverse_ode_step(x, mu, s.score_from_noise(eps, tt), tt)
    np.testing.assert_allclose(states[i], x, rtol=1e-5, atol=1e-6)


def test_posterior_sampler_with_oracle_recovers_x0():
  """If the network returns the true noise of x0, the posterior sampler lands on x0 (up to the t=1 std)."""
  s = sde_lib.make_sde()
  x0 = jax.random.uniform(jax.random.key(5), (1, 8, 8, 3))
  mu = x0 * 0.1
  out = sde_lib.sample(s, lambda x, m, t: s.noise_from_state(x, x0, m, t), mu, jax.random.key(6))
  np.testing.assert_allclose(out, x0, atol=1e-4)


def test_sampler_rejects_unknown_mode():
  s = sde_lib.make_sde(T=2)
  with pytest.raises(ValueError, match="mode"):
    sde_lib.sample(s, lambda x, m, t: x, jnp.zeros((1, 2, 2, 3)), jax.random.key(0), mode="ddim")


def test_strided_sampler():
  """``sample_strided``: on the full grid with ``eta = 1`` it is the official posterior sampler (same key use, so the
  same noise); ``eta = 0`` is the deterministic exponential integrator of ``distill.processes.MeanReverting('ddim')``
  on the same grid; an oracle network lands on x0 with any step count; bad step counts are refused."""
  from lliejax.distill import consistency, processes  # pylint: disable=import-outside-toplevel
  s = sde_lib.make_sde(T=12)
  mu = jax.random.uniform(jax.random.key(0), (2, 5, 7, 3))
  noise_fn = lambda x, m, t: jnp.tanh(x - m) * (t[:, None, None, None] / 12.0)
  key = jax.random.key(3)
  full = sde_lib.sample_strided(s, noise_fn, mu, key, steps=12, eta=1.0)
  np.testing.assert_allclose(full, sde_lib.sample(s, noise_fn, mu, key, mode="posterior"), rtol=1e-4, atol=1e-5)
  x_init = s.init_state(jax.random.key(4), mu)
  for steps in (12, 4, 3):
    det = sde_lib.sample_strided(s, noise_fn, mu, key, steps=steps, eta=0.0, x_init=x_init)
    proc = processes.MeanReverting.from_sde(s, steps + 1, solver="ddim")
    np.testing.assert_array_equal(proc.ts, sde_lib.strided_times(12, steps))
    ref = consistency.ode_sample(proc, noise_fn, mu, x_init=x_init)
    np.testing.assert_allclose(det, ref, rtol=1e-4, atol=1e-5)
  x0 = jax.random.uniform(jax.random.key(5), (1, 8, 8, 3))
  oracle = lambda x, m, t: s.noise_from_state(x, x0, m, t)
  for steps, eta in ((1, 1.0), (3, 0.5), (5, 1.0)):
    out = sde_lib.sample_strided(s, oracle, x0 * 0.1, jax.random.key(6), steps=steps, eta=eta)
    np.testing.assert_allclose(out, x0, atol=2e-4)
  for bad in (0, 13):
    with pytest.raises(ValueError, match="steps must be in"):
      sde_lib.sample_strided(s, noise_fn, mu, key, steps=bad)


def test_entropy_sde_method_strided_sampler():
  """``entropy_sde``'s ``'strided'`` sampler is :func:`sample_strided` with ``config.sampling.eta`` (settable as an
  override, validated); the official samplers refuse a step count other than ``T``."""
  import os  # pylint: disable=import-outside-toplevel
  from lliejax import config_utils, methods  # pylint: disable=import-outside-toplevel
  spec = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "entropy_sde.py")
  config = config_utils.load_config(spec + ":tiny,sampling.eta=0.0")
  method = methods.build(config)
  params = method.init_params(jax.random.key(0))
  lq = jax.random.uniform(jax.random.key(1), (1, 16, 16, 3))
  out = method.sample(params, {}, lq, jax.random.key(2), sampler="strided", steps=2)
  ref = sde_lib.sample_strided(method.sde, method.noise_fn(params), lq, jax.random.key(2), steps=2, eta=0.0)
  np.testing.assert_array_equal(out, ref)
  with pytest.raises(ValueError, match="strided runs fewer"):
    method.sample(params, {}, lq, jax.random.key(2), sampler="posterior", steps=2)
  with pytest.raises(config_utils.ConfigError, match="sampling.eta"):
    config_utils.load_config(spec + ":tiny,sampling.eta=1.5")
