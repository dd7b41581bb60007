"""Discrete DDPM (Ho et al., 2020): noise schedules, the forward process, ancestral and strided DDIM sampling.

The family of AnlightenDiff's anchored DDPM and ReDDiT's gamma-conditioned DDPM; this module holds the parts they
share, written once:

* :func:`beta_schedule`: ``linear`` (``linspace(beta_start, beta_end, T)``, Ho et al.) and ``cosine`` (Nichol &
  Dhariwal 2021, ``s = 0.008``, betas clipped at ``max_beta``), computed in float64;
* :class:`DDPM`: the tables (float32, from float64) indexed by ``t = 0 .. T-1`` (the value the network sees), with
  ``q_sample``, ``x0_from_eps``, the posterior ``q(x_{t-1} | x_t, x0)``, one ancestral step and one DDIM step;
* :func:`sample`: the whole reverse process in one ``lax.scan`` over the (possibly strided) timesteps, either
  ancestral (``x_{t-1} ~ q(x_{t-1} | x_t, x0_hat)``, no noise at ``t = 0``) or DDIM with ``eta``.

The network is a callable ``eps_fn(x_t, cond, t) -> predicted noise`` with ``t`` an int32 array of shape (B,).
Images are whatever range the caller chose (DDPM code bases use [-1, 1]; ``clip_x0`` clips the x0 estimate to it).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable, Literal

import jax
import jax.numpy as jnp
import numpy as np

EpsFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
Schedule = Literal["linear", "cosine"]
Mode = Literal["ancestral", "ddim"]


def beta_schedule(kind: Schedule, T: int, *, beta_start: float = 1e-4, beta_end: float = 2e-2,
                  cosine_s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
  """The ``T`` betas (float64) of the ``linear`` or ``cosine`` schedule."""
  if T < 1:
    raise ValueError(f"ddpm.T must be >= 1, got {T}")
  if kind == "linear":
    return np.linspace(beta_start, beta_end, T, dtype=np.float64)
  if kind == "cosine":
    f = lambda t: math.cos((t / T + cosine_s) / (1 + cosine_s) * math.pi / 2) ** 2
    return np.array([min(1 - f(i + 1) / f(i), max_beta) for i in range(T)], np.float64)
  raise ValueError(f"unknown beta schedule {kind!r}; expected 'linear' or 'cosine'")



def gaussian_diffusion_tables(betas: np.ndarray) -> dict[str, np.ndarray]:
  """The float64 tables behind the registered buffers of the DDPM ``GaussianDiffusion`` family (SR3 / ReDDiT,
  AnlightenDiff), from ``betas``: ``alphas_cumprod`` (and ``_prev``), their square roots and logs, the posterior
  variance (log clipped at 1e-20) and the two posterior-mean coefficients, under the official buffer names; plus
  ``alphas`` for callers that derive further tables."""
  betas = np.asarray(betas, np.float64)
  alphas = 1.0 - betas
  abar = np.cumprod(alphas, axis=0)
  abar_prev = np.append(1.0, abar[:-1])
  post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
  return {
      "betas": betas, "alphas": alphas, "alphas_cumprod": abar, "alphas_cumprod_prev": abar_prev,
      "sqrt_alphas_cumprod": np.sqrt(abar), "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - abar),
      "log_one_minus_alphas_cumprod": np.log(1.0 - abar), "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / abar),
      "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / abar - 1), "posterior_variance": post_var,
      "posterior_log_variance_clipped": np.log(np.maximum(post_var, 1e-20)),
      "posterior_mean_coef1": betas * np.sqrt(abar_prev) / (1.0 - abar),
      "posterior_mean_coef2": (1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar)}

@dataclasses.dataclass(frozen=True, eq=False)
class DDPM:
  """The tables of a T-step DDPM (numpy float32, closed over by jitted functions as constants)."""

  T: int
  betas: np.ndarray
  alphas_cumprod: np.ndarray
  alphas_cumprod_prev: np.ndarray
  posterior_variance: np.ndarray  # beta_t (1 - abar_{t-1}) / (1 - abar_t); 0 at t = 0
  posterior_mean_coef1: np.ndarray  # of x0
  posterior_mean_coef2: np.ndarray  # of x_t

  def _gather(self, table: np.ndarray, t, ndim: int) -> jax.Array:
    v = jnp.asarray(table)[jnp.asarray(t, jnp.int32)]
    return v.reshape(v.shape + (1,) * (ndim - v.ndim)) if v.ndim else v

  def sample_timesteps(self, key, batch: int) -> jax.Array:
    """``t ~ U{0 .. T-1}``, int32 of shape (batch,)."""
    return jax.random.randint(key, (batch,), 0, self.T, dtype=jnp.int32)

  def q_sample(self, x0, t, noise):
    """``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) noise``."""
    a = self._gather(self.alphas_cumprod, t, x0.ndim)
    return jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * noise

  def x0_from_eps(self, xt, t, eps):
    """``x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)``."""
    a = self._gather(self.alphas_cumprod, t, xt.ndim)
    return (xt - jnp.sqrt(1.0 - a) * eps) / jnp.sqrt(a)

  def eps_from_x0(self, xt, t, x0):
    a = self._gather(self.alphas_cumprod, t, xt.ndim)
    return (xt - jnp.sqrt(a) * x0) / jnp.sqrt(1.0 - a)

  def posterior(self, x0, xt, t):
    """Mean and variance of ``q(x_{t-1} | x_t, x0)``."""
    nd = xt.ndim
    mean = self._gather(self.posterior_mean_coef1, t, nd) * x0 + self._gather(self.posterior_mean_coef2, t, nd) * xt
    return mean, self._gather(self.posterior_variance, t, nd)

  def ancestral_step(self, xt, eps, t, z, *, clip_x0: bool = True, clip_range=(-1.0, 1.0)):
    """``x_{t-1}``: the posterior mean given the (clipped) x0 estimate, plus its std times ``z`` (none at t = 0)."""
    x0 = self.x0_from_eps(xt, t, eps)
    if clip_x0:
      x0 = jnp.clip(x0, *clip_range)
    mean, var = self.posterior(x0, xt, t)
    return mean + jnp.sqrt(var) * z

  def ddim_step(self, xt, eps, t, t_prev, z, *, eta: float = 0.0, clip_x0: bool = True, clip_range=(-1.0, 1.0)):
    """One DDIM step from ``t`` to ``t_prev`` (``t_prev < 0``: the final step to x0). ``eta = 1``: DDPM variance."""
    nd = xt.ndim
    a = self._gather(self.alphas_cumprod, t, nd)
    t_prev = jnp.asarray(t_prev, jnp.int32)
    # abar of t_prev, and 1 (the clean end) for t_prev < 0: index T of the table extended by one.
    a_prev = self._gather(np.append(self.alphas_cumprod, np.float32(1)), jnp.where(t_prev >= 0, t_prev, self.T), nd)
    x0 = self.x0_from_eps(xt, t, eps)
    if clip_x0:
      x0 = jnp.clip(x0, *clip_range)
      eps = self.eps_from_x0(xt, t, x0)
    sigma = eta * jnp.sqrt((1.0 - a_prev) / (1.0 - a) * (1.0 - a / a_prev))
    direction = jnp.sqrt(jnp.maximum(1.0 - a_prev - sigma**2, 0.0)) * eps
    return jnp.sqrt(a_prev) * x0 + direction + sigma * z

  def timesteps(self, steps: int | None = None) -> np.ndarray:
    """The decreasing timesteps of a ``steps``-step sampler: all ``T`` of them, or ``steps`` evenly strided ones
    (``T-1``, ..., ending at ``T-1 - (steps-1) * (T // steps)``, DDIM's uniform spacing)."""
    steps = self.T if steps is None else int(steps)
    if not 1 <= steps <= self.T:
      raise ValueError(f"steps must be in [1, {self.T}], got {steps}")
    stride = self.T // steps
    return (self.T - 1 - stride * np.arange(steps)).astype(np.int32)


def make_ddpm(T: int = 1000, schedule: Schedule = "linear", **schedule_kwargs) -> DDPM:
  """The tables of a ``T``-step DDPM (float64 arithmetic, stored float32)."""
  betas = beta_schedule(schedule, T, **schedule_kwargs)
  abar = np.cumprod(1.0 - betas)
  abar_prev = np.concatenate([[1.0], abar[:-1]])
  post_var = betas * (1.0 - abar_prev) / (1.0 - abar)
  coef1 = betas * np.sqrt(abar_prev) / (1.0 - abar)
  coef2 = (1.0 - abar_prev) * np.sqrt(1.0 - betas) / (1.0 - abar)
  f32 = lambda a: np.asarray(a, np.float32)
  return DDPM(T=T, betas=f32(betas), alphas_cumprod=f32(abar), alphas_cumprod_prev=f32(abar_prev),
              posterior_variance=f32(post_var), posterior_mean_coef1=f32(coef1), posterior_mean_coef2=f32(coef2))


def make_ddpm_from_config(cfg) -> DDPM:
  """From a ``config.ddpm`` section: ``T``, ``schedule`` and optionally ``beta_start`` / ``beta_end``."""
  kwargs = {k: float(cfg[k]) for k in ("beta_start", "beta_end") if cfg.get(k) is not None}
  return make_ddpm(int(cfg.T), cfg.schedule, **kwargs)


def sample(ddpm: DDPM, eps_fn: EpsFn, cond, key, *, mode: Mode = "ancestral", steps: int | None = None,
           eta: float = 0.0, clip_x0: bool = True, x_init=None, return_intermediates: bool = False):
  """The reverse process from pure noise (of ``cond``'s shape) in one ``lax.scan`` (traceable; jit the caller).

  Args:
    ddpm: the tables.
    eps_fn: ``(x_t, cond, t) -> predicted noise``.
    cond: the condition (e.g. the low-light image), NHWC; sets the sample shape.
    key: PRNG key of the initial state and the per-step noise.
    mode: ``ancestral`` (all ``T`` steps; ``steps`` must be None or T) or ``ddim`` (``steps`` strided steps).
    eta: DDIM's noise scale (0: deterministic).
    clip_x0: clip the x0 estimate to [-1, 1] at every step.
    x_init: initial state (default standard normal).
    return_intermediates: also return every state (steps, ...).
  """
  if mode not in ("ancestral", "ddim"):
    raise ValueError(f"unknown DDPM sampler {mode!r}; expected 'ancestral' or 'ddim'")
  ts = ddpm.timesteps(steps)
  if mode == "ancestral" and len(ts) != ddpm.T:
    raise ValueError(f"the ancestral sampler runs all T={ddpm.T} steps (got steps={steps}); use mode='ddim'")
  k0, kloop = jax.random.split(key)
  x = jax.random.normal(k0, cond.shape, jnp.float32) if x_init is None else x_init
  batch = cond.shape[0]
  t_prev = np.concatenate([ts[1:], [-1]]).astype(np.int32)

  def step(x, inputs):
    t_s, tp_s, k = inputs
    t = jnp.full((batch,), t_s, jnp.int32)
    eps = eps_fn(x, cond, t)
    z = jax.random.normal(k, x.shape, x.dtype)
    if mode == "ancestral":
      x = ddpm.ancestral_step(x, eps, t, z, clip_x0=clip_x0)
    else:
      x = ddpm.ddim_step(x, eps, t, jnp.full((batch,), tp_s, jnp.int32), z, eta=eta, clip_x0=clip_x0)
    return x, (x if return_intermediates else None)

  x, states = jax.lax.scan(step, x, (jnp.asarray(ts), jnp.asarray(t_prev), jax.random.split(kloop, len(ts))))
  return (x, states) if return_intermediates else x
