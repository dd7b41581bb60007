"""AnlightenDiff's anchored DDPM (IEEE TIP 2024): schedule, residual mapping, DRDA forward process, DRDS sampler.

What the official ``FS/diffusion_fromscratch.py: EnlightDiffusion`` (allanchan339/AnlightenDiff; ``TS/`` is the
same process) computes with its released configs (``timesteps: 100``, ``on_res: True``, ``color_space: rgb``,
``rescale_ratio: 1.0``, ``use_center: True``, ``use_center_sampler: True``, ``clip_denoised: True``,
``sample_mode: ddpm``), as pure functions over explicit arrays (REFERENCE §2.2-2.5):

* :func:`make_schedule` (``cosine_beta_schedule`` and ``EnlightDiffusion.__init__``): the cosine schedule on the
  code's grid ``linspace(0, T+1, T+1) / (T+1)`` (which is ``k / T``: the standard Nichol & Dhariwal schedule of
  :func:`lliejax.diffusion.ddpm.beta_schedule`, up to float64 rounding), the last beta clipped to 0.999, and the
  fourteen registered buffers of :data:`BUFFER_NAMES` (float64 arithmetic, stored float32), among them the DRDA
  coefficient ``c1_t = extra_term_coef1`` and the DRDS coefficient ``c2_t = extra_term_coef2``;
* :func:`img_to_res` / :func:`res_to_img` / :func:`anchor_to_diffused` (``utils/color_space.py: img2res, res2img``
  and ``utils/module_util.py: normalize_to_neg_one_to_one``): the diffused variable is the residual
  ``x0 = 2 (GT - LQ) r - 1``, but the anchor phi (an *image*) is mapped with the image mapping ``phi' = 2 phi - 1``;
* :func:`q_sample` (``EnlightDiffusion.q_sample``): DRDA, ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps*`` with
  the effective noise ``eps* = eps + c1_t phi'``, which is also the regression target (see the function);
* :func:`drds_step` (``p_sample`` / ``p_mean_variance`` / ``q_posterior`` / ``predict_start_from_noise``) and
  :func:`sample` (``p_sample_loop``): DRDS from ``x_T = phi'`` with no noise, in one ``lax.scan``.

The network is a callable ``eps_fn(x_t, cond, t) -> predicted noise`` with ``t`` int32 of shape (B,) (the
official UNet takes the integer step 0..T-1); ``cond`` is the low-light image (``on_cond: img_lr``); FS's encoder
features are closed over by the caller. Images are NHWC; LQ, GT and phi are in [0, 1] (phi may leave it: FS's
anchor is not clamped, REFERENCE §6 item 17).
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lliejax.diffusion import ddpm

EpsFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]

#: The registered buffers of the official ``EnlightDiffusion``, in ``state_dict`` order (float32, length T; the
#: Lightning checkpoint stores them as ``model.<name>``, STATE_DICT_KEYS.md §2e).
BUFFER_NAMES = ("betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod",
                "sqrt_one_minus_alphas_cumprod", "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod",
                "sqrt_recipm1_alphas_cumprod", "posterior_variance", "posterior_log_variance_clipped",
                "posterior_mean_coef1", "posterior_mean_coef2", "extra_term_coef1", "extra_term_coef2")


# ------------------------------------------------------------------------------------------------ schedule
def cosine_betas(T: int = 100, s: float = 0.008, max_beta: float = 0.999) -> np.ndarray:
  """The ``T`` float64 betas of ``cosine_beta_schedule`` (``FS/diffusion_fromscratch.py``).

  With ``S = T + 1`` and the grid ``u_k = linspace(0, S, S)[k] / S``, ``k = 0 .. T``,
  ``f(u) = cos^2((u + s) / (1 + s) pi / 2)``, ``abar_k = f(u_k) / f(0)`` and ``beta_t = 1 - abar_{t+1} / abar_t``
  clipped to ``[0, max_beta]`` (only the last one, ``t = T - 1``, reaches the clip for T = 100).

  The grid looks unusual (``S`` points from 0 to ``S``, spacing ``S / T = 1.01``; REFERENCE §6 item 15 calls it
  non-standard) but ``u_k = (k S / T) / S = k / T``: it is the usual cosine grid, and the float32 betas equal
  those of ``ddpm.beta_schedule('cosine', T)`` bit for bit (float64 differences of at most 5e-14 relative).
  """
  if T < 1:
    raise ValueError(f"AnlightenDiff needs T >= 1 timesteps, got {T}")
  S = T + 1
  grid = np.linspace(0, S, S, dtype=np.float64)
  f = np.cos(((grid / S) + s) / (1 + s) * np.pi * 0.5) ** 2
  f = f / f[0]
  return np.clip(1 - f[1:] / f[:-1], 0.0, max_beta)


@dataclasses.dataclass(frozen=True, eq=False)
class Schedule:
  """The tables of ``EnlightDiffusion(timesteps=T)`` (numpy; jitted code closes over them as constants).

  Attributes:
    T: the number of steps (100 in every released config); the network sees ``t = 0 .. T-1``.
    betas: float64, length T.
    alphas_cumprod: float64 ``abar``, length T.
    buffers: the fourteen float32 buffers of :data:`BUFFER_NAMES`, each of length T (what a ``state_dict``
      stores), computed from the float64 tables and rounded once:

      * ``posterior_variance`` ``beta_t (1 - abar_{t-1}) / (1 - abar_t)`` (0 at t = 0), its log clipped at 1e-20
        (``ln 1e-20 = -46.0517`` at t = 0);
      * ``posterior_mean_coef1/2`` ``m1_t`` (of x0) and ``m2_t`` (of x_t);
      * ``extra_term_coef1`` ``c1_t = (1 - sqrt(abar_t)) / sqrt(1 - abar_t)`` (DRDA);
      * ``extra_term_coef2`` ``c2_t = [(1 - sqrt(abar_{t-1})) (1 - alpha_t) - sqrt(alpha_t) (1 - sqrt(alpha_t))
        (1 - abar_{t-1})] / (1 - abar_t)`` (DRDS), algebraically ``1 - m1_t - m2_t``.
  """

  T: int
  betas: np.ndarray
  alphas_cumprod: np.ndarray
  buffers: dict

  def table(self, name: str, t, ndim: int) -> jax.Array:
    """``buffers[name][t]`` (``extract``) shaped to broadcast against an ``ndim`` array: ``(B, 1, ..., 1)`` for
    ``t`` of shape (B,), a scalar for a scalar ``t``."""
    v = jnp.asarray(self.buffers[name])[jnp.asarray(t, jnp.int32)]
    return v.reshape(v.shape + (1,) * (ndim - v.ndim)) if v.ndim else v

  def sample_timesteps(self, key: jax.Array, batch: int) -> jax.Array:
    """``t ~ U{0 .. T-1}`` per sample (``LitDiffusion.training_step``), int32 of shape (batch,)."""
    return jax.random.randint(key, (batch,), 0, self.T, dtype=jnp.int32)


def make_schedule(T: int = 100, *, s: float = 0.008) -> Schedule:
  """The schedule and buffers of ``EnlightDiffusion.__init__`` (float64 arithmetic, float32 storage)."""
  betas = cosine_betas(int(T), s)
  tables = ddpm.gaussian_diffusion_tables(betas)
  alphas, abar, abar_prev = tables["alphas"], tables["alphas_cumprod"], tables["alphas_cumprod_prev"]
  tables["extra_term_coef1"] = (1.0 - np.sqrt(abar)) / np.sqrt(1.0 - abar)
  tables["extra_term_coef2"] = ((1.0 - np.sqrt(abar_prev)) * (1.0 - alphas)
                                - np.sqrt(alphas) * (1.0 - np.sqrt(alphas)) * (1.0 - abar_prev)) / (1.0 - abar)
  buffers = {k: np.asarray(tables[k], np.float32) for k in BUFFER_NAMES}
  return Schedule(T=int(T), betas=betas, alphas_cumprod=abar, buffers=buffers)


# ------------------------------------------------------------------------------------------------ parametrisation
def img_to_res(gt: jax.Array, lq: jax.Array, *, rescale_ratio: float = 1.0) -> jax.Array:
  """The diffused variable ``x0 = 2 (GT - LQ) r - 1`` (``utils/color_space.py: img2res``, ``clip_input=False``).

  Not clipped: in [-3, 1] in general, in [-1, 1] where GT >= LQ.
  """
  return (gt - lq) * rescale_ratio * 2 - 1


def res_to_img(res: jax.Array, lq: jax.Array, *, rescale_ratio: float = 1.0, clip: bool = True) -> jax.Array:
  """``clamp(LQ + (clamp(res / r, -1, 1) + 1) / 2, 0, 1)`` (``utils/color_space.py: res2img``, ``clip_input=clip``).

  The inverse of :func:`img_to_res` wherever ``GT - LQ`` is in [0, 1 / r]; the clamps make it lossy elsewhere
  (a GT darker than the LQ maps back to LQ) and kill gradients where they are active.
  """
  res = res / rescale_ratio
  if clip:
    res = jnp.clip(res, -1.0, 1.0)
  img = lq + (res + 1) * 0.5
  return jnp.clip(img, 0.0, 1.0) if clip else img


def anchor_to_diffused(phi: jax.Array) -> jax.Array:
  """``phi' = 2 phi - 1`` (``normalize_to_neg_one_to_one(center)``, the ``XXX`` lines of ``q_sample``,
  ``q_posterior`` and ``p_sample_loop``).

  Quirk (REFERENCE §6 item 13): the anchor is an image-domain quantity (FS: encoder output + HE(LQ), or the GT
  itself in the training branch "ref"; TS: :func:`two_step_anchor`) and gets the *image* mapping, while the diffused
  variable is the residual of :func:`img_to_res`: the anchor of a perfect enhancement, phi = GT, sits at
  ``2 GT - 1``, not at ``x0 = 2 (GT - LQ) - 1``.
  """
  return phi * 2 - 1


def two_step_anchor(img_c: jax.Array, zeta: jax.Array) -> jax.Array:
  """TS's anchor ``phi = (1 - zeta) img_c + zeta`` (``TS/diffusion_twostep.py: on_cond_or_center_selector`` with
  ``on_center: img_c`` and the histogram refiner's output ``zeta``)."""
  return (1 - zeta) * img_c + zeta


# ------------------------------------------------------------------------------------------------ DRDA
def q_sample(sched: Schedule, x0: jax.Array, t: jax.Array, phi: jax.Array | None, noise: jax.Array
             ) -> tuple[jax.Array, jax.Array]:
  """DRDA's forward draw ``(x_t, eps*)`` (``EnlightDiffusion.q_sample`` with ``use_center: True``).

  ``eps* = noise + c1_t phi'`` and ``x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps*``
  ``= sqrt(abar_t) x0 + (1 - sqrt(abar_t)) phi' + sqrt(1 - abar_t) noise``: the mean moves from x0 towards phi'.

  Quirk made explicit (REFERENCE §2.4, §6 item 14): the official code adds ``c1_t phi'`` to the noise tensor *in
  place*, and that same tensor object is what ``forward`` returns as the loss target, so the network regresses
  ``eps*`` (the whole perturbation), not ``noise``; this is what DRDS's ``x0`` estimate assumes. ``eps*`` is
  returned here for that purpose. The in-place update also shifts whatever tensor is passed in: DFPL
  (``LitDiffusion.loss_fn: loss_dfpl``) calls ``q_sample`` again with the already shifted target and with the
  prediction, so its two images carry ``2 c1_t phi'``; reproduce that by calling this function on ``eps*`` and on
  the prediction (and discarding the returned noises).

  Args:
    sched: the schedule.
    x0: the residual of :func:`img_to_res`, NHWC.
    t: int32 steps of shape (B,) in 0..T-1 (the official ``t < 0 -> x0`` branch is unreachable: its gather of
      ``extra_term_coef1`` fails first).
    phi: the anchor in the image domain (mapped with :func:`anchor_to_diffused`); ``None`` is ``use_center:
      False``, the plain DDPM draw (``eps* = noise``).
    noise: ``eps ~ N(0, I)`` of x0's shape.
  """
  nd = x0.ndim
  eps_star = noise if phi is None else noise + sched.table("extra_term_coef1", t, nd) * anchor_to_diffused(phi)
  x_t = sched.table("sqrt_alphas_cumprod", t, nd) * x0 + sched.table("sqrt_one_minus_alphas_cumprod", t, nd) * eps_star
  return x_t, eps_star


# ------------------------------------------------------------------------------------------------ DRDS
def predict_x0(sched: Schedule, x_t: jax.Array, t: jax.Array, eps: jax.Array) -> jax.Array:
  """``sqrt(1/abar_t) x_t - sqrt(1/abar_t - 1) eps`` (``predict_start_from_noise``).

  With ``eps = eps*`` this is exactly x0: the anchor shift is inside the predicted noise.
  """
  nd = x_t.ndim
  return sched.table("sqrt_recip_alphas_cumprod", t, nd) * x_t - sched.table("sqrt_recipm1_alphas_cumprod", t, nd) * eps


def drds_step(sched: Schedule, x_t: jax.Array, eps: jax.Array, t: jax.Array, phi: jax.Array | None, z: jax.Array, *,
              clip_x0: bool = True) -> tuple[jax.Array, jax.Array]:
  """One DRDS step ``x_t -> (x_{t-1}, x0_hat)`` (``p_sample`` -> ``p_mean_variance`` -> ``q_posterior``).

  1. ``x0_hat = predict_x0(x_t, eps)``, clamped to [-1, 1] (``clip_denoised: True``);
  2. ``mean = m1_t x0_hat + m2_t x_t + c2_t phi'`` (the ``c2`` term is ``use_center_sampler: True``;
     ``phi = None`` leaves it out);
  3. ``x_{t-1} = mean + exp(log_var_clipped_t / 2) z`` where ``t > 0``, ``mean`` where ``t = 0`` (the official
     ``nonzero_mask``; there ``m1 = 1`` and ``m2 = c2 = 0``, so ``x_{-1} = x0_hat``).

  Args:
    sched: the schedule.
    x_t: the current state, NHWC.
    eps: the network's prediction of ``eps*`` at (x_t, t).
    t: int32 steps of shape (B,).
    phi: the anchor (image domain), or ``None`` (no anchor term).
    z: standard normal noise of x_t's shape.
    clip_x0: clamp x0_hat to [-1, 1].
  """
  nd = x_t.ndim
  x0 = predict_x0(sched, x_t, t, eps)
  if clip_x0:
    x0 = jnp.clip(x0, -1.0, 1.0)
  mean = sched.table("posterior_mean_coef1", t, nd) * x0 + sched.table("posterior_mean_coef2", t, nd) * x_t
  if phi is not None:
    mean = mean + sched.table("extra_term_coef2", t, nd) * anchor_to_diffused(phi)
  std = jnp.exp(0.5 * sched.table("posterior_log_variance_clipped", t, nd))
  nonzero = (jnp.asarray(t) != 0).astype(x_t.dtype)
  nonzero = nonzero.reshape(nonzero.shape + (1,) * (nd - nonzero.ndim))
  return mean + nonzero * std * z, x0


def sampler_keys(key: jax.Array, T: int) -> tuple[jax.Array, jax.Array]:
  """How :func:`sample` uses its key: ``(init_key, step_keys)``; step ``i`` (``t = T-1-i``) draws
  ``z = jax.random.normal(step_keys[i], x.shape, float32)`` (drawn, and multiplied by 0, at ``t = 0``) and
  ``init_key`` draws ``x_T`` only without an anchor."""
  init_key, loop_key = jax.random.split(key)
  return init_key, jax.random.split(loop_key, T)


def sample(sched: Schedule, eps_fn: EpsFn, lq: jax.Array, phi: jax.Array | None, key: jax.Array, *,
           clip_x0: bool = True, rescale_ratio: float = 1.0, return_intermediates: bool = False,
           intermediate_ts: Sequence[int] | None = None):
  """DRDS, ``EnlightDiffusion.p_sample_loop`` (``sample_mode: ddpm``), in one ``lax.scan`` (traceable; jit the
  caller, which then compiles the whole loop once).

  ``x_T = phi' = 2 phi - 1`` exactly, with **no noise** (``use_center_sampler: True``; REFERENCE §6 item 16: the
  DRDA marginal at T has ``sqrt(1 - abar_{T-1}) ~ 1`` of noise); then :func:`drds_step` for ``t = T-1, ..., 0``
  (``T`` network calls; no noise is added at ``t = 0``). The output is ``res_to_img(x0_hat of the t = 0 step, LQ)``
  (equal to the last state, since ``m1_0 = 1``, ``m2_0 = c2_0 = 0``).

  Args:
    sched: the schedule.
    eps_fn: ``(x_t, cond, t) -> eps*`` with ``cond = lq`` (``on_cond: img_lr``) and ``t`` int32 (B,).
    lq: the low-light image in [0, 1], NHWC; sets the sample shape.
    phi: the anchor in the image domain (FS: the encoder's output; TS: :func:`two_step_anchor`), or ``None``
      (``use_center_sampler: False``: ``x_T ~ N(0, I)`` and no ``c2`` term).
    key: PRNG key of the per-step noise (and of ``x_T`` without anchor), see :func:`sampler_keys`.
    clip_x0: ``clip_denoised``.
    rescale_ratio: ``r`` of :func:`res_to_img`.
    return_intermediates: also return a trajectory (``return_all_timesteps``, which yields ``res2img(x0_hat)`` at
      every step), a dict of ``t`` (int32, (K,)), ``x0`` (the images ``res_to_img(x0_hat_t)``, (K, B, H, W, C))
      and ``x_t`` (the state entering step ``t``, same shape), in sampling order (decreasing t).
    intermediate_ts: the steps ``t`` the trajectory keeps (default: all T); only these K are ever stored, so a
      notebook can watch ``x0_hat`` at a few steps of a full-size image.

  Returns:
    The enhanced image in [0, 1] (NHWC), and the trajectory with ``return_intermediates``.
  """
  T = sched.T
  ts = np.arange(T - 1, -1, -1, dtype=np.int32)
  init_key, step_keys = sampler_keys(key, T)
  lq = jnp.asarray(lq, jnp.float32)
  if phi is not None:
    phi = jnp.asarray(phi, jnp.float32)
  x = jax.random.normal(init_key, lq.shape, jnp.float32) if phi is None else anchor_to_diffused(phi)
  batch = lq.shape[0]

  if return_intermediates:
    kept = ts if intermediate_ts is None else np.asarray(sorted(set(int(t) for t in intermediate_ts), reverse=True),
                                                           np.int32)
    if kept.size == 0 or kept.min() < 0 or kept.max() >= T:
      raise ValueError(f"intermediate_ts must be non-empty steps in [0, {T - 1}], got {intermediate_ts}")
    slot = np.full(T, len(kept), np.int32)  # row of the trajectory each step writes; the extra row is a sink
    slot[T - 1 - kept] = np.arange(len(kept), dtype=np.int32)
    traj = {"x0": jnp.zeros((len(kept) + 1,) + lq.shape, jnp.float32),
            "x_t": jnp.zeros((len(kept) + 1,) + lq.shape, jnp.float32)}
  else:
    slot, traj = np.zeros(T, np.int32), None

  def step(carry, inputs):
    x, _, traj = carry
    t_s, k, row = inputs
    t = jnp.full((batch,), t_s, jnp.int32)
    eps = eps_fn(x, lq, t)
    z = jax.random.normal(k, x.shape, jnp.float32)
    x_prev, x0 = drds_step(sched, x, eps, t, phi, z, clip_x0=clip_x0)
    if traj is not None:
      traj = {"x0": traj["x0"].at[row].set(res_to_img(x0, lq, rescale_ratio=rescale_ratio)),
              "x_t": traj["x_t"].at[row].set(x)}
    return (x_prev, x0, traj), None

  (x, x0, traj), _ = jax.lax.scan(step, (x, jnp.zeros_like(x), traj),
                                  (jnp.asarray(ts), step_keys, jnp.asarray(slot)))
  out = res_to_img(x0, lq, rescale_ratio=rescale_ratio)
  if not return_intermediates:
    return out
  return out, {"t": jnp.asarray(kept), "x0": traj["x0"][:-1], "x_t": traj["x_t"][:-1]}
