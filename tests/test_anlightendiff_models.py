"""AnlightenDiff's networks (REFERENCE §2.7-2.8): the full-size parameter counts and key sets, forward parity with
PyTorch through the key maps, the key maps' round trips and errors, the initialisation.

The PyTorch side (tests/torch_anlightendiff_nets.py) is the unmodified official code when a copy of
allanchan339/AnlightenDiff is available (``LLIEJAX_ANLIGHTENDIFF_OFFICIAL``, a checkout or bare git mirror) and an
independent transcription otherwise; every parity test runs against both where it can.
"""
import collections
import os
import re
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lliejax.interop import anlightendiff as ia
from lliejax.interop import keymap
from lliejax.models import anlightendiff_unet as au

torch = pytest.importorskip("torch")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import torch_anlightendiff_nets as tn  # noqa: E402

REFERENCE_DIR = os.environ.get("LLIEJAX_REFERENCE_DIR", "/work/shared/reference")
SOURCES = [pytest.param("official", marks=pytest.mark.skipif(tn.official_root() is None,
                                                             reason=f"no official copy ({tn.OFFICIAL_ENV})")),
           "transcription"]
FULL = dict(unet_dim=64, unet_outdim=3, dim_mults=(1, 2, 2, 4, 4, 8))
# Parity configurations: FS at the released depth (6 levels, 5 down-samplings; 128 px keeps 4x4 at the bottom),
# TS at 2 levels (compile time).
FS_SMALL = dict(unet_dim=8, unet_outdim=3, dim_mults=(1, 2, 2, 4, 4, 8))
TS_SMALL = dict(unet_dim=8, unet_outdim=3, dim_mults=(1, 2))
TOL = 1e-5
KM = dict(unet_dim=8, unet_outdim=3, dim_mults=(1, 2, 4))  # key-map tests (no forward pass)


def nchw(a):
  return torch.from_numpy(np.ascontiguousarray(np.asarray(a).transpose(0, 3, 1, 2)))


def max_diff(ours, ref) -> float:
  return float(np.max(np.abs(np.asarray(ours).transpose(0, 3, 1, 2) - ref.detach().numpy())))


def flax_shapes(model, *inputs):
  return jax.eval_shape(lambda k, *a: model.init(k, *a)["params"], jax.random.key(0), *inputs)


def sds(*shape):
  return jax.ShapeDtypeStruct(shape, jnp.float32)


def full_size_params():
  """``{name: (module, params shapes)}`` of the four released networks (eval_shape, no real init)."""
  h = 64
  feats = [sds(1, h >> i, h >> i, 64 * m) for i, m in enumerate(FULL["dim_mults"])]
  t = jax.ShapeDtypeStruct((1,), jnp.int32)
  nets = {"fs_unet": (au.Unet(stronger_cond=True), (sds(1, h, h, 3), t, sds(1, h, h, 3), feats)),
          "ts_unet": (au.Unet(stronger_cond=False), (sds(1, h, h, 3), t, sds(1, h, h, 3))),
          "cond": (au.UnetCond(), (sds(1, h, h, 12),)),
          "he": (au.UnetHE(), (sds(1, h, h, 6),))}
  return {k: (m, flax_shapes(m, *args)) for k, (m, args) in nets.items()}


# ------------------------------------------------------------------------------------------------ full size
def test_full_size_parameter_counts_and_param_names():
  """The official counts (weight-norm g and v included) and the key map's paths and shapes, per network."""
  expected = {"fs_unet": (42_503_366, 272), "ts_unet": (37_769_798, 254), "cond": (37_773_638, 254),
              "he": (37_769_798, 254)}
  for name, (module, shapes) in full_size_params().items():
    assert (au.param_count(shapes), len(jax.tree.leaves(shapes))) == expected[name], name
    arch = ia.UNET_KEYMAP.arch(module)
    flat = {p: tuple(v.shape) for p, v in keymap.flatten(shapes).items()}
    assert flat == ia.UNET_KEYMAP.param_shapes(arch), name
    assert ia.UNET_KEYMAP.infer_params(shapes) == arch, name
    assert sum(int(np.prod(e.shape)) for e in ia.UNET_KEYMAP.spec(arch)) == expected[name][0]


def _reference_lists():
  """``{'2a': [(key, shape)], '2b': ..., '2c': ...}`` from STATE_DICT_KEYS.md (None if absent)."""
  path = os.path.join(REFERENCE_DIR, "STATE_DICT_KEYS.md")
  if not os.path.isfile(path):
    return None
  text = open(path, encoding="utf-8").read()
  out = {}
  for sec in ("2a", "2b", "2c"):
    body = text.split(f"## {sec}.", 1)[1].split("```", 2)[1]
    out[sec] = [(k, tuple(int(s) for s in re.findall(r"\d+", shape)))
                for k, shape, _ in (line.split("\t") for line in body.strip().splitlines())]
  return out


def _spec(kmap, arch):
  return [(e.key, tuple(e.shape)) for e in kmap.spec(arch)]


def _sd_list(module):
  return [(k, tuple(v.shape)) for k, v in module.state_dict().items()]


@pytest.mark.parametrize("source", SOURCES)
def test_full_size_keys_match_pytorch(source):
  """The key maps list exactly the full-size ``state_dict`` s (names, order, shapes) of the PyTorch networks (built
  on the meta device), and of STATE_DICT_KEYS.md §2a-2d where it is available; and the Lightning layouts."""
  fs_arch = dict(FULL, in_dim=6, stronger_cond=1)
  ts_arch = dict(FULL, in_dim=6, stronger_cond=0)
  cond_arch = dict(FULL, in_dim=12, stronger_cond=0)
  with torch.device("meta"):
    nets = {"fs": tn.build("unet", source, in_dim=6, stronger_cond=True, **FULL),
            "ts": tn.build("unet", source, in_dim=6, stronger_cond=False, **FULL),
            "cond_fs": tn.build("cond", source, in_dim=12, on_res=True, **FULL),
            "cond_ts": tn.build("cond", source, in_dim=12, on_res=False, **FULL),
            "he": tn.build("he", source, in_dim=6, on_res=True, **FULL)}
  lists = {k: _sd_list(m) for k, m in nets.items()}
  assert lists["fs"] == _spec(ia.UNET_KEYMAP, fs_arch) and len(lists["fs"]) == 272
  assert lists["ts"] == lists["he"] == _spec(ia.UNET_KEYMAP, ts_arch) and len(lists["ts"]) == 254
  assert lists["cond_fs"] == lists["cond_ts"] == _spec(ia.UNET_KEYMAP, cond_arch)
  ref = _reference_lists()
  if ref is not None:  # §2d: Unet_he's keys and shapes are identical to §2c
    assert lists["fs"] == ref["2a"] and lists["cond_fs"] == ref["2b"] and lists["ts"] == lists["he"] == ref["2c"]
  # Lightning layouts: FS model.unet. + encoder.; TS model.unet. + encoder.model. + histroEncoder.model.
  fs = dict(FULL, two_step=0, in_dim=6, cond_in_dim=12, stronger_cond=1)
  ts = dict(fs, two_step=1, stronger_cond=0)
  assert _spec(ia.KEYMAP, fs) == ([("model.unet." + k, s) for k, s in lists["fs"]]
                                  + [("encoder." + k, s) for k, s in lists["cond_fs"]])
  assert _spec(ia.KEYMAP, ts) == ([("model.unet." + k, s) for k, s in lists["ts"]]
                                  + [("encoder.model." + k, s) for k, s in lists["cond_ts"]]
                                  + [("histroEncoder.model." + k, s) for k, s in lists["he"]])
  assert ia.KEYMAP.infer(dict(_spec(ia.KEYMAP, ts))) == ia.KEYMAP.arch(ts)
  assert ia.KEYMAP.infer(dict(_spec(ia.KEYMAP, fs))) == ia.KEYMAP.arch(fs)


# ------------------------------------------------------------------------------------------------ parity
def _lightning_state_dict(nets: dict, two_step: bool, *, copy: bool = True) -> collections.OrderedDict:
  """A Lightning-style ``state_dict``: buffers, the networks under their prefixes, the TS encoder copy, LPIPS."""
  sd = collections.OrderedDict((ia.BUFFER_PREFIX + n, torch.zeros(100)) for n in ia.BUFFER_NAMES)
  prefixes = ia.PREFIXES["ts" if two_step else "fs"]
  for net, module in nets.items():
    sd.update((prefixes[net] + k, v) for k, v in module.state_dict().items())
  if two_step and copy:
    sd.update((ia.TS_ENCODER_COPY + k, v.clone()) for k, v in nets["encoder"].state_dict().items())
  sd["lpips.net.slice1.0.weight"] = torch.zeros(64, 3, 3, 3)
  return sd


_JITTED = {}


def _fs_forward():
  """jit(params, x12, x_t, t, lq) -> (phi, feats, eps): FS encoder then FS denoiser (compiled once per session)."""
  if "fs" not in _JITTED:
    enc = au.UnetCond(in_dim=12, on_res=True, **FS_SMALL)
    unet = au.Unet(in_dim=6, stronger_cond=True, **FS_SMALL)

    def f(params, x12, xt, t, lq):
      phi, feats = enc.apply({"params": params["encoder"]}, x12)
      return phi, feats, unet.apply({"params": params["unet"]}, xt, t, lq, feats)

    _JITTED["fs"] = jax.jit(f)
  return _JITTED["fs"]


def _ts_forward():
  """jit(params, x12, he, x_t, t, lq) -> (img_c, feats, zeta, eps): TS encoder, HE refiner, TS denoiser."""
  if "ts" not in _JITTED:
    enc = au.UnetCond(in_dim=12, on_res=False, **TS_SMALL)
    he = au.UnetHE(in_dim=6, on_res=True, **TS_SMALL)
    unet = au.Unet(in_dim=6, stronger_cond=False, **TS_SMALL)

    def f(params, x12, he_img, xt, t, lq):
      img_c, feats = enc.apply({"params": params["encoder"]}, x12)
      zeta, _ = he.apply({"params": params["he"]}, jnp.concatenate([he_img, img_c], axis=-1))
      return img_c, feats, zeta, unet.apply({"params": params["unet"]}, xt, t, lq)

    _JITTED["ts"] = jax.jit(f)
  return _JITTED["ts"]


def _assert_close(name, ours, ref, tol=TOL):
  d = max_diff(ours, ref)
  assert d <= tol, f"{name}: max |diff| {d:.3g} > {tol:.3g}"
  return d


def _assert_feats(ours, ref):
  """Features are residual sums of ~10 blocks (|f| up to ~10): compared relative to their magnitude."""
  assert len(ours) == len(ref)
  for i, (a, b) in enumerate(zip(ours, ref)):
    _assert_close(f"feats[{i}]", a, b, TOL * max(1.0, float(b.abs().max())))


@pytest.mark.parametrize("source", SOURCES)
def test_fs_forward_parity(source):
  """FS, 6 levels: encoder (on HE residual) -> 11 features -> denoiser with stronger_cond, random official-layout
  weights imported from a Lightning-style state_dict; a different step per sample."""
  torch.manual_seed(0)
  enc = tn.randomise_(tn.build("cond", source, in_dim=12, on_res=True, **FS_SMALL), seed=1).eval()
  unet = tn.randomise_(tn.build("unet", source, in_dim=6, stronger_cond=True, **FS_SMALL), seed=2).eval()
  conv = ia.KEYMAP.import_state_dict(_lightning_state_dict({"unet": unet, "encoder": enc}, False), source="FS.ckpt")
  assert conv.arch == dict(two_step=0, in_dim=6, cond_in_dim=12, unet_dim=8, unet_outdim=3,
                           dim_mults=[1, 2, 2, 4, 4, 8], stronger_cond=1)
  rng = np.random.default_rng(0)
  h, w = 128, 128
  x12 = rng.random((2, h, w, 12), dtype=np.float32)
  xt = rng.standard_normal((2, h, w, 3), dtype=np.float32)
  lq = rng.random((2, h, w, 3), dtype=np.float32)
  t = np.array([3, 97], np.int32)
  with torch.no_grad():
    phi, feats = enc(nchw(x12))
    eps = unet(nchw(xt), torch.from_numpy(t).long(), nchw(lq), feats)
  jphi, jfeats, jeps = _fs_forward()(conv.params, x12, xt, t, lq)
  assert [f.shape[1:3] for f in jfeats] == [(h >> i, w >> i) for i in range(6)] + [(h >> i, w >> i)
                                                                                    for i in range(5, 0, -1)]
  _assert_close("phi", jphi, phi)
  _assert_close("eps", jeps, eps)
  _assert_feats(jfeats, feats)


@pytest.mark.parametrize("source", SOURCES)
def test_ts_forward_parity(source):
  """TS, 2 levels: sigmoid encoder, HE refiner on concat[HE, img_c] (clip), denoiser without feature injection;
  imported from a Lightning-style state_dict with the encoder copy under histroEncoder.encoder.model."""
  torch.manual_seed(0)
  enc = tn.randomise_(tn.build("cond", source, in_dim=12, on_res=False, **TS_SMALL), seed=3).eval()
  he = tn.randomise_(tn.build("he", source, in_dim=6, on_res=True, **TS_SMALL), seed=4).eval()
  unet = tn.randomise_(tn.build("unet", source, in_dim=6, stronger_cond=False, **TS_SMALL), seed=5).eval()
  sd = _lightning_state_dict({"unet": unet, "encoder": enc, "he": he}, True)
  conv = ia.KEYMAP.import_state_dict(sd)
  assert conv.arch["two_step"] == 1 and conv.arch["stronger_cond"] == 0 and set(conv.params) == {"unet", "encoder",
                                                                                                   "he"}
  rng = np.random.default_rng(1)
  h, w = 32, 48
  x12 = rng.random((2, h, w, 12), dtype=np.float32)
  he_img = rng.random((2, h, w, 3), dtype=np.float32)
  xt = rng.standard_normal((2, h, w, 3), dtype=np.float32)
  lq = rng.random((2, h, w, 3), dtype=np.float32)
  t = np.array([0, 99], np.int32)
  with torch.no_grad():
    img_c, feats = enc(nchw(x12))
    zeta, _ = he(torch.cat([nchw(he_img), img_c], dim=1))
    eps = unet(nchw(xt), torch.from_numpy(t).long(), nchw(lq), None)
  jimg_c, jfeats, jzeta, jeps = _ts_forward()(conv.params, x12, he_img, xt, t, lq)
  _assert_close("img_c", jimg_c, img_c)
  _assert_close("zeta", jzeta, zeta)
  _assert_close("eps", jeps, eps)
  _assert_feats(jfeats, feats)
  assert float(jnp.min(jzeta)) >= 0.0 and float(jnp.max(jzeta)) <= 1.0


def test_conv_transpose_matches_torch():
  """``ConvTranspose2d`` semantics (kernel flip, in/out swap, padding) for several kernel/stride/padding values."""
  rng = np.random.default_rng(2)
  for k, s, p, (cin, cout) in [(4, 2, 1, (3, 5)), (3, 2, 0, (2, 4)), (5, 3, 2, (4, 3)), (4, 2, 1, (6, 6))]:
    layer = torch.nn.ConvTranspose2d(cin, cout, k, s, p)
    x = rng.standard_normal((2, 5, 7, cin), dtype=np.float32)
    with torch.no_grad():
      ref = layer(nchw(x))
    kernel = layer.weight.detach().numpy().transpose(2, 3, 1, 0)  # the key map's conv layout: (k, k, out, in)
    ours = au.conv_transpose_torch(jnp.asarray(x), jnp.asarray(kernel), jnp.asarray(layer.bias.detach().numpy()),
                                   s, p)
    assert ours.shape == (2,) + tuple(ref.shape[2:]) + (cout,)
    _assert_close(f"ConvTranspose2d({k}, {s}, {p})", ours, ref, 1e-5)


# ------------------------------------------------------------------------------------------------ key maps
def test_keymaps_round_trip_and_errors():
  """Bitwise round trips (bare network, FS and TS checkpoints); leftover, missing, mis-shaped keys all named."""
  torch.manual_seed(0)
  arch = dict(KM, in_dim=6, stronger_cond=1)
  unet = tn.randomise_(tn.build("unet", "transcription", in_dim=6, stronger_cond=True, **KM), seed=6)
  sd = unet.state_dict()
  conv = ia.UNET_KEYMAP.import_state_dict(sd)
  assert conv.arch == ia.UNET_KEYMAP.arch(arch) and conv.num_params == sum(v.numel() for v in sd.values())
  back = ia.UNET_KEYMAP.export_params(conv.params)
  assert list(back) == list(sd) and all(np.array_equal(back[k], sd[k].numpy()) for k in sd)
  p = conv.params
  assert p["downs_0_1"]["block1"]["block_1"]["weight_v"].shape == (3, 3, 16, 8)
  assert p["downs_0_1"]["res_conv"]["weight_g"].shape == (1, 1, 1, 8)
  assert p["ups_0_2"]["conv_0"]["kernel"].shape == (4, 4, 16, 16) and p["mlp_0"]["kernel"].shape == (8, 32)
  np.testing.assert_array_equal(p["ups_1_2"]["conv_0"]["kernel"],
                                sd["ups.1.2.conv.0.weight"].numpy().transpose(2, 3, 1, 0))

  enc = tn.randomise_(tn.build("cond", "transcription", in_dim=12, on_res=False, **KM), seed=7)
  he = tn.randomise_(tn.build("he", "transcription", in_dim=6, **KM), seed=8)
  ts_unet = tn.randomise_(tn.build("unet", "transcription", in_dim=6, **KM), seed=9)
  for nets, two_step in (({"unet": unet, "encoder": enc}, False), ({"unet": ts_unet, "encoder": enc, "he": he}, True)):
    full = _lightning_state_dict(nets, two_step)
    conv = ia.KEYMAP.import_state_dict({"module." + k: v for k, v in full.items()})
    assert conv.num_params == sum(v.numel() for k, v in full.items() if k.startswith(("model.unet.", "encoder.",
                                                                                       "histroEncoder.model.")))
    buffers = {n: np.arange(100, dtype=np.float32) for n in ia.BUFFER_NAMES}
    back = ia.KEYMAP.export_params(conv.params, buffers=buffers)
    assert list(back) == [k for k in full if not k.startswith("lpips.")]
    assert all(np.array_equal(back[k], full[k].numpy()) for k in back if not k.startswith("model.") or
               k.startswith("model.unet."))
    assert ia.KEYMAP.infer_params(conv.params) == conv.arch
    again = ia.KEYMAP.import_state_dict(ia.KEYMAP.export_params(conv.params, conv.arch, as_torch=True))
    assert jax.tree.all(jax.tree.map(np.array_equal, again.params, conv.params))
  # The TS encoder copy is optional, but must equal the encoder.
  full = _lightning_state_dict({"unet": ts_unet, "encoder": enc, "he": he}, True, copy=False)
  assert ia.KEYMAP.import_state_dict(full).arch["two_step"] == 1
  bad = _lightning_state_dict({"unet": ts_unet, "encoder": enc, "he": he}, True)
  bad["histroEncoder.encoder.model.final_conv.1.bias"] = bad["histroEncoder.encoder.model.final_conv.1.bias"] + 1
  with pytest.raises(keymap.StateDictMismatchError, match="differs from encoder.model.final_conv.1.bias"):
    ia.KEYMAP.import_state_dict(bad)
  # Leftover and missing keys are all named, with their prefixes.
  bad = _lightning_state_dict({"unet": unet, "encoder": enc}, False)
  bad["encoder.extra_head.weight"] = torch.zeros(3)
  bad["histroEncoder.model.mlp.0.bias"] = torch.zeros(32)
  del bad["model.unet.ups.1.2.conv.0.bias"]
  bad["model.unet.final_conv.1.weight_g"] = torch.zeros(4, 1, 1, 1)
  with pytest.raises(keymap.StateDictMismatchError) as err:
    ia.KEYMAP.import_state_dict(bad, source="FS_final.ckpt")
  msg = str(err.value)
  assert "FS_final.ckpt" in msg and "encoder.extra_head.weight" in msg and "model.unet.ups.1.2.conv.0.bias" in msg
  assert sorted(err.value.unexpected) == ["encoder.extra_head.weight", "histroEncoder.model.mlp.0.bias"]
  assert err.value.missing == ["model.unet.ups.1.2.conv.0.bias"]
  assert [m[0] for m in err.value.mismatched] == ["model.unet.final_conv.1.weight_g"]
  with pytest.raises(keymap.StateDictMismatchError, match="not an AnlightenDiff Lightning checkpoint"):
    ia.KEYMAP.import_state_dict(dict(unet.state_dict()))
  with pytest.raises(keymap.StateDictMismatchError, match="not an AnlightenDiff Unet"):
    ia.UNET_KEYMAP.import_state_dict({"intro.weight": torch.zeros(1, 6, 3, 3)})
  params = jax.tree.map(np.asarray, conv.params)
  del params["he"]["final_conv_1"]["weight_g"]
  with pytest.raises(keymap.StateDictMismatchError, match="he/final_conv_1/weight_g"):
    ia.KEYMAP.export_params(params, conv.arch)
  with pytest.raises(keymap.StateDictMismatchError, match="'he'"):
    ia.KEYMAP.export_params({"unet": params["unet"], "encoder": params["encoder"]}, conv.arch)


# ------------------------------------------------------------------------------------------------ init, inputs
class _Layers(au.nn.Module):
  """The layers whose initialisation is checked (initialised with the "rbg" PRNG: threefry compiles slowly)."""

  official: bool = True

  @au.nn.compact
  def __call__(self):
    au.WNConv2d(8, 3, weight_init=self.official, name="conv")(jnp.ones((1, 5, 5, 6)))
    au.Linear(32, weight_init=self.official, name="linear")(jnp.ones((1, 64)))
    au.ConvTranspose2d(16, name="up")(jnp.ones((1, 4, 4, 16)))
    au.DeadLinear(64, 16, self.official, name="dead")()


def test_initialisation():
  """Official init (``weight_init=True``): g = ||v|| (weight_norm of a default-initialised conv), conv biases 0,
  Linear N(0, (0.1 sqrt(2/fan_in))^2) with zero bias, ConvTranspose2d PyTorch defaults; ``False``: PyTorch
  defaults (g = ||v|| still)."""
  for official in (True, False):
    params = jax.jit(_Layers(official).init)(jax.random.key(0, impl="rbg"))["params"]
    p = params["conv"]
    bound = 1 / np.sqrt(3 * 3 * 6)
    np.testing.assert_allclose(p["weight_g"], np.sqrt(np.sum(np.square(p["weight_v"]), axis=(0, 1, 2),
                                                             keepdims=True)), rtol=1e-6)
    assert p["weight_g"].shape == (1, 1, 1, 8) and np.max(np.abs(p["weight_v"])) <= bound
    assert (np.any(p["bias"]) != official) and np.max(np.abs(p["bias"])) <= bound
    p = params["linear"]
    if official:
      assert abs(float(np.std(p["kernel"])) / (0.1 * np.sqrt(2 / 64)) - 1) < 0.1 and not np.any(p["bias"])
    else:
      assert np.max(np.abs(p["kernel"])) <= 1 / 8 and np.max(np.abs(p["bias"])) <= 1 / 8 and np.any(p["bias"])
    p = params["up"]  # PyTorch defaults either way (ConvTranspose2d is not an nn.Conv2d for initialize_weights)
    bound = 1 / np.sqrt(16 * 4 * 4)
    assert p["kernel"].shape == (4, 4, 16, 16) and np.max(np.abs(p["kernel"])) <= bound
    assert np.max(np.abs(p["kernel"])) > 0.9 * bound and np.max(np.abs(p["bias"])) <= bound and np.any(p["bias"])
    p = params["dead"]
    assert p["kernel"].shape == (64, 16) and np.any(p["bias"]) != official


@pytest.mark.parametrize("source", SOURCES)
def test_pytorch_initialisation_is_the_same(source):
  """The PyTorch networks (official: weight_norm then initialize_weights) start as lliejax's official init."""
  with torch.no_grad():
    net = tn.build("unet", source, in_dim=6, unet_dim=16, dim_mults=(1, 2), stronger_cond=True)
    sd = net.state_dict()
    for k, v in sd.items():
      if k.endswith("weight_v"):
        g = sd[k[:-1] + "g"]
        np.testing.assert_allclose(g.flatten().numpy(), v.flatten(1).norm(dim=1).numpy(), rtol=1e-6)
        assert not torch.any(sd[k[:-len("weight_v")] + "bias"])
    k = sd["mlp.2.weight"]  # Linear(64, 16)
    assert abs(float(k.std()) / (0.1 * np.sqrt(2 / 64)) - 1) < 0.1 and not torch.any(sd["mlp.2.bias"])


def test_input_checks():
  """Inputs: ``in_dim`` channels; H, W multiples of 2**(levels-1) and at least 2**levels; FS needs the features."""
  model = au.Unet(in_dim=6, unet_dim=8, dim_mults=(1, 2), stronger_cond=False)
  x = jax.ShapeDtypeStruct((1, 8, 8, 3), jnp.float32)
  t = jax.ShapeDtypeStruct((1,), jnp.int32)
  params = flax_shapes(model, x, t, x)
  run = lambda m, *a: jax.eval_shape(m.apply, {"params": params}, *a)  # noqa: E731
  assert run(model, x, t, x).shape == (1, 8, 8, 3)
  with pytest.raises(ValueError, match="multiples of 2 and at least 4"):
    run(model, sds(1, 6, 2, 3), t, sds(1, 6, 2, 3))
  with pytest.raises(ValueError, match="expects 6 input channels"):
    run(model, x, t, sds(1, 8, 8, 4))
  fs = au.Unet(in_dim=6, unet_dim=8, dim_mults=(1, 2), stronger_cond=True)
  with pytest.raises(ValueError, match="needs feats_cond"):
    run(fs, x, t, x)
  with pytest.raises(ValueError, match="in_dim must be >= 6"):
    flax_shapes(au.UnetCond(in_dim=3, unet_dim=8, dim_mults=(1, 2)), sds(1, 8, 8, 3))


@pytest.mark.parametrize("hw", [(6, 10), (40, 36)])  # the patch-matrix branch (<= 1024 outputs) and the padded one
def test_fast_conv_paths_match_plain_convolutions(hw):
  """``conv3x3_valid`` and the 4/2/1 transposed convolution (4 phases) equal XLA's plain convolutions, forward and
  both gradients (what the train step differentiates)."""
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.standard_normal((2,) + hw + (5,), dtype=np.float32))
  w = jnp.asarray(rng.standard_normal((3, 3, 5, 7), dtype=np.float32))
  ct = jnp.asarray(rng.standard_normal((2, hw[0] - 2, hw[1] - 2, 7), dtype=np.float32))
  dn = ("NHWC", "HWIO", "NHWC")
  plain = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "VALID", dimension_numbers=dn,
                                                    precision=jax.lax.Precision.HIGHEST)
  fast = lambda x, w: au.conv3x3_valid(x, w)
  np.testing.assert_allclose(fast(x, w), plain(x, w), rtol=1e-4, atol=1e-4)
  g_fast = jax.grad(lambda x, w: jnp.sum(fast(x, w) * ct), argnums=(0, 1))(x, w)
  g_plain = jax.grad(lambda x, w: jnp.sum(plain(x, w) * ct), argnums=(0, 1))(x, w)
  for a, b in zip(g_fast, g_plain):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-3)
  # ConvTranspose2d(4, 2, 1): the phase decomposition against the lhs-dilated convolution
  k = jnp.asarray(rng.standard_normal((4, 4, 7, 5), dtype=np.float32))  # the key map's (k, k, out, in)
  bias = jnp.asarray(rng.standard_normal((7,), dtype=np.float32))

  def dilated(x, k):
    fl = jnp.swapaxes(k[::-1, ::-1], 2, 3)
    return jax.lax.conv_general_dilated(x, fl, (1, 1), ((2, 2), (2, 2)), lhs_dilation=(2, 2), dimension_numbers=dn,
                                        precision=jax.lax.Precision.HIGHEST) + bias

  ours = lambda x, k: au.conv_transpose_torch(x, k, bias, 2, 1)
  assert ours(x, k).shape == (2, 2 * hw[0], 2 * hw[1], 7)
  np.testing.assert_allclose(ours(x, k), dilated(x, k), rtol=1e-4, atol=1e-4)
  ct2 = jnp.asarray(rng.standard_normal((2, 2 * hw[0], 2 * hw[1], 7), dtype=np.float32))
  g_ours = jax.grad(lambda x, k: jnp.sum(ours(x, k) * ct2), argnums=(0, 1))(x, k)
  g_ref = jax.grad(lambda x, k: jnp.sum(dilated(x, k) * ct2), argnums=(0, 1))(x, k)
  for a, b in zip(g_ours, g_ref):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=2e-3)


def test_mish_matches_plain_formula():
  """The one-exponential Mish (custom JVP) equals ``x tanh(softplus(x))`` and its autodiff derivative (float
  rounding), including the clamped range (x > 20) and very negative inputs."""
  x = jnp.concatenate([jnp.linspace(-120.0, 120.0, 4801, dtype=jnp.float32),
                       jnp.asarray(np.random.default_rng(7).standard_normal(2000, dtype=np.float32) * 4)])
  plain = lambda v: v * jnp.tanh(jax.nn.softplus(v))
  np.testing.assert_allclose(au.mish(x), plain(x), rtol=2e-6, atol=2e-6)
  g = jax.grad(lambda v: jnp.sum(au.mish(v)))(x)
  g_plain = jax.grad(lambda v: jnp.sum(plain(v)))(x)
  np.testing.assert_allclose(g, g_plain, rtol=1e-5, atol=1e-5)
  assert bool(jnp.all(jnp.isfinite(g)))
