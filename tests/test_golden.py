"""Golden numbers of lliejax 0.1.0, pinned before the core refactor (issue "One core for three methods").

``tests/golden/v0_1_0.npz`` holds the outputs of the 0.1.0 code (commit 6722c30) for fixed inputs, keys and seeds:
the IR-SDE tables and steps, a NAFNet forward, the entropy losses and their gradients, three train steps (loss,
gradient norm, parameters and EMA), the three samplers, the first training batches of the demo set, the demo
evaluation after a short training, and a PyTorch state_dict import. A refactor must reproduce every one of them; a
change of numbers is a decision to take in its own commit, with the file regenerated.

Regenerate (only on purpose): ``LLIEJAX_WRITE_GOLDEN=1 python -m pytest -p no:xdist tests/test_golden.py``; entries
that exist are compared as usual, missing ones are recorded.
"""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "golden", "v0_1_0.npz")
_WRITE = os.environ.get("LLIEJAX_WRITE_GOLDEN") == "1"
_NEW: dict = {}


def _stored() -> dict:
  if not os.path.isfile(GOLDEN):
    return {}
  with np.load(GOLDEN, allow_pickle=False) as f:
    return {k: f[k] for k in f.files}


_STORED = _stored()


@pytest.fixture(scope="module", autouse=True)
def _write_new_entries():
  yield
  if _WRITE and _NEW:
    os.makedirs(os.path.dirname(GOLDEN), exist_ok=True)
    np.savez_compressed(GOLDEN, **{**_stored(), **_NEW})


# Absolute tolerance relative to the array's largest stored magnitude, on top of ``atol``: float32 results differ
# between CPUs (vector width, FMA contraction) by a few ulps of the largest element, so an element that nearly
# cancels can miss ``rtol`` (measured between the two development machines: at most 1.1e-7 of the array's scale,
# e.g. 7.6e-6 on posterior samples of magnitude 72).
SCALE_ATOL = 1e-6


def check(name: str, value, *, rtol: float = 1e-6, atol: float = 0.0) -> None:
  """``value`` equals the stored golden ``name`` to (rtol, ``atol + SCALE_ATOL * max|golden|``); records it when
  writing and missing."""
  value = np.asarray(value)
  if name not in _STORED:
    if _WRITE:
      _NEW[name] = value
      return
    pytest.fail(f"golden value {name!r} is missing from {GOLDEN}")
  want = _STORED[name]
  assert value.shape == want.shape, (name, value.shape, want.shape)
  scale = float(np.max(np.abs(want))) if want.size and np.issubdtype(want.dtype, np.floating) else 0.0
  np.testing.assert_allclose(value, want, rtol=rtol, atol=atol + SCALE_ATOL * scale, err_msg=name)


def _tree_sums(tree) -> np.ndarray:
  """Per-leaf (sum, sum of squares), leaves in path order: a compact fingerprint of a parameter tree."""
  leaves = [np.asarray(x, np.float64) for x in jax.tree_util.tree_leaves(tree)]
  return np.array([[x.sum(), np.square(x).sum()] for x in leaves])


# ------------------------------------------------------------------------------------------------- diffusion
@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_irsde_tables(schedule):
  from lliejax.diffusion import irsde as sde_lib
  s = sde_lib.make_sde(50, 100, schedule, 0.005)
  for name in ("thetas", "sigmas", "thetas_cumsum", "sigma_bars", "posterior_stds"):
    check(f"irsde/{schedule}/{name}", getattr(s, name), rtol=0)
  check(f"irsde/{schedule}/dt", s.dt, rtol=0)


def test_irsde_steps_and_ml_pair():
  from lliejax.diffusion import irsde as sde_lib
  s = sde_lib.make_sde()
  rng = np.random.default_rng(0)
  x0, mu, xt, noise, z = (jnp.asarray(rng.random((4, 5, 6, 3)), jnp.float32) for _ in range(5))
  t = jnp.array([1, 2, 50, 100])
  score = s.score_from_noise(noise, t)
  check("irsde/steps/forward_sample", s.forward_sample(x0, mu, t, noise))
  check("irsde/steps/reverse_sde_step", s.reverse_sde_step(xt, mu, score, t, z))
  check("irsde/steps/reverse_ode_step", s.reverse_ode_step(xt, mu, score, t))
  check("irsde/steps/reverse_posterior_step", s.reverse_posterior_step(xt, noise, mu, t, z))
  check("irsde/steps/reverse_optimum_step", s.reverse_optimum_step(xt, x0, mu, t))
  check("irsde/steps/x0_from_noise", s.x0_from_noise(xt, noise, mu, t))
  pred, target, tt = sde_lib.ml_pair(s, lambda x, m, t: jnp.tanh(x - m), x0, mu, jax.random.key(3))
  check("irsde/ml_pair/pred", pred)
  check("irsde/ml_pair/target", target)
  check("irsde/ml_pair/t", tt, rtol=0)


# ------------------------------------------------------------------------------------------------- network
SMALL = dict(width=8, enc_blk_nums=(1, 1, 2), middle_blk_num=1, dec_blk_nums=(1, 1, 1))


def test_nafnet_init_and_forward():
  from lliejax.models import nafnet
  model = nafnet.ConditionalNAFNet(**SMALL)
  x8 = jnp.zeros((1, 8, 8, 3))
  params = model.init(jax.random.key(0), x8, x8, jnp.ones((1,), jnp.int32))["params"]
  check("nafnet/init", _tree_sums(params), rtol=1e-6)
  params = jax.tree_util.tree_map_with_path(
      lambda p, v: v + 0.25 if p[-1].key in ("beta", "gamma") else v, params)
  rng = np.random.default_rng(1)
  x, mu = (jnp.asarray(rng.random((2, 21, 13, 3)), jnp.float32) for _ in range(2))
  out = jax.jit(lambda p: model.apply({"params": p}, x, mu, jnp.array([3, 77])))(params)
  check("nafnet/forward", out, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------- losses
@pytest.mark.parametrize("kind", ["kl", "cross", "hellinger", "hellinger_smooth"])
def test_entropy_loss_and_gradient(kind):
  from lliejax.losses import entropy
  rng = np.random.default_rng(2)
  target = jnp.asarray(rng.random((2, 12, 12, 3)), jnp.float32)
  pred = jnp.clip(target * 0.9 + 0.05 * jnp.asarray(rng.standard_normal(target.shape), jnp.float32), -0.05, 1.05)
  eps = 1e-10 if kind == "cross" else None
  f = lambda p: entropy.spatial_entropy_loss(p, target, key=jax.random.key(4), kind=kind, bins=8, eps=eps)
  value, grad = jax.jit(jax.value_and_grad(f))(pred)
  check(f"entropy/{kind}/value", value, rtol=1e-5)
  # atol = 1e-6 of the largest gradient entry (~1e-2): entries near 0 carry float32 summation-order noise.
  check(f"entropy/{kind}/grad", grad, rtol=1e-4, atol=1e-8)


# ------------------------------------------------------------------------------------------------- training
def _tiny_batch(seed=0, n=8, size=32):
  rng = np.random.default_rng(seed)
  gt = rng.random((n, size, size, 3)).astype(np.float32)
  return {"gt": gt, "lq": (gt * 0.15).astype(np.float32)}


@pytest.mark.parametrize("loss", ["l1", "kl"])
def test_train_steps(loss):
  from lliejax import methods, optim, parallel, state as state_lib, train
  from lliejax.configs.entropy_sde import get_config
  config = get_config("tiny")
  config.loss.name, config.loss.bins = loss, 8
  mesh = parallel.make_mesh()
  method, tx = methods.build(config), optim.make_optimizer(config)
  state = jax.device_put(state_lib.create(method, tx, jax.random.key(0)), parallel.replicated(mesh))
  step = train.jit_train_step(train.make_train_step(method, tx), mesh)
  batch = parallel.global_batch(_tiny_batch(), mesh)
  losses, norms = [], []
  for _ in range(3):
    state, m = step(state, {}, batch, jax.random.key(7))
    losses.append(float(m["loss"]))
    norms.append(float(m["grad_norm"]))
  check(f"train/{loss}/loss", losses, rtol=1e-5)
  check(f"train/{loss}/grad_norm", norms, rtol=1e-5)
  check(f"train/{loss}/params", _tree_sums(state.params), rtol=1e-5, atol=1e-9)
  check(f"train/{loss}/ema", _tree_sums(state.ema["ema"]), rtol=1e-5, atol=1e-9)


# ------------------------------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("mode", ["posterior", "sde", "ode"])
def test_samplers(mode):
  from lliejax import inference, methods
  from lliejax.configs.entropy_sde import get_config
  method = methods.build(get_config("tiny"))
  params = method.init_params(jax.random.key(0))
  params = jax.tree_util.tree_map_with_path(lambda p, v: v + 0.1 if p[-1].key in ("beta", "gamma") else v, params)
  lq = jnp.asarray(np.random.default_rng(3).random((1, 20, 28, 3)) * 0.3, jnp.float32)
  direct = jax.jit(lambda p, x, k: method.sample(p, {}, x, k, sampler=mode))(params, lq, jax.random.key(5))
  check(f"sample/{mode}", direct, rtol=1e-5, atol=1e-6)
  enhancer = inference.Enhancer(method=method, params=params, frozen={}, source="test", info={})
  out = enhancer.enhance(np.asarray(lq[0]), jax.random.key(5), sampler=mode)  # the batched, sharded path
  check(f"sample/{mode}", out[None], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------- data + demo
def test_demo_training_batches(tfds_dir):
  from lliejax.configs.entropy_sde import get_config
  from lliejax.data import pipeline, registry
  config = get_config("tiny")
  config.data.data_dir = tfds_dir
  registry.prepare("lliejax_demo", data_dir=tfds_dir)
  it = pipeline.train_iterator(config.data, seed=0, batch_size=8)
  for i in range(3):
    b = next(it)
    check(f"data/batch{i}/index", b["index"], rtol=0)
    check(f"data/batch{i}/gt", b["gt"].reshape(8, -1).sum(axis=1), rtol=1e-6)
    check(f"data/batch{i}/lq", b["lq"].reshape(8, -1).sum(axis=1), rtol=1e-6)


@pytest.mark.slow
def test_demo_evaluation_after_short_training(tfds_dir, tmp_path):
  from lliejax import evaluate, inference, train
  from lliejax.configs.entropy_sde import get_config
  from lliejax.data import registry
  config = get_config("tiny")
  config.data.data_dir = tfds_dir
  registry.prepare("lliejax_demo", data_dir=tfds_dir)
  workdir = str(tmp_path / "run")
  train.train_and_evaluate(config, workdir)
  enhancer = inference.load(workdir)
  result = evaluate.evaluate_dataset(enhancer, config.data, key=jax.random.key(0))
  rows = result["per_image"]
  assert [r["name"] for r in rows] == ["chelsea", "coffee", "rocket"]
  check("demo/psnr", [r["psnr"] for r in rows], rtol=0, atol=1e-4)
  check("demo/ssim", [r["ssim"] for r in rows], rtol=0, atol=1e-5)
  check("demo/psnr_input", [r["psnr_input"] for r in rows], rtol=0, atol=1e-9)
  check("demo/ssim_input", [r["ssim_input"] for r in rows], rtol=0, atol=1e-9)
  check("demo/export", _tree_sums(enhancer.params), rtol=1e-5, atol=1e-9)


# ------------------------------------------------------------------------------------------------- PyTorch
def test_pytorch_state_dict_import():
  torch = pytest.importorskip("torch")
  import sys
  sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
  from torch_nafnet import TorchConditionalNAFNet, randomise_
  from lliejax.interop.nafnet import KEYMAP
  from lliejax.models import nafnet
  cfg = {"img_channel": 3, "width": 8, "enc_blk_nums": [1, 2], "middle_blk_num": 1, "dec_blk_nums": [1, 1]}
  torch.manual_seed(0)
  net = randomise_(TorchConditionalNAFNet(**cfg), seed=1).eval()
  sd = {k: v.detach().numpy() for k, v in net.state_dict().items()}
  params = KEYMAP.import_state_dict(sd).params
  check("torch/params", _tree_sums(params), rtol=0)
  back = KEYMAP.export_params(params)
  assert list(back) == list(sd) and all(np.array_equal(back[k], sd[k]) for k in sd)
  model = nafnet.ConditionalNAFNet(width=8, enc_blk_nums=(1, 2), middle_blk_num=1, dec_blk_nums=(1, 1))
  x = jnp.asarray(np.random.default_rng(4).random((1, 12, 20, 3)), jnp.float32)
  out = model.apply({"params": params}, x, x * 0.2, jnp.array([42]))
  check("torch/forward", out, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------------- 0.1 exports
def test_v0_1_0_export_loads_and_enhances():
  """``tests/golden/export_v0_1_0`` was written by lliejax 0.1.0 (the tiny config, init key 11, beta/gamma + 0.1)."""
  from lliejax import inference
  enhancer = inference.load(os.path.join(os.path.dirname(GOLDEN), "export_v0_1_0"))
  image = (np.random.default_rng(9).random((13, 22, 3)) * 0.3).astype(np.float32)
  out = enhancer.enhance(image, jax.random.key(2), sampler="posterior")
  check("export_v1/enhance", out, rtol=1e-5, atol=1e-6)
