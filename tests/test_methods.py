"""The Method interface: the registry, and a second method (tests/ddpm_method.py) that trains, checkpoints, resumes,
exports, evaluates and enhances through the same core as Entropy-SDE, with a frozen teacher and a frozen prior."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from lliejax import checkpoint, evaluate, inference, methods, optim, parallel, state as state_lib, train
from lliejax.configs.entropy_sde import get_config as entropy_config

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import ddpm_method  # noqa: E402  (registers "test_ddpm")

TESTS = os.path.dirname(os.path.abspath(__file__))


def test_registry():
  assert "entropy_sde" in methods.names() and "test_ddpm" in methods.names()
  assert methods.get("entropy_sde").name == "entropy_sde"
  assert isinstance(methods.build(entropy_config("tiny")), methods.get("entropy_sde"))
  with pytest.raises(ValueError, match=r"unknown method 'nope'; known methods: anlightendiff_fs, anlightendiff_ts, "
                     r"consistency_student, entropy_sde, progressive_student, reddit_student, reddit_teacher, "
                     r"sampler_student, test_ddpm"):
    methods.get("nope")

  class Other(methods.Method):
    name = "test_ddpm"

  with pytest.raises(ValueError, match="already registered"):
    methods.register(Other)


def test_second_method_step_and_sample_shapes():
  """One jitted step of the generic loop on the test method: its aux metrics, EMA rule and frozen prior."""
  config = ddpm_method.get_config("teacher")
  method = methods.get("test_ddpm")(config)
  mesh = parallel.make_mesh()
  tx = optim.make_optimizer(config)
  st = jax.device_put(state_lib.create(method, tx, jax.random.key(0)), parallel.replicated(mesh))
  assert set(st.params) == {"denoiser", "head"} and set(st.ema) == {"ema"}
  frozen = method.init_frozen(jax.random.key(0))
  step = train.jit_train_step(train.make_train_step(method, tx), mesh)
  rng = np.random.default_rng(0)
  gt = rng.random((8, 16, 16, 3)).astype(np.float32)
  batch = parallel.global_batch({"gt": gt, "lq": gt * 0.2}, mesh)
  params = [jax.device_get(st.params)]
  for _ in range(3):
    st, m = step(st, frozen, batch, jax.random.key(1))
    params.append(jax.device_get(st.params))
  assert set(m) == {"loss", "grad_norm", "finite", "mse"} and float(m["mse"]) == float(m["loss"])
  # Constant(decay=0.9, start=2): a copy after steps 0 and 1, then ema = 0.9 ema + 0.1 params after step 2.
  leaf = lambda tree: np.asarray(tree["head"]["conv"]["kernel"])
  assert not np.array_equal(leaf(params[0]), leaf(params[3]))
  np.testing.assert_allclose(leaf(st.ema["ema"]), 0.9 * leaf(params[2]) + 0.1 * leaf(params[3]), rtol=1e-6)
  out = method.sample(st.params, frozen, jnp.asarray(gt[:1]), jax.random.key(2), sampler="ddim", steps=3)
  assert out.shape == (1, 16, 16, 3) and bool(jnp.all(jnp.isfinite(out)))


def _events_scalars(workdir):
  from tensorboard.backend.event_processing import event_accumulator
  files = [f for f in os.listdir(workdir) if f.startswith("events.out.tfevents")]
  acc = event_accumulator.EventAccumulator(os.path.join(workdir, files[0]))
  acc.Reload()
  return set(acc.Tags()["scalars"] + acc.Tags().get("tensors", []))


@pytest.mark.slow
def test_second_method_end_to_end(tfds_dir, tmp_path):
  from lliejax.data import registry
  registry.prepare("lliejax_demo", data_dir=tfds_dir)

  # A teacher: trained by the generic loop (validation at step 3 with the method's DDIM sampler), exported.
  teacher_cfg = ddpm_method.get_config("teacher")
  teacher_cfg.data.data_dir = tfds_dir
  wd_t = str(tmp_path / "teacher")
  train.train_and_evaluate(teacher_cfg, wd_t)
  exp = checkpoint.load_export(os.path.join(wd_t, "export"))
  assert exp.method == "test_ddpm" and exp.info["method_module"] == "ddpm_method" and exp.info["step"] == 6
  assert set(exp.frozen) == {"prior"} and set(exp.params) == {"denoiser", "head"}
  assert {"loss", "mse", "grad_norm", "learning_rate", "eval/psnr", "eval/ssim"} <= _events_scalars(wd_t)

  # A student distilled from the frozen teacher; interrupted at step 3 and resumed = uninterrupted.
  student_cfg = ddpm_method.get_config("student")
  student_cfg.data.data_dir = tfds_dir
  student_cfg.teacher.export = os.path.join(wd_t, "export")
  wd_a, wd_b = str(tmp_path / "student_a"), str(tmp_path / "student_b")
  final_a = train.train_and_evaluate(student_cfg, wd_a)
  train.train_and_evaluate(student_cfg, wd_b, stop_at=3)
  final_b = train.train_and_evaluate(student_cfg, wd_b)
  for a, b in zip(jax.tree_util.tree_leaves(jax.device_get(final_a)), jax.tree_util.tree_leaves(jax.device_get(final_b))):
    np.testing.assert_array_equal(a, b)
  assert "distill" in _events_scalars(wd_a)
  student = checkpoint.load_export(os.path.join(wd_a, "export"))
  assert set(student.frozen) == {"prior"}  # the teacher is not needed for sampling: not exported
  np.testing.assert_array_equal(student.frozen["prior"], exp.frozen["prior"])

  # Evaluation under the method's own convention, sharded over the devices.
  enhancer = inference.load(wd_a)
  result = evaluate.evaluate_dataset(enhancer, student_cfg.data, key=jax.random.key(0), max_images=2, steps=3)
  assert result["convention"] == "test_ddpm" and result["sampler"] == "ddim" and result["num_images"] == 2
  for row in result["per_image"]:
    item = [i for i in result["images"] if i[0] == row["name"]][0][1]
    want = ddpm_method.CONVENTION.score(item[1], item[2], item[0])
    assert row["psnr"] == pytest.approx(want["psnr"], abs=0.05)  # clamped copy vs unclamped output

  # `lliejax enhance --checkpoint EXPORT` in a fresh process: the export alone names the method's module.
  image = (np.random.default_rng(1).random((20, 24, 3)) * 80).astype(np.uint8)
  src = tmp_path / "dark.png"
  Image.fromarray(image).save(src)
  env = dict(os.environ, PYTHONPATH=TESTS + os.pathsep + os.environ.get("PYTHONPATH", ""), XLA_FLAGS="")
  out = subprocess.run([sys.executable, "-m", "lliejax.cli", "enhance", str(src), "--checkpoint",
                        os.path.join(wd_a, "export"), "--out", str(tmp_path / "out"), "--steps", "3", "--quiet"],
                       capture_output=True, text=True, env=env, timeout=300)
  assert out.returncode == 0, out.stderr[-3000:]
  got = np.asarray(Image.open(tmp_path / "out" / "dark.png"))
  want = enhancer.enhance(image.astype(np.float32) / 255, jax.random.fold_in(jax.random.key(0), 0), steps=3,
                          buckets=inference.DEFAULT_BUCKETS)  # enhance pads to size buckets by default
  np.testing.assert_array_equal(got, np.round(np.clip(want, 0, 1) * 255).astype(np.uint8))


def test_enhancer_with_params_reuses_the_compiled_sampler():
  """Validation during training swaps the parameters, not the compiled sampler (no recompilation per validation)."""
  method = methods.build(entropy_config("tiny"))
  p0, p1 = method.init_params(jax.random.key(0)), method.init_params(jax.random.key(1))
  base = inference.Enhancer(method=method, params=p0, frozen={}, source="test", info={})
  image = np.random.default_rng(0).random((12, 16, 3)).astype(np.float32)
  a = base.enhance(image, jax.random.key(3))
  other = base.with_params(p1)
  b = other.enhance(image, jax.random.key(3))
  assert other._jitted is base._jitted and len(base._jitted) == 1  # pylint: disable=protected-access
  (run,) = base._jitted.values()  # pylint: disable=protected-access
  assert run._cache_size() == 1  # pylint: disable=protected-access
  want = jax.jit(lambda p, x: method.sample(p, {}, x, jax.random.key(3)))(p1, image[None])[0]
  np.testing.assert_allclose(b, want, rtol=1e-5, atol=1e-6)
  assert not np.allclose(a, b)
