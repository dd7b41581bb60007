"""ReDDiT trajectory distillation (REFERENCE §3.4-3.5): the loss against a direct numpy transcription of the official
``GaussianDiffusion.loss`` (both variants, the released one at the t = 2 wrap-around), gradients reaching the
student only, the official LambdaLR, the ``reddit_student`` method through the generic train step with a tiny
teacher export, its sampler as one program, and the stage chaining."""
import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lliejax import checkpoint, config_utils, inference, methods, metrics, optim, parallel, state as state_lib, train
from lliejax.diffusion import reddit as rd
from lliejax.distill import trajectory as tr

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load(name: str, arg: str):
  return config_utils.load_config(os.path.join(REPO, "configs", f"{name}.py") + ":" + arg)


# ------------------------------------------------------------------------------------------------ stand-in networks
def teacher_np(x, y, g):
  return np.tanh(0.7 * x + 0.3 * y) * (0.5 + g.reshape(-1, 1, 1, 1)) + 0.1 * y


def student_np(p, x, y, g):
  return p["a"] * np.tanh(p["b"] * x + 0.2 * y) * g.reshape(-1, 1, 1, 1) + p["c"] * x


def teacher_jax(tp, x, y, g):
  return jnp.tanh(tp["w"] * x + 0.3 * y) * (0.5 + g[:, None, None, None]) + 0.1 * y


def student_jax(p, x, y, g):
  return p["a"] * jnp.tanh(p["b"] * x + 0.2 * y) * g[:, None, None, None] + p["c"] * x


STUDENT = {"a": 0.9, "b": 0.6, "c": 0.05}
TEACHER = {"w": 0.7}


# ------------------------------------------------------------------------------------------------ numpy transcription
def blur_np(img):
  """torchvision GaussianBlur(15, 3) on NHWC: the 2-D kernel (outer product), reflect padding 7, per channel."""
  x = np.linspace(-7, 7, 15)
  k = np.exp(-0.5 * (x / 3.0) ** 2)
  k = np.outer(k / k.sum(), k / k.sum())
  h, w = img.shape[1:3]
  pad = np.pad(img, ((0, 0), (7, 7), (7, 7), (0, 0)), mode="reflect")
  out = np.zeros_like(img)
  for i in range(15):
    for j in range(15):
      out += k[i, j] * pad[:, i:i + h, j:j + w]
  return out


def official_loss_np(gamma_prev, s, t, g_t, g_1, g_2, x0, y, noise, *, w_snr, w_gt, fixed=False):
  """``GaussianDiffusion.loss`` restated in float64 numpy for the given draws (``fixed``: the two corrections).

  Returns (total, per-term dict, x0_predicted) and checks the draws lie in the official intervals.
  """
  def idx(i):
    return max(i, 0) if fixed else i  # a negative Python index wraps around, as in the official code
  for g, k in ((g_t, 0), (g_1, 1), (g_2, 2)):
    lo, hi = gamma_prev[idx((t - k - 1) * s)], gamma_prev[idx((t - k) * s)]
    assert np.all((g >= min(lo, hi) - 1e-6) & (g <= max(lo, hi) + 1e-6)), (k, g, lo, hi)
  c = lambda g: np.asarray(g, np.float64).reshape(-1, 1, 1, 1)
  ct, c1, c2 = c(g_t), c(g_1), c(g_2)
  q_sample = lambda x, g, e: g * x + np.sqrt(1 - g**2) * e
  predict_start = lambda x, g, e: (1.0 / g) * x - np.sqrt(1.0 / g**2 - 1) * e
  predict_eps = lambda x, x_0, g: (1.0 / np.sqrt(1 - g**2)) * x - np.sqrt(1.0 / (1 - g**2) - 1) * x_0
  z_t = q_sample(x0, ct, noise)
  eps_rec = teacher_np(z_t, y, c(g_t))
  z_t1 = q_sample(predict_start(z_t, ct, eps_rec), c1, eps_rec)
  eps_rec_rec = teacher_np(z_t1, y, c(g_1))
  z_t2 = q_sample(predict_start(z_t1, c1, eps_rec_rec), c2, eps_rec_rec)
  frac = np.sqrt(1 - c2**2) / np.sqrt(1 - ct**2)
  if w_snr != 0:
    v = (y + 1) / 2 if fixed else y
    r = v / (v.max(axis=-1, keepdims=True) + 0.1)
    b = blur_np(r)
    gray = lambda a: a[..., 0:1] * 0.299 + a[..., 1:2] * 0.587 + a[..., 2:3] * 0.114
    refine = r - np.abs(gray(b) - gray(r))
    if fixed:
      refine = 2 * refine - 1
    z_ref = q_sample(refine, c2, eps_rec_rec)
    z_t2 = z_t2 + w_snr * (z_ref - z_t2)
  x_target = (z_t2 - frac * z_t) / (c2 - frac * ct)
  eps_target = predict_eps(z_t, x_target, ct)
  eps_pred = student_np(STUDENT, z_t, y, c(g_t))
  x_pred = predict_start(z_t, ct, eps_pred)
  mse = lambda a, b: np.mean(((a - b) ** 2).reshape(a.shape[0], -1), axis=-1)
  distill = np.mean(np.maximum(mse(x_pred, x_target), mse(eps_pred, eps_target)))
  gt = np.mean(np.maximum(mse(x0, x_pred), mse(noise, eps_pred)))
  return distill + w_gt * gt, {"distill": distill, "gt": gt, "denominator": (c2 - frac * ct).ravel()}, x_pred


def images(seed=0, b=3, h=16, w=16):
  """GT in [-1, 1]; a dark LQ (max_c far from -0.1, where the released RATR divides by ~0) with a bright patch."""
  rng = np.random.default_rng(seed)
  x0 = rng.uniform(-1, 1, (b, h, w, 3))
  y = -1 + 0.45 * rng.random((b, h, w, 3))
  y[:, 4:8, 5:11] = 0.3 + 0.7 * rng.random((b, 4, 6, 3))
  return x0, y


def run(options, key, x0, y, sched):
  fn = jax.jit(lambda sp, tp, batch, k: tr.loss(lambda x, c, g: student_jax(sp, x, c, g),
                                                lambda x, c, g: teacher_jax(tp, x, c, g), sched, batch, k,
                                                options=options))
  batch = {"x0": jnp.asarray(x0, jnp.float32), "cond": jnp.asarray(y, jnp.float32)}
  value, aux = fn(STUDENT, TEACHER, batch, key)
  d = tr.draw(sched, key, x0.shape, options=options)
  return float(value), aux, d


@pytest.mark.parametrize("variant", ["released", "fixed"])
def test_loss_matches_official_transcription(variant):
  sched = rd.make_schedule(16, 32)  # the first stage's teacher: t in {2, ..., 16}
  x0, y = images()
  fixed = variant == "fixed"
  cases = [(tr.Options(variant, w_snr=0.8, w_gt=1.0, t=2), jax.random.key(0)),  # the last student step
           (tr.Options(variant, w_snr=0.5, w_gt=0.1), jax.random.key(3)),  # t drawn from the key
           (tr.Options(variant, w_snr=0.0, w_gt=0.0, t=16), jax.random.key(4))]  # no RATR, first student step
  for options, key in cases:
    value, aux, d = run(options, key, x0, y, sched)
    t = int(d.t)
    assert float(aux["t"]) == t and t % 2 == 0 and 2 <= t <= 16
    g = [np.asarray(v, np.float64) for v in (d.gamma_t, d.gamma_t1, d.gamma_t2)]
    ref, terms, _ = official_loss_np(sched.gamma_prev, 32, t, *g, x0, y, np.asarray(d.noise, np.float64),
                                     w_snr=options.w_snr, w_gt=options.w_gt, fixed=fixed)
    np.testing.assert_allclose(value, ref, rtol=2e-4, err_msg=str(options))
    np.testing.assert_allclose(float(aux["distill"]), terms["distill"], rtol=2e-4)
    if options.w_gt:
      np.testing.assert_allclose(float(aux["gt"]), terms["gt"], rtol=2e-4)
    np.testing.assert_allclose(float(aux["min_abs_denominator"]), np.abs(terms["denominator"]).min(), rtol=1e-4)
    if t == 2 and not fixed:
      # The wrap-around: gamma_{t-2} ~ U(gamma_prev[-32], 1) = U(0.1011, 1), not a level near 1.
      assert g[2].min() < 0.9 and np.all(g[2] >= 0.10113722 - 1e-6)
    if t == 2 and fixed:
      np.testing.assert_array_equal(g[2], 1.0)  # the clean end of the trajectory
  assert int(run(cases[1][0], cases[1][1], x0, y, sched)[2].t) not in (2, 16)  # the drawn case is a third one


def test_variants_agree_away_from_the_defects():
  """Without RATR and for t > 2 both variants are the same computation."""
  sched = rd.make_schedule(4, 4)
  x0, y = images(seed=1)
  a = run(tr.Options("released", w_gt=0.5, t=4), jax.random.key(5), x0, y, sched)[0]
  b = run(tr.Options("fixed", w_gt=0.5, t=4), jax.random.key(5), x0, y, sched)[0]
  np.testing.assert_allclose(a, b, rtol=1e-6)  # the same up to the compiler's rounding
  a = run(tr.Options("released", w_snr=0.5, t=4), jax.random.key(5), x0, y, sched)[0]
  b = run(tr.Options("fixed", w_snr=0.5, t=4), jax.random.key(5), x0, y, sched)[0]
  assert a != b  # RATR on [-1, 1] values vs [0, 1] intensities
  with pytest.raises(ValueError, match="even"):
    run(tr.Options(t=3), jax.random.key(0), x0, y, sched)
  with pytest.raises(ValueError, match="variant"):
    tr.Options(variant="paper")


def test_blur_and_reflectance_prior():
  rng = np.random.default_rng(2)
  img = rng.random((2, 12, 20, 3))
  np.testing.assert_allclose(tr.gaussian_blur(jnp.asarray(img, jnp.float32)), blur_np(img), atol=2e-6)
  assert tr.gaussian_kernel1d().shape == (15,) and abs(float(tr.gaussian_kernel1d().sum()) - 1) < 1e-6
  # Released: dark pixels (max_c y < -0.1) give a "reflectance" above 1 (REFERENCE §6 item 23); fixed: in [-1, 1].
  y = jnp.full((1, 16, 16, 3), -0.8, jnp.float32)
  assert float(jnp.min(tr.reflectance_prior(y, variant="released"))) > 1.0
  fixed = tr.reflectance_prior(y, variant="fixed")
  np.testing.assert_allclose(fixed, 2 * (0.1 / 0.2) - 1, atol=1e-6)  # flat: no noise, r = 0.1 / (0.1 + 0.1)


@pytest.mark.slow
def test_lpips_term():
  """``w_lpips`` adds ``w_lpips * mean LPIPS-VGG(x0, x_s)`` on [-1, 1] images, with frozen parameters passed in."""
  from lliejax.losses import perceptual as lp_loss
  from lliejax.metrics import perceptual
  sched = rd.make_schedule(4, 4)
  x0, y = images(seed=3, b=2, h=32, w=32)
  opts = tr.Options("fixed", w_snr=0.4, t=4)
  params = lp_loss.lpips_frozen("vgg")
  batch = {"x0": jnp.asarray(x0, jnp.float32), "cond": jnp.asarray(y, jnp.float32)}
  fn = jax.jit(lambda lpp, o: tr.loss(lambda x, c, g: student_jax(STUDENT, x, c, g),
                                      lambda x, c, g: teacher_jax(TEACHER, x, c, g), sched, batch,
                                      jax.random.key(8), options=o, lpips_params=lpp), static_argnums=1)
  base, _ = fn(None, opts)
  value, aux = fn(params, dataclasses.replace(opts, w_lpips=0.6))
  d = tr.draw(sched, jax.random.key(8), x0.shape, options=opts)
  _, _, x_pred = official_loss_np(sched.gamma_prev, 4, 4, *(np.asarray(v, np.float64) for v in d[1:4]), x0, y,
                                  np.asarray(d.noise, np.float64), w_snr=0.4, w_gt=0.0, fixed=True)
  ref = float(np.mean(perceptual.lpips(x0.astype(np.float32), x_pred.astype(np.float32), net="vgg")))
  np.testing.assert_allclose(float(aux["lpips"]), ref, rtol=2e-3)
  np.testing.assert_allclose(float(value), float(base) + 0.6 * ref, rtol=2e-3)
  with pytest.raises(ValueError, match="lpips_params"):
    fn(None, dataclasses.replace(opts, w_lpips=0.6))


def test_gradient_reaches_the_student_only():
  sched = rd.make_schedule(4, 4)
  x0, y = images(seed=2)
  batch = {"x0": jnp.asarray(x0, jnp.float32), "cond": jnp.asarray(y, jnp.float32)}
  opts = tr.Options("released", w_snr=0.5, w_gt=0.3)

  def f(sp, tp):
    return tr.loss(lambda x, c, g: student_jax(sp, x, c, g), lambda x, c, g: teacher_jax(tp, x, c, g), sched,
                   batch, jax.random.key(7), options=opts)[0]

  gs, gt = jax.jit(jax.grad(f, argnums=(0, 1)))(STUDENT, TEACHER)
  assert all(abs(float(v)) > 0 for v in gs.values())
  assert float(gt["w"]) == 0.0


def test_official_lr_schedule():
  from lliejax import optim
  lr = optim.constant_then_linear(1e-4, 2000, 3000)
  np.testing.assert_allclose([float(lr(k)) for k in (0, 1999, 2000, 2001, 3500, 5000, 6000)],
                             [1e-4, 1e-4, 1e-4, 1e-4 * (1 - 1 / 3001), 1e-4 * (1 - 1500 / 3001), 1e-4 / 3001, 0.0],
                             rtol=1e-5)
  config = load("reddit_student", "tiny")
  assert config.optim.schedule == "linear"
  sched = optim.learning_rate_schedule(config)
  np.testing.assert_allclose(float(sched(0)), config.optim.learning_rate, rtol=1e-6)
  tx = optim.make_optimizer(config)
  params = {"w": jnp.ones(3)}
  updates, _ = tx.update({"w": jnp.full(3, 10.0)}, tx.init(params), params)
  assert np.all(np.isfinite(np.asarray(updates["w"])))


# ------------------------------------------------------------------------------------------------ the method
@pytest.fixture(scope="module")
def teacher_export(tmp_path_factory):
  """A tiny ``reddit_teacher`` export (4 x 4 grid, random weights: drawn here, cheaper than compiling the init)."""
  config = load("reddit_teacher", "tiny")
  shapes = jax.eval_shape(methods.build(config).init_params, jax.random.key(0))
  rng = np.random.default_rng(11)
  params = jax.tree.map(lambda s: (0.05 * rng.standard_normal(s.shape)).astype(np.float32), shapes)
  path = str(tmp_path_factory.mktemp("teacher") / "export")
  checkpoint.export(path, jax.device_get(params), config=config, method="reddit_teacher")
  return path, params


def test_student_config_and_teacher_checks(teacher_export, tmp_path):
  path, params = teacher_export
  config = load("reddit_student", f"tiny,teacher={path}")
  method = methods.build(config)
  assert (method.teacher_schedule.num_timesteps, method.teacher_schedule.time_scale) == (4, 4)
  init = method.init_params(jax.random.key(0))
  for a, b in zip(jax.tree.leaves(init), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))  # the student starts from the teacher
  assert set(method.init_frozen(jax.random.key(0))) == {"teacher"} and method.inference_frozen({"teacher": 1}) == {}
  assert "lpips" in methods.build(load("reddit_student", f"tiny,teacher={path},w_lpips=0.2")).init_frozen(None)
  # A student of another grid or UNet, no teacher, bad options.
  with pytest.raises(ValueError, match="needs 2 x 16"):
    methods.build(load("reddit_student", f"tiny,teacher={path},diffusion.num_timesteps=1,"
                       "diffusion.time_scale=32,sample_steps=1")).init_frozen(None)
  with pytest.raises(ValueError, match="differs from the student"):
    methods.build(load("reddit_student", f"tiny,teacher={path},model.res_blocks=2")).init_params(None)
  with pytest.raises(ValueError, match="names no teacher"):
    methods.build(load("reddit_student", "tiny")).init_frozen(None)
  with pytest.raises(config_utils.ConfigError, match="distill.variant"):
    load("reddit_student", "tiny,variant=paper")
  with pytest.raises(config_utils.ConfigError, match="diffusion.time_scale"):
    load("reddit_student", "tiny,diffusion.time_scale=7")
  with pytest.raises(config_utils.ConfigError, match="distill.t"):
    load("reddit_student", "tiny,distill.t=6")
  lol = load("reddit_student", "lolv1")
  assert (lol.diffusion.num_timesteps, lol.diffusion.time_scale, lol.num_train_steps) == (8, 64, 5000)
  assert methods.build(lol).teacher_schedule.N == 513


def test_student_train_step_and_sample(teacher_export):
  """One step of the generic jitted train step: finite loss, the student moves, the teacher (frozen, outside the
  optimiser state) does not; then the student's 2-step DDIM compiles as one program."""
  path, teacher_params = teacher_export
  config = load("reddit_student", f"tiny,teacher={path},w_snr=0.5,w_gt=0.5")
  method = methods.build(config)
  mesh = parallel.make_mesh(jax.devices()[:2])
  tx = optim.make_optimizer(config)
  repl = parallel.replicated(mesh)
  frozen = jax.device_put(method.init_frozen(jax.random.key(0)), repl)
  st = jax.device_put(state_lib.create(method, tx, jax.random.key(0)), repl)
  n = methods.count_params(st.params)
  assert methods.count_params(st.opt_state) <= 2 * n + 8  # Adam's moments of the student only
  step = train.jit_train_step(train.make_train_step(method, tx), mesh)
  rng = np.random.default_rng(0)
  gt = rng.random((8, 16, 16, 3)).astype(np.float32)
  batch = parallel.global_batch({"gt": gt, "lq": gt * 0.2}, mesh)
  st, m = step(st, frozen, batch, jax.random.key(1))
  assert {"loss", "distill", "gt", "t"} <= set(m) and np.isfinite(float(m["loss"])) and bool(m["finite"])
  moved = [not np.array_equal(np.asarray(a), np.asarray(b))
           for a, b in zip(jax.tree.leaves(st.params), jax.tree.leaves(teacher_params))]
  assert any(moved)
  for a, b in zip(jax.tree.leaves(frozen["teacher"]), jax.tree.leaves(teacher_params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  params = jax.device_get(st.export_params(method))
  lq = jnp.asarray(rng.random((1, 15, 17, 3)), jnp.float32)
  sample = jax.jit(lambda p, x, k: method.sample(p, {}, x, k))
  hlo = sample.lower(params, lq, jax.random.key(2)).as_text()
  funcs = hlo.split("func.func ")[1:]
  assert sum(f.count("stablehlo.while") for f in funcs if "threefry" not in f.split("(")[0]) == 1
  out = np.asarray(sample(params, lq, jax.random.key(2)))
  assert out.shape == (1, 15, 17, 3) and np.all(np.isfinite(out)) and out.min() >= 0 and out.max() <= 1


def test_distill_stages_chain(teacher_export, tmp_path):
  """4 x 4 teacher -> 2 x 8 student -> 1 x 16 student, each export the next teacher (training stubbed out)."""
  path, params = teacher_export
  seen = []

  def fake_train(config, workdir):
    method = methods.build(config)
    method.init_frozen(None)  # the grid and model checks against the stage's teacher
    seen.append((config.diffusion.num_timesteps, config.diffusion.time_scale, config.distill.teacher))
    checkpoint.export(os.path.join(workdir, "export"), jax.device_get(method.init_params(None)), config=config,
                      method=method.name)

  exports = tr.distill_stages(load("reddit_student", "tiny"), path, str(tmp_path), final_steps=1,
                              train_fn=fake_train)
  assert exports == [str(tmp_path / "2step" / "export"), str(tmp_path / "1step" / "export")]
  assert seen == [(2, 8, os.path.abspath(path)), (1, 16, exports[0])]
  assert checkpoint.load_export(exports[1]).method == "reddit_student"
  with pytest.raises(ValueError, match="no student of >= final_steps=2"):
    tr.distill_stages(load("reddit_student", "tiny"), exports[1], str(tmp_path / "x"), train_fn=fake_train)


@pytest.mark.slow
def test_cli_distill_one_stage(teacher_export, tfds_dir, tmp_path, capsys):
  """``lliejax distill``: a 4-step teacher export -> a 2-step student trained in WORKDIR/2step and exported there,
  with the student's grid and the teacher recorded; asking for a student the teacher cannot give is an error."""
  from lliejax import cli
  path, _ = teacher_export
  cfg = os.path.join(REPO, "configs", "reddit_student.py") + ":tiny"
  work = tmp_path / "distill"
  assert cli.main(["distill", "--teacher", path, "--workdir", str(work), "--config", cfg, "--steps", "2",
                   "--data-dir", tfds_dir]) == 0
  out = capsys.readouterr().out
  student = work / "2step" / "export"
  assert f"student: {student}" in out
  info = checkpoint.read_export_info(str(student))
  assert info["method"] == "reddit_student"
  assert (info["config"]["diffusion"]["num_timesteps"], info["config"]["diffusion"]["time_scale"]) == (2, 8)
  assert info["config"]["distill"]["teacher"] == os.path.abspath(path)
  assert cli.main(["distill", "--teacher", path, "--workdir", str(work), "--config", cfg, "--steps", "4",
                   "--data-dir", tfds_dir]) == 2  # a usage error
  assert "no student of >= final_steps=4" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ quality vs steps
def test_quality_vs_steps_rows_table_and_figures(teacher_export, tfds_dir, tmp_path):
  """:mod:`lliejax.distill.quality` on the tiny teacher at 4 and 2 DDIM steps over two demo test photos: the rows'
  PSNR is the mean of 10 log10(1 / MSE) of the rounded outputs, the table and both figures are written."""
  from PIL import Image
  from lliejax.distill import quality
  from lliejax.data import registry
  path, _ = teacher_export
  config = load("reddit_teacher", "tiny")
  config.data.data_dir = tfds_dir
  registry.prepare(config.data.name, data_dir=tfds_dir)
  protocol = metrics.conventions.get("standard").replace(metrics=("psnr", "ssim"))
  enh = inference.load(path)
  rows = quality.score_steps(enh, [None, 2], config.data, label="teacher", key=jax.random.key(0),
                             convention=protocol, max_images=2, keep_images=True)
  assert [(r["steps"], r["nfe"], r["num_images"]) for r in rows] == [(4, 4, 2), (2, 2, 2)]
  shapes = {im[1][0].shape for im in rows[0]["images"]}
  assert enh.compiled_programs == 2 * len(shapes)  # the timed pass reuses the scored pass's programs
  for r in rows:
    psnr = [10 * np.log10(1 / np.mean((np.round(out * 255) / 255 - np.round(gt * 255) / 255) ** 2))
            for _, (_, out, gt) in r["images"]]
    np.testing.assert_allclose(r["psnr"], np.mean(psnr), rtol=1e-5)
    assert r["seconds_per_image"] > 0 and r["psnr_input"] < 30
  assert not np.allclose(rows[0]["images"][0][1][1], rows[1]["images"][0][1][1])  # another stride, another image
  table = quality.steps_table(rows).splitlines()
  assert len(table) == 2 + 1 + 2 and table[2].startswith("| input") and "| teacher | 2 | 2 |" in table[4]
  png = quality.plot_quality_vs_steps(rows, str(tmp_path / "q.png"), metrics=("psnr", "ssim"))
  assert Image.open(png).size[0] > 500
  pic = Image.open(quality.steps_picture(rows, str(tmp_path / "s.png")))
  h, w = rows[0]["images"][0][1][0].shape[:2]
  scale = -(-160 // h)
  assert pic.size == (4 * w * scale, h * scale + 18)  # input, two rows, GT
  assert "images" not in quality.strip_images(rows)[0]
