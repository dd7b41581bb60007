"""AnlightenDiff as methods (``anlightendiff_fs`` / ``anlightendiff_ts``, REFERENCE §2.4-2.10): config checks, the
losses against PyTorch (DFPL with the official in-place noise update and the real ``lpips`` package; torchmetrics'
MS-SSIM), one jitted generic train step per variant and TS stage (what moves and what stays), the loss as a
composition of the pieces, the sampler as one compiled program, and ``lliejax convert`` of a Lightning ``.ckpt``
and back.

Networks are tiny (``unet_dim`` 8, two levels) and keys use the ``rbg`` PRNG (threefry initialisation compiles
slowly on CPU).
"""
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lliejax import checkpoint, cli, methods, optim, parallel, train
from lliejax import config_utils as cu
from lliejax import state as state_lib
from lliejax.data import augment, condition
from lliejax.diffusion import anlightendiff as ad
from lliejax.interop import anlightendiff as ia
from lliejax.losses import anlightendiff as la
from lliejax.losses import perceptual
from lliejax.methods import anlightendiff as ma

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def key(seed):
  return jax.random.key(seed, impl="rbg")


def load(spec):
  return cu.load_config(spec)


def leaves_equal(a, b) -> bool:
  return all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def random_networks(method, names, seed=0) -> dict:
  """Parameters of the named networks with random values (shapes from ``eval_shape``: nothing to compile; the
  initialisers are tested in tests/test_anlightendiff_models.py): N(0, 0.1^2), weight-norm gains 1."""
  rng = np.random.default_rng(seed)
  out = {}
  for name in names:
    shapes = jax.eval_shape(lambda k, n=name: method.init_network(n, k), key(0))
    out[name] = jax.tree_util.tree_map_with_path(
        lambda p, s: np.ones(s.shape, np.float32) if "weight_g" in jax.tree_util.keystr(p)
        else (0.1 * rng.standard_normal(s.shape)).astype(np.float32), shapes)
  return out


def all_moved(a, b) -> bool:
  """Every weight array of the network changed (biases of the dead time MLPs excepted: zero gradient)."""
  flat_a = jax.tree_util.tree_flatten_with_path(a)[0]
  flat_b = dict(jax.tree_util.tree_flatten_with_path(b)[0])
  moved = [not np.array_equal(np.asarray(x), np.asarray(flat_b[p])) for p, x in flat_a
           if "weight_v" in jax.tree_util.keystr(p)]
  return bool(moved) and all(moved)


# ------------------------------------------------------------------------------------------------ configs
def test_configs_and_validation_errors():
  for spec in ("anlightendiff_fs:lol", "anlightendiff_fs:demo", "anlightendiff_fs:tiny", "anlightendiff_ts:lol",
               "anlightendiff_ts:demo,stage=encoder", "anlightendiff_ts:tiny,stage=he"):
    c = load(spec)
    assert c.optim.name in ("lion", "adamw") and c.seed == 3407 and c.model.name == "anlightendiff"
  c = load("anlightendiff_fs:lol")
  assert (c.optim.learning_rate, c.optim.b1, c.optim.b2, c.optim.weight_decay, c.optim.schedule, c.optim.grad_clip
          ) == (4e-4, 0.9, 0.99, 0.0, "constant", 1.0)
  assert (c.data.patch_size, c.data.flip_or_rot, c.objective.loss, c.objective.variant) == (160, True, "dfpl",
                                                                                            "released")
  he = load("anlightendiff_ts:lol,stage=he,lr=1e-4")  # the stage's AdamW, the override on top
  assert (he.optim.name, he.optim.b2, he.optim.weight_decay, he.optim.learning_rate) == ("adamw", 0.999, 0.01, 1e-4)
  assert load("anlightendiff_ts:tiny,stage=encoder").data.patch_size == 100
  bad = [("anlightendiff_fs:tiny,variant=paper", "objective.variant"),
         ("anlightendiff_fs:tiny,model.two_step=1", "model.two_step"),
         ("anlightendiff_ts:tiny,model.two_step=0", "model.two_step"),
         ("anlightendiff_fs:tiny,patch=17", "data.patch_size"),
         ("anlightendiff_fs:tiny,loss=lpips", "objective.loss"),
         ("anlightendiff_fs:tiny,model.cond_in_dim=9", "model.cond_in_dim"),
         ("anlightendiff_fs:tiny,model.dim_mults=(2,2)", "model.dim_mults"),
         ("anlightendiff_fs:tiny,data.rot90=true", "data.flip_or_rot"),
         ("anlightendiff_fs:tiny,timesteps=0", "diffusion.timesteps"),
         ("anlightendiff_fs:tiny,objective.anchor_gt_prob=1.5", "objective.anchor_gt_prob"),
         ("anlightendiff_ts:tiny,stage=refiner", "objective.stage"),
         ("anlightendiff_ts:tiny,stage=encoder,patch=64", "data.patch_size")]
  for spec, k in bad:
    with pytest.raises(cu.ConfigError, match=f"config.{k}"):
      load(spec)
  with pytest.raises(ValueError, match="unknown anlightendiff_fs config variant"):
    load("anlightendiff_fs:lolv1")


def test_flip_or_rot_policy():
  """dataset.py ``augment``: hflip, then (p 1/2) vflip or a counter-clockwise 90-degree rotation; same geometry for
  the pair; all four outcomes occur and the old policies' draws are unchanged."""
  img = np.arange(6 * 6 * 3, dtype=np.uint8).reshape(6, 6, 3)
  crop = augment.CropFlip(patch_size=4, flip_or_rot=True)
  seen = set()
  for seed in range(40):
    lq, gt = crop(img, img, np.random.default_rng(seed))
    np.testing.assert_array_equal(lq, gt)
    rng = np.random.default_rng(seed)
    top, left = int(rng.integers(0, 3)), int(rng.integers(0, 3))
    h, apply, which = rng.random() < 0.5, rng.random() < 0.5, rng.random() < 0.5
    x = img[top:top + 4, left:left + 4].astype(np.float32) / 255
    x = x[:, ::-1] if h else x
    x = (x[::-1] if which else np.rot90(x)) if apply else x
    np.testing.assert_array_equal(lq, x)
    seen.add((apply, which if apply else None))
  assert seen == {(False, None), (True, True), (True, False)}
  with pytest.raises(ValueError, match="two different rotation policies"):
    augment.CropFlip(patch_size=4, rot90=True, flip_or_rot=True)
  old = augment.CropFlip(patch_size=4, rot90=True)(img, img, np.random.default_rng(3))[0]
  assert old.shape == (4, 4, 3)


# ------------------------------------------------------------------------------------------------ losses vs PyTorch
def test_noise_losses_and_dfpl_match_pytorch():
  """smooth-L1 / MSE as ``F.smooth_l1_loss`` / ``F.mse_loss``; DFPL (value and gradients in eps_hat and phi) as the
  official ``loss_dfpl`` with the in-place ``q_sample`` (tests/torch_anlightendiff.py) and the real ``lpips``
  package (torchmetrics LPIPS-VGG with ``normalize=True`` equals it, REFERENCE §2.6)."""
  torch_refs = pytest.importorskip("torch_refs")
  torch = pytest.importorskip("torch")
  import torch_anlightendiff as ta

  rng = np.random.default_rng(0)
  b, h, w = 2, 16, 16
  gt = rng.random((b, h, w, 3)).astype(np.float32)
  lq = (gt * rng.uniform(0.1, 0.4, (b, 1, 1, 1))).astype(np.float32)
  phi = np.clip(gt + 0.2 * rng.standard_normal(gt.shape), 0, 1).astype(np.float32)
  eps = rng.standard_normal(gt.shape).astype(np.float32)
  eps_hat = (eps + 0.5 * rng.standard_normal(gt.shape)).astype(np.float32)
  t = np.array([3, 90], np.int32)
  sched = ad.make_schedule(100)

  tt = lambda a: torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2)))  # noqa: E731
  back = lambda g: g.numpy().transpose(0, 2, 3, 1)  # noqa: E731
  assert abs(float(la.smooth_l1(eps_hat, eps)) - float(torch.nn.functional.smooth_l1_loss(tt(eps_hat), tt(eps)))) < 1e-6
  assert abs(float(la.mse(eps_hat, eps)) - float(torch.nn.functional.mse_loss(tt(eps_hat), tt(eps)))) < 1e-6

  # PyTorch: the official forward (noise shifted in place) then loss_dfpl (both tensors shifted again).
  diff = ta.TorchDiffusion(sched.buffers)
  lpips_pt = torch_refs.official_lpips("vgg")
  x0_pt = ta.img2res(tt(gt), tt(lq))
  phi_pt, pred_pt = tt(phi).requires_grad_(), tt(eps_hat).requires_grad_()
  t_pt = torch.from_numpy(t.astype(np.int64))
  noise = tt(eps).clone()
  diff.q_sample(x0_pt, t_pt, phi_pt, noise)  # the network input; `noise` is now eps*
  pred = pred_pt * 1.0  # the UNet output, shifted in place by loss_dfpl's first q_sample
  x_t_pred = diff.q_sample(x0_pt, t_pt, phi_pt, pred)
  x_t = diff.q_sample(x0_pt, t_pt, phi_pt, noise)
  loss_pt = lpips_pt(ta.res2img(x_t_pred, tt(lq)), ta.res2img(x_t, tt(lq)), normalize=True).mean()
  loss_pt.backward()

  params = perceptual.lpips_frozen("vgg")
  x0 = ad.img_to_res(jnp.asarray(gt), jnp.asarray(lq))

  def ours(eps_hat_, phi_):
    _, eps_star = ad.q_sample(sched, x0, jnp.asarray(t), phi_, jnp.asarray(eps))
    return la.dfpl(params, sched, x0, jnp.asarray(t), phi_, eps_hat_, eps_star, jnp.asarray(lq))

  value, (g_pred, g_phi) = jax.jit(jax.value_and_grad(ours, argnums=(0, 1)))(jnp.asarray(eps_hat), jnp.asarray(phi))
  loss_pt = float(loss_pt.detach())
  assert abs(float(value) - loss_pt) < 2e-6 * max(1.0, loss_pt), (float(value), loss_pt)
  for g, ref in ((g_pred, pred_pt.grad), (g_phi, phi_pt.grad)):
    ref = back(ref)
    assert np.abs(np.asarray(g) - ref).max() < 1e-4 * np.abs(ref).max()
  # The double shift: the target image is res2img of x0-mean + noise + 2 (1 - sqrt(abar)) phi'.
  _, eps_star = ad.q_sample(sched, x0, jnp.asarray(t), jnp.asarray(phi), jnp.asarray(eps))
  _, target = la.dfpl_images(sched, x0, jnp.asarray(t), jnp.asarray(phi), jnp.asarray(eps_hat), eps_star,
                             jnp.asarray(lq))
  sa = sched.buffers["sqrt_alphas_cumprod"][t][:, None, None, None]
  so = sched.buffers["sqrt_one_minus_alphas_cumprod"][t][:, None, None, None]
  manual = sa * np.asarray(x0) + so * eps + 2 * (1 - sa) * (2 * phi - 1)
  np.testing.assert_allclose(np.asarray(target), np.clip(np.asarray(lq) + (np.clip(manual, -1, 1) + 1) / 2, 0, 1),
                             atol=2e-6)


def _torchmetrics():
  pytest.importorskip("torch")
  import types
  sys.modules.setdefault("torchvision._meta_registrations", types.ModuleType("torchvision._meta_registrations"))
  return pytest.importorskip("torchmetrics")


def test_ms_ssim_matches_torchmetrics():
  """The TS encoder loss ``1 - MS-SSIM`` (4 betas, data_range 1) against the installed torchmetrics (value and
  gradient), with the options of its version (:func:`lliejax.losses.anlightendiff.ms_ssim`)."""
  tm = _torchmetrics()
  import torch
  version = tuple(int(v) for v in tm.__version__.split(".")[:2])
  rng = np.random.default_rng(1)
  a = rng.random((2, 104, 112, 3)).astype(np.float32)
  b = np.clip(a + 0.15 * rng.standard_normal(a.shape), 0, 1).astype(np.float32)
  from torchmetrics.image import MultiScaleStructuralSimilarityIndexMeasure
  metric = MultiScaleStructuralSimilarityIndexMeasure(betas=la.MSSSIM_BETAS_4, data_range=1.0)
  a_pt = torch.from_numpy(np.ascontiguousarray(a.transpose(0, 3, 1, 2))).requires_grad_()
  loss_pt = 1 - metric(a_pt, torch.from_numpy(np.ascontiguousarray(b.transpose(0, 3, 1, 2))))
  loss_pt.backward()
  f = lambda x: la.encoder_loss(x, jnp.asarray(b), crop_sim=version < (1, 4), clamp_variance=version >= (1, 3))  # noqa
  value, grad = jax.jit(jax.value_and_grad(f))(jnp.asarray(a))
  loss_pt = float(loss_pt.detach())
  assert abs(float(value) - loss_pt) < 3e-6, (float(value), loss_pt)
  ref = a_pt.grad.numpy().transpose(0, 2, 3, 1)
  assert np.abs(np.asarray(grad) - ref).max() < 1e-4 * np.abs(ref).max()
  # The two torchmetrics conventions differ (the SSIM crop), and small images are refused as torchmetrics does.
  other = jax.jit(lambda x: la.encoder_loss(x, jnp.asarray(b), crop_sim=version >= (1, 4)))(jnp.asarray(a))
  assert abs(float(value) - float(other)) > 1e-5
  with pytest.raises(ValueError, match="larger than 90"):
    la.ms_ssim(jnp.zeros((1, 96, 128, 3)), jnp.zeros((1, 96, 128, 3)))


# ------------------------------------------------------------------------------------------------ train steps
def _step(config, batch_shape=(2, 16, 16)):
  """One jitted generic train step on a 2-device mesh from random parameters: ``(method, state before, state
  after, metrics, frozen)``. TS: ``frozen`` is ``method.init_frozen`` (the earlier stages' exports); FS: random
  stand-ins for its frozen networks (no initialisation to compile) and the LPIPS parameters where it has them."""
  method = methods.build(config)
  mesh = parallel.make_mesh(jax.devices()[:2])
  repl = parallel.replicated(mesh)
  tx = optim.make_optimizer(config)
  if method.layout == "ts":
    frozen = method.init_frozen(key(0))
  else:
    names = set(jax.eval_shape(method.init_frozen, key(0)))
    frozen = random_networks(method, sorted(names - {"lpips"}), seed=1)
    if "lpips" in names:
      frozen["lpips"] = perceptual.lpips_frozen("vgg")
  params = random_networks(method, method.trained_networks(), seed=2)
  st0 = jax.device_get(state_lib.TrainState(step=jnp.zeros((), jnp.int32), params=params, ema={},
                                            opt_state=tx.init(params)))  # host copies (the step donates its input)
  step = train.jit_train_step(train.make_train_step(method, tx), mesh)
  rng = np.random.default_rng(0)
  gt = rng.random(batch_shape + (3,)).astype(np.float32)
  batch = parallel.global_batch({"gt": gt, "lq": gt * 0.2}, mesh)
  st1, metrics = step(jax.device_put(st0, repl), jax.device_put(frozen, repl), batch, key(1))
  assert bool(metrics["finite"]) and np.isfinite(float(metrics["loss"]))
  return method, st0, jax.device_get(st1), metrics, jax.device_get(frozen)


def test_fs_released_train_step_keeps_the_encoder():
  """``released``: the encoder (outside the official optimiser) stays exactly at its value; the denoiser moves."""
  config = load("anlightendiff_fs:tiny")
  method, st0, st1, m, frozen = _step(config)
  assert set(st1.params) == {"unet", "encoder"} and set(frozen) == {"lpips"} and "dfpl" in m
  assert all_moved(st0.params["unet"], st1.params["unet"])
  assert leaves_equal(st0.params["encoder"], st1.params["encoder"])
  assert methods.count_params(st1.opt_state) <= methods.count_params(st1.params) + 8  # Lion: one moment
  assert method.inference_frozen(frozen) == {}
  # The encoder's initialisation does not depend on the variant (same key split).
  fixed = methods.build(load("anlightendiff_fs:tiny,variant=fixed"))
  assert np.array_equal(jax.random.key_data(method.network_keys(key(0))["encoder"]),
                        jax.random.key_data(fixed.network_keys(key(0))["encoder"]))
  with pytest.raises(cu.ConfigError, match="config.optim.weight_decay: must be 0"):
    load("anlightendiff_fs:tiny,optim.weight_decay=0.01")
  load("anlightendiff_fs:tiny,variant=fixed,optim.weight_decay=0.01")


def test_fs_fixed_train_step_trains_both():
  """``fixed``: denoiser and encoder both move (smooth-L1 loss here, to compile no VGG a second time)."""
  config = load("anlightendiff_fs:tiny,variant=fixed,loss=l1")
  _, st0, st1, m, frozen = _step(config)
  assert set(st1.params) == {"unet", "encoder"} and frozen == {} and "l1" in m
  assert all_moved(st0.params["unet"], st1.params["unet"])
  assert all_moved(st0.params["encoder"], st1.params["encoder"])


def test_ts_stages_chain(tmp_path):
  """encoder (MS-SSIM) -> he (LPIPS, the encoder from the first export) -> diffusion (l2, both from the second):
  each stage moves its network only, reads the previous ones unchanged, and its export carries them."""
  exports = {}
  previous = ""
  for stage, shape in (("encoder", (2, 100, 100)), ("he", (2, 16, 16)), ("diffusion", (2, 16, 16))):
    config = load(f"anlightendiff_ts:tiny,variant=fixed,stage={stage},init_from={previous}")
    method, st0, st1, m, frozen = _step(config, batch_shape=shape)
    trained = ma.TS_TRAINED[stage]
    assert set(st1.params) == {trained}
    assert all_moved(st0.params[trained], st1.params[trained])
    for net in ma.TS_INPUTS[stage]:  # the earlier stages' networks, as exported
      assert leaves_equal(frozen[net], exports[ma.TS_INPUTS[stage][-1]][net])
    assert ("lpips" in frozen) == (stage == "he")
    previous = str(tmp_path / stage)
    checkpoint.export(previous, st1.params, config=config, method=method.name,
                      frozen=method.inference_frozen(frozen))
    exports[trained] = method.networks(st1.params, method.inference_frozen(frozen))
  assert set(exports["unet"]) == {"unet", "encoder", "he"}
  with pytest.raises(ValueError, match="needs the export of the previous stage"):
    methods.build(load("anlightendiff_ts:tiny,stage=he")).init_frozen(None)


def test_train_two_step_chains_the_exports(tmp_path):
  """:func:`train_two_step`: the stage configs (their defaults, the spec's overrides) and the export chain."""
  seen = []

  def fake_train(config, workdir):
    method = methods.build(config)
    frozen = method.init_frozen(None)
    seen.append((config.objective.stage, config.objective.init_from, config.optim.name, config.num_train_steps,
                 sorted(frozen)))
    params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), jax.eval_shape(method.init_params, key(0)))
    checkpoint.export(os.path.join(workdir, "export"), params, config=config, method=method.name,
                      frozen=method.inference_frozen(frozen))

  out = ma.train_two_step("anlightendiff_ts:tiny,steps=3", str(tmp_path), train_fn=fake_train)
  assert out == [str(tmp_path / s / "export") for s in ma.TS_STAGES]
  assert seen == [("encoder", "", "lion", 3, []), ("he", out[0], "adamw", 3, ["encoder", "lpips"]),
                  ("diffusion", out[1], "lion", 3, ["encoder", "he"])]


@pytest.mark.slow
def test_cli_trains_the_ts_stage_chain_on_the_demo_set(tmp_path, tfds_dir, capsys):
  """``lliejax train --stages all``: the three TS stages through the generic loop on the real demo set (real
  checkpoints and exports), each initialised from the previous export, then the last stage evaluated."""
  work = tmp_path / "ts"
  args = ["train", "--config", "anlightendiff_ts:tiny,steps=2", "--workdir", str(work), "--stages", "all",
          "--data-dir", tfds_dir, "--max-images", "1"]
  assert cli.main(args) == 0
  exports = {s: checkpoint.load_export(str(work / s / "export")) for s in ma.TS_STAGES}
  assert {s: sorted(e.params) for s, e in exports.items()} == {"encoder": ["encoder"], "he": ["he"],
                                                                  "diffusion": ["unet"]}
  assert sorted(exports["diffusion"].frozen) == ["encoder", "he"]
  # the diffusion stage froze exactly the he stage's refiner and the encoder stage's encoder
  assert leaves_equal(exports["diffusion"].frozen["he"], exports["he"].params["he"])
  assert leaves_equal(exports["diffusion"].frozen["encoder"], exports["encoder"].params["encoder"])
  with open(work / "diffusion" / "eval_test" / "metrics.json") as f:
    m = json.load(f)["mean"]
  assert m["psnr"] > 0 and np.isfinite(m["lpips"])
  assert "protocol anlightendiff_ts" in capsys.readouterr().out
  for spec, stages, message in (("anlightendiff_ts:tiny", "encoder,refiner", "unknown stage(s) refiner"),
                                ("anlightendiff_ts:tiny", "he,encoder", "consecutive stages"),
                                ("anlightendiff_fs:tiny", "all", "--stages chains the stages of anlightendiff_ts")):
    assert cli.main(["train", "--config", spec, "--workdir", str(tmp_path / "x"), "--stages", stages]) == 2
    assert message in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "x")


# ------------------------------------------------------------------------------------------------ loss composition
def test_loss_is_the_composition_of_the_pieces():
  """FS (both branches of the anchor) and TS diffusion (released vs fixed anchor): the method's loss equals the
  process, network and loss functions composed by hand, with the same draws (one compiled program per method)."""
  rng = np.random.default_rng(3)
  gt = jnp.asarray(rng.random((2, 8, 8, 3)), jnp.float32)
  batch = {"gt": gt, "lq": gt * 0.3}
  x0 = 2 * (gt - batch["lq"]) - 1

  fs = methods.build(load("anlightendiff_fs:tiny,variant=fixed,loss=l2"))
  params = random_networks(fs, ("unet", "encoder"))

  @jax.jit
  def fs_both(params, anchor_gt):
    draws = dict(fs.draws(key(5), gt.shape), anchor_gt=anchor_gt)
    value, aux = fs.loss_from_draws(params, {}, batch, draws)
    out, feats = fs.nets["encoder"].apply({"params": params["encoder"]}, condition.hand_crafted_condition(batch["lq"]))
    phi = jnp.where(anchor_gt, gt, out)
    x_t, eps_star = ad.q_sample(fs.schedule, x0, draws["t"], phi, draws["noise"])
    eps_hat = fs.nets["unet"].apply({"params": params["unet"]}, x_t, draws["t"], batch["lq"], feats)
    return value, aux["anchor_gt"], jnp.mean(jnp.square(eps_hat - eps_star)), fs.loss(params, {}, batch, key(5),
                                                                                        ema={})[0]

  for anchor_gt in (False, True):
    value, flag, manual, plain = fs_both(params, jnp.asarray(anchor_gt))
    assert float(value) == float(manual) and float(flag) == anchor_gt
  assert float(plain) == float(fs_both(params, fs.draws(key(5), gt.shape)["anchor_gt"])[0])

  ts = {v: methods.build(load(f"anlightendiff_ts:tiny,variant={v}")) for v in ("released", "fixed")}
  nets = random_networks(ts["fixed"], ("unet", "encoder", "he"))

  @jax.jit
  def ts_all(nets):
    out = {}
    m = ts["fixed"]
    draws = m.draws(key(6), gt.shape)
    img_c, _ = m.nets["encoder"].apply({"params": nets["encoder"]}, condition.hand_crafted_condition(batch["lq"]))
    zeta, _ = m.nets["he"].apply({"params": nets["he"]}, jnp.concatenate(
        [condition.histogram_equalize(batch["lq"]), img_c], -1))
    for variant, method in ts.items():
      value, _ = method.loss_from_draws({"unet": nets["unet"]}, {"encoder": nets["encoder"], "he": nets["he"]},
                                        batch, draws)
      phi = img_c if variant == "released" else (1 - zeta) * img_c + zeta
      x_t, eps_star = ad.q_sample(method.schedule, x0, draws["t"], phi, draws["noise"])
      eps_hat = method.nets["unet"].apply({"params": nets["unet"]}, x_t, draws["t"], batch["lq"])
      out[variant] = (value, jnp.mean(jnp.square(eps_hat - eps_star)))
    # Sampling uses the refiner's anchor in both variants (the released test code loads the refiner).
    out["anchor"] = (method.anchor(nets, batch["lq"])[0], (1 - zeta) * img_c + zeta)
    out["ref"] = draws["anchor_gt"]
    return out

  out = ts_all(nets)
  assert not bool(out["ref"])  # TS has no "ref" branch
  for variant in ("released", "fixed"):
    assert float(out[variant][0]) == float(out[variant][1])
  assert float(out["released"][0]) != float(out["fixed"][0])
  np.testing.assert_allclose(np.asarray(out["anchor"][0]), np.asarray(out["anchor"][1]), rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------------------ convert + sample
def _random_lightning_state_dict(arch, rng):
  sd = {"model." + n: ad.make_schedule(100).buffers[n] for n in ia.BUFFER_NAMES}
  for e in ia.KEYMAP.spec(arch):
    sd[e.key] = (rng.standard_normal(e.shape) * 0.1).astype(np.float32)
  if arch["two_step"]:
    enc = ia.PREFIXES["ts"]["encoder"]
    sd.update({ia.TS_ENCODER_COPY + k[len(enc):]: v.copy() for k, v in list(sd.items()) if k.startswith(enc)})
  return sd


@pytest.mark.parametrize("name", ["anlightendiff_fs", "anlightendiff_ts"])
def test_convert_ckpt_roundtrip_and_sample(tmp_path, name):
  """A random official-layout Lightning checkpoint (``torch.save({'state_dict': ...})``, buffers and the TS encoder
  copy included) -> ``lliejax convert`` -> export -> ``--to-torch`` ``.pth`` and ``.ckpt`` (with the buffers of the
  export's T): every network tensor back exactly; the FS export then samples in one compiled program (the DRDS
  loop is a single ``while``), output in [0, 1]."""
  torch = pytest.importorskip("torch")
  spec = f"{name}:tiny"
  config = load(spec)
  arch = ia.KEYMAP.arch(config.model)
  sd = _random_lightning_state_dict(arch, np.random.default_rng(7))
  ckpt = tmp_path / "model.ckpt"
  torch.save({"epoch": 3, "global_step": 99, "state_dict": {k: torch.from_numpy(v) for k, v in sd.items()}}, ckpt)
  out = tmp_path / "export"
  assert cli.main(["convert", str(ckpt), str(out), "--config", spec]) == 0
  exp = checkpoint.load_export(str(out))
  assert exp.method == name and set(exp.params) == set(ma.NETWORKS[name[-2:]])
  back = tmp_path / "back.pth"
  assert cli.main(["convert", "--to-torch", str(out), str(back)]) == 0
  sd2 = torch.load(back, weights_only=True)
  nets = [k for k in sd if not (k.startswith(ia.BUFFER_PREFIX) and k[len(ia.BUFFER_PREFIX):] in ia.BUFFER_NAMES)]
  assert list(sd2) == nets
  for k in nets:
    assert np.array_equal(sd2[k].numpy(), sd[k]), k
  # --to-torch x.ckpt: the Lightning checkpoint, buffers of the export's T first (float32, as the official
  # EnlightDiffusion registers them), then the networks (the official modules load it strictly:
  # tests/test_crosscheck_anlightendiff.py).
  back_ckpt = tmp_path / "back.ckpt"
  assert cli.main(["convert", "--to-torch", str(out), str(back_ckpt)]) == 0
  ckpt = torch.load(back_ckpt, weights_only=True)
  assert (ckpt["epoch"], ckpt["global_step"]) == (0, 0) and ckpt["pytorch-lightning_version"].startswith("1.")
  buffers = ad.make_schedule(config.diffusion.timesteps).buffers
  assert list(ckpt["state_dict"]) == [ia.BUFFER_PREFIX + n for n in ia.BUFFER_NAMES] + nets
  for n in ia.BUFFER_NAMES:
    v = ckpt["state_dict"][ia.BUFFER_PREFIX + n]
    assert v.dtype == torch.float32 and np.array_equal(v.numpy(), buffers[n]), n
  for k in nets:
    assert np.array_equal(ckpt["state_dict"][k].numpy(), sd[k]), k
  if name != "anlightendiff_fs":
    return
  method = methods.build(exp.config)
  lq = jnp.asarray(np.random.default_rng(0).random((1, 13, 11, 3)) * 0.3, jnp.float32)
  sample = jax.jit(lambda p, x, k: method.sample(p, exp.frozen, x, k))
  hlo = sample.lower(exp.params, lq, key(2)).as_text()
  funcs = hlo.split("func.func ")[1:]
  assert sum(f.count("stablehlo.while") for f in funcs if "threefry" not in f.split("(")[0]) == 1
  img = np.asarray(sample(exp.params, lq, key(2)))
  assert img.shape == (1, 13, 11, 3) and np.all(np.isfinite(img)) and img.min() >= 0 and img.max() <= 1
  with pytest.raises(ValueError, match="samples all diffusion.timesteps=8"):
    method.sample(exp.params, {}, lq, key(2), steps=4)
