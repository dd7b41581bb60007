"""Consistency distillation (Song et al. 2023) on the two teacher processes (lliejax.distill.processes): the
parametrisation and its exact boundary condition, the teachers' ODE steps (ReDDiT's DDIM step, the mean-reverting
SDE's probability-flow ODE against the official Euler sampler and against the exact flow of a Gaussian), the CD
loss against a float64 numpy transcription of the paper's equations, and multistep sampling as one program."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lliejax.diffusion import irsde
from lliejax.diffusion import reddit as rd
from lliejax.distill import consistency as cm
from lliejax.distill import processes as pr

SHAPE = (3, 4, 4, 3)
IR_T = 20


# ------------------------------------------------------------------------------------------------ processes, nets
def ddpm_process(num_scales=None):
  return pr.DDPMGamma.from_schedule(rd.make_schedule(4, 8), num_scales)


def irsde_process(num_scales=6, solver="euler"):
  return pr.MeanReverting.from_sde(irsde.make_sde(T=IR_T), num_scales, solver=solver)


def time_scale(process):
  """The stand-in networks see ``gamma`` (DDPM) or ``t / T`` (IR-SDE)."""
  return 1.0 if isinstance(process, pr.DDPMGamma) else 1.0 / IR_T


def teacher_np(x, y, tt):
  return np.tanh(0.7 * x + 0.3 * y) * (0.5 + tt.reshape(-1, 1, 1, 1)) + 0.1 * y


def student_np(p, x, y, tt):
  return p["a"] * np.tanh(p["b"] * x + 0.2 * y) * tt.reshape(-1, 1, 1, 1) + p["c"] * x


def teacher_jax(tp, scale):
  return lambda x, y, t: jnp.tanh(tp["w"] * x + 0.3 * y) * (0.5 + (t.astype(jnp.float32) * scale)[:, None, None,
                                                                                                    None]) + 0.1 * y


def student_jax(p, scale):
  return lambda x, y, t: (p["a"] * jnp.tanh(p["b"] * x + 0.2 * y) * (t.astype(jnp.float32) * scale)[:, None, None, None]
                          + p["c"] * x)


STUDENT = {"a": 0.9, "b": 0.6, "c": 0.05}
TARGET = {"a": 0.8, "b": 0.5, "c": 0.1}
TEACHER = {"w": 0.7}


def data(seed=0, shape=SHAPE, lo=-0.9, hi=0.9):
  rng = np.random.default_rng(seed)
  return rng.uniform(lo, hi, shape).astype(np.float32), rng.uniform(lo, hi, shape).astype(np.float32)


# ------------------------------------------------------------------------------------------------ grids
def test_grids_follow_the_teachers_tables():
  sched = rd.make_schedule(16, 32)
  p = pr.DDPMGamma.from_schedule(sched)
  np.testing.assert_array_equal(p.gammas, sched.gamma_prev[np.arange(17) * 32])  # the teacher's DDIM levels
  assert p.gammas[0] == 1.0 and p.noise_levels()[0] == 0.0
  np.testing.assert_allclose(p.gammas[-1], 0.075388511, rtol=1e-7)  # REFERENCE §3.1
  assert pr.DDPMGamma.from_schedule(sched, 513).num_scales == 513
  sde = irsde.make_sde()
  q = pr.MeanReverting.from_sde(sde)
  np.testing.assert_array_equal(q.ts, np.arange(101))
  np.testing.assert_array_equal(q.euler_factors(), np.ones(100, np.float32))
  # nu = sigma_bar e^Theta: at t = 100, Theta = -ln(0.005), so nu = sigma_bar_100 * 200.
  np.testing.assert_allclose(q.noise_levels()[100], 0.19607598 * 200, rtol=1e-5)
  np.testing.assert_array_equal(pr.MeanReverting.from_sde(sde, 5).ts, [0, 25, 50, 75, 100])
  assert np.all(np.diff(q.noise_levels()) > 0) and np.all(np.diff(p.noise_levels()) > 0)
  with pytest.raises(ValueError, match="strictly decreasing"):
    pr.DDPMGamma(gammas=np.array([0.5, 0.9]))
  with pytest.raises(ValueError, match="from 0"):
    pr.MeanReverting(sde=sde, ts=np.array([1, 5]))
  with pytest.raises(ValueError, match="solver"):
    pr.MeanReverting.from_sde(sde, solver="heun")
  with pytest.raises(ValueError, match="num_scales"):
    pr.MeanReverting.from_sde(sde, 102)
  for bad in ({"metric": "l1"}, {"weighting": "snr"}, {"huber_c": 0.0}):
    with pytest.raises(ValueError):
      cm.Options(**bad)
  with pytest.raises(ValueError, match="output"):
    cm.Parametrisation(output="eps")


# ------------------------------------------------------------------------------------------------ parametrisation
def paper_coefficients(t, eps, sigma_data, output):
  """Appendix C of the paper (``t``, ``epsilon`` = the process's noise levels); ``'x0'``: ``c_out = 1 - c_skip``
  (the module docstring)."""
  c_skip = sigma_data**2 / ((t - eps) ** 2 + sigma_data**2)
  if output == "raw":
    return c_skip, sigma_data * (t - eps) / np.sqrt(sigma_data**2 + t**2)
  return c_skip, 1.0 - c_skip


@pytest.mark.parametrize("output", cm.OUTPUTS)
@pytest.mark.parametrize("make", [ddpm_process, irsde_process])
def test_coefficients_and_exact_boundary(make, output):
  process = make()
  param = cm.Parametrisation(sigma_data=0.3, output=output)
  c_skip, c_out = cm.coefficients(process, param)
  nu = process.noise_levels()
  want = paper_coefficients(nu, nu[0], 0.3, output)
  np.testing.assert_allclose(c_skip, want[0], rtol=1e-6)
  np.testing.assert_allclose(c_out, want[1], rtol=1e-6, atol=1e-7)
  assert c_skip[0] == 1.0 and c_out[0] == 0.0
  # f(x, epsilon) = x bitwise, whatever the network returns (signed zeros included).
  x, y = data(1)
  x[0, 0, 0, 0], x[1, 0, 0, 0] = -0.0, 0.0
  junk = lambda x, y, t: jnp.full_like(x, jnp.inf)
  for net in (student_jax(STUDENT, time_scale(process)), junk):
    f = np.asarray(cm.consistency_fn(process, net, jnp.asarray(x), jnp.asarray(y), 0, param=param))
    np.testing.assert_array_equal(f.view(np.uint32), x.view(np.uint32))
  # Elsewhere: c_skip x + c_out F.
  net = student_jax(STUDENT, time_scale(process))
  n = jnp.array([1, 2, process.num_scales - 1])
  f = cm.consistency_fn(process, net, jnp.asarray(x), jnp.asarray(y), n, param=param)
  out = net(jnp.asarray(x), jnp.asarray(y), process.net_time(n, 3))
  if output == "x0":
    out = process.predict_x0(jnp.asarray(x), jnp.asarray(y), n, out)
  want = c_skip[n][:, None, None, None] * x + c_out[n][:, None, None, None] * np.asarray(out)
  np.testing.assert_allclose(f, want, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------------------------------------ teacher steps
def test_ddpm_step_is_reddits_ddim():
  """The ODE step is the deterministic DDIM step built from reddit.q_sample / predict_start (bitwise), and a chain
  of them on the grid of the official sampler's coefficients is reddit.ddim_sample (unclipped)."""
  x, y = data(2)
  process = ddpm_process()
  eps = jnp.asarray(teacher_np(x, y, np.full(3, 0.4)), jnp.float32)
  n = jnp.array([0, 1, 3])
  got = process.ode_step(jnp.asarray(x), jnp.asarray(y), eps, n)
  g = jnp.asarray(process.gammas, jnp.float32)
  want = rd.q_sample(rd.predict_start(jnp.asarray(x), g[n + 1], eps), g[n], eps)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  # ddim_sample's step at a = tau s steps with sqrt(abar_a) (its network sees gamma_prev[a], REFERENCE §3.6): on
  # the grid sqrt(abar[tau s]), tau = 0..n, and with a network that ignores the level, the chains agree.
  sched = rd.make_schedule(4, 8)
  official = pr.DDPMGamma(gammas=np.sqrt(sched.alphas_cumprod[np.arange(5) * 8]))
  net = lambda x, y, t: jnp.tanh(0.7 * x + 0.3 * y) * 0.5 + 0.1 * y
  x_init = jnp.asarray(x) * 0.5
  ours = cm.ode_sample(official, net, jnp.asarray(y), x_init=x_init)
  _, states = rd.ddim_sample(sched, net, jnp.asarray(y), x_init=x_init, clip_x0=False, return_intermediates=True)
  np.testing.assert_allclose(ours, states[-1], rtol=1e-5, atol=1e-6)


def test_ddpm_renoise_is_the_transition_from_the_boundary():
  """``renoise(forward_sample(x0, 0, z1), n, z2)`` has the marginal's coefficients at ``t_n`` (gamma_0 < 1)."""
  process = pr.DDPMGamma(gammas=np.array([0.99, 0.9, 0.5, 0.1]))
  one, zero = jnp.ones((1, 1, 1, 1)), jnp.zeros((1, 1, 1, 1))
  for n in range(4):
    chain = lambda x0, z1, z2: float(process.renoise(process.forward_sample(x0, None, 0, z1), None, n, z2)[0, 0, 0, 0])
    mean = chain(one, zero, zero)
    var = chain(zero, one, zero) ** 2 + chain(zero, zero, one) ** 2
    g = process.gammas[n]
    assert mean == pytest.approx(g, rel=1e-6) and var == pytest.approx(1 - g**2, rel=1e-5, abs=1e-6)


def test_irsde_euler_step_is_the_official_reverse_ode_step():
  sde = irsde.make_sde()
  process = pr.MeanReverting.from_sde(sde)
  x, mu = data(3, lo=0.0, hi=1.0)
  eps = jnp.asarray(teacher_np(x, mu, np.full(3, 0.3)), jnp.float32)
  n = jnp.array([0, 49, 99])
  got = process.ode_step(jnp.asarray(x), jnp.asarray(mu), eps, n)
  want = sde.reverse_ode_step(jnp.asarray(x), jnp.asarray(mu), sde.score_from_noise(eps, n + 1), n + 1)
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
  # The whole grid: irsde.sample(mode='ode'), the official probability-flow Euler sampler.
  net = teacher_jax(TEACHER, 1.0 / sde.T)
  x_init = sde.init_state(jax.random.key(0), jnp.asarray(mu))
  ours = jax.jit(lambda m, x: cm.ode_sample(process, net, m, x_init=x))(jnp.asarray(mu), x_init)
  official = jax.jit(lambda m, x: irsde.sample(sde, net, m, jax.random.key(1), mode="ode", x_init=x))(
      jnp.asarray(mu), x_init)
  np.testing.assert_allclose(ours, official, rtol=1e-6, atol=1e-6)


def gaussian_flow(sde, m, s0, mu):
  """Data ``x0 ~ N(m, s0^2)`` per pixel: the exact noise prediction and the exact probability-flow map.

  ``x_t ~ N(m_t, v_t)`` with ``m_t = mu + (m - mu) e^{-Theta_t}``, ``v_t = s0^2 e^{-2 Theta_t} + sigma_bar_t^2``; the
  noise is ``eps = -sigma_bar_t grad log p_t = sigma_bar_t (x - m_t) / v_t``, and the flow keeps
  ``(x - m_t) / sqrt(v_t)``.
  """
  theta = jnp.asarray(sde.thetas_cumsum, jnp.float32) * sde.dt
  sbar = jnp.asarray(sde.sigma_bars)

  def moments(t):
    w = jnp.exp(-theta[t])[:, None, None, None]
    return mu + (m - mu) * w, s0**2 * w**2 + sbar[t][:, None, None, None] ** 2

  def noise_fn(x, cond, t):
    del cond
    mt, vt = moments(t)
    return sbar[t][:, None, None, None] * (x - mt) / vt

  def flow(x, t_from, t_to):
    (ma, va), (mb, vb) = moments(t_from), moments(t_to)
    return mb + jnp.sqrt(vb / va) * (x - ma)

  return noise_fn, flow


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_irsde_probability_flow_converges_to_the_exact_flow(schedule):
  """Euler steps over coarser and coarser subsets of a 1024-step table: first-order convergence to the exact
  flow of a Gaussian data distribution; the 'ddim' step is exact in one jump for a point mass."""
  sde = irsde.make_sde(T=1024, schedule=schedule)
  _, mu = data(4, lo=0.0, hi=1.0)
  mu, m = jnp.asarray(mu), jnp.asarray(mu) + 0.2
  noise_fn, flow = gaussian_flow(sde, m, 0.1, mu)
  batch = mu.shape[0]
  t_hi, t_lo = jnp.full((batch,), sde.T), jnp.zeros((batch,), jnp.int32)
  x_t = flow(m + 0.1 * jax.random.normal(jax.random.key(0), mu.shape), t_lo, t_hi)  # a draw of p_T
  exact = flow(x_t, t_hi, t_lo)
  errors = []
  for num_scales in (9, 17, 33, 65, 129, 257):
    process = pr.MeanReverting.from_sde(sde, num_scales)
    got = jax.jit(lambda x: cm.ode_sample(process, noise_fn, mu, x_init=x))(x_t)
    errors.append(float(jnp.max(jnp.abs(got - exact))))
  ratios = np.array(errors[:-1]) / np.array(errors[1:])
  assert errors[-1] < 0.01 and np.all((ratios > 1.6) & (ratios < 2.6)), (errors, ratios)
  # Point mass (s0 = 0): the exponential-integrator ('ddim') step is exact, even over a long jump.
  noise_fn, flow = gaussian_flow(sde, m, 0.0, mu)
  process = pr.MeanReverting(sde=sde, ts=np.array([0, 300, 1024]), solver="ddim")
  for n in (0, 1):
    t_from, t_to = process.net_time(n + 1, batch), process.net_time(n, batch)
    got = process.ode_step(x_t, mu, noise_fn(x_t, mu, t_from), n)
    np.testing.assert_allclose(got, flow(x_t, t_from, t_to), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------------ loss
def paper_loss_np(process, n, z, x0, y, *, output, sigma_data, metric, weighting, target):
  """Algorithm 2 / eq. 7 of the paper in float64 for the given draws, with the teacher step and the noise levels of
  the process written out from its equations (REFERENCE §1.2, §1.6, §3.1)."""
  x0, y, z = (np.asarray(a, np.float64) for a in (x0, y, z))
  col = lambda v: np.asarray(v, np.float64).reshape(-1, 1, 1, 1)
  if isinstance(process, pr.DDPMGamma):
    g = process.gammas
    nu = np.sqrt(1 - g**2) / g
    time = lambda k: g[k]
    fwd = lambda k: col(g[k]) * x0 + col(np.sqrt(1 - g[k] ** 2)) * z
    x0_of = lambda x, k, e: (x - col(np.sqrt(1 - g[k] ** 2)) * e) / col(g[k])

    def teacher_step(x, k):  # DDIM, eta = 0
      e = teacher_np(x, y, time(k + 1))
      return col(g[k]) * x0_of(x, k + 1, e) + col(np.sqrt(1 - g[k] ** 2)) * e
  else:
    sde, ts = process.sde, process.ts
    big_theta = np.asarray(sde.thetas_cumsum, np.float64) * sde.dt
    lam = float(sde.max_sigma)
    sbar = lam * np.sqrt(1 - np.exp(-2 * big_theta))
    nu = sbar[ts] * np.exp(big_theta[ts])
    time = lambda k: ts[k] / IR_T
    fwd = lambda k: y + (x0 - y) * col(np.exp(-big_theta[ts[k]])) + col(sbar[ts[k]]) * z
    x0_of = lambda x, k, e: (x - y - col(sbar[ts[k]]) * e) * col(np.exp(big_theta[ts[k]])) + y

    def teacher_step(x, k):
      e = teacher_np(x, y, time(k + 1))
      a, b = ts[k + 1], ts[k]
      if process.solver == "euler":  # dx/dTheta = (mu - x) + lambda^2 eps / sigma_bar, one Euler step
        return x - col(big_theta[a] - big_theta[b]) * ((y - x) + lam**2 * e / col(sbar[a]))
      return y + (x0_of(x, k + 1, e) - y) * col(np.exp(-big_theta[b])) + col(sbar[b]) * e

  def f(p, x, k):
    c_skip, c_out = paper_coefficients(nu[k], nu[0], sigma_data, output)
    out = student_np(p, x, y, time(k))
    if output == "x0":
      out = x0_of(x, k, out)
    return np.where(col(k) == 0, x, col(c_skip) * x + col(c_out) * out)

  x_next = fwd(n + 1)
  x_hat = teacher_step(x_next, n)
  diff = (f(STUDENT, x_next, n + 1) - f(target, x_hat, n)).reshape(len(n), -1)
  if metric == "l2":
    d = np.mean(diff**2, axis=1)
  else:
    c = 0.00054 * np.sqrt(diff.shape[1])
    d = np.sqrt(np.sum(diff**2, axis=1) + c**2) - c
  lam_n = np.ones(len(n)) if weighting == "uniform" else 1.0 / (nu[n + 1] - nu[n])
  return np.mean(lam_n * d), np.mean(d)


CASES = [("ddpm", "x0", "l2", "uniform", None), ("ddpm", "raw", "pseudo_huber", "ict", None),
         ("ddpm", "x0", "pseudo_huber", "uniform", 0), ("euler", "x0", "l2", "ict", None),
         ("euler", "raw", "l2", "uniform", 0), ("ddim", "x0", "pseudo_huber", "uniform", None)]


@pytest.mark.parametrize("kind,output,metric,weighting,force_n", CASES)
def test_loss_matches_the_papers_equations(kind, output, metric, weighting, force_n):
  process = ddpm_process() if kind == "ddpm" else irsde_process(solver=kind)
  x0, y = data(5, lo=-0.9 if kind == "ddpm" else 0.05, hi=0.9 if kind == "ddpm" else 0.95)
  opts = cm.Options(param=cm.Parametrisation(sigma_data=0.5, output=output), metric=metric, weighting=weighting,
                    n=force_n)
  key = jax.random.key(11)
  scale = time_scale(process)
  batch = {"x0": jnp.asarray(x0), "cond": jnp.asarray(y)}
  value, aux = cm.loss(process, student_jax(STUDENT, scale), teacher_jax(TEACHER, scale), batch, key,
                       target_fn=student_jax(TARGET, scale), options=opts)
  d = cm.draw(process, key, x0.shape, options=opts)
  n = np.asarray(d.n)
  assert n.min() >= 0 and n.max() <= process.num_scales - 2
  want, unweighted = paper_loss_np(process, n, np.asarray(d.noise), x0, y, output=output, sigma_data=0.5,
                                   metric=metric, weighting=weighting, target=TARGET)
  np.testing.assert_allclose(float(value), want, rtol=2e-5)
  np.testing.assert_allclose(float(aux["consistency"]), unweighted, rtol=2e-5)
  # The target network defaults to the student (theta- = stopgrad(theta)).
  same, _ = cm.loss(process, student_jax(STUDENT, scale), teacher_jax(TEACHER, scale), batch, key, options=opts)
  np.testing.assert_allclose(float(same), paper_loss_np(process, n, np.asarray(d.noise), x0, y, output=output,
                                                        sigma_data=0.5, metric=metric, weighting=weighting,
                                                        target=STUDENT)[0], rtol=2e-5)


def test_gradients_reach_the_student_only():
  process = ddpm_process()
  x0, y = data(6)
  batch = {"x0": jnp.asarray(x0), "cond": jnp.asarray(y)}

  def total(sp, tp, gp):
    return cm.loss(process, student_jax(sp, 1.0), teacher_jax(gp, 1.0), batch, jax.random.key(3),
                   target_fn=student_jax(tp, 1.0))[0]

  g_s, g_t, g_teacher = jax.grad(total, argnums=(0, 1, 2))(STUDENT, TARGET, TEACHER)
  assert all(abs(float(v)) > 0 for v in g_s.values())
  assert all(float(v) == 0 for v in g_t.values()) and float(g_teacher["w"]) == 0


def test_lpips_metric_is_lliejax_lpips_vgg_per_sample():
  from lliejax.losses import perceptual  # pylint: disable=import-outside-toplevel
  params = perceptual.lpips_frozen("vgg")
  a, b = data(7, shape=(2, 32, 32, 3))
  a, b = jnp.asarray(a), jnp.asarray(b)
  got = jax.jit(lambda p: cm.distance(a, b, metric="lpips", lpips_params=p, data_range=(-1.0, 1.0)))(params)
  want = [perceptual.lpips_loss(params, a[i:i + 1], b[i:i + 1], net="vgg", input_range="[-1,1]") for i in range(2)]
  np.testing.assert_allclose(got, want, rtol=1e-4)
  with pytest.raises(ValueError, match="lpips_params"):
    cm.loss(ddpm_process(), student_jax(STUDENT, 1.0), teacher_jax(TEACHER, 1.0), {"x0": a, "cond": b},
            jax.random.key(0), options=cm.Options(metric="lpips"))


# ------------------------------------------------------------------------------------------------ sampling
@pytest.mark.parametrize("make", [ddpm_process, irsde_process])
def test_multistep_sampling_is_one_program(make):
  process = make()
  traces = []
  net_core = student_jax(STUDENT, time_scale(process))

  def net(x, y, t):
    traces.append(1)
    return net_core(x, y, t)

  _, y = data(8, lo=0.05, hi=0.95)
  y = jnp.asarray(y)
  big_n = process.num_scales
  steps = (big_n - 1, big_n // 2, 1)
  fn = jax.jit(lambda y, k: cm.sample(process, net, y, k, steps=steps))
  out1 = fn(y, jax.random.key(0))
  out2 = fn(y, jax.random.key(1))
  assert len(traces) == 1 and fn._cache_size() == 1  # pylint: disable=protected-access
  assert not np.allclose(out1, out2)
  # Algorithm 1 as a Python loop with the same draws.
  k_init, k_loop = jax.random.split(jax.random.key(0))
  x = process.init_state(k_init, y)
  for k, (i, kk) in enumerate(zip(steps, jax.random.split(k_loop, len(steps)))):
    if k:
      x = process.renoise(x, y, i, jax.random.normal(kk, x.shape))
    x = cm.consistency_fn(process, net_core, x, y, i)
  np.testing.assert_allclose(out1, x, rtol=1e-5, atol=1e-6)
  # One step is one evaluation of f at t_{N-1} from x_T.
  x_init = process.init_state(jax.random.key(5), y)
  one = jax.jit(lambda y, x: cm.sample(process, net_core, y, steps=1, x_init=x))(y, x_init)
  np.testing.assert_allclose(one, cm.consistency_fn(process, net_core, x_init, y, big_n - 1), rtol=1e-6, atol=1e-6)
  assert cm.step_indices(process, 2) == (big_n - 1, round((big_n - 1) / 2))
  with pytest.raises(ValueError, match="strictly decreasing"):
    cm.sample(process, net_core, y, jax.random.key(0), steps=(1, 2))
  with pytest.raises(ValueError, match="steps"):
    cm.sample(process, net_core, y, jax.random.key(0), steps=big_n)
