"""ReDDiT's gamma-conditioned DDPM (CVPR 2025; the SR3 / WaveGrad / GSAD family): schedule, noising, DDIM sampler.

What the official ``model/ddpm_modules/diffusion.py`` (lgz-0713/ReDDiT) computes, as pure functions over explicit
arrays (REFERENCE §3.1, §3.6):

* :func:`make_schedule` (``GaussianDiffusion.set_new_noise_schedule``): ``N = n * s + 1`` linear betas
  ``linspace(1e-4, 2e-2, N)`` in float64, ``abar_k = prod_{j<=k} (1 - beta_j)``, the host table
  ``gamma_prev = sqrt(append(1, abar))`` (float64, length ``N + 1``: ``gamma_prev[k] = sqrt(abar_{k-1})``,
  ``gamma_prev[0] = 1``) and the twelve registered buffers (computed in float64, stored float32, length ``N``).
  Every released stage (16x32, 8x64, 4x128, 2x256) has ``N = 513``: the same tables, another step grid.
* :func:`q_sample` (``q_sample``): ``x_t = gamma x0 + sqrt(1 - gamma^2) eps`` with a *continuous* per-sample
  noise level ``gamma`` = sqrt(abar); the network is conditioned on ``gamma``, not on an integer step.
* :func:`sample_gamma`: the teacher's training levels of GSAD (``global_aware_losses`` of jinnh/GSAD, the code base
  ReDDiT builds on): ``t ~ U{1..N}`` and ``gamma ~ U(gamma_prev[t-1], gamma_prev[t])`` per sample.
* :func:`predict_start` / :func:`predict_eps`: the continuous-level conversions of ``GaussianDiffusion``.
* :func:`ddim_sample` (``GaussianDiffusion.ddim``, called by ``super_resolution``): the deterministic strided DDIM
  loop in one ``lax.scan``, batched for any batch size (the official code only runs batch size 1).

The network is a callable ``eps_fn(x_t, cond, gamma) -> predicted noise`` with ``gamma`` float32 of shape (B,).
Images are in [-1, 1].
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from lliejax.diffusion import ddpm

EpsFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]

#: The registered buffers of the official ``GaussianDiffusion``, in ``state_dict`` order (float32, length N).
BUFFER_NAMES = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                "posterior_mean_coef1", "posterior_mean_coef2")


@dataclasses.dataclass(frozen=True, eq=False)
class Schedule:
  """The tables of ``GaussianDiffusion(num_timesteps=n, time_scale=s)`` (numpy; jitted code closes over them).

  Attributes:
    num_timesteps: ``n``, the number of sampling steps of this model (16 for the teacher, 8/4/2 for students).
    time_scale: ``s``, the table indices per step (``n * s = N - 1``).
    betas: float64, length ``N``.
    alphas_cumprod: float64 ``abar``, length ``N``.
    gamma_prev: float64 ``sqrt(append(1, abar))``, length ``N + 1`` (``sqrt_alphas_cumprod_prev`` of the code).
    buffers: the twelve float32 buffers of :data:`BUFFER_NAMES` (what a ``state_dict`` stores).
  """

  num_timesteps: int
  time_scale: int
  betas: np.ndarray
  alphas_cumprod: np.ndarray
  gamma_prev: np.ndarray
  buffers: dict

  @property
  def N(self) -> int:  # noqa: N802  (the paper's symbol)
    return len(self.betas)

  def student(self) -> Schedule:
    """The schedule of the student distilled from a model with this one: ``(n / 2, 2 s)``, the same tables."""
    if self.num_timesteps % 2:
      raise ValueError(f"a {self.num_timesteps}-step model has no half-step student")
    return make_schedule(self.num_timesteps // 2, 2 * self.time_scale,
                         linear_start=float(self.betas[0]), linear_end=float(self.betas[-1]))

  def step_levels(self, stride: int = 1) -> np.ndarray:
    """``gamma_prev[tau * s]`` (float64) for the DDIM steps ``tau`` of :func:`ddim_taus`, in sampling order."""
    return self.gamma_prev[ddim_taus(self.num_timesteps, stride) * self.time_scale]


def make_schedule(num_timesteps: int, time_scale: int, *, linear_start: float = 1e-4,
                  linear_end: float = 2e-2) -> Schedule:
  """The linear schedule of ``GaussianDiffusion.set_new_noise_schedule`` (``make_beta_schedule('linear', ...)``).

  Args:
    num_timesteps: ``n`` (``beta_schedule.train.n_timestep`` of the official JSON).
    time_scale: ``s`` (``beta_schedule.train.time_scale``); ``N = n * s + 1`` levels.
    linear_start, linear_end: the first and last beta.
  """
  n, s = int(num_timesteps), int(time_scale)
  if n < 1 or s < 1:
    raise ValueError(f"num_timesteps and time_scale must be >= 1, got {n} and {s}")
  betas = np.linspace(linear_start, linear_end, n * s + 1, dtype=np.float64)
  tables = ddpm.gaussian_diffusion_tables(betas)
  abar = tables["alphas_cumprod"]
  buffers = {k: np.asarray(tables[k], np.float32) for k in BUFFER_NAMES}
  return Schedule(num_timesteps=n, time_scale=s, betas=betas, alphas_cumprod=abar,
                  gamma_prev=np.sqrt(np.append(1.0, abar)), buffers=buffers)


def make_schedule_from_config(cfg) -> Schedule:
  """From a ``config.diffusion`` section: ``num_timesteps``, ``time_scale``, optional ``linear_start/end``."""
  kwargs = {k: float(cfg[k]) for k in ("linear_start", "linear_end") if cfg.get(k) is not None}
  return make_schedule(int(cfg.num_timesteps), int(cfg.time_scale), **kwargs)


# ------------------------------------------------------------------------------------------------ training levels
def _expand(v: jax.Array, ndim: int) -> jax.Array:
  v = jnp.asarray(v, jnp.float32)
  return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def q_sample(x0: jax.Array, gamma: jax.Array, noise: jax.Array) -> jax.Array:
  """``gamma x0 + sqrt(1 - gamma^2) noise`` (``GaussianDiffusion.q_sample``); ``gamma`` of shape (B,)."""
  g = _expand(gamma, x0.ndim)
  return g * x0 + jnp.sqrt(1.0 - g**2) * noise


def predict_start(x_t: jax.Array, gamma: jax.Array, eps: jax.Array) -> jax.Array:
  """``x_t / gamma - sqrt(1 / gamma^2 - 1) eps`` (``GaussianDiffusion.predict_start``)."""
  g = _expand(gamma, x_t.ndim)
  return (1.0 / g) * x_t - jnp.sqrt(1.0 / g**2 - 1.0) * eps


def predict_eps(x_t: jax.Array, x0: jax.Array, gamma: jax.Array) -> jax.Array:
  """``x_t / sqrt(1 - gamma^2) - sqrt(1 / (1 - gamma^2) - 1) x0`` (``GaussianDiffusion.predict_eps``)."""
  g = _expand(gamma, x_t.ndim)
  return (1.0 / jnp.sqrt(1.0 - g**2)) * x_t - jnp.sqrt(1.0 / (1.0 - g**2) - 1.0) * x0


def sample_gamma(sched: Schedule, key: jax.Array, batch: int, *, per_sample_t: bool = False,
                 t_max: int | None = None) -> jax.Array:
  """Continuous training levels: ``t ~ U{1..t_max}``, ``gamma ~ U(gamma_prev[t-1], gamma_prev[t])`` per sample.

  GSAD's ``global_aware_losses`` draws one ``t`` for the whole batch (numpy ``randint(1, N + 1)``) and one
  ``gamma`` per sample; ``per_sample_t`` draws ``t`` per sample too. Returns float32 of shape (batch,).

  Args:
    sched: the schedule (``gamma_prev`` has ``N + 1`` entries).
    key: PRNG key.
    batch: number of levels.
    per_sample_t: one ``t`` per sample instead of one per batch.
    t_max: the largest ``t`` (default ``N``: the whole table, gamma down to ``gamma_prev[N]``).
  """
  t_max = sched.N if t_max is None else int(t_max)
  if not 1 <= t_max <= sched.N:
    raise ValueError(f"t_max must be in [1, {sched.N}], got {t_max}")
  kt, ku = jax.random.split(key)
  t = jax.random.randint(kt, (batch if per_sample_t else 1,), 1, t_max + 1)
  t = jnp.broadcast_to(t, (batch,))
  table = jnp.asarray(sched.gamma_prev, jnp.float32)
  low, high = table[t - 1], table[t]
  u = jax.random.uniform(ku, (batch,), jnp.float32)
  return low + (high - low) * u  # numpy.random.uniform(low, high)


# ------------------------------------------------------------------------------------------------ DDIM
def ddim_taus(num_timesteps: int, stride: int = 1) -> np.ndarray:
  """``reversed(range(stride, n + 1, stride))`` of ``GaussianDiffusion.ddim``: the steps run, first to last.

  ``n = 8, stride = 3`` runs 6 and 3 (the level of step 8 is never used), exactly as the official loop.
  """
  n, k = int(num_timesteps), int(stride)
  if k < 1 or k > n:
    raise ValueError(f"stride must be in [1, {n}], got {k}")
  return np.arange(n - n % k, 0, -k, dtype=np.int64)


def ddim_tables(sched: Schedule, stride: int = 1) -> dict[str, np.ndarray]:
  """Per-step float32 constants of :func:`ddim_sample` (one row per step, in sampling order).

  With ``a = tau * s`` and ``b = (tau - stride) * s``: ``gamma_in = gamma_prev[a]`` (= sqrt(abar_{a-1}), the
  network's level, float64 cast to float32 as ``torch.FloatTensor``) and the float32 buffers at ``a`` and ``b``
  (``sqrt_recip_alphas_cumprod[a]`` ...): note the one-index offset between the level and the coefficients.
  """
  taus = ddim_taus(sched.num_timesteps, stride)
  a, b = taus * sched.time_scale, (taus - stride) * sched.time_scale
  buf = sched.buffers
  return {"gamma_in": sched.gamma_prev[a].astype(np.float32),
          "recip": buf["sqrt_recip_alphas_cumprod"][a], "recipm1": buf["sqrt_recipm1_alphas_cumprod"][a],
          "sqrt_a": buf["sqrt_alphas_cumprod"][a], "sqrt_1m_a": buf["sqrt_one_minus_alphas_cumprod"][a],
          "sqrt_b": buf["sqrt_alphas_cumprod"][b], "sqrt_1m_b": buf["sqrt_one_minus_alphas_cumprod"][b]}


def ddim_sample(sched: Schedule, eps_fn: EpsFn, cond: jax.Array, key: jax.Array | None = None, *, stride: int = 1,
                clip_x0: bool = True, x_init: jax.Array | None = None, return_intermediates: bool = False,
                unroll: int | bool = 1):
  """``GaussianDiffusion.ddim`` in one ``lax.scan`` (traceable; jit the caller). Batched for any batch size.

  From ``x ~ N(0, I)`` (of ``cond``'s shape), for each step ``tau`` of :func:`ddim_taus`
  (``a = tau s``, ``b = (tau - stride) s``):

  1. ``eps = eps_fn(x, cond, gamma_prev[a])``;
  2. ``x0 = sqrt(1/abar_a) x - sqrt(1/abar_a - 1) eps``, clipped to [-1, 1], then
     ``eps = (x - sqrt(abar_a) x0) / sqrt(1 - abar_a)`` (both only with ``clip_x0``);
  3. ``x = sqrt(abar_b) x0 + sqrt(1 - abar_b) eps`` (eta = 0).

  The last step has ``b = 0``: ``x = 0.99995 x0 + 0.01 eps`` (``abar_0 = 1 - 1e-4``, not 1). The output is clipped
  to [-1, 1].

  Args:
    sched: the model's schedule (its ``num_timesteps`` and ``time_scale`` set the grid; no halving at test).
    eps_fn: ``(x_t, cond, gamma) -> eps``, ``gamma`` float32 (B,).
    cond: the condition (the low-light image in [-1, 1]), NHWC; sets the sample shape.
    key: PRNG key of the initial state (unused with ``x_init``).
    stride: ``k`` of ``super_resolution(..., stride=k)``.
    clip_x0: the official ``clip_denoised=True``.
    x_init: initial state instead of ``N(0, I)``.
    return_intermediates: also return every state (steps, ...).
    unroll: ``lax.scan``'s ``unroll`` (``True``: straight-line code, the same values). Differentiating through the
      sampler (sampler distillation) wants it: reverse mode through the scanned UNet was 20x slower on XLA:CPU
      (2-step demo UNet at batch 4: 12.6 s against 0.64 s unrolled).
  """
  if x_init is None:
    if key is None:
      raise ValueError("ddim_sample needs a key (or x_init)")
    x = jax.random.normal(key, cond.shape, jnp.float32)
  else:
    x = jnp.asarray(x_init, jnp.float32)
  batch = cond.shape[0]
  rows = {k: jnp.asarray(v) for k, v in ddim_tables(sched, stride).items()}

  def step(x, r):
    eps = eps_fn(x, cond, jnp.full((batch,), r["gamma_in"], jnp.float32))
    x0 = r["recip"] * x - r["recipm1"] * eps
    if clip_x0:
      x0 = jnp.clip(x0, min=-1.0, max=1.0)
      eps = (x - r["sqrt_a"] * x0) / r["sqrt_1m_a"]
    x = r["sqrt_b"] * x0 + r["sqrt_1m_b"] * eps
    return x, (x if return_intermediates else None)

  x, states = jax.lax.scan(step, x, rows, unroll=unroll)
  out = jnp.clip(x, min=-1.0, max=1.0)
  return (out, states) if return_intermediates else out
