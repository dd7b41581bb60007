"""Consistency distillation (Song, Dhariwal, Chen, Sutskever, "Consistency Models", ICML 2023) on any teacher
process of :mod:`lliejax.distill.processes`, as pure functions: the parametrisation, the CD loss, multistep
consistency sampling.

Notation: a teacher process on its ``N``-point grid ``t_0 < ... < t_{N-1}`` (``t_0 = epsilon``, the boundary time;
:class:`lliejax.distill.processes.Process`), ``nu_n`` its noise level at ``t_n`` (the variance-exploding ``sigma``
the paper's formulas are written in; ``processes`` module docstring), ``cond`` the low-light image.

**Parametrisation** (paper §3, Appendix C; :func:`coefficients`, :func:`consistency_fn`)::

    f_theta(x, t_n) = c_skip(n) x + c_out(n) F_theta(x, t_n),    Delta_n = nu_n - nu_0
    c_skip(n) = sigma_data^2 / (Delta_n^2 + sigma_data^2)

with ``c_skip(0) = 1``, ``c_out(0) = 0`` exactly, and ``f(x, t_0) = x`` bitwise (the boundary condition; the
code returns ``x`` itself at ``n = 0``). Two readings of ``F`` (:class:`Parametrisation` ``output``):

* ``'raw'`` -- the paper's: ``F`` is the network's output and ``c_out(n) = sigma_data Delta_n / sqrt(sigma_data^2 +
  nu_n^2)`` (Appendix C with ``t -> nu_n``, ``epsilon -> nu_0``; ``jcm/models/utils.py: get_distiller_fn`` of
  openai/consistency_models_cifar10). A network trained for this has its own input scaling.
* ``'x0'`` (default) -- for the lliejax teachers, whose networks predict noise: ``F`` is the ``x0`` estimate of the
  network's noise prediction (:meth:`Process.predict_x0`) and ``c_out(n) = 1 - c_skip(n) = Delta_n^2 / (Delta_n^2 +
  sigma_data^2)``: ``f = x0_hat + c_skip (x - x0_hat)`` is a convex combination of two estimates of the clean image,
  the state itself (right at the boundary) and the network's (right at high noise). A student started from the
  teacher's parameters thus starts as the identity near ``t_0`` blended into the teacher's one-step denoiser, and
  ``f`` never rescales an estimate (the latent-consistency-model form ``c_out = Delta / sqrt(Delta^2 +
  sigma_data^2)`` of Luo et al. 2023 reaches ``c_skip + c_out = 1.25`` at ``Delta = sigma_data / sqrt(3)``: ``f = 1.25
  x0`` there when both estimates are exact). Any
  ``F`` is reachable (``predict_x0`` is an invertible affine map of the noise for fixed ``x, t``).

``sigma_data = 0.5`` (the paper's value for images in [-1, 1]) by default.

**Consistency distillation** (paper Algorithm 2, eq. 7; :func:`loss`): per sample ``n ~ U{0..N-2}`` and ``z ~ N(0,
I)``, ``x_{n+1} = q(x_{t_{n+1}} | x0, cond)`` (:meth:`Process.forward_sample`), one teacher ODE step
``x_hat_n = Phi(x_{n+1}, t_{n+1} -> t_n)`` (:meth:`Process.ode_step` with the teacher's noise prediction under
``stop_gradient``), and::

    L = mean_b lambda(t_n) d( f_theta(x_{n+1}, t_{n+1}), stop_gradient(f_theta-(x_hat_n, t_n)) )

with ``theta-`` the target network (an EMA of ``theta``, ``theta- <- stopgrad(mu theta- + (1 - mu) theta)``; by
default ``theta- = theta``: the ``mu = 0`` of improved consistency training). Metrics ``d`` (:data:`METRICS`):

* ``'l2'``: ``mean_{CHW} (a - b)^2`` per sample (the paper's ``||a - b||_2^2`` divided by the dimension ``d``, as its
  code's ``loss_norm='l2'``);
* ``'pseudo_huber'``: ``sqrt(||a - b||_2^2 + c^2) - c`` with ``c = 0.00054 sqrt(d)``, ``d = H W C`` (Song &
  Dhariwal, "Improved Techniques for Training Consistency Models", 2023, §3.3; tuned on CIFAR-10 in [-1, 1],
  ``c = 0.03`` there) unless :class:`Options` ``huber_c`` is given;
* ``'lpips'``: LPIPS-VGG (:func:`lliejax.losses.perceptual.lpips_loss`, per sample, images in the process's
  ``data_range``), at the training crop's size (the paper upsamples its 32/64-pixel images to 224).

Weightings ``lambda(t_n)`` (:data:`WEIGHTINGS`): ``'uniform'`` (1, the paper's CD) or ``'ict'``
(``1 / (nu_{n+1} - nu_n)``, improved CT §3.5).

**Multistep consistency sampling** (paper Algorithm 1; :func:`sample`): for grid indices ``i_0 > i_1 > ... >
i_{K-1}`` (``i_0 = N - 1`` by default, :func:`step_indices`), ``x <- f(x_T, t_{i_0})`` from the teacher's initial
state (:meth:`Process.init_state`: noise for the DDPM, ``mu + lambda z`` for the mean-reverting SDE), then for each
later ``i_k``: ``x <- f(renoise(x, t_{i_k}), t_{i_k})``, where :meth:`Process.renoise` draws the exact forward
transition from the boundary ``t_0`` to ``t_{i_k}`` -- the paper's ``x + sqrt(tau^2 - epsilon^2) z`` for its
variance-exploding process. One ``lax.scan`` (one trace of the network) for the whole list.

Networks are callables ``net_fn(x_t, cond, time) -> output`` (a noise prediction for ``'x0'``); the caller binds
the student's (differentiated), the target's (EMA) and the frozen teacher's parameters, which then enter the
jitted step as arguments (as :mod:`lliejax.distill.trajectory`); teacher and target outputs are under
``stop_gradient``.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from lliejax.distill import processes as pr

NetFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
OUTPUTS = ("x0", "raw")
METRICS = ("l2", "pseudo_huber", "lpips")
WEIGHTINGS = ("uniform", "ict")
#: Improved CT's pseudo-Huber constant per sqrt(dimension).
HUBER_C_PER_SQRT_DIM = 0.00054


@dataclasses.dataclass(frozen=True)
class Parametrisation:
  """``f = c_skip x + c_out F`` (module docstring).

  Attributes:
    sigma_data: ``sigma_data`` of ``c_skip`` / ``c_out`` (> 0).
    output: ``'x0'`` (``F`` = the ``x0`` estimate of a noise-predicting network) or ``'raw'`` (the paper's ``F``).
  """

  sigma_data: float = 0.5
  output: str = "x0"

  def __post_init__(self):
    if not (np.isfinite(self.sigma_data) and self.sigma_data > 0):
      raise ValueError(f"consistency: sigma_data must be a finite number > 0, got {self.sigma_data}")
    if self.output not in OUTPUTS:
      raise ValueError(f"consistency: output={self.output!r}; choose one of {', '.join(OUTPUTS)}")


@dataclasses.dataclass(frozen=True)
class Options:
  """Static options of :func:`loss`.

  Attributes:
    param: the :class:`Parametrisation` of student and target.
    metric: ``d``, one of :data:`METRICS`.
    weighting: ``lambda(t_n)``, one of :data:`WEIGHTINGS`.
    huber_c: the pseudo-Huber ``c`` (default ``0.00054 sqrt(d)``).
    n: force the target's grid index ``n`` (in ``0..N-2``) instead of drawing it (tests, ablations).
  """

  param: Parametrisation = Parametrisation()
  metric: str = "l2"
  weighting: str = "uniform"
  huber_c: float | None = None
  n: int | None = None

  def __post_init__(self):
    if self.metric not in METRICS:
      raise ValueError(f"consistency: metric={self.metric!r}; choose one of {', '.join(METRICS)}")
    if self.weighting not in WEIGHTINGS:
      raise ValueError(f"consistency: weighting={self.weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
    if self.huber_c is not None and not (np.isfinite(self.huber_c) and self.huber_c > 0):
      raise ValueError(f"consistency: huber_c must be a finite number > 0, got {self.huber_c}")


# ------------------------------------------------------------------------------------------------ parametrisation
def coefficients(process: pr.Process, param: Parametrisation = Parametrisation()) -> tuple[np.ndarray, np.ndarray]:
  """``(c_skip, c_out)`` over the grid (float32, length ``N``; computed in float64; ``(1, 0)`` at index 0)."""
  nu = process.noise_levels()
  delta = nu - nu[0]
  sd = float(param.sigma_data)
  c_skip = sd**2 / (delta**2 + sd**2)
  if param.output == "raw":
    c_out = sd * delta / np.sqrt(sd**2 + nu**2)
  else:
    c_out = delta**2 / (delta**2 + sd**2)
  return c_skip.astype(np.float32), c_out.astype(np.float32)


def consistency_fn(process: pr.Process, net_fn: NetFn, x: jax.Array, cond: jax.Array, n, *,
                   param: Parametrisation = Parametrisation()) -> jax.Array:
  """``f(x, t_n) = c_skip(n) x + c_out(n) F(x, t_n)``, and ``x`` itself (bitwise) at the boundary ``n = 0``.

  Args:
    process: the teacher's process and grid.
    net_fn: ``(x_t, cond, time) -> output`` (``time`` = :meth:`Process.net_time`).
    x: the state at ``t_n``, NHWC.
    cond: the condition (low-light image).
    n: grid index, int scalar or (B,).
    param: :class:`Parametrisation`.
  """
  batch = x.shape[0]
  n = pr.as_index(n, batch)
  out = net_fn(x, cond, process.net_time(n, batch))
  if param.output == "x0":
    out = process.predict_x0(x, cond, n, out)
  c_skip, c_out = (pr.expand_to(jnp.asarray(c)[n], x.ndim) for c in coefficients(process, param))
  f = c_skip * x + c_out * out
  return jnp.where(pr.expand_to(n == 0, x.ndim), x, f)


def teacher_step(process: pr.Process, teacher_eps_fn: NetFn, x: jax.Array, cond: jax.Array, n) -> jax.Array:
  """``x_hat_{t_n}``: one teacher ODE step from ``x = x_{t_{n+1}}`` (noise prediction under ``stop_gradient``)."""
  batch = x.shape[0]
  n = pr.as_index(n, batch)
  eps = jax.lax.stop_gradient(teacher_eps_fn(x, cond, process.net_time(n + 1, batch)))
  return jax.lax.stop_gradient(process.ode_step(x, cond, eps, n))


# ------------------------------------------------------------------------------------------------ loss
class Draw(NamedTuple):
  """The random quantities of one CD step."""

  n: jax.Array  # int32 (B,): the target's grid index (the student's is n + 1)
  noise: jax.Array  # z of x_{t_{n+1}}, the shape of x0


def draw(process: pr.Process, key: jax.Array, shape: tuple[int, ...], *, options: Options = Options()) -> Draw:
  """``n ~ U{0..N-2}`` per sample and ``z ~ N(0, I)``, as :func:`loss` draws them from ``key``."""
  kn, kz = jax.random.split(key)
  big_n = process.num_scales
  if options.n is None:
    n = jax.random.randint(kn, (shape[0],), 0, big_n - 1, dtype=jnp.int32)
  else:
    if not 0 <= options.n <= big_n - 2:
      raise ValueError(f"consistency: n must be in [0, {big_n - 2}], got {options.n}")
    n = jnp.full((shape[0],), options.n, jnp.int32)
  return Draw(n, jax.random.normal(kz, shape, jnp.float32))


def weights(process: pr.Process, weighting: str = "uniform") -> np.ndarray:
  """``lambda(t_n)`` for ``n = 0..N-2`` (float32): ones, or ``1 / (nu_{n+1} - nu_n)`` (``'ict'``)."""
  if weighting not in WEIGHTINGS:
    raise ValueError(f"consistency: weighting={weighting!r}; choose one of {', '.join(WEIGHTINGS)}")
  nu = process.noise_levels()
  if weighting == "uniform":
    return np.ones(nu.size - 1, np.float32)
  return (1.0 / np.diff(nu)).astype(np.float32)


def distance(a: jax.Array, b: jax.Array, *, metric: str = "l2", huber_c: float | None = None,
             lpips_params: Any = None, data_range: tuple[float, float] = (-1.0, 1.0)) -> jax.Array:
  """``d(a, b)`` per sample, shape (B,) (module docstring)."""
  if metric not in METRICS:
    raise ValueError(f"consistency: metric={metric!r}; choose one of {', '.join(METRICS)}")
  diff = (a - b).reshape(a.shape[0], -1)
  if metric == "l2":
    return jnp.mean(jnp.square(diff), axis=-1)
  if metric == "pseudo_huber":
    c = HUBER_C_PER_SQRT_DIM * float(np.sqrt(diff.shape[1])) if huber_c is None else float(huber_c)
    return jnp.sqrt(jnp.sum(jnp.square(diff), axis=-1) + c**2) - c
  if lpips_params is None:
    raise ValueError("consistency: metric='lpips' needs lpips_params (lliejax.losses.perceptual.lpips_frozen('vgg'))")
  ranges = {(0.0, 1.0): "[0,1]", (-1.0, 1.0): "[-1,1]"}
  key = tuple(float(v) for v in data_range)
  if key not in ranges:
    raise ValueError(f"consistency: LPIPS needs images in [0, 1] or [-1, 1], the process's range is {data_range}")
  from lliejax.losses import perceptual  # pylint: disable=import-outside-toplevel
  one = lambda u, v: perceptual.lpips_loss(lpips_params, u[None], v[None], net="vgg", input_range=ranges[key])
  return jax.vmap(one)(a, b)


def loss(process: pr.Process, student_fn: NetFn, teacher_eps_fn: NetFn, batch: Mapping[str, jax.Array],
         key: jax.Array, *, target_fn: NetFn | None = None, options: Options = Options(),
         lpips_params: Any = None) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The consistency-distillation loss of one batch (module docstring): ``(scalar, aux)``. Pure and traceable.

  Args:
    process: the teacher's process and grid (:mod:`lliejax.distill.processes`).
    student_fn: ``(x_t, cond, time) -> output`` of the student ``F_theta`` (the caller differentiates through it).
    teacher_eps_fn: ``(x_t, cond, time) -> noise`` of the frozen teacher (outputs under ``stop_gradient``).
    batch: ``{'x0': GT, 'cond': LQ}``, NHWC in the process's ``data_range``.
    key: the step's key; the draws are :func:`draw` ``(process, key, x0.shape, options=options)``.
    target_fn: the target network ``F_theta-`` (the student's EMA); ``None``: the student itself (``theta- =
      stopgrad(theta)``). Its outputs are under ``stop_gradient``.
    options: :class:`Options`.
    lpips_params: the frozen LPIPS-VGG parameters, needed with ``metric='lpips'``.

  Returns:
    The total loss and ``aux``: ``consistency`` (the unweighted mean distance), ``n`` (mean drawn index) and
    ``teacher_step`` (the mean squared size of the teacher's ODE step ``x_hat_n - x_{n+1}``).
  """
  x0, cond = batch["x0"], batch["cond"]
  if options.metric == "lpips" and lpips_params is None:
    raise ValueError("consistency: metric='lpips' needs lpips_params (lliejax.losses.perceptual.lpips_frozen('vgg'))")
  d = draw(process, key, x0.shape, options=options)
  x_next = process.forward_sample(x0, cond, d.n + 1, d.noise)
  x_hat = teacher_step(process, teacher_eps_fn, x_next, cond, d.n)
  f_student = consistency_fn(process, student_fn, x_next, cond, d.n + 1, param=options.param)
  f_target = jax.lax.stop_gradient(
      consistency_fn(process, student_fn if target_fn is None else target_fn, x_hat, cond, d.n,
                     param=options.param))
  dist = distance(f_student, f_target, metric=options.metric, huber_c=options.huber_c, lpips_params=lpips_params,
                  data_range=process.data_range)
  lam = jnp.asarray(weights(process, options.weighting))[d.n]
  aux = {"consistency": jnp.mean(dist), "n": jnp.mean(d.n.astype(jnp.float32)),
         "teacher_step": jnp.mean(jnp.square(x_hat - x_next))}
  return jnp.mean(lam * dist), aux


# ------------------------------------------------------------------------------------------------ sampling
def step_indices(process: pr.Process, steps: int) -> tuple[int, ...]:
  """``steps`` decreasing grid indices for :func:`sample`: ``round(linspace(N-1, 0, steps+1))`` without the last
  (0): ``(N-1,)`` for one step, ``(N-1, (N-1)/2)`` for two, ..."""
  big_n, steps = process.num_scales, int(steps)
  if not 1 <= steps <= big_n - 1:
    raise ValueError(f"consistency sampling: steps must be in [1, {big_n - 1}], got {steps}")
  return tuple(int(i) for i in np.round(np.linspace(big_n - 1, 0, steps + 1))[:-1])


def _check_indices(process: pr.Process, indices: Sequence[int]) -> tuple[int, ...]:
  idx = tuple(int(i) for i in indices)
  big_n = process.num_scales
  if not idx or any(not 1 <= i <= big_n - 1 for i in idx) or any(b >= a for a, b in zip(idx, idx[1:])):
    raise ValueError(f"consistency sampling: indices must be strictly decreasing grid indices in [1, {big_n - 1}], "
                     f"got {idx}")
  return idx


def sample(process: pr.Process, net_fn: NetFn, cond: jax.Array, key: jax.Array | None = None, *,
           steps: int | Sequence[int] = 1, param: Parametrisation = Parametrisation(),
           x_init: jax.Array | None = None, clip_denoised: bool = False, return_intermediates: bool = False):
  """Multistep consistency sampling (paper Algorithm 1, module docstring) in one ``lax.scan``. Traceable.

  Args:
    process: the teacher's process and grid.
    net_fn: the consistency model's ``F`` (``(x_t, cond, time) -> output``).
    cond: the condition (low-light image), NHWC; sets the sample's shape.
    key: PRNG key: ``(k_init, k_loop) = split(key)``; ``x_T = process.init_state(k_init, cond)`` and the
      re-noising draws of step ``k`` use ``split(k_loop, K)[k]`` (step 0 draws nothing).
    steps: the number of steps (indices :func:`step_indices`) or the grid indices themselves, strictly
      decreasing in ``[1, N-1]`` (static).
    param: :class:`Parametrisation`.
    x_init: the initial state instead of ``process.init_state``.
    clip_denoised: clip every ``f`` to the process's ``data_range`` (the paper code's ``clip_denoised``).
    return_intermediates: also return every step's ``f`` (K, ...).

  Returns:
    The last ``f`` (unclipped unless ``clip_denoised``), or ``(x, states)``.
  """
  idx = step_indices(process, steps) if isinstance(steps, (int, np.integer)) else _check_indices(process, steps)
  if key is None:
    if x_init is None:
      raise ValueError("consistency sampling needs a key (or x_init and a single step)")
    if len(idx) > 1:
      raise ValueError("consistency sampling: more than one step needs a key for the re-noising")
    key = jax.random.key(0)  # never used: one step from x_init draws nothing
  k_init, k_loop = jax.random.split(key)
  x = process.init_state(k_init, cond) if x_init is None else jnp.asarray(x_init, jnp.float32)
  lo, hi = process.data_range

  def step(x, inputs):
    k, i, kk = inputs
    z = jax.random.normal(kk, x.shape, jnp.float32)
    x_in = jnp.where(k == 0, x, process.renoise(x, cond, i, z))
    x = consistency_fn(process, net_fn, x_in, cond, i, param=param)
    if clip_denoised:
      x = jnp.clip(x, lo, hi)
    return x, (x if return_intermediates else None)

  xs = (jnp.arange(len(idx), dtype=jnp.int32), jnp.asarray(idx, jnp.int32), jax.random.split(k_loop, len(idx)))
  x, states = jax.lax.scan(step, x, xs)
  return (x, states) if return_intermediates else x


def ode_sample(process: pr.Process, teacher_eps_fn: NetFn, cond: jax.Array, key: jax.Array | None = None, *,
               x_init: jax.Array | None = None) -> jax.Array:
  """The teacher's own deterministic sampler on the grid: ``N - 1`` ODE steps from ``x_T`` to ``t_0`` (one
  ``lax.scan``): the trajectory the consistency model learns to jump along. Traceable."""
  if x_init is None:
    if key is None:
      raise ValueError("ode_sample needs a key (or x_init)")
    x = process.init_state(key, cond)
  else:
    x = jnp.asarray(x_init, jnp.float32)

  def step(x, n):
    return teacher_step(process, teacher_eps_fn, x, cond, n), None

  x, _ = jax.lax.scan(step, x, jnp.arange(process.num_scales - 2, -1, -1, dtype=jnp.int32))
  return x
