"""ReDDiT foundations: the schedule (REFERENCE §3.1 check values), the strided DDIM (§3.6) against a direct numpy
transcription of the official loop, the SR3 UNet against an independent PyTorch transcription (tests/torch_sr3.py),
the state_dict key map, and the teacher method through the generic train step and sampler."""
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lliejax import config_utils, methods, optim, parallel, state as state_lib, train
from lliejax.diffusion import reddit as rd
from lliejax.interop import keymap
from lliejax.interop import reddit as ir
from lliejax.methods import reddit_teacher
from lliejax.models.sr3_unet import SR3UNet

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from torch_sr3 import TorchSR3UNet, randomise_  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# A reduced UNet (GroupNorm 32 needs >= 32 channels): two levels, attention at level 1 (nominal 16) and the middle.
SMALL = dict(in_channel=6, out_channel=3, inner_channel=32, channel_mults=(1, 2), attn_res=(16,), res_blocks=2,
             norm_groups=32, image_size=32)


def reddit_config(arg: str):
  """``configs/reddit_teacher.py:<arg>``, loaded from the file (works with or without the installed ``lliejax.configs``)."""
  return config_utils.load_config(os.path.join(REPO, "configs", "reddit_teacher.py") + ":" + arg)


# ------------------------------------------------------------------------------------------------ schedule
def test_schedule_check_values():
  """REFERENCE §3.1 [verified] values, and every distillation stage has the same N = 513 tables."""
  s = rd.make_schedule(16, 32)
  assert s.N == 513 and s.gamma_prev.shape == (514,) and s.gamma_prev.dtype == np.float64
  np.testing.assert_allclose(s.gamma_prev[[0, 1, 32, 256, 512, 513]],
                             [1, 0.99995, 0.98881893, 0.52241803, 0.075388511, 0.074630818], rtol=2e-8)
  np.testing.assert_allclose(s.gamma_prev[-32], 0.10113722, rtol=1e-7)
  assert s.buffers["sqrt_alphas_cumprod"][0] == np.float32(0.99995)
  assert s.buffers["sqrt_one_minus_alphas_cumprod"][0] == np.float32(0.01)
  assert set(s.buffers) == set(rd.BUFFER_NAMES) and all(v.dtype == np.float32 and v.shape == (513,)
                                                         for v in s.buffers.values())
  students = {8: [0.0753885, 0.138093, 0.233268, 0.363447, 0.522418, 0.692908, 0.848204, 0.958472],
              4: [0.0753885, 0.233268, 0.522418, 0.848204], 2: [0.0753885, 0.522418]}
  stage = s
  for n in (8, 4, 2):
    stage = stage.student()
    assert (stage.num_timesteps, stage.time_scale) == (n, 512 // n)
    np.testing.assert_array_equal(stage.gamma_prev, s.gamma_prev)
    np.testing.assert_allclose(stage.step_levels(), students[n], atol=6e-7)
  # A 16-step teacher sampled with stride 4 visits the 4-step student's levels.
  np.testing.assert_array_equal(s.step_levels(4), rd.make_schedule(4, 128).step_levels())
  np.testing.assert_array_equal(rd.ddim_taus(8, 3), [6, 3])  # the level of step 8 is never used
  np.testing.assert_array_equal(rd.ddim_taus(4), [4, 3, 2, 1])
  with pytest.raises(ValueError, match="stride"):
    rd.ddim_taus(4, 5)


def test_training_levels_and_noising():
  s = rd.make_schedule(16, 32)
  g = np.asarray(rd.sample_gamma(s, jax.random.key(0), 64))
  # One t for the batch (GSAD): every gamma lies in one interval [gamma_prev[t], gamma_prev[t-1]].
  t = int(np.searchsorted(-s.gamma_prev, -g.max()))
  assert np.all(g <= s.gamma_prev[t - 1] + 1e-6) and np.all(g >= s.gamma_prev[t] - 1e-6) and np.ptp(g) > 0
  g = np.asarray(rd.sample_gamma(s, jax.random.key(1), 4096, per_sample_t=True))
  assert g.min() >= s.gamma_prev[-1] - 1e-6 and g.max() <= 1.0 and np.ptp(g) > 0.8
  x0 = jax.random.uniform(jax.random.key(2), (3, 4, 4, 3), minval=-1, maxval=1)
  eps = jax.random.normal(jax.random.key(3), x0.shape)
  gam = jnp.asarray([0.9, 0.5, 0.1])
  xt = rd.q_sample(x0, gam, eps)
  np.testing.assert_allclose(xt[1], 0.5 * x0[1] + np.sqrt(0.75) * eps[1], rtol=1e-6)
  np.testing.assert_allclose(rd.predict_start(xt, gam, eps), x0, atol=2e-5)
  np.testing.assert_allclose(rd.predict_eps(xt, x0, gam), eps, atol=2e-5)


# ------------------------------------------------------------------------------------------------ DDIM
def _official_buffers(n, s):
  """``set_new_noise_schedule``, restated: float64 tables, float32 buffers, the float64 host table."""
  betas = np.linspace(1e-4, 2e-2, n * s + 1, dtype=np.float64)
  abar = np.cumprod(1.0 - betas)
  f32 = lambda a: a.astype(np.float32)
  return {"gamma_prev": np.sqrt(np.append(1.0, abar)), "sqrt_recip": f32(np.sqrt(1 / abar)),
          "sqrt_recipm1": f32(np.sqrt(1 / abar - 1)), "sqrt_ac": f32(np.sqrt(abar)),
          "sqrt_1m": f32(np.sqrt(1 - abar))}


def _stand_in(x, cond, gamma):
  """A tiny 'network' of x_t, the condition and the level (numpy or jax)."""
  lib = jnp if isinstance(x, jax.Array) else np
  g = gamma.reshape(-1, 1, 1, 1)
  return lib.tanh(0.7 * x + 0.4 * cond) * (1.5 - g) + 0.3 * lib.sin(3.0 * g + cond)


def _official_ddim(x_t, cond, n, s, stride):
  """``GaussianDiffusion.ddim`` with ``clip_denoised=True``, one sample at a time (batch size 1, as the code)."""
  b = _official_buffers(n, s)
  out = []
  for i in range(x_t.shape[0]):
    x, c = x_t[i:i + 1].astype(np.float32), cond[i:i + 1]
    for time_step in reversed(range(stride, n + 1, stride)):
      t, prev = time_step * s, (time_step - stride) * s
      level = np.array([[b["gamma_prev"][t]]], np.float32)  # torch.FloatTensor([...]) of a float64 value
      eps = _stand_in(x, c, level).astype(np.float32)
      x0 = np.clip(b["sqrt_recip"][t] * x - b["sqrt_recipm1"][t] * eps, -1.0, 1.0)
      eps = (x - b["sqrt_ac"][t] * x0) / b["sqrt_1m"][t]
      x = b["sqrt_ac"][prev] * x0 + b["sqrt_1m"][prev] * eps
    out.append(np.clip(x, -1, 1))
  return np.concatenate(out)


@pytest.mark.parametrize("n,s,stride", [(2, 256, 1), (4, 128, 2), (8, 64, 3)])
def test_ddim_matches_official_loop(n, s, stride):
  """Two DDIM steps, batch 3, against the numpy transcription (the last step is 0.99995 x0 + 0.01 eps)."""
  rng = np.random.default_rng(n)
  x_init = rng.standard_normal((3, 8, 8, 3)).astype(np.float32)
  cond = rng.uniform(-1, 1, (3, 8, 8, 3)).astype(np.float32)
  expected = _official_ddim(x_init, cond, n, s, stride)
  calls = []

  def eps_fn(x, c, gamma):
    calls.append(gamma.shape)
    return _stand_in(x, c, gamma)

  sched = rd.make_schedule(n, s)
  run = jax.jit(lambda x, c: rd.ddim_sample(sched, eps_fn, c, stride=stride, x_init=x, return_intermediates=True))
  out, states = run(jnp.asarray(x_init), jnp.asarray(cond))
  assert calls == [(3,)] and states.shape[0] == 2  # traced once, scanned over the two steps
  np.testing.assert_allclose(np.asarray(out), expected, rtol=1e-5, atol=1e-5)  # float32 tanh/sin rounding
  tables = rd.ddim_tables(sched, stride)
  assert tables["sqrt_b"][-1] == np.float32(0.99995) and tables["sqrt_1m_b"][-1] == np.float32(0.01)


# ------------------------------------------------------------------------------------------------ UNet
def test_unet_matches_torch_transcription():
  """Random official-layout weights: lliejax output == PyTorch output (non-square input; attention by image_size)."""
  tm = randomise_(TorchSR3UNet(**SMALL), seed=3).eval()
  sd = tm.state_dict()
  conv = ir.KEYMAP.import_state_dict(sd)
  assert conv.arch["channel_mults"] == [1, 2] and conv.arch["res_blocks"] == 2 and conv.arch["inner_channel"] == 32
  assert ir.KEYMAP.attention_levels(conv.arch) == [False, True]
  model = SR3UNet(**SMALL)
  assert model.attention_levels() == (False, True) and SR3UNet().attention_levels() == (False,) * 3 + (True, False)
  rng = np.random.default_rng(0)
  x = rng.standard_normal((2, 6, 16, 24)).astype(np.float32)
  gamma = np.array([0.31, 0.97], np.float32)
  with torch.no_grad():
    ref = tm(torch.from_numpy(x), torch.from_numpy(gamma)[:, None])[0].numpy()
  out = jax.jit(model.apply)({"params": conv.params}, jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(gamma))
  out = np.asarray(out).transpose(0, 3, 1, 2)
  assert out.shape == ref.shape == (2, 3, 16, 24)
  assert np.max(np.abs(out - ref)) <= 1e-5 * np.max(np.abs(ref)), np.max(np.abs(out - ref))
  with pytest.raises(ValueError, match="multiples of 2"):
    model.apply({"params": conv.params}, jnp.zeros((1, 15, 16, 6)), jnp.ones((1,)))


def test_full_config_parameter_count_and_keys():
  """The official configuration: 17,434,182 parameters counted the official way (dead mlp / var_conv included),
  and the key map's 420 entries equal the PyTorch transcription's state_dict (names, order, shapes)."""
  shapes = jax.eval_shape(lambda k: SR3UNet().init(k, jnp.zeros((1, 16, 16, 6)), jnp.ones((1,)))["params"],
                          jax.random.key(0))
  assert methods.count_params(shapes) == 17_434_182
  arch = dict(SMALL, inner_channel=64, channel_mults=(1, 1, 2, 2, 4), image_size=128)
  spec = ir.KEYMAP.spec(arch)
  torch_sd = TorchSR3UNet().state_dict()
  assert [e.key for e in spec] == list(torch_sd) and len(spec) == 420
  assert all(e.shape == tuple(torch_sd[e.key].shape) for e in spec)
  flat = {p: tuple(v.shape) for p, v in keymap.flatten(shapes).items()}
  assert flat == ir.KEYMAP.param_shapes(arch)
  assert ir.KEYMAP.infer_params(shapes) == ir.KEYMAP.arch(arch)


def test_state_dict_round_trip_and_errors():
  tm = randomise_(TorchSR3UNet(**SMALL), seed=5)
  sd = tm.state_dict()
  conv = ir.KEYMAP.import_state_dict(sd, SMALL)
  back = ir.KEYMAP.export_params(conv.params, SMALL)
  assert list(back) == list(sd) and all(np.array_equal(back[k], sd[k].numpy()) for k in sd)
  # The released layout: GaussianDiffusion.state_dict() = 12 buffers + denoise_fn.*, here under DataParallel.
  sched = rd.make_schedule(4, 128)
  full = ir.KEYMAP.export_diffusion_state_dict(conv.params, SMALL, schedule=sched, as_torch=True)
  assert list(full)[:12] == list(rd.BUFFER_NAMES) and len(full) == 12 + len(sd)
  wrapped = {"module." + k: v for k, v in full.items()}
  again = ir.KEYMAP.import_state_dict(wrapped)
  assert jax.tree.all(jax.tree.map(np.array_equal, again.params, conv.params))
  _, buffers = ir.split_diffusion_state_dict(full)
  assert ir.check_buffers(buffers, rd.make_schedule(16, 32)) == []  # N = 513 for every released stage
  buffers["betas"] = buffers["betas"] * 2
  assert ir.check_buffers(buffers, sched) == ["betas"]
  # Leftover and missing keys are all named.
  bad = dict(full)
  bad["denoise_fn.extra_head.weight"] = torch.zeros(3)
  del bad["denoise_fn.var_conv.4.bias"]
  with pytest.raises(keymap.StateDictMismatchError) as err:
    ir.KEYMAP.import_state_dict(bad, SMALL, source="teacher_gen.pth")
  msg = str(err.value)
  assert "teacher_gen.pth" in msg and "extra_head.weight" in msg and "var_conv.4.bias" in msg
  assert err.value.unexpected == ["extra_head.weight"] and err.value.missing == ["var_conv.4.bias"]
  with pytest.raises(keymap.StateDictMismatchError, match="not an SR3 UNet"):
    ir.KEYMAP.import_state_dict({"intro.weight": torch.zeros(1, 6, 3, 3)})
  params = jax.tree.map(np.asarray, conv.params)
  del params["var_conv_0"]
  with pytest.raises(keymap.StateDictMismatchError, match="var_conv_0/kernel"):
    ir.KEYMAP.export_params(params, SMALL)


# ------------------------------------------------------------------------------------------------ teacher
def test_teacher_config_and_validation():
  config = reddit_config("tiny")
  assert methods.build(config).size_multiple == 2
  lol = reddit_config("lolv1")
  method = methods.get("reddit_teacher")(lol)
  assert method.size_multiple == 16 and method.schedule.N == 513 and method.stride(None) == 1
  assert method.stride(4) == 4 and reddit_teacher.padding(400, 600, 16, (8, 4)) == (8, 8, 4, 4)
  assert reddit_teacher.padding(15, 17, 16) == (0, 1, 7, 8) and reddit_teacher.padding(384, 384, 16) == (0,) * 4
  with pytest.raises(ValueError, match="steps must divide"):
    method.stride(3)
  with pytest.raises(config_utils.ConfigError, match="sampling.steps"):
    reddit_config("tiny,sample_steps=3")
  with pytest.raises(config_utils.ConfigError, match="loss.name"):
    reddit_config("tiny,loss=huber")
  with pytest.raises(config_utils.ConfigError, match="data.patch_size"):
    reddit_config("lolv1,data.patch_size=100")


def test_teacher_train_step_and_sample():
  """One step of the generic jitted train step (finite loss, dead params untouched); sampling is one program."""
  config = reddit_config("tiny")
  method = methods.build(config)
  mesh = parallel.make_mesh(jax.devices()[:2])  # sharded, but cheaper to compile than over all 8 CPU devices
  tx = optim.make_optimizer(config)
  st = jax.device_put(state_lib.create(method, tx, jax.random.key(0)), parallel.replicated(mesh))
  before = jax.device_get(st.params)
  step = train.jit_train_step(train.make_train_step(method, tx), mesh)
  rng = np.random.default_rng(0)
  gt = rng.random((8, 16, 16, 3)).astype(np.float32)
  batch = parallel.global_batch({"gt": gt, "lq": gt * 0.2}, mesh)
  st, m = step(st, {}, batch, jax.random.key(1))
  assert set(m) >= {"loss", "l1"} and np.isfinite(float(m["loss"])) and float(m["loss"]) > 0
  after = jax.device_get(st.params)
  live = ("ups_0", "res_block", "block1", "block_3", "kernel")
  dead = ("ups_0", "res_block", "mlp_1", "kernel")
  get = lambda tree, path: np.asarray(tree[path[0]][path[1]][path[2]][path[3]] if len(path) == 4
                                      else tree[path[0]][path[1]][path[2]][path[3]][path[4]])
  assert not np.array_equal(get(before, live), get(after, live))
  np.testing.assert_array_equal(get(before, dead), get(after, dead))
  np.testing.assert_array_equal(before["var_conv_2"]["kernel"], after["var_conv_2"]["kernel"])

  lq = jnp.asarray(rng.random((1, 15, 17, 3)), jnp.float32)  # odd sizes: reflect-padded to 16 x 18, cropped back
  sample = jax.jit(lambda p, x, k: method.sample(p, {}, x, k, steps=2))
  hlo = sample.lower(after, lq, jax.random.key(2)).as_text()
  # The whole sampler is one scan: one while loop outside the PRNG's own (threefry) functions.
  funcs = hlo.split("func.func ")[1:]
  assert sum(f.count("stablehlo.while") for f in funcs if "threefry" not in f.split("(")[0]) == 1
  out = np.asarray(sample(after, lq, jax.random.key(2)))
  assert out.shape == (1, 15, 17, 3) and np.all(np.isfinite(out)) and out.min() >= 0 and out.max() <= 1
  l2 = methods.build(reddit_config("tiny,loss=l2"))
  small = {"gt": jnp.asarray(gt[:2, :8, :8]), "lq": jnp.asarray(gt[:2, :8, :8] * 0.2)}
  value, aux = jax.jit(lambda p, b, k: l2.loss(p, {}, b, k, ema={}))(after, small, jax.random.key(3))
  assert set(aux) == {"l2"} and np.isfinite(float(value))


def test_cli_convert_released_layout_and_back(tmp_path, capsys):
  """``lliejax convert`` reads a released-layout ``*_gen.pth`` (buffers + ``denoise_fn.``) into an export of the
  ``reddit_teacher`` method and writes the UNet back bit for bit."""
  import torch
  from lliejax import checkpoint, cli
  cfg_spec = os.path.join(REPO, "configs", "reddit_teacher.py") + ":tiny"
  config = reddit_config("tiny")
  params = methods.build(config).init_params(jax.random.key(3))
  sd = ir.KEYMAP.export_diffusion_state_dict(params, config.model, as_torch=True)
  pth = tmp_path / "tiny_gen.pth"
  torch.save(sd, pth)
  out = tmp_path / "export"
  assert cli.main(["convert", str(pth), str(out), "--config", cfg_spec]) == 0
  exported = checkpoint.load_export(str(out))
  assert exported.method == "reddit_teacher"
  for a, b in zip(jax.tree.leaves(exported.params), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  back = tmp_path / "back.pth"
  assert cli.main(["convert", "--to-torch", str(out), str(back)]) == 0
  sd2 = torch.load(back, weights_only=True)
  unet = {k[len(ir.DIFFUSION_PREFIX):]: v for k, v in sd.items() if k.startswith(ir.DIFFUSION_PREFIX)}
  assert list(sd2) == list(unet)
  for k, v in unet.items():
    assert torch.equal(sd2[k], v), k


def test_mid_attention_option():
  """``mid_attn=False`` (not official) drops exactly the middle block's attention; with ``attn_res=()`` no attention
  is left (the network is fully convolutional); the official key map refuses such params, naming the keys."""
  arch = dict(SMALL, attn_res=(), res_blocks=1)
  init = lambda m: m.init(jax.random.key(0), jnp.zeros((1, 16, 16, 6)), jnp.ones((1,)))["params"]
  full, conv = init(SR3UNet(**arch)), init(SR3UNet(**arch, mid_attn=False))
  assert "attn" in full["mid_0"] and "attn" not in conv["mid_0"]
  attn = methods.count_params(full["mid_0"]["attn"])
  assert attn > 0 and methods.count_params(full) - methods.count_params(conv) == attn
  assert not any("attn" in "/".join(path) for path in keymap.flatten(conv))
  with pytest.raises(keymap.StateDictMismatchError) as err:
    ir.KEYMAP.export_params(conv, arch)
  assert len(err.value.missing) == 5 and all(k.startswith("mid_0/attn/") for k in err.value.missing)


def test_config_defaults_fill_keys_older_exports_lack():
  """A teacher export written before ``mid_attn`` existed compares equal to a config spelling out its default."""
  from lliejax import models as models_lib
  old = {"name": "sr3_unet", "inner_channel": 32}
  fill = models_lib.with_config_defaults
  assert fill(old) == fill({**old, "mid_attn": True}) != fill({**old, "mid_attn": False})
  assert fill({"name": "conditional_nafnet", "width": 8}) == {"name": "conditional_nafnet", "width": 8}
