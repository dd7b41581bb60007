"""Figures for notebooks and reports: image grids, training curves, KDE histograms, sampler states, agreement.

Every function returns a :class:`matplotlib.figure.Figure` built without ``pyplot`` (no global figure state, nothing
to close, safe in scripts and tests); in Jupyter / Colab a figure left as the last expression of a cell is shown
(after ``%matplotlib inline``), elsewhere ``fig.savefig(path)`` writes it. matplotlib is imported inside the
functions, so importing this module needs only numpy (``pip install matplotlib`` for the figures).

Images are ``(H, W, C)`` or ``(H, W)`` arrays (numpy or JAX) in [0, 1]; values outside are clipped for display
(:func:`to_display`), which the sampler states of the mean-reverting SDE need. :func:`read_scalars` reads the
TensorBoard scalars a training run wrote, for :func:`plot_curves`.
"""
from __future__ import annotations

import glob
import math
import os
from typing import Any, Mapping, Sequence

import numpy as np

Curves = Mapping[str, tuple[np.ndarray, np.ndarray]]


def _figure(nrows: int, ncols: int, size: tuple[float, float]):
  """A pyplot-free figure with an ``(nrows, ncols)`` array of axes."""
  from matplotlib.figure import Figure  # pylint: disable=import-outside-toplevel

  fig = Figure(figsize=(size[0] * ncols, size[1] * nrows), layout="constrained")
  axes = np.asarray(fig.subplots(nrows, ncols, squeeze=False))
  return fig, axes


def to_display(image: Any) -> np.ndarray:
  """A float image ready for ``imshow``: numpy, clipped to [0, 1], batch axis of 1 and single channel dropped.

  Raises:
    ValueError: not an ``(H, W)``, ``(H, W, C)`` or ``(1, H, W, C)`` array.
  """
  img = np.asarray(image, np.float32)
  if img.ndim == 4 and img.shape[0] == 1:
    img = img[0]
  if img.ndim == 3 and img.shape[-1] == 1:
    img = img[..., 0]
  if img.ndim not in (2, 3) or (img.ndim == 3 and img.shape[-1] not in (3, 4)):
    raise ValueError(f"expected an (H, W), (H, W, 1|3|4) or (1, H, W, C) image, got shape {np.shape(image)}")
  return np.clip(np.nan_to_num(img), 0.0, 1.0)


def show_images(images: Sequence[Any], *, titles: Sequence[str] | None = None, ncols: int | None = None,
                size: float = 3.0, suptitle: str | None = None):
  """A grid of images (row-major, ``ncols`` per row, default all in one row), each with its title."""
  n = len(images)
  if n == 0:
    raise ValueError("show_images needs at least one image")
  if titles is not None and len(titles) != n:
    raise ValueError(f"{len(titles)} titles for {n} images")
  ncols = n if ncols is None else max(1, min(int(ncols), n))
  nrows = math.ceil(n / ncols)
  shapes = [to_display(im).shape for im in images]
  aspect = float(np.mean([s[0] / s[1] for s in shapes]))
  fig, axes = _figure(nrows, ncols, (size, size * aspect))
  for k, ax in enumerate(axes.flat):
    ax.set_axis_off()
    if k < n:
      img = to_display(images[k])
      ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0.0, vmax=1.0, interpolation="nearest")
      if titles is not None:
        ax.set_title(titles[k], fontsize=9)
  if suptitle:
    fig.suptitle(suptitle)
  return fig


def show_triplets(images: Sequence[tuple[str, tuple[Any, Any, Any]]], *,
                  labels: Sequence[str] = ("LQ", "output", "GT"), size: float = 3.0):
  """Rows of ``LQ | output | GT``: the ``images`` of :func:`lliejax.evaluate.evaluate_dataset`'s result.

  ``images`` is ``[(name, (lq, output, gt)), ...]``; each row is titled with the name.
  """
  flat, titles = [], []
  for name, triple in images:
    if len(triple) != len(labels):
      raise ValueError(f"{name}: {len(triple)} images for {len(labels)} labels")
    flat += list(triple)
    titles += [f"{name}: {lab}" for lab in labels]
  return show_images(flat, titles=titles, ncols=len(labels), size=size)


def show_comparison(results: Mapping[str, Mapping[str, Any]], *, size: float = 3.0):
  """Rows per image ``LQ | output of each run | GT`` from several :func:`~lliejax.evaluate.evaluate_dataset` results.

  ``results`` maps a label (e.g. the objective) to a result of the same split; images are matched by name, and
  each output is titled with its label and its PSNR (the result's main convention).

  Raises:
    ValueError: no results, or results of different images.
  """
  if not results:
    raise ValueError("show_comparison needs at least one result")
  labels = list(results)
  by_name = [{name: triple for name, triple in results[lab]["images"]} for lab in labels]
  names = [name for name, _ in results[labels[0]]["images"]]
  if any(set(d) != set(names) for d in by_name):
    raise ValueError("the results hold different images; evaluate the same split with each run")
  psnr = [{r["name"]: r.get("psnr") for r in results[lab].get("per_image", [])} for lab in labels]
  flat, titles = [], []
  for name in names:
    lq, _, gt = by_name[0][name]
    flat.append(lq)
    titles.append(f"{name}: LQ")
    for lab, d, p in zip(labels, by_name, psnr):
      flat.append(d[name][1])
      titles.append(lab + (f" ({p[name]:.2f} dB)" if p.get(name) is not None else ""))
    flat.append(gt)
    titles.append("GT")
  return show_images(flat, titles=titles, ncols=len(labels) + 2, size=size)


def show_joint_histograms(histograms: Sequence[Any], *, titles: Sequence[str] | None = None, log: bool = True,
                          size: float = 3.5):
  """KDE joint histograms (:func:`lliejax.losses.entropy.joint_histogram`) as pictures, one colour scale each.

  Rows: the pixel-value bin ``i`` (0 = dark, at the top); columns: the neighbour bin ``j``. ``log`` shows
  ``log10(p + 1e-6 * max p)``, which makes the sparse off-diagonal mass visible.
  """
  n = len(histograms)
  if titles is not None and len(titles) != n:
    raise ValueError(f"{len(titles)} titles for {n} histograms")
  fig, axes = _figure(1, n, (size, size))
  for k, ax in enumerate(axes.flat):
    h = np.asarray(histograms[k], np.float64)
    if h.ndim != 2 or h.shape[0] != h.shape[1]:
      raise ValueError(f"expected an (L, L) histogram, got shape {h.shape}")
    shown = np.log10(h + 1e-6 * max(float(h.max()), 1e-30)) if log else h
    im = ax.imshow(shown, cmap="magma", origin="upper", interpolation="nearest")
    ax.set_xlabel("neighbour bin j")
    ax.set_ylabel("pixel bin i")
    if titles is not None:
      ax.set_title(titles[k], fontsize=9)
    fig.colorbar(im, ax=ax, shrink=0.8, label="log10 density" if log else "density")
  return fig


def plot_sde_schedule(sde: Any, *, size: tuple[float, float] = (4.0, 3.0)):
  """The tables of a mean-reverting SDE (:func:`lliejax.diffusion.irsde.make_sde`) against ``t = 0..T``.

  Left: ``theta_t``; middle: ``exp(-thetas_cumsum[t] dt)``, the weight of ``x0 - mu`` left in the mean; right: the
  marginal std ``sigma_bar_t`` with ``lambda`` dotted.
  """
  t = np.arange(int(sde.T) + 1)
  weight = np.exp(-np.asarray(sde.thetas_cumsum, np.float64) * float(sde.dt))
  fig, axes = _figure(1, 3, size)
  panels = ((np.asarray(sde.thetas), "theta_t"), (weight, "mean weight exp(-cumsum theta dt)"),
            (np.asarray(sde.sigma_bars), "sigma_bar_t"))
  for ax, (values, title) in zip(axes.flat, panels):
    ax.plot(t, values)
    ax.set_xlabel("t")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
  axes.flat[2].axhline(float(sde.max_sigma), ls=":", color="gray", label="lambda")
  axes.flat[2].legend(fontsize=8)
  return fig


def pick_states(states: Any, num: int = 6) -> tuple[list[np.ndarray], list[int]]:
  """``num`` evenly spaced states of a sampler trajectory and their timesteps, the last one (t = 0) included.

  ``states``: the ``(T, ...)`` intermediates of :func:`lliejax.diffusion.irsde.sample` with
  ``return_intermediates=True`` (``states[k]`` is ``x_{T-1-k}``); a batch axis of 1 is dropped.
  """
  states = np.asarray(states, np.float32)
  T = states.shape[0]
  if T == 0:
    raise ValueError("no states")
  idx = sorted(set(np.linspace(0, T - 1, min(int(num), T)).round().astype(int).tolist()))
  return [states[k] for k in idx], [T - 1 - k for k in idx]


def show_trajectory(states: Any, *, num: int = 6, lq: Any = None, size: float = 2.6):
  """Sampler states ``x_t`` from ``t = T-1`` down to ``0`` (:func:`pick_states`), after the condition ``lq``."""
  picked, ts = pick_states(states, num)
  images = ([lq] if lq is not None else []) + picked
  titles = (["LQ (mu)"] if lq is not None else []) + [f"x_{t}" for t in ts]
  return show_images(images, titles=titles, size=size)


#: The four RGB images of AnlightenDiff's 12-channel hand-crafted condition, in channel order
#: (:func:`lliejax.data.condition.hand_crafted_condition`).
CONDITION_PARTS = ("LQ", "HE(LQ)", "colour map", "gradient map")


def show_anchor(condition: Any, phi: Any, *, gt: Any = None, size: float = 2.6):
  """AnlightenDiff's anchor and what it is computed from, in one row: the four RGB images of the 12-channel
  hand-crafted condition (:data:`CONDITION_PARTS`; the gradient map divided by its maximum, it is faint otherwise),
  the anchor phi (FS: the encoder output, ``conv + HE(LQ)``; TS: ``(1 - zeta) img_c + zeta``; clipped for display),
  then ``gt`` when given.

  ``condition``: ``(H, W, 12)`` or ``(1, H, W, 12)``; ``phi``: ``(H, W, 3)`` or ``(1, H, W, 3)``.

  Raises:
    ValueError: ``condition`` does not have 12 channels.
  """
  cond = np.asarray(condition, np.float32)
  if cond.ndim == 4 and cond.shape[0] == 1:
    cond = cond[0]
  if cond.ndim != 3 or cond.shape[-1] != 3 * len(CONDITION_PARTS):
    raise ValueError(f"expected an (H, W, 12) condition, got shape {np.shape(condition)}")
  parts = [cond[..., 3 * k:3 * k + 3] for k in range(len(CONDITION_PARTS))]
  parts[-1] = parts[-1] / max(float(parts[-1].max()), 1e-8)
  titles = list(CONDITION_PARTS[:-1]) + [CONDITION_PARTS[-1] + " / max", "anchor phi"]
  images = parts + [phi]
  if gt is not None:
    images.append(gt)
    titles.append("GT")
  return show_images(images, titles=titles, size=size)


def show_x0_trajectory(trajectory: Mapping[str, Any], *, phi: Any = None, output: Any = None, size: float = 2.6):
  """The sampler's estimate of the clean image at a few steps, ``x0_hat`` at each kept ``t`` (decreasing), after the
  anchor ``phi`` (where DRDS starts) and before the final ``output`` when given.

  ``trajectory``: ``{'t': (K,), 'x0': (K, H, W, C) or (K, 1, H, W, C), ...}`` in sampling order, as returned by
  :meth:`lliejax.methods.anlightendiff.AnlightenDiffFS.sample_trajectory` (``x0`` already mapped to images).

  Raises:
    ValueError: ``t`` and ``x0`` disagree in length, or the trajectory is empty.
  """
  ts = np.asarray(trajectory["t"]).reshape(-1)
  x0 = np.asarray(trajectory["x0"], np.float32)
  if len(ts) == 0 or len(ts) != x0.shape[0]:
    raise ValueError(f"a trajectory of {len(ts)} steps with {x0.shape[0]} images")
  images = ([phi] if phi is not None else []) + [x0[k] for k in range(len(ts))]
  titles = (["anchor phi"] if phi is not None else []) + [f"x0_hat, t={int(t)}" for t in ts]
  if output is not None:
    images.append(output)
    titles.append("output")
  return show_images(images, titles=titles, size=size)


def read_scalars(workdir: str, tags: Sequence[str] | None = None) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """The scalars a training run logged to TensorBoard in ``workdir``: ``{tag: (steps, values)}``, by step.

  Reads every ``events.out.tfevents.*`` file there (a resumed run writes several; a step logged twice keeps its last
  value). Scalars written as tensors (clu / TF2 summaries) and as classic scalars are both read. ``tags``: only
  these (missing ones are left out); default all.

  Raises:
    FileNotFoundError: no event file in ``workdir``.
  """
  from tensorboard.backend.event_processing import event_accumulator  # pylint: disable=import-outside-toplevel
  from tensorboard.util import tensor_util  # pylint: disable=import-outside-toplevel

  paths = sorted(glob.glob(os.path.join(os.path.expanduser(workdir), "events.out.tfevents.*")))
  if not paths:
    raise FileNotFoundError(f"no TensorBoard event files in {workdir}")
  found: dict[str, dict[int, float]] = {}
  for path in paths:
    acc = event_accumulator.EventAccumulator(path, size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    available = acc.Tags()
    for tag in available.get("tensors", []):
      if tags is None or tag in tags:
        for ev in acc.Tensors(tag):
          value = tensor_util.make_ndarray(ev.tensor_proto)
          if value.size == 1 and np.issubdtype(value.dtype, np.number):
            found.setdefault(tag, {})[int(ev.step)] = float(value.reshape(()))
    for tag in available.get("scalars", []):
      if tags is None or tag in tags:
        for ev in acc.Scalars(tag):
          found.setdefault(tag, {})[int(ev.step)] = float(ev.value)
  out = {}
  for tag in (tags if tags is not None else sorted(found)):
    if tag in found:
      steps = np.asarray(sorted(found[tag]), np.int64)
      out[tag] = (steps, np.asarray([found[tag][s] for s in steps], np.float64))
  return out


def plot_curves(runs: Mapping[str, Curves], tags: Sequence[str] | None = None, *, logy: Sequence[str] = (),
                size: tuple[float, float] = (4.0, 3.0)):
  """One panel per tag, one line per run: ``runs`` maps a run label to :func:`read_scalars`' output.

  ``tags``: the panels (default every tag some run has, sorted); ``logy``: tags drawn on a log scale.

  Raises:
    ValueError: no tag to plot.
  """
  if tags is None:
    tags = sorted({tag for curves in runs.values() for tag in curves})
  if not tags:
    raise ValueError("no curves to plot")
  fig, axes = _figure(1, len(tags), size)
  for ax, tag in zip(axes.flat, tags):
    for label, curves in runs.items():
      if tag in curves:
        steps, values = curves[tag]
        ax.plot(steps, values, marker="." if len(steps) < 30 else None, label=label)
    ax.set_title(tag, fontsize=9)
    ax.set_xlabel("step")
    if tag in logy:
      ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  return fig


def _normalised(a: np.ndarray, lo: float, hi: float) -> np.ndarray:
  return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def show_difference(reference: Any, candidate: Any, *, labels: Sequence[str] = ("reference", "candidate"),
                    size: float = 3.2):
  """``reference | candidate | |candidate - reference|``: two arrays of one shape and their difference map.

  The two are shown on one shared linear scale from their joint min to max (network outputs such as predicted
  noise are not images in [0, 1]); the difference is the maximum over channels of the absolute difference, with a
  colour bar, titled with its maximum.

  Raises:
    ValueError: shapes differ.
  """
  ref, cand = np.asarray(reference, np.float64), np.asarray(candidate, np.float64)
  if ref.shape != cand.shape:
    raise ValueError(f"shapes differ: {ref.shape} vs {cand.shape}")
  lo, hi = float(min(ref.min(), cand.min())), float(max(ref.max(), cand.max()))
  diff = np.abs(cand - ref)
  diff_map = diff.max(axis=-1) if diff.ndim == 3 else diff
  fig, axes = _figure(1, 3, (size, size * ref.shape[0] / ref.shape[1]))
  for ax, img, title in zip(axes.flat[:2], (ref, cand), labels):
    ax.imshow(to_display(_normalised(img, lo, hi)), interpolation="nearest")
    ax.set_title(f"{title}\n[{lo:.3g}, {hi:.3g}]", fontsize=9)
    ax.set_axis_off()
  ax = axes.flat[2]
  im = ax.imshow(diff_map, cmap="viridis", interpolation="nearest")
  ax.set_title(f"|difference| (max {float(diff.max()):.2e})", fontsize=9)
  ax.set_axis_off()
  fig.colorbar(im, ax=ax, shrink=0.8)
  return fig


def agreement_ratio(row: Any) -> float | None:
  """A cross-check row's error / tolerance (PASS iff <= 1), None for a skipped row.

  ``row`` has the fields of :class:`lliejax.interop.crosscheck.Row`: ``ratio`` when set, else the compared value
  (``max_abs`` for ``abs`` and ``exact``, ``rel`` for ``rel``) over ``tol`` (0 over a zero tolerance is 0).
  """
  if getattr(row, "skipped", False):
    return None
  if getattr(row, "ratio", None) is not None:
    return float(row.ratio)
  value = float(row.max_abs if row.metric in ("abs", "exact") else row.rel)
  if not np.isfinite(value):
    return math.inf
  if row.tol > 0:
    return value / float(row.tol)
  return 0.0 if value == 0 else math.inf


def plot_agreement(rows: Sequence[Any], *, floor: float = 1e-4, size: tuple[float, float] = (7.0, 0.28)):
  """Horizontal bars of error / tolerance per cross-check row (log scale; the dashed line at 1 is the limit).

  Exact matches (0) and skipped rows are labelled instead of drawn; ratios below ``floor`` are drawn at it;
  failures (> 1, or not finite: drawn at the right edge) are red. ``rows``:
  :func:`lliejax.interop.crosscheck.run_checks`' or any objects with those fields (:func:`agreement_ratio`).
  """
  if not rows:
    raise ValueError("no rows to plot")
  fig, axes = _figure(1, 1, (size[0], max(2.0, size[1] * len(rows) + 0.8)))
  ax = axes.flat[0]
  ratios = [agreement_ratio(r) for r in rows]
  cap = 10.0 * max([1.0] + [q for q in ratios if q is not None and np.isfinite(q)])
  y = np.arange(len(rows))[::-1]
  for yi, q in zip(y, ratios):
    if q is None or q == 0:
      ax.text(floor, yi, " skipped" if q is None else " exact (0)", va="center", fontsize=7,
              color="gray" if q is None else "tab:green")
      continue
    shown = cap if not np.isfinite(q) else max(q, floor)
    ax.barh(yi, shown - floor / 2, left=floor / 2, color="tab:red" if not q <= 1.0 else "tab:green", height=0.7)
  ax.set_xscale("log")
  ax.set_xlim(floor / 2, cap)
  ax.set_ylim(-0.6, len(rows) - 0.4)
  ax.axvline(1.0, ls="--", color="black", lw=1)
  ax.set_yticks(y, [r.component for r in rows], fontsize=7)
  ax.set_xlabel("error / tolerance (PASS <= 1)")
  return fig
