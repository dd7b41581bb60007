"""lliejax.viz (the notebooks' figures) and the data behind them (entropy.joint_histogram)."""
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from lliejax import viz
from lliejax.diffusion import irsde
from lliejax.interop.crosscheck import Row
from lliejax.losses import entropy

pytest.importorskip("matplotlib")


def _png(fig, tmp_path, name="fig.png"):
  """Render the figure to a PNG file and return its size (fails if matplotlib cannot draw it)."""
  path = tmp_path / name
  fig.savefig(path)
  assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
  return path.stat().st_size


def _image_axes(fig):
  return [ax for ax in fig.axes if ax.images]


def test_import_does_not_import_matplotlib():
  code = "import sys, lliejax.viz; assert 'matplotlib' not in sys.modules, 'matplotlib imported eagerly'"
  subprocess.run([sys.executable, "-c", code], check=True)


# ------------------------------------------------------------------------------------------------ images
def test_to_display_clips_and_squeezes():
  img = np.array([[[-0.5, 0.5, 1.5]]], np.float32)
  np.testing.assert_array_equal(viz.to_display(img), [[[0.0, 0.5, 1.0]]])
  assert viz.to_display(np.zeros((1, 4, 5, 3))).shape == (4, 5, 3)
  assert viz.to_display(np.zeros((4, 5, 1))).shape == (4, 5)
  assert viz.to_display(np.full((2, 2), np.nan)).max() == 0.0
  with pytest.raises(ValueError, match="image"):
    viz.to_display(np.zeros((4, 5, 2)))


def test_show_images_grid(tmp_path):
  imgs = [np.random.default_rng(i).uniform(size=(8, 12, 3)) for i in range(5)]
  fig = viz.show_images(imgs, titles=list("abcde"), ncols=3, suptitle="grid")
  assert len(fig.axes) == 6 and len(_image_axes(fig)) == 5
  assert [ax.get_title() for ax in _image_axes(fig)] == list("abcde")
  assert _png(fig, tmp_path) > 0
  with pytest.raises(ValueError, match="titles"):
    viz.show_images(imgs, titles=["a"])
  with pytest.raises(ValueError, match="at least one"):
    viz.show_images([])


def _result(names, value, psnr):
  images = [(n, (np.zeros((6, 8, 3)), np.full((6, 8, 3), value), np.ones((6, 8, 3)))) for n in names]
  return {"images": images, "per_image": [{"name": n, "psnr": psnr} for n in names]}


def test_show_triplets_and_comparison(tmp_path):
  res = _result(["b", "a"], 0.3, 12.345)
  fig = viz.show_triplets(res["images"])
  assert [ax.get_title() for ax in _image_axes(fig)] == ["b: LQ", "b: output", "b: GT", "a: LQ", "a: output", "a: GT"]
  fig = viz.show_comparison({"l1": res, "l1+kl": _result(["a", "b"], 0.6, 10.0)})
  titles = [ax.get_title() for ax in _image_axes(fig)]
  assert titles[:4] == ["b: LQ", "l1 (12.35 dB)", "l1+kl (10.00 dB)", "GT"] and len(titles) == 8
  # Matched by name, not by position: the second run's output for "b" is its own.
  assert float(_image_axes(fig)[2].images[0].get_array().mean()) == pytest.approx(0.6)
  _png(fig, tmp_path)
  with pytest.raises(ValueError, match="different images"):
    viz.show_comparison({"x": res, "y": _result(["c"], 0.1, 1.0)})
  with pytest.raises(ValueError, match="labels"):
    viz.show_triplets([("n", (np.zeros((2, 2, 3)),) * 2)])


# ------------------------------------------------------------------------------------------------ KDE histogram
@pytest.mark.parametrize("weights", [None, "asym"])
@pytest.mark.parametrize("norm", ["official", "mean"])
def test_joint_histogram_is_the_mean_local_density(weights, norm):
  """joint_histogram == kde_density averaged over channels, pixels and windows, laid out [i, j] (q = i + L*j)."""
  rng = np.random.default_rng(0)
  img = rng.uniform(0, 1, (2, 9, 11, 3)).astype(np.float32)
  w = rng.standard_normal((3, 3)).astype(np.float32) if weights == "asym" else None
  bins = 6
  dense = np.asarray(entropy.kde_density(img, weights=w, bins=bins, neighbour_norm=norm), np.float64)
  ref = dense.mean(axis=(2, 3, 4)).reshape(2, bins, bins).transpose(0, 2, 1)
  got = np.asarray(entropy.joint_histogram(img, weights=w, bins=bins, neighbour_norm=norm))
  assert got.shape == (2, bins, bins)
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-7 * np.abs(ref).max())
  single = np.asarray(entropy.joint_histogram(img[1], weights=w, bins=bins, neighbour_norm=norm))
  np.testing.assert_allclose(single, got[1], rtol=1e-6, atol=1e-9)


def test_joint_histogram_of_a_constant_image_peaks_at_its_value():
  img = np.full((16, 16, 3), 0.5, np.float32)  # bin (L - 1) * 0.5 = 2 for L = 5
  h = np.asarray(entropy.joint_histogram(img, bins=5, windows=(1,), neighbour_norm="mean"))
  assert np.unravel_index(np.argmax(h), h.shape) == (2, 2)
  assert np.all(h >= 0)
  # The official normalisation divides the neighbour sum by C * sum(w): neighbour values are a third of the mean.
  h_off = np.asarray(entropy.joint_histogram(img, bins=7, windows=(1,)))  # x = 3, neighbour = 1
  assert np.unravel_index(np.argmax(h_off), h_off.shape) == (3, 1)


def test_show_joint_histograms(tmp_path):
  hists = [np.asarray(entropy.joint_histogram(np.random.default_rng(i).uniform(size=(8, 8, 3)), bins=8))
           for i in range(2)]
  fig = viz.show_joint_histograms(hists, titles=["a", "b"])
  assert len(_image_axes(fig)) == 2 and _image_axes(fig)[0].get_xlabel() == "neighbour bin j"
  _png(fig, tmp_path)
  assert len(_image_axes(viz.show_joint_histograms(hists, log=False))) == 2
  with pytest.raises(ValueError, match=r"\(L, L\)"):
    viz.show_joint_histograms([np.zeros((3, 4))])


# ------------------------------------------------------------------------------------------------ SDE, sampler
def test_plot_sde_schedule(tmp_path):
  sde = irsde.make_sde(T=10)
  fig = viz.plot_sde_schedule(sde)
  lines = [ax.lines[0] for ax in fig.axes]
  assert len(lines) == 3 and all(len(line.get_xdata()) == 11 for line in lines)
  np.testing.assert_allclose(lines[2].get_ydata(), sde.sigma_bars)
  assert lines[1].get_ydata()[-1] == pytest.approx(sde.eps, rel=1e-4)  # exp(-cumsum_T dt) = eps by construction
  _png(fig, tmp_path)


def test_pick_states_and_trajectory(tmp_path):
  states = np.arange(8, dtype=np.float32)[:, None, None, None, None] * np.ones((8, 1, 4, 4, 3), np.float32) / 8
  picked, ts = viz.pick_states(states, num=4)
  assert ts == [7, 5, 2, 0] and len(picked) == 4
  np.testing.assert_allclose(picked[-1], states[-1])  # the final state x_0 is always shown
  assert viz.pick_states(states[:2], num=6)[1] == [1, 0]
  fig = viz.show_trajectory(states, num=3, lq=np.zeros((4, 4, 3)))
  assert [ax.get_title() for ax in _image_axes(fig)] == ["LQ (mu)", "x_7", "x_3", "x_0"]
  _png(fig, tmp_path)


def test_show_anchor_and_x0_trajectory(tmp_path):
  rng = np.random.default_rng(0)
  cond = rng.uniform(size=(1, 6, 8, 12)).astype(np.float32)
  cond[..., 9:] *= 0.01  # a faint gradient map is shown divided by its maximum
  fig = viz.show_anchor(cond, cond[0, ..., 3:6] + 0.5, gt=np.ones((6, 8, 3)))
  shown = _image_axes(fig)
  assert [ax.get_title() for ax in shown] == ["LQ", "HE(LQ)", "colour map", "gradient map / max", "anchor phi", "GT"]
  np.testing.assert_allclose(shown[3].images[0].get_array().max(), 1.0, rtol=1e-6)
  np.testing.assert_allclose(shown[0].images[0].get_array(), cond[0, ..., :3], rtol=1e-6)
  _png(fig, tmp_path)
  with pytest.raises(ValueError, match="12"):
    viz.show_anchor(cond[..., :9], cond[0, ..., :3])
  traj = {"t": np.array([7, 3, 0]), "x0": rng.uniform(size=(3, 1, 6, 8, 3))}
  fig = viz.show_x0_trajectory(traj, phi=np.zeros((6, 8, 3)), output=np.ones((1, 6, 8, 3)))
  assert [ax.get_title() for ax in _image_axes(fig)] == ["anchor phi", "x0_hat, t=7", "x0_hat, t=3", "x0_hat, t=0",
                                                         "output"]
  _png(fig, tmp_path, "traj.png")
  assert len(_image_axes(viz.show_x0_trajectory(traj))) == 3
  with pytest.raises(ValueError, match="trajectory"):
    viz.show_x0_trajectory({"t": np.array([1]), "x0": traj["x0"]})


# ------------------------------------------------------------------------------------------------ curves
def test_read_scalars_and_plot_curves(tmp_path):
  from clu import metric_writers

  run = tmp_path / "run"
  for steps in ((1, 2, 3), (3, 4)):  # a resumed run: a second event file, step 3 written again
    writer = metric_writers.create_default_writer(str(run))
    for s in steps:
      writer.write_scalars(s, {"loss": 1.0 / s + (steps[0] == 3), "grad_norm": float(s)})
    writer.close()
  curves = viz.read_scalars(str(run))
  assert sorted(curves) == ["grad_norm", "loss"]
  steps, values = curves["loss"]
  np.testing.assert_array_equal(steps, [1, 2, 3, 4])
  assert values[0] == pytest.approx(1.0) and values[-1] == pytest.approx(1.25)
  only = viz.read_scalars(str(run), ["loss", "missing"])
  assert list(only) == ["loss"]
  fig = viz.plot_curves({"a": curves, "b": only}, logy=["loss"])
  assert [ax.get_title() for ax in fig.axes] == ["grad_norm", "loss"]
  assert len(fig.axes[1].lines) == 2 and fig.axes[1].get_yscale() == "log"
  _png(fig, tmp_path)
  with pytest.raises(FileNotFoundError, match="event files"):
    viz.read_scalars(str(tmp_path / "nothing"))
  with pytest.raises(ValueError, match="no curves"):
    viz.plot_curves({})


# ------------------------------------------------------------------------------------------------ cross-check
def test_show_difference(tmp_path):
  a = np.random.default_rng(0).normal(size=(6, 10, 3))
  b = a.copy()
  b[2, 3, 1] += 0.25
  fig = viz.show_difference(a, b, labels=("torch", "lliejax"))
  assert "2.50e-01" in fig.axes[2].get_title()
  diff = fig.axes[2].images[0].get_array()
  assert diff.shape == (6, 10) and float(diff[2, 3]) == pytest.approx(0.25)
  _png(fig, tmp_path)
  with pytest.raises(ValueError, match="shapes differ"):
    viz.show_difference(a, b[:, :5])


def test_agreement_ratio_and_plot(tmp_path):
  rows = [Row("abs pass", 5e-6, 1e-7, 1e-5, "abs"), Row("rel fail", 1.0, 3e-6, 1e-6, "rel"),
          Row("exact", 0.0, 0.0, 0.0, "exact"), Row("exact fail", 1e-3, 0.0, 0.0, "exact"),
          Row("cond", 1.0, 1.0, 1e-6, "rel", ratio=0.5), Row("nan", math.nan, math.nan, 1e-6, "rel"),
          Row("skip", math.nan, math.nan, 1e-6, "rel", skipped=True)]
  got = [viz.agreement_ratio(r) for r in rows]
  assert got[:5] == [pytest.approx(0.5), pytest.approx(3.0), 0.0, math.inf, 0.5]
  assert got[5] == math.inf and got[6] is None
  # Same verdict as the rows themselves.
  assert [q is None or q <= 1 for q in got] == [r.passed for r in rows]
  fig = viz.plot_agreement(rows)
  bars = fig.axes[0].patches
  assert len(bars) == 5  # none for the exact match and the skipped row: they are labelled
  assert sorted(t.get_text().strip() for t in fig.axes[0].texts) == ["exact (0)", "skipped"]
  from matplotlib.colors import to_rgba
  red = [b for b in bars if b.get_facecolor() == to_rgba("tab:red")]
  assert len(red) == 3  # rel fail, exact fail, nan
  _png(fig, tmp_path)
  with pytest.raises(ValueError, match="no rows"):
    viz.plot_agreement([])


def test_module_is_documented():
  public = [n for n in dir(viz) if not n.startswith("_") and callable(getattr(viz, n))
            and getattr(getattr(viz, n), "__module__", "") == viz.__name__]
  assert public and all(getattr(viz, n).__doc__ for n in public), public
  assert os.path.basename(viz.__file__) == "viz.py"
