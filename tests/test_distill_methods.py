"""The distilled students of any lliejax teacher (issue 14): progressive distillation's closed-form target (exact:
the student's single step lands on the teacher's two steps; ReDDiT's trajectory target on the DDPM grid), the
stage schedule, the ``consistency_student`` / ``progressive_student`` configs and teacher checks, the CD method's
loss against :func:`lliejax.distill.consistency.loss`, and per teacher kind (tiny ``reddit_teacher``, tiny
``entropy_sde``) and distiller: ``lliejax distill`` of one tiny stage, its export enhanced by
:func:`lliejax.inference.load` at its step count, the generic jitted train step (finite loss, the student moves, the
teacher neither changes nor enters the optimiser state) and the student's sampler as one program.

ReDDiT x trajectory is ``reddit_student``, tested end to end in ``tests/test_distill.py``; here only its routing."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import ml_collections
import pytest

from lliejax import checkpoint, config_utils, distill, inference, methods, optim, parallel
from lliejax import state as state_lib
from lliejax import train
from lliejax.diffusion import irsde
from lliejax.diffusion import reddit as rd
from lliejax.distill import consistency as cm
from lliejax.distill import processes as pr
from lliejax.distill import progressive as pg
from lliejax.distill import trajectory as tr
from lliejax.methods import consistency_student as cs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHAPE = (3, 8, 8, 3)


def load(name: str, arg: str):
  return config_utils.load_config(os.path.join(REPO, "configs", f"{name}.py") + ":" + arg)


def stand_in_teacher(scale):
  """A smooth noise predictor of ``(x, cond, time)`` (time scaled to about [0, 1])."""
  return lambda x, y, t: (jnp.tanh(0.7 * x + 0.3 * y) * (0.5 + (t.astype(jnp.float32) * scale)[:, None, None, None])
                          + 0.1 * y)


def images(seed=0, lo=0.0, hi=1.0):
  rng = np.random.default_rng(seed)
  x0 = rng.uniform(lo, hi, SHAPE).astype(np.float32)
  y = (lo + 0.3 * (rng.uniform(lo, hi, SHAPE) - lo)).astype(np.float32)
  return jnp.asarray(x0), jnp.asarray(y)


# ------------------------------------------------------------------------------------------------ progressive target
@pytest.mark.parametrize("teacher_solver", ["ddim", "euler"])
@pytest.mark.parametrize("big_t", [8, 100])
def test_progressive_target_is_exact_for_the_sde(teacher_solver, big_t):
  """The student's single 'ddim' step with the solved noise target lands on the teacher's two steps (to 1e-5), at
  every student step of the grid (one sample per step); ``x0_tgt`` is the ``x0`` estimate of that noise; the 'ddim'
  coefficient is the closed form ``e^{-Theta_s} (nu_s - nu_t)``."""
  sde = irsde.make_sde(T=big_t)
  steps = 8 if big_t == 8 else 64
  teacher = pr.MeanReverting.from_sde(sde, steps + 1, solver=teacher_solver)
  student = pg.student_process(teacher)
  np.testing.assert_array_equal(student.ts, teacher.ts[::2])
  pg.check_nested(teacher, student)
  m = steps // 2
  rng = np.random.default_rng(0)
  x0 = jnp.asarray(rng.uniform(0, 1, (m, 8, 8, 3)), jnp.float32)
  y = 0.3 * jnp.asarray(rng.uniform(0, 1, (m, 8, 8, 3)), jnp.float32)
  fn = stand_in_teacher(1.0 / big_t)
  k = jnp.arange(m, dtype=jnp.int32)  # sample i takes the student step s_{i+1} -> s_i
  tg = pg.targets(teacher, student, fn, x0, y, pg.Draw(k, jax.random.normal(jax.random.key(1), x0.shape)))
  _, end = pg.teacher_steps(teacher, fn, tg["x_t"], y, k)
  np.testing.assert_allclose(end, tg["x_end"], rtol=1e-6, atol=1e-6)
  land = student.ode_step(tg["x_t"], y, tg["eps_tgt"], k)
  np.testing.assert_allclose(land, tg["x_end"], rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(tg["x0_tgt"], student.predict_x0(tg["x_t"], y, k + 1, tg["eps_tgt"]), rtol=1e-6,
                             atol=1e-6)
  nu, theta = student.noise_levels(), student.theta_integral()
  b = np.exp(-theta[:-1]) * (nu[:-1] - nu[1:])
  np.testing.assert_allclose(np.asarray(tg["coefficient"])[:, 0, 0, 0], b, rtol=2e-4)
  with pytest.raises(ValueError, match="even number"):
    pg.student_process(pr.MeanReverting.from_sde(sde, 4))


def test_progressive_target_is_reddits_trajectory_target_on_the_ddpm_grid():
  """On the gamma-DDPM at grid levels (no RATR), the generic target equals ReDDiT's ``trajectory.targets``."""
  sched = rd.make_schedule(4, 4)
  teacher = pr.DDPMGamma.from_schedule(sched)  # the 4-step teacher's 5 DDIM levels
  student = pg.student_process(teacher)
  np.testing.assert_array_equal(student.gammas, teacher.gammas[::2])
  x0, y = images(lo=-1.0)
  fn = stand_in_teacher(1.0)
  noise = jax.random.normal(jax.random.key(3), SHAPE)
  for k in range(2):
    tg = pg.targets(teacher, student, fn, x0, y, pg.Draw(jnp.full((SHAPE[0],), k, jnp.int32), noise))
    g = [jnp.full((SHAPE[0],), teacher.gammas[i], jnp.float32) for i in (2 * k + 2, 2 * k + 1, 2 * k)]
    ref = tr.targets(fn, x0, y, tr.Draw(jnp.asarray(2 * k + 2), *g, noise))
    np.testing.assert_allclose(tg["x_t"], ref["z_t"], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(tg["x0_tgt"], ref["x_tgt"], rtol=1e-4, atol=2e-5)
    np.testing.assert_allclose(tg["eps_tgt"], ref["eps_tgt"], rtol=1e-4, atol=2e-5)
    land = student.ode_step(tg["x_t"], y, tg["eps_tgt"], k)
    np.testing.assert_allclose(land, tg["x_end"], rtol=1e-5, atol=1e-5)


def test_progressive_loss_gradients_and_weightings():
  teacher = pr.MeanReverting.from_sde(irsde.make_sde(T=8), 9)
  student = pg.student_process(teacher)
  x0, y = images(seed=1)
  batch = {"x0": x0, "cond": y}

  def student_fn(p):
    return lambda x, c, t: p["a"] * jnp.tanh(p["b"] * x + 0.2 * c) * (t.astype(jnp.float32) / 8)[:, None, None,
                                                                                                 None] + p["c"] * x

  def teacher_fn(tp):
    return lambda x, c, t: jnp.tanh(tp["w"] * x + 0.3 * c) * (0.5 + (t.astype(jnp.float32) / 8)[:, None, None, None])

  sp, tp = {"a": 0.9, "b": 0.6, "c": 0.05}, {"w": 0.7}
  values = {}
  for weighting in pg.WEIGHTINGS:
    opts = pg.Options(weighting=weighting)
    f = lambda sp, tp: pg.loss(teacher, student, student_fn(sp), teacher_fn(tp), batch, jax.random.key(2),
                               options=opts)
    (value, aux), (gs, gt) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(sp, tp)
    assert np.isfinite(float(value)) and float(gt["w"]) == 0.0 and all(abs(float(v)) > 0 for v in gs.values())
    values[weighting] = (float(value), float(aux["x0_mse"]), float(aux["eps_mse"]))
  t_snr, x0_mse, eps_mse = values["truncated_snr"]
  assert values["x0"][0] == pytest.approx(x0_mse, rel=1e-5) and values["eps"][0] == pytest.approx(eps_mse, rel=1e-5)
  assert max(x0_mse, eps_mse) <= t_snr * (1 + 1e-5)
  extra = pg.loss(teacher, student, student_fn(sp), teacher_fn(tp), batch, jax.random.key(2),
                  x0_loss=lambda a, b: jnp.float32(0.25))
  assert float(extra[0]) == pytest.approx(t_snr + 0.25, rel=1e-5) and float(extra[1]["extra"]) == 0.25
  # ReDDiT's ground-truth term (REFERENCE §3.4 step 7), transcribed directly from the drawn noise
  with_gt, aux_gt = pg.loss(teacher, student, student_fn(sp), teacher_fn(tp), batch, jax.random.key(2),
                            options=pg.Options(w_gt=0.3))
  d = pg.draw(student, jax.random.key(2), SHAPE)
  x_t = teacher.sde.forward_sample(x0, y, jnp.asarray(student.ts, jnp.int32)[d.k + 1], d.noise)
  eps_s = student_fn(sp)(x_t, y, jnp.asarray(student.ts, jnp.int32)[d.k + 1])
  e_th = np.exp(teacher.sde.thetas_cumsum[student.ts] * teacher.sde.dt)[np.asarray(d.k) + 1][:, None, None, None]
  sb = np.asarray(teacher.sde.sigma_bars)[student.ts][np.asarray(d.k) + 1][:, None, None, None]
  x0_s = (np.asarray(x_t) - np.asarray(y) - sb * np.asarray(eps_s)) * e_th + np.asarray(y)
  per = np.maximum(np.mean((np.asarray(x0) - x0_s) ** 2, axis=(1, 2, 3)),
                   np.mean((np.asarray(d.noise) - np.asarray(eps_s)) ** 2, axis=(1, 2, 3)))
  assert float(aux_gt["gt"]) == pytest.approx(float(per.mean()), rel=1e-4)
  assert float(with_gt) == pytest.approx(t_snr + 0.3 * per.mean(), rel=1e-4)
  with pytest.raises(ValueError, match="w_gt"):
    pg.Options(w_gt=-1.0)
  with pytest.raises(ValueError, match="k must be"):
    pg.draw(student, jax.random.key(0), SHAPE, options=pg.Options(k=4))
  with pytest.raises(ValueError, match="not every other point"):
    pg.check_nested(teacher, pr.MeanReverting.from_sde(irsde.make_sde(T=8), 4))


def test_stage_schedule():
  """The first teacher grid is ``final * 2^m <= T``; grids of ``S`` and ``2S`` steps always nest."""
  assert [pg.first_teacher_steps(100, f) for f in (4, 2, 25, 3, 50, 1)] == [64, 64, 100, 96, 100, 64]
  assert pg.first_teacher_steps(8, 4) == 8 and pg.first_teacher_steps(16, 2) == 16
  assert [pg.first_teacher_steps(100, 4, g) for g in (8, 16, 32, 64)] == [8, 16, 32, 64]
  for bad_grid in (4, 12, 128):
    with pytest.raises(ValueError, match="first_grid"):
      pg.first_teacher_steps(100, 4, bad_grid)
  for bad in ((100, 51), (8, 0), (1, 1)):
    with pytest.raises(ValueError):
      pg.first_teacher_steps(*bad)
  for size in (9, 101, 513, 1001):
    for s in range(1, (size - 1) // 2 + 1):
      np.testing.assert_array_equal(pr.grid_indices(size, 2 * s + 1)[::2], pr.grid_indices(size, s + 1))


# ------------------------------------------------------------------------------------------------ teacher exports
def random_export(tmp_path_factory, name: str, arg: str, method: str, seed: int):
  """A tiny export with random weights (drawn here: cheaper than compiling the init)."""
  config = load(name, arg)
  shapes = jax.eval_shape(methods.build(config).init_params, jax.random.key(0))
  rng = np.random.default_rng(seed)
  params = jax.tree.map(lambda s: (0.05 * rng.standard_normal(s.shape)).astype(np.float32), shapes)
  path = str(tmp_path_factory.mktemp(method) / "export")
  checkpoint.export(path, jax.device_get(params), config=config, method=method)
  return path, params


@pytest.fixture(scope="module")
def teachers(tmp_path_factory):
  """``{'reddit': (path, params), 'entropy_sde': (path, params)}``: a 4 x 4 ReDDiT teacher, a T = 8 Entropy-SDE."""
  return {"reddit": random_export(tmp_path_factory, "reddit_teacher", "tiny", "reddit_teacher", 11),
          "entropy_sde": random_export(tmp_path_factory, "entropy_sde", "tiny", "entropy_sde", 12)}


def test_configs_and_validation(teachers):
  for name, variants in (("consistency_student", ("lolv1_reddit", "lolv1_entropy_sde", "demo_reddit",
                                                  "demo_entropy_sde", "tiny")),
                         ("progressive_student", ("lolv1", "demo", "tiny")),
                         ("sampler_student", ("lolv1", "demo", "demo_reddit", "tiny"))):
    for variant in variants:
      config = load(name, variant)
      assert config.method == name and config.family in cs.FAMILIES
      assert config_utils.load_config(f"{name}:{variant}").to_dict() == config.to_dict()  # packaged
  bad = [("consistency_student", "tiny,family=ddpm", "config.family"),
         ("consistency_student", "tiny,sampling.steps=5", "config.sampling.steps"),  # the 4 x 4 grid has 5 points
         ("consistency_student", "tiny,num_scales=18", "config.process.num_scales"),  # table: 4 * 4 + 1
         ("consistency_student", "tiny,metric=l1", "config.distill.metric"),
         ("consistency_student", "tiny,target_decay=1", "config.distill.target_decay"),
         ("consistency_student", "tiny,distill.entropy.name=l1", "config.distill.entropy.name"),
         ("consistency_student", "tiny,distill.entropy.against=x", "config.distill.entropy.against"),
         ("consistency_student", "tiny,data.patch_size=15", "config.data.patch_size"),  # the family's check
         ("consistency_student", "demo_entropy_sde,process.solver=heun", "config.process.solver"),
         ("progressive_student", "tiny,sampling.steps=3", "config.sampling.steps"),  # a divisor of 4
         ("progressive_student", "tiny,process.steps=5", "config.process.steps"),  # 10 > T = 8
         ("progressive_student", "tiny,weighting=snr", "config.distill.weighting"),
         ("progressive_student", "tiny,distill.k=4", "config.distill.k"),
         ("progressive_student", "tiny,sde.T=0", "config.sde.T"),
         ("sampler_student", "tiny,sampling.steps=9", "config.sampling.steps"),  # T = 8
         ("sampler_student", "tiny,teacher_steps=0", "config.distill.teacher_steps"),
         ("sampler_student", "tiny,eta=1.5", "config.sampling.eta"),
         ("sampler_student", "tiny,metric=lpips", "config.distill.metric"),
         ("sampler_student", "tiny,w_gt=-1", "config.distill.w_gt")]
  for name, arg, key in bad:
    with pytest.raises(config_utils.ConfigError, match=key.replace(".", r"\.")):
      load(name, arg)
  config = load("consistency_student", "tiny")
  config.sde = load("progressive_student", "tiny").sde
  with pytest.raises(config_utils.ConfigError, match="config.sde: belongs to family 'entropy_sde'"):
    config_utils.validate_config(config)
  del config["sde"], config["diffusion"]
  with pytest.raises(config_utils.ConfigError, match="config.diffusion: family 'reddit' needs"):
    config_utils.validate_config(config)


def test_student_configs_and_teacher_checks(teachers):
  """``student_config`` takes the family, model and process from any teacher; the student starts from the
  teacher's parameters and freezes them; a student that does not match its teacher is refused."""
  for family, (path, params) in teachers.items():
    tconf = checkpoint.read_export_info(path)["config"]
    for name in ("consistency_student", "progressive_student", "sampler_student"):
      base = load(name, "tiny")
      config = cs.student_config(base, path)
      config_utils.validate_config(config)
      section = cs.FAMILIES[family].section
      assert config.family == family and config.model.to_dict() == tconf["model"]
      assert set(config) & {"diffusion", "sde"} == {section} and config.distill.teacher == os.path.abspath(path)
      method = methods.build(config)
      for a, b in zip(jax.tree.leaves(method.init_params(None)), jax.tree.leaves(params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
      assert set(method.init_frozen(None)) == {"teacher"} and method.inference_frozen({"teacher": 1}) == {}
  lp = methods.build(cs.student_config(load("consistency_student", "tiny,metric=lpips"), teachers["reddit"][0]))
  assert set(lp.init_frozen(None)) == {"teacher", "lpips"}
  cd = methods.build(cs.student_config(load("consistency_student", "tiny"), teachers["entropy_sde"][0]))
  assert isinstance(cd.process, pr.MeanReverting) and cd.process.num_scales == 9  # every step of T = 8
  assert set(cd.ema_rules()) == {"ema", "target"}
  assert set(methods.build(load("consistency_student", "tiny,target_decay=0")).ema_rules()) == {"ema"}
  rd_cd = methods.build(cs.student_config(load("consistency_student", "tiny"), teachers["reddit"][0]))
  np.testing.assert_array_equal(rd_cd.process.gammas, rd.make_schedule(4, 4).gamma_prev[::4])  # its DDIM levels
  # Mismatches: a config of the other family, another model, another process, no teacher, a wrong teacher method.
  with pytest.raises(ValueError, match="family 'entropy_sde'"):
    methods.build(load("consistency_student", f"tiny,teacher={teachers['entropy_sde'][0]}")).init_frozen(None)
  with pytest.raises(ValueError, match="differs from the student"):
    c = cs.student_config(load("consistency_student", "tiny"), teachers["reddit"][0])
    c.model.res_blocks = 2
    methods.build(c).init_params(None)
  with pytest.raises(ValueError, match=r"diffusion.time_scale=4 differs"):
    c = cs.student_config(load("consistency_student", "tiny"), teachers["reddit"][0])
    c.diffusion.time_scale = 8
    methods.build(c).init_frozen(None)
  with pytest.raises(ValueError, match="names no teacher"):
    methods.build(load("progressive_student", "tiny")).init_frozen(None)
  with pytest.raises(ValueError, match="not a diffusion teacher"):
    cs.family_of_export({"method": "anlightendiff", "config": {}}, "x")


def test_default_configs_and_routing(teachers, tmp_path):
  """``lliejax distill`` without ``--config``: the student config from the teacher's method and dataset; the
  distiller routes a config to its driver (training stubbed out)."""
  red, ent = teachers["reddit"][0], teachers["entropy_sde"][0]
  assert distill.default_config(red, "trajectory") == "reddit_student:demo"
  assert distill.default_config(ent, "trajectory") == "progressive_student:demo"
  assert distill.default_config(red, "consistency") == "consistency_student:demo_reddit"
  assert distill.default_config(ent, "consistency") == "consistency_student:demo_entropy_sde"
  assert distill.default_config(ent, "sampler") == "sampler_student:demo"
  assert distill.default_config(red, "sampler") == "sampler_student:demo_reddit"
  for spec in ("reddit_student:demo", "progressive_student:demo", "consistency_student:demo_reddit",
               "consistency_student:demo_entropy_sde", "sampler_student:demo", "sampler_student:demo_reddit"):
    config_utils.load_config(spec)
  seen = []

  def fake_train(config, workdir):
    method = methods.build(config)
    method.init_frozen(None)  # the checks against the stage's teacher
    seen.append((config.method, config.family if "family" in config else "reddit", config.sampling.steps))
    checkpoint.export(os.path.join(workdir, "export"), jax.device_get(method.init_params(None)), config=config,
                      method=method.name)

  out = distill.run(load("reddit_student", "tiny"), red, str(tmp_path / "a"), distiller="trajectory", steps=2,
                    train_fn=fake_train)
  assert out == [str(tmp_path / "a" / "2step" / "export")] and seen[-1] == ("reddit_student", "reddit", 2)
  out = distill.run(load("progressive_student", "tiny"), ent, str(tmp_path / "b"), distiller="trajectory", steps=2,
                    train_fn=fake_train)  # T = 8: the 8-step grid -> 4 -> 2
  assert out == [str(tmp_path / "b" / f"{s}step" / "export") for s in (4, 2)]
  assert seen[-2:] == [("progressive_student", "entropy_sde", 4), ("progressive_student", "entropy_sde", 2)]
  info = checkpoint.read_export_info(out[1])
  assert info["config"]["process"]["teacher_solver"] == "ddim" and info["config"]["distill"]["teacher"] == out[0]
  out = distill.run(load("consistency_student", "tiny"), ent, str(tmp_path / "c"), distiller="consistency",
                    steps=3, train_fn=fake_train)
  assert out == [str(tmp_path / "c" / "3step" / "export")] and seen[-1] == ("consistency_student", "entropy_sde", 3)
  out = distill.run(load("sampler_student", "tiny"), ent, str(tmp_path / "g"), distiller="sampler", steps=3,
                    train_fn=fake_train)
  assert out == [str(tmp_path / "g" / "3step" / "export")] and seen[-1] == ("sampler_student", "entropy_sde", 3)
  with pytest.raises(ValueError, match="--distiller sampler trains sampler_student"):
    distill.run(load("consistency_student", "tiny"), ent, str(tmp_path / "h"), distiller="sampler")
  with pytest.raises(ValueError, match="--distiller consistency trains consistency_student"):
    distill.run(load("progressive_student", "tiny"), ent, str(tmp_path / "d"), distiller="consistency")
  with pytest.raises(ValueError, match="no student of 5 step"):
    distill.run(load("progressive_student", "tiny"), ent, str(tmp_path / "e"), steps=5, train_fn=fake_train)
  with pytest.raises(config_utils.ConfigError, match="config.sampling.steps"):  # a 9-point grid: at most 8 steps
    distill.run(load("consistency_student", "tiny"), ent, str(tmp_path / "f"), distiller="consistency", steps=9,
                train_fn=fake_train)


# ------------------------------------------------------------------------------------------------ the CD method
def test_consistency_method_loss_is_the_library_loss(teachers):
  """The method's loss is :func:`lliejax.distill.consistency.loss` (the same draws from the same key, the target EMA
  as ``theta-``) plus ``weight * KL`` of the student's estimate vs the GT when the entropy term is on."""
  path, _ = teachers["entropy_sde"]
  method = methods.build(cs.student_config(load("consistency_student", "tiny,entropy_weight=0.5,"
                                                "distill.entropy.bins=8"), path))
  rng = np.random.default_rng(4)
  gt = rng.random((2, 16, 16, 3)).astype(np.float32)
  batch = {"gt": jnp.asarray(gt), "lq": jnp.asarray(0.2 * gt)}
  frozen = method.init_frozen(None)
  student = jax.tree.map(lambda p: p * 1.01, frozen["teacher"])
  target = jax.tree.map(lambda p: p * 0.99, frozen["teacher"])
  key = jax.random.key(5)

  @jax.jit
  def both(student, target):
    mine = method.loss(student, frozen, batch, key, ema={"ema": student, "target": target}, step=0)
    lib = cm.loss(method.process, method.net_fn(student), method.net_fn(frozen["teacher"]),
                  {"x0": batch["gt"], "cond": batch["lq"]}, jax.random.split(key)[0],
                  target_fn=method.net_fn(target), options=method.options())
    return mine, lib

  (total, aux), (lib, lib_aux) = both(student, target)
  assert float(aux["entropy"]) > 0 and set(lib_aux) < set(aux)
  np.testing.assert_allclose(float(total) - float(aux["entropy"]), float(lib), rtol=1e-5)
  for k in lib_aux:
    np.testing.assert_allclose(float(aux[k]), float(lib_aux[k]), rtol=1e-6)
  # The progressive student's entropy term: on its x0 estimate, against the distillation target here.
  pd = methods.build(cs.student_config(load("progressive_student", "tiny,entropy_weight=0.5,distill.entropy.bins=8,"
                                            "distill.entropy.against=target"), path))
  total, aux = jax.jit(lambda s: pd.loss(s, frozen, batch, key, ema={}, step=0))(student)
  assert float(aux["entropy"]) > 0
  np.testing.assert_allclose(float(total), float(aux["distill"]) + float(aux["entropy"]), rtol=1e-5)


# ------------------------------------------------------------------------------------------------ end to end
CASES = [("reddit", "consistency", "consistency_student", 2), ("entropy_sde", "consistency", "consistency_student", 2),
         ("entropy_sde", "trajectory", "progressive_student", 4), ("entropy_sde", "sampler", "sampler_student", 2),
         ("reddit", "sampler", "sampler_student", 2)]


@pytest.mark.parametrize("family,distiller,name,steps", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_distill_cli_train_step_and_sampler(teachers, tfds_dir, tmp_path, capsys, family, distiller, name, steps):
  """``lliejax distill`` of one tiny run; the export enhances at its step count; the generic jitted train step of the
  same config (finite loss, the student moves, the frozen teacher does not and is not in the optimiser state); the
  student's sampler is one program (one ``while``)."""
  from lliejax import cli
  path, teacher_params = teachers[family]
  work = tmp_path / "distill"
  args = ["distill", "--teacher", path, "--workdir", str(work), "--distiller", distiller, "--steps", str(steps),
          "--config", os.path.join(REPO, "configs", f"{name}.py") + ":tiny,steps=1", "--data-dir", tfds_dir]
  assert cli.main(args) == 0
  stage_dir = work / f"{steps}step"
  student = stage_dir / "export"
  assert f"student: {student}" in capsys.readouterr().out
  info = checkpoint.read_export_info(str(student))
  assert info["method"] == name and info["config"]["family"] == family
  assert info["config"]["sampling"]["steps"] == steps and info["config"]["distill"]["teacher"] == os.path.abspath(path)
  if name == "progressive_student":
    assert info["config"]["process"]["steps"] == steps  # the 8-step grid of T = 8 -> 4

  # The export on its own (no teacher), at its step count.
  enhancer = inference.load(str(student))
  assert enhancer.frozen == {} and enhancer.method.name == name
  lq = np.random.default_rng(1).random((13, 18, 3)).astype(np.float32)
  out = np.asarray(enhancer.enhance(lq, jax.random.key(0)))
  assert out.shape == lq.shape and np.all(np.isfinite(out))

  # The generic jitted train step of the same config (on all devices, as the CLI run: the compiled program is reused).
  config = checkpoint.load_workdir_config(str(stage_dir))
  method = methods.build(config)
  mesh = parallel.make_mesh()
  tx = optim.make_optimizer(config)
  repl = parallel.replicated(mesh)
  frozen = jax.device_put(method.init_frozen(jax.random.key(0)), repl)
  st = jax.device_put(state_lib.create(method, tx, jax.random.key(0)), repl)
  n = methods.count_params(st.params)
  assert methods.count_params(st.opt_state) <= 2 * n + 8  # Adam's moments of the student only
  assert methods.count_params(st.ema) == n * len(method.ema_rules())
  step = train.jit_train_step(train.make_train_step(method, tx, lr_schedule=optim.learning_rate_schedule(config)),
                              mesh)
  gt = np.random.default_rng(0).random((8, 16, 16, 3)).astype(np.float32)
  batch = parallel.global_batch({"gt": gt, "lq": gt * 0.2}, mesh)
  st, m = step(st, frozen, batch, jax.random.key(1))
  assert np.isfinite(float(m["loss"])) and bool(m["finite"])
  assert ("consistency" if name == "consistency_student" else "distill") in m
  moved = [not np.array_equal(np.asarray(a), np.asarray(b))
           for a, b in zip(jax.tree.leaves(st.params), jax.tree.leaves(teacher_params))]
  assert any(moved)
  for a, b in zip(jax.tree.leaves(frozen["teacher"]), jax.tree.leaves(teacher_params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  # The sampler: one lax.scan (one trace of the network) at the export's step count: the program has the same loops
  # for one step (the NAFNet has a while loop per block as its XLA:CPU fusion barrier; the UNet none).
  params = jax.device_get(enhancer.params)
  x = jnp.asarray(lq[None])

  def loops(steps):
    hlo = jax.jit(lambda p, x, k: method.sample(p, {}, x, k, steps=steps)).lower(params, x, jax.random.key(2))
    funcs = hlo.as_text().split("func.func ")[1:]
    main = [f for f in funcs if f.startswith("public @main")]
    return main[0].count("stablehlo.while"), sum(f.count("stablehlo.while") for f in funcs
                                                 if "threefry" not in f.split("(")[0])

  assert loops(None)[0] == 1 and loops(None) == loops(1)


def test_progressive_x0_parametrisation(teachers):
  """``distill.parametrization=x0``: the network's output ``o`` is the clean image's residual on the condition; the
  noise the student reports implies exactly ``x0 = cond + o`` at its time, for both families; the teacher keeps its
  own (noise) parametrisation."""
  rng = np.random.default_rng(3)
  for family, (path, params) in teachers.items():
    config = cs.student_config(load("progressive_student", "tiny,parametrization=x0"), path)
    config_utils.validate_config(config)
    method = methods.build(config)
    frozen = method.init_frozen(None)
    x = jnp.asarray(rng.standard_normal(SHAPE), jnp.float32)
    cond = jnp.asarray(rng.uniform(0, 1, SHAPE), jnp.float32)
    n = 1  # the student's grid point s_1
    time = method.student.net_time(n, SHAPE[0])
    o = method.net_fn(params)(x, cond, time)
    eps = method.student_fn(params)(x, cond, time)
    np.testing.assert_allclose(method.student.predict_x0(x, cond, n, eps), cond + o, rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(method.teacher_fn(frozen)(x, cond, time), o)  # a base teacher: its own network
  with pytest.raises(config_utils.ConfigError, match="parametrization"):
    config_utils.validate_config(load("progressive_student", "tiny,parametrization=v"))


# ------------------------------------------------------------------------------------------------ sampler distillation
def test_sampler_distillation_loss():
  """:func:`lliejax.distill.sampler.loss` against a direct transcription: the key split, the shared (or own) initial
  state, the teacher under ``stop_gradient``, the per-image metric, the ground-truth term; the gradient flows
  through every step of the student's sampler."""
  from lliejax.distill import sampler as sd
  x0, y = images(seed=2)
  batch = {"x0": x0, "cond": y}
  key = jax.random.key(7)

  def chain(p, steps):
    def run(cond, x, k):
      for kk in jax.random.split(k, steps):
        x = jnp.tanh(p["a"] * x + p["b"] * cond) + 0.1 * jax.random.normal(kk, x.shape)
      return x
    return run

  init = lambda k, cond: cond + 0.5 * jax.random.normal(k, cond.shape)
  sp, tp = {"a": 0.8, "b": 0.5}, {"a": 0.9, "b": 0.4}
  for opts in (sd.Options(), sd.Options(metric="l1", w_gt=0.3), sd.Options(shared_init=False)):
    f = lambda sp, tp: sd.loss(chain(sp, 2), chain(tp, 5), init, batch, key, options=opts)
    (total, aux), (g_s, g_t) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(sp, tp)
    k_init, k_t, k_s, k_own = jax.random.split(key, 4)
    target = chain(tp, 5)(y, init(k_init, y), k_t)
    out = chain(sp, 2)(y, init(k_init if opts.shared_init else k_own, y), k_s)
    d = (out - target) ** 2 if opts.metric == "l2" else jnp.abs(out - target)
    ref = float(jnp.mean(d))  # equal-size images: the batch mean of per-image means
    np.testing.assert_allclose(float(aux["distill"]), ref, rtol=1e-6)
    gt = float(jnp.mean(jnp.abs(out - x0))) if opts.w_gt else 0.0
    np.testing.assert_allclose(float(total), ref + opts.w_gt * gt, rtol=1e-6)
    np.testing.assert_allclose(float(aux["teacher_gt_mse"]), float(jnp.mean((target - x0) ** 2)), rtol=1e-6)
    assert all(float(v) == 0.0 for v in g_t.values())  # the teacher is a constant
    eps = 1e-3  # the student's gradient: central differences through both of its steps
    for name in sp:
      hi, lo = dict(sp), dict(sp)
      hi[name] += eps
      lo[name] -= eps
      fd = (float(f(hi, tp)[0]) - float(f(lo, tp)[0])) / (2 * eps)
      np.testing.assert_allclose(float(g_s[name]), fd, rtol=2e-2, atol=1e-4)
  with pytest.raises(ValueError, match="metric='lpips'"):
    sd.Options(metric="lpips")


def test_sampler_student_method(teachers):
  """The ``sampler_student`` method (Entropy-SDE, then ReDDiT): its teacher sampler with ``teacher_steps`` None is
  the official posterior sampler of all ``T`` steps (ReDDiT: the teacher's own DDIM); its loss is the library loss
  with the method's samplers, plus the entropy term when on; a student equal to its teacher, both deterministic
  (``eta = 0``) on the same grid from the shared ``x_T``, has loss 0 and no gradient."""
  from lliejax.distill import sampler as sd
  path, _ = teachers["entropy_sde"]
  method = methods.build(cs.student_config(load("sampler_student", "tiny,w_gt=0.5"), path))
  frozen = method.init_frozen(None)
  rng = np.random.default_rng(6)
  gt = rng.random((2, 16, 16, 3)).astype(np.float32)
  batch = {"gt": jnp.asarray(gt), "lq": jnp.asarray(0.2 * gt)}
  key = jax.random.key(8)
  x_init = method.base.sde.init_state(jax.random.key(9), batch["lq"])
  mine = jax.jit(lambda p: method.teacher_sampler(p)(batch["lq"], x_init, key))(frozen["teacher"])
  official = jax.jit(lambda p: irsde.sample(method.base.sde, method.net_fn(p), batch["lq"], key, x_init=x_init,
                                            mode="posterior"))(frozen["teacher"])
  np.testing.assert_allclose(np.asarray(mine), np.asarray(official), rtol=1e-5, atol=1e-5)
  student = jax.tree.map(lambda p: p * 1.02, frozen["teacher"])

  @jax.jit
  def both(student):
    ours = method.loss(student, frozen, batch, key, ema={}, step=0)
    lib = sd.loss(method.student_sampler(student), method.teacher_sampler(frozen["teacher"]),
                  method.base.sde.init_state, {"x0": batch["gt"], "cond": batch["lq"]}, jax.random.split(key)[0],
                  options=method.options())
    return ours, lib

  (total, aux), (lib, lib_aux) = both(student)
  assert float(aux["gt"]) > 0 and float(aux["distill"]) > 0
  np.testing.assert_allclose(float(total), float(lib), rtol=1e-6)
  np.testing.assert_allclose(float(total), float(aux["distill"]) + 0.5 * float(aux["gt"]), rtol=1e-6)
  same = methods.build(cs.student_config(load("sampler_student", "tiny,eta=0,teacher_eta=0,teacher_steps=2"), path))
  zero, zero_aux = jax.jit(lambda p: same.loss(p, frozen, batch, key, ema={}, step=0))(frozen["teacher"])
  # 0 up to float rounding: the student's steps are unrolled, the teacher's scanned (the same operations)
  assert float(zero) < 1e-9
  assert float(zero_aux["student_gt_mse"]) == pytest.approx(float(zero_aux["teacher_gt_mse"]), rel=1e-5)
  grad = jax.jit(jax.grad(lambda p: same.loss(p, frozen, batch, key, ema={}, step=0)[0]))
  size = lambda g: max(float(jnp.max(jnp.abs(v))) for v in jax.tree.leaves(g))
  assert size(grad(frozen["teacher"])) < 1e-4 * size(grad(student))  # (0 up to the two programs' rounding)
  with pytest.raises(ValueError, match="steps must be in 1..8"):
    method.sample(frozen["teacher"], {}, batch["lq"], key, steps=9)
  ent = methods.build(cs.student_config(load("sampler_student", "tiny,entropy_weight=0.5,distill.entropy.bins=8"),
                                        path))
  total, aux = jax.jit(lambda p: ent.loss(p, frozen, batch, key, ema={}, step=0))(student)
  assert float(aux["entropy"]) > 0  # the term on the student's sample, added to the distillation loss
  np.testing.assert_allclose(float(total), float(aux["distill"]) + float(aux["entropy"]), rtol=1e-6)

  # ReDDiT's family: the target is the teacher's own DDIM sample (its 4 steps of the 4 x 4 tiny grid, from N(0, I) in
  # [-1, 1]); the student's 2-step DDIM with the teacher's weights is the teacher at stride 2 (the same program as
  # the teacher method's sampler).
  rpath, _ = teachers["reddit"]
  red = methods.build(cs.student_config(load("sampler_student", "tiny"), rpath))
  teacher = methods.build(ml_collections.ConfigDict(checkpoint.read_export_info(rpath)["config"]))
  rfrozen = red.init_frozen(None)
  mine = jax.jit(lambda p: red.sample(p, {}, batch["lq"], key))(rfrozen["teacher"])
  theirs = jax.jit(lambda p: teacher.sample(p, {}, batch["lq"], key, steps=2))(rfrozen["teacher"])
  np.testing.assert_allclose(np.asarray(mine), np.asarray(theirs), rtol=1e-6, atol=1e-6)
  x_init = red.init_state(jax.random.key(9), batch["lq"])
  target = jax.jit(lambda p: red.teacher_sampler(p)(batch["lq"] * 2 - 1, x_init, key))(rfrozen["teacher"])
  full = jax.jit(lambda p: rd.ddim_sample(red.base.schedule, red.net_fn(p), batch["lq"] * 2 - 1, None, stride=1,
                                          x_init=x_init))(rfrozen["teacher"])
  np.testing.assert_array_equal(np.asarray(target), np.asarray(full))
  same = methods.build(cs.student_config(load("sampler_student", "tiny,teacher_steps=2"), rpath))
  zero, _ = jax.jit(lambda p: same.loss(p, rfrozen, batch, key, ema={}, step=0))(rfrozen["teacher"])
  assert float(zero) < 1e-12  # 0 up to the two scans' float rounding (differences ~1e-8 on values of ~1)
  with pytest.raises(config_utils.ConfigError, match="must divide diffusion.num_timesteps=4"):
    config_utils.validate_config(cs.student_config(load("sampler_student", "tiny,sampling.steps=3"), rpath))
