"""The teachers' diffusion processes seen through one interface, for distillers that need a teacher's ODE.

A distiller such as consistency distillation (:mod:`lliejax.distill.consistency`) works on a **grid** of ``N``
times ``t_0 < t_1 < ... < t_{N-1}`` of the teacher's own process (``t_0``, the smallest, is the *boundary* time
``epsilon`` of Song et al. 2023, where a consistency function is the identity) and needs, per grid index ``n``:
the network's time input, the forward marginal ``q(x_{t_n} | x0, cond)``, the exact forward transition from the
boundary to ``t_n``, the ``x0`` estimate of a noise prediction, one deterministic ODE step ``t_{n+1} -> t_n`` of the
teacher, and the sampler's initial state ``x_T``. :class:`Process` states that contract; two adapters implement it
by **reusing** the process modules (nothing of their maths is restated here):

* :class:`DDPMGamma` -- ReDDiT's gamma-conditioned DDPM (:mod:`lliejax.diffusion.reddit`, REFERENCE §3.1, §3.6):
  ``x_t = gamma x0 + sqrt(1 - gamma^2) eps`` with a continuous level ``gamma = sqrt(abar)`` as the network's time;
  the grid is a decreasing list of levels (default: the teacher's DDIM levels ``gamma_prev[tau s]``,
  ``tau = 0..n``, so ``gamma_0 = 1``); the ODE step is the deterministic DDIM step (eta = 0)
  ``q_sample(predict_start(x, gamma_{n+1}, eps), gamma_n, eps)`` -- the teacher step of the trajectory distiller;
* :class:`MeanReverting` -- the mean-reverting SDE of IR-SDE / Entropy-SDE (:mod:`lliejax.diffusion.irsde`,
  REFERENCE §1.2-1.6): ``dx = theta_t (mu - x) dt + sigma_t dw``, ``mu`` = the low-light condition, integer
  time ``t`` as the network's time; the grid is a subset of ``0..T`` starting at the clean end ``0`` (default: every
  step, ``t_n = n``); the ODE step is the probability-flow ODE (derivation in :class:`MeanReverting`).

Every process also defines the **noise level** ``nu(t)`` (float64 table over the grid, ``nu`` increasing): the
standard deviation of the noise once the state is mapped affinely onto ``x0 + nu z`` -- the time variable ``t`` /
``sigma`` of the variance-exploding process of the consistency-model and EDM papers, on which their ``sigma_data``
parametrisation is defined. For the DDPM ``x_t / gamma = x0 + (sqrt(1 - gamma^2) / gamma) z``, so
``nu = sqrt(1 - gamma^2) / gamma``; for the mean-reverting SDE ``mu + (x_t - mu) e^{Theta_t} = x0 +
sigma_bar_t e^{Theta_t} z`` (``Theta_t = thetas_cumsum[t] dt``), so ``nu = sigma_bar_t e^{Theta_t} =
lambda sqrt(e^{2 Theta_t} - 1)``.

All methods are pure and traceable; the tables are numpy (constants of the jitted program) and ``n`` is an int
array of shape ``(B,)`` (or a scalar, broadcast to the batch). Networks are ``eps_fn(x_t, cond, time) -> noise``
(:data:`lliejax.diffusion.reddit.EpsFn`, :data:`lliejax.diffusion.irsde.NoiseFn`).
"""
from __future__ import annotations

import abc
import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from lliejax.diffusion import irsde
from lliejax.diffusion import reddit as rd

#: ``eps_fn(x_t, cond, time) -> predicted noise``; ``time`` is :meth:`Process.net_time` (shape (B,)).
EpsFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
IRSDE_SOLVERS = ("euler", "ddim")


def as_index(n, batch: int) -> jax.Array:
  """``n`` as int32 of shape (batch,)."""
  return jnp.broadcast_to(jnp.asarray(n, jnp.int32), (batch,))


def expand_to(v: jax.Array, ndim: int) -> jax.Array:
  """``v`` of shape (B,) reshaped to broadcast against a batch of rank ``ndim``."""
  return v.reshape(v.shape + (1,) * (ndim - v.ndim))


def grid_indices(size: int, num_scales: int) -> np.ndarray:
  """``round(linspace(0, size - 1, num_scales))``: ``num_scales`` increasing indices into ``size`` entries, from the
  first to the last (int64).

  Raises:
    ValueError: ``num_scales < 2`` or more scales than entries.
  """
  size, num_scales = int(size), int(num_scales)
  if not 2 <= num_scales <= size:
    raise ValueError(f"num_scales must be in [2, {size}] (the teacher's grid has {size} points), got {num_scales}")
  return np.round(np.linspace(0, size - 1, num_scales)).astype(np.int64)


class Process(abc.ABC):
  """A teacher's process on an ``N``-point grid (module docstring). Index 0 is the boundary time ``epsilon``."""

  #: The image range of the process's data (LPIPS input range, optional clipping of denoised states).
  data_range: tuple[float, float]

  @property
  @abc.abstractmethod
  def num_scales(self) -> int:
    """``N``, the number of grid points."""

  @abc.abstractmethod
  def noise_levels(self) -> np.ndarray:
    """``nu(t_n)`` for ``n = 0..N-1`` (float64, increasing; module docstring)."""

  @abc.abstractmethod
  def net_time(self, n, batch: int) -> jax.Array:
    """The network's time input at grid index ``n``, shape (batch,)."""

  @abc.abstractmethod
  def forward_sample(self, x0, cond, n, noise) -> jax.Array:
    """``x_{t_n}`` of the forward marginal ``q(x_{t_n} | x0, cond)`` with the given standard normal ``noise``."""

  @abc.abstractmethod
  def renoise(self, x, cond, n, noise) -> jax.Array:
    """``x_{t_n}`` of the exact forward transition ``q(x_{t_n} | x_{t_0} = x, cond)`` from the boundary time."""

  @abc.abstractmethod
  def predict_x0(self, x, cond, n, eps) -> jax.Array:
    """The ``x0`` estimate of ``x = x_{t_n}`` given the noise prediction ``eps``."""

  @abc.abstractmethod
  def ode_step(self, x, cond, eps, n) -> jax.Array:
    """One deterministic step of the teacher's ODE from ``x = x_{t_{n+1}}`` to ``t_n`` (``eps``: the teacher's noise
    prediction at ``(x, t_{n+1})``), ``n`` in ``0..N-2``."""

  @abc.abstractmethod
  def init_state(self, key, cond) -> jax.Array:
    """The sampler's initial state ``x_T`` (at ``t_{N-1}``), of ``cond``'s shape."""


# ------------------------------------------------------------------------------------------------ DDPM (ReDDiT)
@dataclasses.dataclass(frozen=True, eq=False)
class DDPMGamma(Process):
  """ReDDiT's gamma-conditioned DDPM on a grid of levels ``gammas[0] > gammas[1] > ... > gammas[N-1]``.

  * time: ``t_n`` is the level ``gamma_n`` (``gammas[0]``, the largest, is the boundary); the network gets
    ``gamma_n`` (float32, (B,)), as :func:`lliejax.diffusion.reddit.ddim_sample` and the trajectory distiller;
  * ``nu_n = sqrt(1 - gamma_n^2) / gamma_n`` (0 at ``gamma = 1``);
  * forward: :func:`~lliejax.diffusion.reddit.q_sample` ``(x0, gamma_n, noise)``; ``x0`` estimate:
    :func:`~lliejax.diffusion.reddit.predict_start`;
  * renoise from the boundary: the variance-preserving transition ``x_n = r x + sqrt(1 - r^2) z`` with
    ``r = gamma_n / gamma_0`` (``1 - gamma_n^2 - r^2 (1 - gamma_0^2) = 1 - r^2``), i.e. ``q_sample(x, r, z)``;
    with ``gamma_0 = 1`` it is the forward marginal;
  * ODE step ``t_{n+1} -> t_n``: the deterministic DDIM step (the exact solution of the probability-flow ODE when
    the noise prediction is constant along the path), ``q_sample(predict_start(x, gamma_{n+1}, eps), gamma_n,
    eps)``, no clipping -- the teacher step of :func:`lliejax.distill.trajectory.targets`. The official
    ``GaussianDiffusion.ddim`` (:func:`~lliejax.diffusion.reddit.ddim_sample`) feeds the network
    ``gamma_prev[a] = sqrt(abar_{a-1})`` but steps with ``sqrt(abar_a)`` (one index apart, REFERENCE §3.6); here
    the network's level and the step's level are the same ``gamma``, as in training and trajectory distillation;
  * ``x_T``: ``N(0, I)``, as the official sampler (although ``gamma_{N-1} > 0``).

  Attributes:
    gammas: float64, strictly decreasing, in (0, 1].
    data_range: ``(-1, 1)``: ReDDiT works on images in [-1, 1].
  """

  gammas: np.ndarray
  data_range: tuple[float, float] = (-1.0, 1.0)

  def __post_init__(self):
    g = np.asarray(self.gammas, np.float64)
    if g.ndim != 1 or g.size < 2 or not np.all(np.diff(g) < 0) or g[0] > 1 or g[-1] <= 0:
      raise ValueError(f"DDPMGamma: gammas must be >= 2 strictly decreasing levels in (0, 1], got {g}")
    object.__setattr__(self, "gammas", g)

  @classmethod
  def from_schedule(cls, schedule: rd.Schedule, num_scales: int | None = None) -> DDPMGamma:
    """The grid over a teacher's table: ``gamma_prev[k]`` for ``k`` = :func:`grid_indices` ``(n s + 1, N)``.

    ``k`` runs from 0 (``gamma = 1``, the clean end) to ``n s`` (``gamma_prev[n s]``, the level of the teacher's
    first DDIM step). The default ``N = n + 1`` is the teacher's own DDIM grid ``gamma_prev[tau s]``,
    ``tau = 0..n`` (17 levels for the 16-step teacher); up to ``n s + 1`` (513) levels are available.
    """
    size = schedule.num_timesteps * schedule.time_scale + 1
    num_scales = schedule.num_timesteps + 1 if num_scales is None else int(num_scales)
    return cls(gammas=np.asarray(schedule.gamma_prev[grid_indices(size, num_scales)], np.float64))

  @property
  def num_scales(self) -> int:
    return int(self.gammas.shape[0])

  def noise_levels(self) -> np.ndarray:
    return np.sqrt(1.0 - self.gammas**2) / self.gammas

  def _gamma(self, n, batch):
    return jnp.asarray(self.gammas, jnp.float32)[as_index(n, batch)]

  def net_time(self, n, batch):
    return self._gamma(n, batch)

  def forward_sample(self, x0, cond, n, noise):
    del cond
    return rd.q_sample(x0, self._gamma(n, x0.shape[0]), noise)

  def renoise(self, x, cond, n, noise):
    del cond
    ratio = jnp.asarray(self.gammas / self.gammas[0], jnp.float32)[as_index(n, x.shape[0])]
    return rd.q_sample(x, ratio, noise)

  def predict_x0(self, x, cond, n, eps):
    del cond
    return rd.predict_start(x, self._gamma(n, x.shape[0]), eps)

  def ode_step(self, x, cond, eps, n):
    del cond
    n = as_index(n, x.shape[0])
    return rd.q_sample(rd.predict_start(x, self._gamma(n + 1, x.shape[0]), eps), self._gamma(n, x.shape[0]), eps)

  def init_state(self, key, cond):
    return jax.random.normal(key, cond.shape, jnp.float32)


# ------------------------------------------------------------------------------------------------ IR-SDE
@dataclasses.dataclass(frozen=True, eq=False)
class MeanReverting(Process):
  """The mean-reverting SDE of IR-SDE / Entropy-SDE on a grid ``0 = ts[0] < ts[1] < ... < ts[N-1] <= T``.

  With ``Theta_t = thetas_cumsum[t] dt`` (the integrated ``theta``; ``Theta_0 = 0``) and ``lambda = max_sigma``
  (REFERENCE §1.2), the forward marginal is ``x_t = mu + (x0 - mu) e^{-Theta_t} + sigma_bar_t z``,
  ``sigma_bar_t = lambda sqrt(1 - e^{-2 Theta_t})`` (:meth:`lliejax.diffusion.irsde.IRSDE.forward_sample`), the
  network predicts the noise ``eps_hat`` and the score is ``-eps_hat / sigma_bar_t`` (§1.4).

  **Probability-flow ODE.** The SDE ``dx = theta_t (mu - x) dt + sigma_t dw`` with ``sigma_t^2 = 2 lambda^2 theta_t``
  has the probability-flow ODE (Song et al. 2021, eq. 13) ``dx = [theta_t (mu - x) - 1/2 sigma_t^2 grad log p_t(x)]
  dt``. With the score ``-eps_hat / sigma_bar_t`` and ``sigma_t^2 / 2 = lambda^2 theta_t``:
  ``dx/dt = theta_t [(mu - x) + lambda^2 eps_hat / sigma_bar_t]``, and with ``dTheta = theta_t dt``::

      dx / dTheta = (mu - x) + lambda^2 eps_hat(x, Theta) / sigma_bar(Theta),
      sigma_bar(Theta) = lambda sqrt(1 - e^{-2 Theta})

  -- the ODE does not depend on the theta schedule, which only places the grid ``Theta_t``. Two one-step solvers
  from ``t_{n+1}`` to ``t_n`` (``h = Theta_{t_{n+1}} - Theta_{t_n} > 0``, ``eps_hat`` evaluated at ``t_{n+1}``):

  * ``'euler'`` (default): ``x_n = x - h [(mu - x) + lambda^2 eps_hat / sigma_bar_{t_{n+1}}]``. For adjacent
    integer times ``h = theta_t dt`` and this is exactly the official ``IRSDE.reverse_ode_step``
    ``x - [theta_t (mu - x) - 1/2 sigma_t^2 score] dt`` (REFERENCE §1.6 "ODE"), which is what is computed (as
    :meth:`~lliejax.diffusion.irsde.IRSDE.ode_reverse_drift` times ``h / (theta_t dt)``, the factor exactly 1 for
    a one-step gap): with the full grid, the chain of steps is ``irsde.sample(mode='ode')``. First order in ``h``.
  * ``'ddim'``: the exponential integrator that freezes ``(x0_hat, eps_hat)``: ``x0_hat = (x - mu - sigma_bar
    eps_hat) e^{Theta_{t_{n+1}}} + mu`` (:meth:`~lliejax.diffusion.irsde.IRSDE.x0_from_noise`), then ``x_n = mu +
    (x0_hat - mu) e^{-Theta_{t_n}} + sigma_bar_{t_n} eps_hat`` (``forward_sample(x0_hat, mu, t_n, eps_hat)``).
    It solves the ODE exactly when ``eps_hat`` is constant along the path: ``x(Theta) = mu + e^{-Theta} (x0 - mu)
    + sigma_bar(Theta) eps`` has ``dx/dTheta = -e^{-Theta} (x0 - mu) + lambda^2 e^{-2 Theta} eps / sigma_bar``,
    which equals ``(mu - x) + lambda^2 eps / sigma_bar`` since ``lambda^2 - sigma_bar^2 = lambda^2 e^{-2 Theta}``
    (e.g. for a point-mass data distribution). The DDIM analogue for this process; not in the official code.

  Other members: time ``t_n = ts[n]`` (the network gets the integer, int32 (B,)); ``nu_n = sigma_bar_{t_n}
  e^{Theta_{t_n}}``; the boundary is the clean end ``t = 0`` (where the official samplers stop), so renoising from
  it is the forward marginal; ``x_T = mu + lambda z`` (:meth:`~lliejax.diffusion.irsde.IRSDE.init_state`, as the
  official test script, even when ``ts[-1] < T``).

  Attributes:
    sde: the teacher's SDE tables.
    ts: int64, strictly increasing, ``ts[0] = 0``, ``ts[-1] <= T``.
    solver: ``'euler'`` or ``'ddim'``.
    data_range: ``(0, 1)``: Entropy-SDE works on images in [0, 1].
  """

  sde: irsde.IRSDE
  ts: np.ndarray
  solver: str = "euler"
  data_range: tuple[float, float] = (0.0, 1.0)

  def __post_init__(self):
    ts = np.asarray(self.ts)
    if (ts.ndim != 1 or ts.size < 2 or not np.issubdtype(ts.dtype, np.integer) or ts[0] != 0
        or not np.all(np.diff(ts) > 0) or ts[-1] > self.sde.T):
      raise ValueError(f"MeanReverting: ts must be >= 2 strictly increasing integers from 0 to at most "
                       f"T={self.sde.T}, got {ts}")
    if self.solver not in IRSDE_SOLVERS:
      raise ValueError(f"MeanReverting: solver={self.solver!r}; choose one of {', '.join(IRSDE_SOLVERS)}")
    object.__setattr__(self, "ts", ts.astype(np.int64))

  @classmethod
  def from_sde(cls, sde: irsde.IRSDE, num_scales: int | None = None, *, solver: str = "euler") -> MeanReverting:
    """The grid ``ts`` = :func:`grid_indices` ``(T + 1, N)`` over ``0..T`` (default ``N = T + 1``: every step)."""
    num_scales = sde.T + 1 if num_scales is None else int(num_scales)
    return cls(sde=sde, ts=grid_indices(sde.T + 1, num_scales), solver=solver)

  @property
  def num_scales(self) -> int:
    return int(self.ts.shape[0])

  def theta_integral(self) -> np.ndarray:
    """``Theta_{t_n} = thetas_cumsum[t_n] dt`` (float64)."""
    return self.sde.thetas_cumsum[self.ts].astype(np.float64) * float(self.sde.dt)

  def noise_levels(self) -> np.ndarray:
    return self.sde.sigma_bars[self.ts].astype(np.float64) * np.exp(self.theta_integral())

  def euler_factors(self) -> np.ndarray:
    """``h_n / (theta_{t_{n+1}} dt)`` for ``n = 0..N-2`` (float32; exactly 1 where ``t_{n+1} - t_n = 1``)."""
    cum, th = self.sde.thetas_cumsum.astype(np.float64), self.sde.thetas.astype(np.float64)
    lo, hi = self.ts[:-1], self.ts[1:]
    factor = (cum[hi] - cum[lo]) / th[hi]
    return np.where(hi - lo == 1, 1.0, factor).astype(np.float32)

  def _t(self, n, batch):
    return jnp.asarray(self.ts, jnp.int32)[as_index(n, batch)]

  def net_time(self, n, batch):
    return self._t(n, batch)

  def forward_sample(self, x0, cond, n, noise):
    return self.sde.forward_sample(x0, cond, self._t(n, x0.shape[0]), noise)

  def renoise(self, x, cond, n, noise):
    return self.forward_sample(x, cond, n, noise)  # the boundary is t = 0: the transition is the marginal

  def predict_x0(self, x, cond, n, eps):
    return self.sde.x0_from_noise(x, eps, cond, self._t(n, x.shape[0]))

  def ode_step(self, x, cond, eps, n):
    batch = x.shape[0]
    n = as_index(n, batch)
    t_from, t_to = self._t(n + 1, batch), self._t(n, batch)
    if self.solver == "ddim":
      return self.sde.forward_sample(self.sde.x0_from_noise(x, eps, cond, t_from), cond, t_to, eps)
    factor = expand_to(jnp.asarray(self.euler_factors())[n], x.ndim)
    return x - factor * self.sde.ode_reverse_drift(x, cond, self.sde.score_from_noise(eps, t_from), t_from)

  def init_state(self, key, cond):
    return self.sde.init_state(key, cond)
