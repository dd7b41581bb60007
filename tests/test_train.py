"""Training: the jitted step learns, is device-count invariant, follows the EMA/LR rules, stops on NaN and resumes."""
import math
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from lliejax import checkpoint, ema, losses, methods, optim, parallel, state as state_lib, train
from lliejax.configs.entropy_sde import get_config
from tiny_configs import tiny_train_config
from lliejax.diffusion import irsde


def _setup(config, mesh):
  method, tx = methods.build(config), optim.make_optimizer(config)
  state = jax.device_put(state_lib.create(method, tx, jax.random.key(0)), parallel.replicated(mesh))
  step = train.jit_train_step(train.make_train_step(method, tx), mesh)
  return method, state, lambda st, batch, key: step(st, {}, batch, key)


def _batch(seed=0, n=8, size=32):
  rng = np.random.default_rng(seed)
  gt = rng.random((n, size, size, 3)).astype(np.float32)
  return {"gt": gt, "lq": (gt * 0.15).astype(np.float32)}


def test_train_step_reduces_loss():
  config = get_config("tiny")
  config.optim.learning_rate = 5e-3
  config.num_train_steps = 1000  # keep the cosine schedule near its initial value
  mesh = parallel.make_mesh(jax.devices()[:1])
  method, state, step = _setup(config, mesh)
  loss_fn = losses.get(config.loss)
  host = _batch()

  @jax.jit
  def fixed_objective(params):  # the same t and noise draws before and after training
    pred, target, _ = irsde.ml_pair(method.sde, method.noise_fn(params), host["gt"], host["lq"], jax.random.key(42))
    return loss_fn(pred, target, None)

  before = float(fixed_objective(state.params))
  batch = parallel.global_batch(host, mesh)
  for _ in range(30):
    state, metrics = step(state, batch, jax.random.key(1))
    assert bool(metrics["finite"])
  after = float(fixed_objective(state.params))
  assert int(state.step) == 30
  assert after < 0.85 * before, (before, after)


def test_eight_devices_match_one_device():
  assert len(jax.devices()) == 8, "conftest must simulate 8 CPU devices"
  config = get_config("tiny")
  results = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = parallel.make_mesh(devices)
    _, state, step = _setup(config, mesh)
    batch = parallel.global_batch(_batch(), mesh)
    assert len(batch["gt"].sharding.device_set) == len(devices)
    losses = []
    for _ in range(3):
      state, m = step(state, batch, jax.random.key(7))
      losses.append(float(m["loss"]))
    results.append((jax.device_get(state), losses))
  (s1, l1), (s8, l8) = results
  np.testing.assert_allclose(l1, l8, rtol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(s1.params), jax.tree_util.tree_leaves(s8.params)):
    np.testing.assert_allclose(a, b, atol=1e-5)
  for a, b in zip(jax.tree_util.tree_leaves(s1.ema), jax.tree_util.tree_leaves(s8.ema)):
    np.testing.assert_allclose(a, b, atol=1e-5)


def _ema_pytorch_reference(online, every, after, beta, inv_gamma=1.0, power=2 / 3):
  """Scalar restatement of ema_pytorch.EMA.update() called once after every optimizer step."""
  ema, step, initted, out = None, 0, False, []
  for p in online:
    s = step
    step += 1
    if not initted:
      ema, initted = p, True
    elif s % every == 0:
      if s <= after:
        ema = p
      else:
        epoch = max(step - after - 1, 0)
        decay = 0.0 if epoch <= 0 else min(max(1 - (1 + epoch / inv_gamma) ** -power, 0.0), beta)
        ema = ema + (1 - decay) * (p - ema)
    out.append(ema)
  return out


def test_cpu_scheduler_option_reaches_xla_and_changes_no_number(monkeypatch):
  """The train step is compiled with ``runtime.compiler_options`` (XLA:CPU's memory-optimised scheduler): the
  option reaches the compiler (a bogus scheduler name is refused by XLA itself), and the scheduler changes the
  order of execution only: two steps give bitwise the same state and metrics as under XLA's default scheduler."""
  from lliejax import runtime
  monkeypatch.delenv("XLA_FLAGS", raising=False)  # conftest's device count is already applied
  config = get_config("tiny")
  mesh = parallel.make_mesh(jax.devices()[:1])
  batch = parallel.global_batch(_batch(n=2, size=16), mesh)
  outs = {}
  for choice in ("memory", "default"):
    monkeypatch.setenv(runtime.CPU_SCHEDULER_ENV, choice)
    want = runtime.CPU_SCHEDULERS[choice]
    assert runtime.compiler_options("cpu") == ({"xla_cpu_scheduler_type": want} if want else None)
    _, state, step = _setup(config, mesh)
    for i in range(2):
      state, metrics = step(state, batch, jax.random.key(i))
    outs[choice] = jax.tree_util.tree_leaves((state.params, metrics))
  for a, b in zip(outs["memory"], outs["default"]):
    np.testing.assert_array_equal(a, b)
  assert runtime.compiler_options("cpu") is None  # "default" is still set
  assert runtime.compiler_options("gpu") is None
  monkeypatch.setenv(runtime.CPU_SCHEDULER_ENV, "fastest")
  with pytest.raises(ValueError, match="LLIEJAX_XLA_CPU_SCHEDULER='fastest'"):
    runtime.compiler_options("cpu")
  monkeypatch.setenv(runtime.CPU_SCHEDULER_ENV, "memory")
  monkeypatch.setitem(runtime.CPU_SCHEDULERS, "memory", "NOT_A_SCHEDULER")
  with pytest.raises(Exception, match="xla_cpu_scheduler_type"):
    _setup(config, mesh)[2](state, batch, jax.random.key(0))
  monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_scheduler_type=CPU_SCHEDULER_TYPE_DEFAULT")
  assert runtime.compiler_options("cpu") is None  # the user's XLA_FLAGS win


def test_cpu_ynn_option_reaches_xla(monkeypatch):
  """``LLIEJAX_XLA_CPU_YNN``: parsed and validated by name; ``off`` reaches XLA (no YNNPACK fusion is left in the
  compiled program, a bogus fusion type is refused by XLA itself) and changes a convolution and GroupNorm network's
  values by float rounding only; a value in ``XLA_FLAGS`` wins."""
  from lliejax import runtime
  monkeypatch.delenv("XLA_FLAGS", raising=False)
  monkeypatch.setenv(runtime.CPU_SCHEDULER_ENV, "default")
  key = "xla_cpu_experimental_ynn_fusion_type"
  for choice, want in runtime.CPU_YNN_FUSIONS.items():
    monkeypatch.setenv(runtime.CPU_YNN_ENV, choice)
    assert runtime.compiler_options("cpu") == (None if want is None else {key: want})
  monkeypatch.setenv(runtime.CPU_YNN_ENV, "fast")
  with pytest.raises(ValueError, match="LLIEJAX_XLA_CPU_YNN='fast'"):
    runtime.compiler_options("cpu")

  x = jax.random.normal(jax.random.key(0), (2, 24, 24, 32))
  w = jax.random.normal(jax.random.key(1), (3, 3, 32, 32)) * 0.1

  def net(x, w):  # a 3x3 convolution, GroupNorm statistics and their gradient, as in the SR3 UNet
    y = jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    g = y.reshape(2, -1, 8, 4)
    g = (g - g.mean(axis=(1, 3), keepdims=True)) * jax.lax.rsqrt(g.var(axis=(1, 3), keepdims=True) + 1e-5)
    return jnp.sum(jax.nn.silu(g) ** 2)

  outs = {}
  for choice in ("default", "off"):
    monkeypatch.setenv(runtime.CPU_YNN_ENV, choice)
    compiled = jax.jit(jax.value_and_grad(net, argnums=(0, 1)),
                       compiler_options=runtime.compiler_options("cpu")).lower(x, w).compile()
    if choice == "off":
      assert "ynn_fusion" not in compiled.as_text()
    outs[choice] = jax.tree_util.tree_leaves(compiled(x, w))
  for a, b in zip(outs["default"], outs["off"]):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4 * float(np.max(np.abs(a))))
  monkeypatch.setitem(runtime.CPU_YNN_FUSIONS, "off", "NOT_A_FUSION_TYPE")
  monkeypatch.setenv(runtime.CPU_YNN_ENV, "off")
  with pytest.raises(Exception, match=key):
    jax.jit(net, compiler_options=runtime.compiler_options("cpu")).lower(x, w).compile()
  monkeypatch.setenv("XLA_FLAGS", f"--{key}=")
  assert runtime.compiler_options("cpu") is None  # the user's XLA_FLAGS win


def test_ema_follows_ema_pytorch_rules():
  cfg = get_config("lolv1").ema
  cfg.update_every, cfg.update_after_step = 3, 7
  online = np.cumsum(np.random.default_rng(0).standard_normal(40)).astype(np.float64)
  want = _ema_pytorch_reference(online, 3, 7, cfg.decay)
  rule = ema.from_config(cfg)
  assert isinstance(rule, ema.EmaPytorch)
  avg = jnp.zeros(())
  got = []
  for s, p in enumerate(online):
    avg = rule.update(jnp.int32(s), avg, jnp.float32(p))
    got.append(float(avg))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_learning_rate_is_torch_cosine_annealing():
  config = get_config("lolv1")
  config.num_train_steps = 100
  sched = optim.learning_rate_schedule(config)
  lr0, eta = 1e-4, 1e-6
  for k in (0, 1, 50, 99, 100):
    want = eta + (lr0 - eta) * (1 + math.cos(math.pi * k / 100)) / 2
    assert float(sched(k)) == pytest.approx(want, rel=1e-5)


def test_optimizer_is_adamw_with_released_betas():
  config = get_config("lolv1")
  tx = optim.make_optimizer(config)
  params = {"w": jnp.ones(3)}
  state = tx.init(params)
  adam = [s for s in jax.tree_util.tree_leaves(state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
          if isinstance(s, optax.ScaleByAdamState)]
  assert adam, "AdamW state expected"
  g = {"w": jnp.array([1.0, -2.0, 0.5])}
  updates, _ = tx.update(g, state, params)
  # First Adam step: -lr * g / (|g| + eps) with bias correction = -lr * sign(g).
  np.testing.assert_allclose(updates["w"], -1e-4 * np.sign(g["w"]), rtol=1e-4)


def _final_params(workdir, ema=False):
  state, method, _, step = state_lib.restore_from_workdir(workdir)
  return (state.export_params(method) if ema else state.params), step


@pytest.mark.slow
def test_resume_after_interruption_equals_uninterrupted(tfds_dir, tmp_path):
  from lliejax.data import registry

  registry.prepare("lliejax_demo", data_dir=tfds_dir)
  config = tiny_train_config(tfds_dir)
  train.train_and_evaluate(config, str(tmp_path / "a"))
  train.train_and_evaluate(config, str(tmp_path / "b"), stop_at=3)
  with ocp.CheckpointManager(str(tmp_path / "b" / "checkpoints")) as m:
    assert m.latest_step() == 3
  assert not (tmp_path / "b" / "export").exists()
  train.train_and_evaluate(config, str(tmp_path / "b"))  # resumes at step 3
  (pa, sa), (pb, sb) = _final_params(str(tmp_path / "a")), _final_params(str(tmp_path / "b"))
  assert sa == sb == 6
  for a, b in zip(jax.tree_util.tree_leaves(pa), jax.tree_util.tree_leaves(pb)):
    np.testing.assert_array_equal(a, b)
  ea, eb = _final_params(str(tmp_path / "a"), ema=True)[0], _final_params(str(tmp_path / "b"), ema=True)[0]
  for a, b in zip(jax.tree_util.tree_leaves(ea), jax.tree_util.tree_leaves(eb)):
    np.testing.assert_array_equal(a, b)
  # A lliejax 0.1 checkpoint (the state with 'ema_params') resumes too, to the same parameters.
  step3, _, _, _ = state_lib.restore_from_workdir(str(tmp_path / "b"), step=3)
  shutil.copytree(tmp_path / "b", tmp_path / "c", ignore=shutil.ignore_patterns("checkpoints", "export"))
  with checkpoint.TrainCheckpoints(str(tmp_path / "c")) as ckpts:
    ckpts.save(3, {"step": step3.step, "params": step3.params, "ema_params": step3.ema["ema"],
                   "opt_state": step3.opt_state})
  train.train_and_evaluate(config, str(tmp_path / "c"))
  for a, b in zip(jax.tree_util.tree_leaves(_final_params(str(tmp_path / "c"))[0]), jax.tree_util.tree_leaves(pa)):
    np.testing.assert_array_equal(a, b)
  other = tiny_train_config(tfds_dir)
  other.optim.name = "lion"  # another optimizer state: a clear error, not Orbax's tree dump
  with pytest.raises(ValueError, match="does not fit this method's train state"), \
      checkpoint.TrainCheckpoints(str(tmp_path / "c")) as ckpts:
    ckpts.restore(6, state_lib.abstract(methods.build(other), optim.make_optimizer(other)))
  # The export holds the EMA params for inference.
  exported = checkpoint.load_export(str(tmp_path / "a" / "export"))
  assert exported.info["step"] == 6 and exported.method == "entropy_sde" and exported.config.model.width == 8
  assert exported.config.to_dict() == checkpoint.to_plain(config)
  for a, b in zip(jax.tree_util.tree_leaves(exported.params), jax.tree_util.tree_leaves(ea)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.slow
def test_nan_loss_stops_and_keeps_last_good_checkpoint(tfds_dir, tmp_path):
  from lliejax.data import registry

  registry.prepare("lliejax_demo", data_dir=tfds_dir)
  workdir = str(tmp_path / "run")
  config = tiny_train_config(tfds_dir, steps=3)
  train.train_and_evaluate(config, workdir)
  good, _ = _final_params(workdir)
  config.num_train_steps = 9
  config.loss.weight = float("nan")
  with pytest.raises(FloatingPointError, match=r"step 4.*last good checkpoint is step 3"):
    train.train_and_evaluate(config, workdir, force_config=True)  # the changed loss weight is refused otherwise
  params, step = _final_params(workdir)
  assert step == 3
  for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(good)):
    assert np.all(np.isfinite(a))
    np.testing.assert_array_equal(a, b)


def test_workdir_with_other_architecture_is_refused(tmp_path):
  config = get_config("tiny")
  sections = methods.build(config).architecture_sections
  checkpoint.save_config(str(tmp_path), config, architecture_sections=sections)
  other = get_config("tiny")
  other.model.width = 16
  with pytest.raises(ValueError, match="different config.model"):
    checkpoint.save_config(str(tmp_path), other, architecture_sections=sections)
  other = get_config("tiny")
  other.sde.T = 9
  with pytest.raises(ValueError, match="different config.sde"):
    checkpoint.save_config(str(tmp_path), other, architecture_sections=sections)


def test_batch_not_divisible_by_devices():
  mesh = parallel.make_mesh()
  with pytest.raises(ValueError, match="config.batch_size=6"):
    parallel.local_batch_size(6, mesh)


@pytest.mark.parametrize("kind", ["kl", "hellinger", "hellinger_smooth", "cross"])
def test_entropy_objectives_train(kind):
  """The config switch trains with every spatial-entropy loss (fresh neighbour weights from the step key)."""
  config = get_config("tiny")
  config.loss.name, config.loss.bins = kind, 8
  if kind == "cross":
    config.loss.eps = 1e-10
  mesh = parallel.make_mesh(jax.devices()[:1])
  _, state, step = _setup(config, mesh)
  batch = parallel.global_batch(_batch(size=16), mesh)
  for _ in range(2):
    state, m = step(state, batch, jax.random.key(3))
    assert bool(m["finite"]) and float(m["loss"]) > 0 and float(m["grad_norm"]) > 0
  loss_fn = losses.get(config.loss)
  x = jnp.asarray(_batch(size=16)["gt"])
  y = jnp.clip(x * 0.9 + 0.05, 0, 1)
  a, b = float(loss_fn(x, y, jax.random.key(0))), float(loss_fn(x, y, jax.random.key(1)))
  if kind == "cross":
    assert a == b  # the official cross-entropy uses no neighbour weights
  else:
    assert a != b  # fresh N(0, 1) neighbour weights per call


def test_released_and_paper_configs():
  assert get_config("lolv1").loss.name == "kl" and get_config("lolv1").loss.bins == 32
  assert get_config("lolv2_real").data.name == "lol_v2_real"
  assert get_config("lolv1_released").loss.name == "hellinger"
  paper = get_config("lolv1_paper")
  assert paper.optim.learning_rate == 5e-5 and paper.num_train_steps == 200_000
  assert get_config("lolv1_l1").loss.name == "l1"
  assert get_config("demo_kl").loss.name == "kl" and get_config("demo_kl").loss.get("pixel") is None
  recipe = get_config("demo_entropy").loss
  assert (recipe.name, recipe.pixel, recipe.weight, recipe.clamp) == ("kl", "l1", 0.05, "straight_through")
  with pytest.raises(ValueError, match="unknown entropy_sde config variant"):
    get_config("lolv3")
