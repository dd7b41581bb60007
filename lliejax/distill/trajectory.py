"""ReDDiT's reflectance-aware trajectory distillation (CVPR 2025) as one pure loss, and the stage driver.

:func:`loss` reproduces ``GaussianDiffusion.loss`` of the official ``model/ddpm_modules/diffusion.py``
(lgz-0713/ReDDiT), which the teacher (``n`` steps, time scale ``s``) runs with the student (``S = n / 2`` steps)
as argument (REFERENCE §3.4). With ``gamma_prev`` the teacher's host table (:class:`lliejax.diffusion.reddit.Schedule`)
and ``sigma = sqrt(1 - gamma^2)``:

1. one integer ``t = 2 U{1..S}`` for the whole batch (teacher steps ``2, 4, ..., 2S``);
2. per-sample levels ``gamma_t ~ U(gamma_prev[(t-1)s], gamma_prev[ts])``, ``gamma_{t-1} ~ U(gamma_prev[(t-2)s],
   gamma_prev[(t-1)s])``, ``gamma_{t-2} ~ U(gamma_prev[(t-3)s], gamma_prev[(t-2)s])``, and ``eps ~ N(0, I)``;
3. two deterministic DDIM steps of the teacher (no clipping; outputs under ``stop_gradient``):
   ``z_t = gamma_t x0 + sigma_t eps``, ``eps_1 = T(y, z_t, gamma_t)``, ``x_1 = predict_start(z_t, gamma_t, eps_1)``,
   ``z_{t-1} = gamma_{t-1} x_1 + sigma_{t-1} eps_1``, and the same again to ``z_{t-2}`` with ``eps_2``;
4. RATR (retinex-aware trajectory refinement, strength ``w_snr``): a reflectance prior ``x_ref`` of the low-light
   condition ``y`` (:func:`reflectance_prior`), noised with the teacher's ``eps_2`` to ``z_ref = gamma_{t-2} x_ref
   + sigma_{t-2} eps_2``, pulls the target state: ``z_{t-2} <- z_{t-2} + w_snr (z_ref - z_{t-2})``;
5. the second-order target, the single DDIM step from ``z_t`` that lands on ``z_{t-2}``: with ``f = sigma_{t-2} /
   sigma_t``, ``x_tgt = (z_{t-2} - f z_t) / (gamma_{t-2} - f gamma_t)`` and ``eps_tgt = predict_eps(z_t, x_tgt,
   gamma_t)``;
6. the student ``eps_s = F(y, z_t, gamma_t)``, ``x_s = predict_start(z_t, gamma_t, eps_s)`` (no clipping);
7. ``loss = mean_b max(MSE_b(x_s, x_tgt), MSE_b(eps_s, eps_tgt))`` (the paper's truncated-SNR weighting)
   ``+ w_gt mean_b max(MSE_b(x0, x_s), MSE_b(eps, eps_s)) + w_lpips mean LPIPS-VGG(x0, x_s)`` (LPIPS on [-1, 1]
   images, ``x_s`` unclamped). The official ``w_str`` multiplies a zero tensor and is left out.

Two variants (:class:`Options` ``variant``):

* ``'released'`` -- exactly the official numbers, with its two defects (REFERENCE §6 items 23, 24): at the last
  student step ``t = 2`` the index ``(t-3)s = -s`` is negative and **wraps around** to the end of the table, so
  ``gamma_{t-2} ~ U(gamma_prev[-s], 1)`` (``U(0.10, 1)`` for ``s = 32``) instead of a level near 1 -- usually below
  ``gamma_t``, which turns the target into a backward extrapolation whose denominator ``gamma_{t-2} - f gamma_t``
  can cross 0; and RATR works on the LQ tensor **as stored, in [-1, 1]**, where the illumination
  ``max_c y + 0.1`` is negative for dark pixels and crosses 0 near ``max_c y = -0.1``.
* ``'fixed'`` -- the paper's intent: the index is clamped at 0, so at ``t = 2`` the target level is
  ``gamma_prev[0] = 1`` (the clean end of the trajectory: ``x_tgt`` is the teacher's two-step estimate of ``x0``);
  and RATR works on intensities in [0, 1] (``(y + 1) / 2``, the normalisation of the official dataset's
  commented-out ``get_max``), its reflectance mapped back to [-1, 1] before noising. Identical to ``'released'``
  for every ``t > 2`` without RATR.

The networks are callables ``eps_fn(x_t, cond, gamma) -> eps`` (:mod:`lliejax.diffusion.reddit`); a caller binds
the student's (differentiated) and the teacher's (frozen) parameters, and passes the frozen LPIPS parameters as an
argument, never as a closure constant. :func:`distill_stages` chains the stages 16 -> 8 -> 4 -> 2 through the
generic trainer, each stage's exported student becoming the next stage's teacher (the paper's progressive
distillation; the released scripts never pass ``--progressive`` and restart every stage from the same file,
REFERENCE §6 item 27).
"""
from __future__ import annotations

import copy
import dataclasses
import os
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from lliejax.diffusion import reddit as rd

EpsFn = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
VARIANTS = ("released", "fixed")
#: ``torchvision.transforms.GaussianBlur(kernel_size=15, sigma=3)`` of ``GaussianDiffusion.SNR_map``.
BLUR_KERNEL, BLUR_SIGMA = 15, 3.0
#: ITU-R BT.601 luma weights of ``SNR_map``.
GRAY = (0.299, 0.587, 0.114)
#: ``T = max_c(y) + 0.1`` of the official illumination estimate.
ILLUMINATION_OFFSET = 0.1


@dataclasses.dataclass(frozen=True)
class Options:
  """Static options of :func:`loss`.

  Attributes:
    variant: ``'released'`` (the official numbers) or ``'fixed'`` (the paper's intent); module docstring.
    w_snr: RATR strength (``model.diffusion.w_snr`` of the official JSON; 0 disables the refinement).
    w_gt: weight of the max-weighted ground-truth term (``w_gt``; 0 skips it).
    w_lpips: weight of the LPIPS-VGG term (``w_lpips``; > 0 needs ``lpips_params``).
    t: force the teacher step ``t`` (even, in ``2 .. n``) instead of drawing it (tests, ablations).
  """

  variant: str = "released"
  w_snr: float = 0.0
  w_gt: float = 0.0
  w_lpips: float = 0.0
  t: int | None = None

  def __post_init__(self):
    if self.variant not in VARIANTS:
      raise ValueError(f"trajectory distillation: variant={self.variant!r}; choose one of {', '.join(VARIANTS)}")
    for name in ("w_snr", "w_gt", "w_lpips"):
      if not np.isfinite(getattr(self, name)) or getattr(self, name) < 0:
        raise ValueError(f"trajectory distillation: {name} must be a finite number >= 0, got {getattr(self, name)}")


class Draw(NamedTuple):
  """The random quantities of one distillation step (float32; levels of shape (B,))."""

  t: jax.Array  # int32 scalar: the teacher step (2, 4, ..., n)
  gamma_t: jax.Array
  gamma_t1: jax.Array  # gamma_{t-1}
  gamma_t2: jax.Array  # gamma_{t-2}
  noise: jax.Array  # eps, the shape of x0


def level_bounds(schedule: rd.Schedule, t, *, variant: str = "released"):
  """``[(low, high)]`` of ``gamma_t``, ``gamma_{t-1}``, ``gamma_{t-2}`` at teacher step ``t`` (float32, traceable).

  ``(low, high)`` are the arguments of the official ``np.random.uniform(low, high)``: for ``gamma_{t-k}``,
  ``(gamma_prev[(t-k-1)s], gamma_prev[(t-k)s])`` (``low`` is the larger value: ``gamma_prev`` decreases). A
  negative index wraps around (``'released'``, numpy indexing) or is clamped to 0 (``'fixed'``).
  """
  if variant not in VARIANTS:
    raise ValueError(f"variant={variant!r}; choose one of {', '.join(VARIANTS)}")
  table = jnp.asarray(schedule.gamma_prev, jnp.float32)
  size, s = table.shape[0], schedule.time_scale
  t = jnp.asarray(t, jnp.int32)

  def at(k):
    i = (t - k) * s
    i = jnp.where(i < 0, i + size, i) if variant == "released" else jnp.maximum(i, 0)
    return table[i]

  return [(at(k + 1), at(k)) for k in range(3)]


def draw(schedule: rd.Schedule, key: jax.Array, shape: tuple[int, ...], *, options: Options = Options()) -> Draw:
  """The draws of :func:`loss` with the same ``key`` (module docstring, steps 1-2).

  Args:
    schedule: the teacher's schedule (``S = schedule.num_timesteps / 2`` student steps).
    key: the step's key.
    shape: ``x0``'s shape (batch first).
    options: ``variant`` picks the index rule, ``t`` forces the step.
  """
  n = schedule.num_timesteps
  if n % 2:
    raise ValueError(f"trajectory distillation needs an even number of teacher steps, got {n}")
  kt, k1, k2, k3, kn = jax.random.split(key, 5)
  if options.t is None:
    t = 2 * jax.random.randint(kt, (), 1, n // 2 + 1)
  else:
    if options.t % 2 or not 2 <= options.t <= n:
      raise ValueError(f"trajectory distillation: t must be even in [2, {n}], got {options.t}")
    t = jnp.asarray(options.t, jnp.int32)
  batch = shape[0]
  # numpy.random.uniform(low, high): low + (high - low) * U[0, 1), whichever bound is larger.
  levels = [lo + (hi - lo) * jax.random.uniform(k, (batch,), jnp.float32)
            for k, (lo, hi) in zip((k1, k2, k3), level_bounds(schedule, t, variant=options.variant))]
  return Draw(t, *levels, jax.random.normal(kn, shape, jnp.float32))


# ------------------------------------------------------------------------------------------------ RATR
def gaussian_kernel1d(size: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA) -> np.ndarray:
  """torchvision's ``_get_gaussian_kernel1d``: ``exp(-x^2 / (2 sigma^2))`` on ``x = -(size-1)/2 .. (size-1)/2``,
  normalised to sum 1 (float32)."""
  x = np.linspace(-(size - 1) / 2, (size - 1) / 2, size, dtype=np.float32)
  pdf = np.exp(-0.5 * np.square(x / np.float32(sigma)))
  return (pdf / pdf.sum()).astype(np.float32)


def gaussian_blur(x: jax.Array, size: int = BLUR_KERNEL, sigma: float = BLUR_SIGMA) -> jax.Array:
  """``torchvision.transforms.GaussianBlur(size, sigma)`` on NHWC: the separable kernel of
  :func:`gaussian_kernel1d` with reflect padding ``size // 2`` (no edge duplication), per channel."""
  w = gaussian_kernel1d(size, sigma)
  r = size // 2
  h, wd = x.shape[1], x.shape[2]
  if min(h, wd) <= r:
    raise ValueError(f"gaussian_blur: reflect padding {r} needs images larger than {r} pixels, got {h}x{wd}")
  x = jnp.pad(x, ((0, 0), (r, r), (r, r), (0, 0)), mode="reflect")
  x = sum(float(w[i]) * x[:, i:i + h] for i in range(size))
  return sum(float(w[i]) * x[:, :, i:i + wd] for i in range(size))


def gray(x: jax.Array) -> jax.Array:
  """``0.299 R + 0.587 G + 0.114 B`` (NHWC -> NHW1)."""
  return GRAY[0] * x[..., 0:1] + GRAY[1] * x[..., 1:2] + GRAY[2] * x[..., 2:3]


def reflectance_prior(y: jax.Array, *, variant: str = "released") -> jax.Array:
  """RATR's reflectance estimate ``x_ref`` of the low-light condition ``y`` (NHWC in [-1, 1]), in [-1, 1] space.

  ``L = max_c v + 0.1``, ``r = v / L``, ``noise = |gray(blur(r)) - gray(r)|`` (``SNR_map``), ``x_ref = r - noise``
  with ``v = y`` (``'released'``: the stored [-1, 1] values, REFERENCE §6 item 23) or ``v = (y + 1) / 2``
  (``'fixed'``: intensities in [0, 1]; ``x_ref`` is then mapped back by ``2 x - 1``). ``gray(blur(r))`` is computed
  as ``blur(gray(r))`` (both linear; equal up to float rounding).
  """
  if variant not in VARIANTS:
    raise ValueError(f"variant={variant!r}; choose one of {', '.join(VARIANTS)}")
  v = y if variant == "released" else (y + 1.0) / 2.0
  r = v / (jnp.max(v, axis=-1, keepdims=True) + ILLUMINATION_OFFSET)
  g = gray(r)
  x_ref = r - jnp.abs(gaussian_blur(g) - g)
  return x_ref if variant == "released" else 2.0 * x_ref - 1.0


# ------------------------------------------------------------------------------------------------ loss
def _expand(v, ndim):
  return jnp.reshape(v, v.shape + (1,) * (ndim - v.ndim))


def targets(teacher_eps_fn: EpsFn, x0: jax.Array, cond: jax.Array, d: Draw, *,
            options: Options = Options()) -> dict[str, jax.Array]:
  """Steps 3-5 of the module docstring: ``z_t`` and the teacher's targets ``x_tgt``, ``eps_tgt`` (no gradient).

  Also returns ``denominator`` (B,): ``gamma_{t-2} - f gamma_t``, whose sign and size show the released
  variant's extrapolations (REFERENCE §3.4 step 2).
  """
  nd = x0.ndim
  g_t, g_1, g_2 = (_expand(g, nd) for g in (d.gamma_t, d.gamma_t1, d.gamma_t2))
  z_t = rd.q_sample(x0, d.gamma_t, d.noise)
  eps_1 = jax.lax.stop_gradient(teacher_eps_fn(z_t, cond, d.gamma_t))
  z_1 = rd.q_sample(rd.predict_start(z_t, d.gamma_t, eps_1), d.gamma_t1, eps_1)
  eps_2 = jax.lax.stop_gradient(teacher_eps_fn(z_1, cond, d.gamma_t1))
  z_2 = rd.q_sample(rd.predict_start(z_1, d.gamma_t1, eps_2), d.gamma_t2, eps_2)
  if options.w_snr:
    z_ref = rd.q_sample(reflectance_prior(cond, variant=options.variant), d.gamma_t2, eps_2)
    z_2 = z_2 + options.w_snr * (z_ref - z_2)
  frac = jnp.sqrt(1.0 - g_2**2) / jnp.sqrt(1.0 - g_t**2)
  denom = g_2 - frac * g_t
  x_tgt = (z_2 - frac * z_t) / denom
  eps_tgt = rd.predict_eps(z_t, x_tgt, d.gamma_t)
  out = {"z_t": z_t, "x_tgt": x_tgt, "eps_tgt": eps_tgt, "denominator": denom.reshape(denom.shape[0])}
  return jax.tree.map(jax.lax.stop_gradient, out)


def _mse_per_sample(a, b):
  return jnp.mean(jnp.square(a - b).reshape(a.shape[0], -1), axis=-1)


def loss(student_eps_fn: EpsFn, teacher_eps_fn: EpsFn, schedule: rd.Schedule, batch: Mapping[str, jax.Array],
         key: jax.Array, *, options: Options = Options(), lpips_params: Any = None
         ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The distillation loss of one batch (module docstring): ``(scalar, aux)``. Pure and traceable.

  Args:
    student_eps_fn: ``(x_t, cond, gamma) -> eps`` of the student (the caller differentiates through it).
    teacher_eps_fn: the same of the frozen teacher (its outputs are wrapped in ``stop_gradient``).
    schedule: the **teacher's** schedule ``(n, s)``; the student has ``n / 2`` steps.
    batch: ``{'x0': GT, 'cond': LQ}``, NHWC in [-1, 1] (the official ``x_in['GT']``, ``x_in['LQ']``).
    key: the step's key; the draws are :func:`draw` ``(schedule, key, x0.shape, options=options)``.
    options: :class:`Options`.
    lpips_params: the frozen LPIPS-VGG parameters (:func:`lliejax.losses.perceptual.lpips_frozen` ``('vgg')``),
      needed when ``options.w_lpips > 0``.

  Returns:
    The total loss and ``aux``: ``distill``, ``gt`` (with ``w_gt``), ``lpips`` (with ``w_lpips``), ``t`` (the
    drawn teacher step) and ``min_abs_denominator`` (the smallest ``|gamma_{t-2} - f gamma_t|`` of the batch).
  """
  x0, cond = batch["x0"], batch["cond"]
  d = draw(schedule, key, x0.shape, options=options)
  tg = targets(teacher_eps_fn, x0, cond, d, options=options)
  eps_s = student_eps_fn(tg["z_t"], cond, d.gamma_t)
  x_s = rd.predict_start(tg["z_t"], d.gamma_t, eps_s)
  distill = jnp.mean(jnp.maximum(_mse_per_sample(x_s, tg["x_tgt"]), _mse_per_sample(eps_s, tg["eps_tgt"])))
  total = distill
  aux = {"distill": distill, "t": d.t.astype(jnp.float32),
         "min_abs_denominator": jnp.min(jnp.abs(tg["denominator"]))}
  if options.w_gt:
    gt = jnp.mean(jnp.maximum(_mse_per_sample(x0, x_s), _mse_per_sample(d.noise, eps_s)))
    total = total + options.w_gt * gt
    aux["gt"] = gt
  if options.w_lpips:
    if lpips_params is None:
      raise ValueError("trajectory distillation: w_lpips > 0 needs lpips_params "
                       "(lliejax.losses.perceptual.lpips_frozen('vgg'))")
    from lliejax.losses import perceptual  # pylint: disable=import-outside-toplevel
    lp = perceptual.lpips_loss(lpips_params, x0, x_s, net="vgg", input_range="[-1,1]")
    total = total + options.w_lpips * lp
    aux["lpips"] = lp
  return total, aux


# ------------------------------------------------------------------------------------------------ optimisation
# ------------------------------------------------------------------------------------------------ stages
def stage_config(config, teacher: str):
  """A copy of the student ``config`` for the stage whose teacher is the export ``teacher``.

  The student's grid is the teacher's halved (``(n, s) -> (n / 2, 2 s)``, ``sampling.steps = n / 2``); the model
  section and the beta range are the teacher's; ``distill.teacher = teacher``.
  """
  import ml_collections  # pylint: disable=import-outside-toplevel
  from lliejax import checkpoint  # pylint: disable=import-outside-toplevel
  info = checkpoint.read_export_info(teacher)
  tdiff = info["config"].get("diffusion") or {}
  if "model" not in info["config"] or not {"num_timesteps", "time_scale"} <= set(tdiff):
    raise ValueError(f"{teacher}: not an export of a ReDDiT model (no model / diffusion grid in its config)")
  n, s = int(tdiff["num_timesteps"]), int(tdiff["time_scale"])
  if n % 2:
    raise ValueError(f"{teacher}: a {n}-step teacher has no half-step student")
  stage = copy.deepcopy(config)
  stage.model = ml_collections.ConfigDict(info["config"]["model"])
  stage.diffusion.num_timesteps, stage.diffusion.time_scale = n // 2, 2 * s
  for k in ("linear_start", "linear_end"):
    if tdiff.get(k) is not None:
      stage.diffusion[k] = float(tdiff[k])
  stage.sampling.steps = n // 2
  stage.distill.teacher = os.path.abspath(os.path.expanduser(teacher))
  return stage


def distill_stages(config, teacher: str, workdir: str, *, final_steps: int = 2,
                   train_fn: Callable | None = None) -> list[str]:
  """Progressive distillation: stages ``n -> n/2 -> ... -> final_steps``, each student the next stage's teacher.

  Stage ``k`` trains ``stage_config(config, teacher_k)`` with ``train_fn(stage_config, workdir/<S>step)``
  (default :func:`lliejax.train.train_and_evaluate`, which writes the EMA student to ``<workdir>/<S>step/export``);
  that export is ``teacher_{k+1}``. From a 16-step teacher with ``final_steps = 2``: 8, 4 and 2-step students, as
  the stage list of the official ``train.py`` (``PD_steps = [16, 8, 4, 2, 1]``, stopping after the 2-step one).

  Args:
    config: a ``reddit_student`` config (its grid, model and teacher are replaced per stage).
    teacher: the export of the first teacher (``reddit_teacher`` or ``reddit_student``).
    workdir: the stages' workdirs go under it.
    final_steps: the step count of the last student.
    train_fn: ``(config, workdir) -> anything``; must leave an export in ``workdir/export``.

  Returns:
    The export directories of the students, first stage first.
  """
  from lliejax import config_utils  # pylint: disable=import-outside-toplevel
  if train_fn is None:
    from lliejax import train  # pylint: disable=import-outside-toplevel
    train_fn = train.train_and_evaluate
  from lliejax import checkpoint  # pylint: disable=import-outside-toplevel
  final_steps = int(final_steps)
  if final_steps < 1:
    raise ValueError(f"final_steps must be >= 1, got {final_steps}")
  exports = []
  while True:
    n = int(((checkpoint.read_export_info(teacher)["config"].get("diffusion") or {}).get("num_timesteps", 0)))
    if n % 2 or n // 2 < final_steps:
      if not exports:
        raise ValueError(f"{teacher}: a {n}-step teacher has no student of >= final_steps={final_steps} steps "
                         "(stages halve an even step count)")
      break
    stage = stage_config(config, teacher)
    config_utils.validate_config(stage)
    stage_dir = os.path.join(os.path.abspath(os.path.expanduser(workdir)), f"{n // 2}step")
    train_fn(stage, stage_dir)
    teacher = os.path.join(stage_dir, "export")
    exports.append(teacher)
    if n // 2 == final_steps:
      break
  return exports
