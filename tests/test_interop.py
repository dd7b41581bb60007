"""PyTorch interop: checkpoint files, the ConditionalNAFNet key map, the convert CLI, the crosscheck machinery."""
import collections
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from lliejax import checkpoint, cli  # noqa: E402
from lliejax.interop import crosscheck, keymap, torch_io  # noqa: E402
from lliejax.interop.nafnet import KEYMAP  # noqa: E402
from lliejax.models.nafnet import ConditionalNAFNet  # noqa: E402

sys.path.insert(0, os.path.dirname(__file__))
from torch_nafnet import TorchConditionalNAFNet, randomise_  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = {"img_channel": 3, "width": 8, "enc_blk_nums": [1, 2, 1], "middle_blk_num": 1, "dec_blk_nums": [1, 1, 2]}
TINY_CFG = {"img_channel": 3, "width": 8, "enc_blk_nums": [1, 1], "middle_blk_num": 1, "dec_blk_nums": [1, 1]}


def torch_model(cfg, seed=0):
  torch.manual_seed(seed)
  return randomise_(TorchConditionalNAFNet(**cfg), seed=seed + 1).eval()


def flax_model(cfg):
  return ConditionalNAFNet(img_channel=cfg["img_channel"], width=cfg["width"], enc_blk_nums=tuple(cfg["enc_blk_nums"]),
                           middle_blk_num=cfg["middle_blk_num"], dec_blk_nums=tuple(cfg["dec_blk_nums"]))


def numpy_sd(module):
  return collections.OrderedDict((k, v.detach().numpy().copy()) for k, v in module.state_dict().items())


@pytest.fixture(scope="module")
def small():
  net = torch_model(SMALL)
  return net, numpy_sd(net)


# ------------------------------------------------------------------------------------------------ layout
@pytest.mark.parametrize("cfg", [SMALL, TINY_CFG, {"img_channel": 1, "width": 4, "enc_blk_nums": [0, 2],
                                                   "middle_blk_num": 0, "dec_blk_nums": [2, 0]}])
def test_spec_matches_flax_and_torch(cfg):
  m = flax_model(cfg)
  shapes = jax.eval_shape(lambda: m.init(jax.random.key(0), jnp.zeros((1, 8, 8, cfg["img_channel"])),
                                         jnp.zeros((1, 8, 8, cfg["img_channel"])), jnp.ones((1,))))["params"]
  flat = {k: v.shape for k, v in keymap.flatten(shapes).items()}
  assert flat == KEYMAP.param_shapes(cfg)
  sd = TorchConditionalNAFNet(**cfg).state_dict()
  assert [(k, tuple(v.shape)) for k, v in sd.items()] == list(KEYMAP.state_dict_shapes(cfg).items())
  assert KEYMAP.infer_state_dict(sd) == KEYMAP.arch(cfg)


def test_full_lowlight_spec():
  from lliejax.configs.entropy_sde import get_config
  shapes = KEYMAP.state_dict_shapes(get_config("lolv1").model)
  assert len(shapes) == 707
  assert sum(int(np.prod(s)) for s in shapes.values()) == 287_965_571
  assert shapes["encoders.4.27.conv2.weight"] == (2048, 1, 3, 3)
  assert shapes["ups.0.0.weight"] == (4096, 2048, 1, 1)
  assert list(shapes)[:2] == ["time_mlp.1.weight", "time_mlp.1.bias"] and list(shapes)[-1] == "downs.4.bias"


# ------------------------------------------------------------------------------------------------ numerics
@pytest.mark.parametrize("hw", [(32, 32), (37, 53)])
def test_forward_matches_torch(small, hw):
  net, sd = small
  params = KEYMAP.import_state_dict(sd, SMALL).params
  assert params["encoders_1_1"]["conv2"]["kernel"].shape == (3, 3, 1, 32)  # depthwise, 2 * 16 channels
  apply = jax.jit(lambda p, x, mu, t: flax_model(SMALL).apply({"params": p}, x, mu, t))
  rng = np.random.default_rng(1)
  mu = rng.uniform(0, 1, (2, 3) + hw).astype(np.float32)
  x = (mu + 0.2 * rng.standard_normal(mu.shape)).astype(np.float32)
  for t in ([1, 100], [50, 7]):
    with torch.no_grad():
      ref = net(torch.from_numpy(x), torch.from_numpy(mu), torch.tensor(t)).numpy()
    out = np.asarray(apply(params, x.transpose(0, 2, 3, 1), mu.transpose(0, 2, 3, 1), jnp.asarray(t)))
    assert np.abs(ref).max() > 0.05  # every path (beta, gamma, g randomised) contributes
    np.testing.assert_allclose(out.transpose(0, 3, 1, 2), ref, rtol=0, atol=1e-5)


def test_crosscheck_nafnet_machinery_with_restatement():
  build = lambda m: TorchConditionalNAFNet(**m)
  rows = crosscheck.check_nafnet(build, TINY_CFG, sizes=[(21, 13)], timesteps=[3, 100], batch=2, label="tiny")
  assert [r.status for r in rows] == ["PASS"] * len(rows), crosscheck.format_table(rows)
  assert len(rows) == 1 + 3 + 1  # keys, 2 scalar t + per-sample batch, export -> strict load
  assert "tiny forward 21x13 t=3" in crosscheck.format_table(rows)


def test_round_trip_bitwise(small, tmp_path):
  _, sd = small
  params = KEYMAP.import_state_dict(sd).params  # architecture inferred
  back = KEYMAP.export_params(params)
  assert list(back) == list(sd)
  for k in sd:
    assert back[k].dtype == np.float32 and back[k].shape == sd[k].shape
    assert np.array_equal(back[k].view(np.uint32), sd[k].view(np.uint32)), k
  # Flax -> .pth -> Flax is bitwise too (random params in the lliejax layout, as jax arrays).
  rng = np.random.default_rng(3)
  p0 = {}
  for path, shape in KEYMAP.param_shapes(SMALL).items():
    node = p0
    for name in path[:-1]:
      node = node.setdefault(name, {})
    node[path[-1]] = jnp.asarray(rng.standard_normal(shape, dtype=np.float32))
  path = torch_io.save_state_dict(KEYMAP.export_params(p0), str(tmp_path / "x.pth"))
  p1 = KEYMAP.import_state_dict(torch_io.load_state_dict(path), SMALL).params
  for a, b in zip(jax.tree_util.tree_leaves(p0), jax.tree_util.tree_leaves(p1)):
    assert np.array_equal(np.asarray(a), b)
  assert jax.tree_util.tree_structure(jax.tree_util.tree_map(np.asarray, p0)) == \
      jax.tree_util.tree_structure(p1)
  # as_torch values load strictly into the PyTorch module.
  TorchConditionalNAFNet(**SMALL).load_state_dict(KEYMAP.export_params(p0, as_torch=True), strict=True)


def test_module_prefix_and_dtypes(small, tmp_path):
  net, sd = small
  wrapped = {"module." + k: v for k, v in net.state_dict().items()}
  wrapped["module.intro.weight"] = wrapped["module.intro.weight"].half()
  wrapped["module.ending.bias"] = wrapped["module.ending.bias"].to(torch.bfloat16)
  wrapped["module.time_mlp.1.weight"] = wrapped["module.time_mlp.1.weight"].double()
  torch.save(wrapped, tmp_path / "dp.pth")
  res = KEYMAP.import_state_dict(torch_io.load_state_dict(str(tmp_path / "dp.pth")), SMALL)
  assert res.arch == KEYMAP.arch(SMALL)
  assert res.dtype_changes == {"intro.weight": "float16", "ending.bias": "bfloat16",
                               "time_mlp.1.weight": "float64"}
  assert all(a.dtype == np.float32 for a in jax.tree_util.tree_leaves(res.params))
  np.testing.assert_array_equal(res.params["time_mlp_1"]["kernel"], sd["time_mlp.1.weight"].T)
  assert res.num_params == sum(v.size for v in sd.values())
  # Common containers of a plain state_dict are unwrapped.
  torch.save({"state_dict": net.state_dict(), "iter": 5}, tmp_path / "wrapped.pth")
  assert "intro.weight" in torch_io.load_state_dict(str(tmp_path / "wrapped.pth"))
  # ema_pytorch EMA states: select with key_prefix.
  torch.save({**{"ema_model." + k: v for k, v in net.state_dict().items()},
              **{"online_model." + k: v for k, v in net.state_dict().items()},
              "initted": torch.tensor(True), "step": torch.tensor(7)}, tmp_path / "ema.pth")
  with pytest.raises(keymap.StateDictMismatchError, match="key_prefix='ema_model.'"):
    KEYMAP.import_state_dict(torch_io.load_state_dict(str(tmp_path / "ema.pth")))
  ema = KEYMAP.import_state_dict(torch_io.load_state_dict(str(tmp_path / "ema.pth"), key_prefix="ema_model."))
  np.testing.assert_array_equal(ema.params["intro"]["kernel"], sd["intro.weight"].transpose(2, 3, 1, 0))


# ------------------------------------------------------------------------------------------------ errors
def test_mismatch_lists_everything(small):
  _, sd = small
  bad = dict(sd)
  del bad["encoders.1.1.conv3.bias"], bad["ups.0.0.weight"]
  bad["extra.weight"] = np.zeros(3, np.float32)
  bad["middle_blks.0.beta"] = np.zeros((1, 7, 1, 1), np.float32)
  bad["intro.bias"] = np.zeros(8, np.int64)
  with pytest.raises(keymap.StateDictMismatchError) as e:
    KEYMAP.import_state_dict(bad, SMALL).params
  err = e.value
  assert err.missing == ["encoders.1.1.conv3.bias", "ups.0.0.weight"]
  assert err.unexpected == ["extra.weight"]
  assert [m[0] for m in err.mismatched] == ["intro.bias", "middle_blks.0.beta"]
  msg = str(err)
  for k in ("encoders.1.1.conv3.bias", "ups.0.0.weight", "extra.weight", "(1, 7, 1, 1) vs (1, 64, 1, 1)",
            "dtype int64"):
    assert k in msg


def test_wrong_architecture(small):
  _, sd = small
  with pytest.raises(keymap.StateDictMismatchError, match=r"the state_dict looks like: .*width=8") as e:
    KEYMAP.import_state_dict(sd, dict(SMALL, width=16))
  assert len(e.value.mismatched) > 10
  with pytest.raises(keymap.StateDictMismatchError, match="missing keys") as e:
    KEYMAP.import_state_dict(sd, dict(SMALL, enc_blk_nums=[1, 3, 1]))
  assert e.value.missing and not e.value.mismatched
  with pytest.raises(keymap.StateDictMismatchError, match="not a ConditionalNAFNet"):
    KEYMAP.infer_state_dict({"conv.weight": np.zeros((1, 1, 1, 1))})
  with pytest.raises(keymap.StateDictMismatchError, match="unexpected"):
    KEYMAP.export_params({**KEYMAP.import_state_dict(sd).params, "junk": {"kernel": np.zeros(1)}}, SMALL)


class NotTensors:  # a picklable arbitrary object
  def __init__(self):
    self.x = 1


@pytest.mark.parametrize("kind", ["empty", "corrupt", "truncated", "object", "non_tensor_dict", "list",
                                  "missing", "empty_dict"])
def test_bad_files(tmp_path, kind, small):
  net, _ = small
  path = tmp_path / f"{kind}.pth"
  if kind == "empty":
    path.write_bytes(b"")
  elif kind == "corrupt":
    path.write_bytes(np.random.default_rng(0).bytes(4096))
  elif kind == "truncated":
    torch.save(net.state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
  elif kind == "object":
    torch.save(NotTensors(), path)
  elif kind == "non_tensor_dict":
    torch.save({"a": 1, "b": "text", "c": torch.zeros(2)}, path)
  elif kind == "list":
    torch.save([torch.zeros(2)], path)
  elif kind == "empty_dict":
    torch.save({}, path)
  with pytest.raises(torch_io.CheckpointFormatError) as e:
    torch_io.load_state_dict(str(path))
  assert str(path) in str(e.value)
  assert "weights_only" not in str(e.value)  # never suggests switching the protection off
  if kind == "object":
    assert "contains pickled code or objects other than tensors" in str(e.value)
    assert "lliejax never loads such files" in str(e.value)


def test_legacy_format_without_mmap(tmp_path, small):
  net, sd = small
  torch.save(net.state_dict(), tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
  torch.save(net.state_dict(), tmp_path / "zip.pth")
  for name in ("legacy.pth", "zip.pth"):
    for mmap in (False, True):
      out = torch_io.load_state_dict(str(tmp_path / name), mmap=mmap)
      np.testing.assert_array_equal(out["intro.weight"].numpy(), sd["intro.weight"])


# ------------------------------------------------------------------------------------------------ CLI
def test_cli_convert_and_back(tmp_path, capsys):
  net = torch_model(TINY_CFG, seed=5)
  sd = numpy_sd(net)
  pth = tmp_path / "tiny.pth"
  torch.save({k: (v.half() if k == "intro.bias" else v) for k, v in net.state_dict().items()}, pth)
  out = tmp_path / "export"
  cfg = os.path.join(REPO, "configs", "entropy_sde.py") + ":tiny"
  assert cli.main(["convert", str(pth), str(out), "--config", cfg]) == 0
  text = capsys.readouterr().out
  assert f"{sum(v.size for v in sd.values()):,} parameters" in text
  assert "1 float16" in text
  exported = checkpoint.load_export(str(out))
  params = exported.params
  assert exported.method == "entropy_sde" and exported.info["source"] == str(pth)
  assert exported.config.model.width == 8 and exported.config.sde.T == 8
  np.testing.assert_array_equal(params["encoders_0_0"]["conv2"]["kernel"],
                                sd["encoders.0.0.conv2.weight"].transpose(2, 3, 1, 0))
  # Refuses to overwrite, then overwrites with --overwrite (architecture inferred, packaged default config).
  assert cli.main(["convert", str(pth), str(out), "--config", cfg]) == 1
  assert "already exists" in capsys.readouterr().err
  assert cli.main(["convert", str(pth), str(out), "--overwrite"]) == 0
  assert "architecture inferred" in capsys.readouterr().out
  # Back to PyTorch.
  back = tmp_path / "back.pth"
  assert cli.main(["convert", "--to-torch", str(out), str(back)]) == 0
  sd2 = torch.load(back, weights_only=True)
  assert list(sd2) == list(sd)
  for k, v in sd.items():
    ref = v.astype(np.float16).astype(np.float32) if k == "intro.bias" else v
    assert np.array_equal(sd2[k].numpy(), ref), k
  assert cli.main(["convert", "--to-torch", str(out), str(back)]) == 1
  assert "already exists" in capsys.readouterr().err
  assert cli.main(["convert", "--to-torch", str(out), str(back), "--overwrite"]) == 0
  # Wrong architecture from the config: one clear error, non-zero exit, nothing written.
  assert cli.main(["convert", str(pth), str(tmp_path / "e2"), "--config", "entropy_sde:demo"]) == 1
  err = capsys.readouterr().err
  assert "missing keys" in err and "the state_dict looks like" in err and not (tmp_path / "e2").exists()
  assert cli.main(["convert", str(out), str(tmp_path / "e3")]) == 1
  assert "--to-torch" in capsys.readouterr().err


def test_converted_export_enhances_like_the_params(tmp_path, small):
  """``lliejax enhance --checkpoint EXPORT`` needs nothing but the export: same output as the method on the params."""
  import jax
  from lliejax import inference, methods
  from lliejax.configs.entropy_sde import get_config
  net = torch_model(TINY_CFG, seed=2)
  torch.save(net.state_dict(), tmp_path / "t.pth")
  cfg = os.path.join(REPO, "configs", "entropy_sde.py") + ":tiny"
  assert cli.main(["convert", str(tmp_path / "t.pth"), str(tmp_path / "exp"), "--config", cfg]) == 0
  enhancer = inference.load(str(tmp_path / "exp"))
  image = np.random.default_rng(0).random((9, 14, 3)).astype(np.float32) * 0.3
  got = enhancer.enhance(image, jax.random.key(1))
  method = methods.build(get_config("tiny"))
  params = KEYMAP.import_state_dict(numpy_sd(net)).params
  want = jax.jit(lambda p, x: method.sample(p, {}, x, jax.random.key(1)))(params, image[None])[0]
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


class _Hparams(dict):
  """Stands for Lightning's AttributeDict / omegaconf configs pickled into a .ckpt."""


class _Malicious:
  """Unpickling this would run a shell command: a .ckpt reader must not."""

  def __reduce__(self):
    return (os.system, ("touch /tmp/lliejax-pwned",))


def test_lightning_ckpt_state_dict_without_executing_objects(tmp_path, small):
  net, sd = small
  ckpt = {"epoch": 3, "global_step": 120, "pytorch-lightning_version": "1.9.0",
          "state_dict": {"model." + k: v for k, v in net.state_dict().items()},
          "hyper_parameters": _Hparams(lr=1e-4, nested=_Hparams(a=[1, 2])), "callbacks": {"x": _Malicious()},
          "optimizer_states": [{"state": {}, "param_groups": [{"lr": 1e-4}]}]}
  torch.save(ckpt, tmp_path / "last.ckpt")
  if os.path.exists("/tmp/lliejax-pwned"):
    os.remove("/tmp/lliejax-pwned")
  # weights_only loading refuses the file; the Lightning reader takes the state_dict and leaves the rest inert.
  with pytest.raises(torch_io.CheckpointFormatError, match="objects other than tensors"):
    torch_io.load_state_dict(str(tmp_path / "last.ckpt"))
  whole = torch_io.load_lightning_checkpoint(str(tmp_path / "last.ckpt"))
  assert not os.path.exists("/tmp/lliejax-pwned")
  assert whole["global_step"] == 120 and isinstance(whole["hyper_parameters"], torch_io.Opaque)
  assert "_Hparams" in whole["hyper_parameters"].cls_name and whole["hyper_parameters"]["lr"] == 1e-4
  got = torch_io.load_checkpoint_state_dict(str(tmp_path / "last.ckpt"), key_prefix="model.")
  assert list(got) == list(sd)
  for k in sd:
    np.testing.assert_array_equal(got[k].numpy(), sd[k])
  params = KEYMAP.import_state_dict(got).params
  np.testing.assert_array_equal(params["intro"]["kernel"], sd["intro.weight"].transpose(2, 3, 1, 0))
  torch.save({"epoch": 1}, tmp_path / "nostate.ckpt")
  with pytest.raises(torch_io.CheckpointFormatError, match="without a 'state_dict'"):
    torch_io.load_checkpoint_state_dict(str(tmp_path / "nostate.ckpt"))
  (tmp_path / "junk.ckpt").write_bytes(b"not a checkpoint" * 10)
  with pytest.raises(torch_io.CheckpointFormatError, match="junk.ckpt"):
    torch_io.load_lightning_checkpoint(str(tmp_path / "junk.ckpt"))


def test_torch_imported_lazily():
  code = ("import sys, lliejax.cli, lliejax.interop.convert, lliejax.interop.crosscheck, lliejax.interop.torch_io, "
          "lliejax.diffusion.irsde, lliejax.checkpoint, lliejax.inference;"
          "assert 'torch' not in sys.modules, 'torch imported'")
  subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


# ------------------------------------------------------------------------------------------------ crosscheck
def _touch(root, *parts):
  p = os.path.join(root, *parts)
  os.makedirs(os.path.dirname(p), exist_ok=True)
  open(p, "w").close()
  return p


def test_find_official_files_layouts(tmp_path):
  sel = str(tmp_path / "sel")
  for f in ("DenoisingNAFNet_arch.py", "module_util.py", "kde_utils.py", "loss.py"):
    _touch(sel, "codes", "config", "low-light", "models", "modules", f)
  _touch(sel, "codes", "utils", "sde_utils.py")
  files = crosscheck.find_official_files(sel)
  assert files.task == "low-light" and files.kde_utils and files.loss
  assert files.sde_utils == os.path.join(sel, "codes", "utils", "sde_utils.py")
  up = str(tmp_path / "upstream")
  for task in ("deraining", "denoising-sde"):
    for f in ("DenoisingNAFNet_arch.py", "module_util.py", "loss.py"):
      _touch(up, "codes", "config", task, "models", "modules", f)
  _touch(up, "codes", "utils", "sde_utils.py")
  files = crosscheck.find_official_files(os.path.join(up, "codes"), task="deraining")
  assert files.task == "deraining" and files.kde_utils is None and files.loss is None
  assert crosscheck.find_official_files(up).task == "denoising-sde"  # sorted, no low-light
  with pytest.raises(FileNotFoundError, match="tasks found"):
    crosscheck.find_official_files(up, task="low-light")
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="no DenoisingNAFNet_arch.py"):
    crosscheck.find_official_files(str(tmp_path / "empty"))
  assert cli.main(["crosscheck", "--official", str(tmp_path / "nowhere")]) == 2


def test_compare_and_table():
  ref = np.array([1.0, 2.0, 0.0, 4.0])
  assert crosscheck.compare("a", ref + 1e-7, ref, tol=1e-6).passed
  assert not crosscheck.compare("a", ref + 1e-4, ref, tol=1e-6).passed
  r = crosscheck.compare("a", ref * (1 + 1e-5), ref, tol=1e-6, metric="rel", elementwise=True)
  assert not r.passed and abs(r.rel - 1e-5) < 1e-9
  # Per-element conditioned tolerance: allowed rel = tol + 4 eps32 * cond.
  r = crosscheck.compare("a", ref * (1 + 1e-5), ref, tol=1e-6, metric="rel", elementwise=True, cond=100.0)
  assert r.passed and r.ratio < 1
  assert not crosscheck.compare("a", np.array([1.0, 2.0, 1e-9, 4.0]), ref, tol=1, metric="rel",
                                elementwise=True, cond=1e9).passed  # exact zeros must match
  assert not crosscheck.compare("a", np.ones(3), np.ones(4), tol=1).passed
  assert not crosscheck.compare("a", np.array([np.nan]), np.array([1.0]), tol=1).passed
  rows = [crosscheck.Row("x", 0.0, 0.0, 1e-5, "abs"), crosscheck.Row("y", 1.0, 1.0, 1e-5, "abs"),
          crosscheck.Row("z", np.nan, np.nan, 1e-5, "rel", "why", skipped=True)]
  table = crosscheck.format_table(rows)
  assert "PASS" in table and "FAIL" in table and "SKIP  why" in table
  assert table.splitlines()[-1] == "1 passed, 1 failed, 1 skipped"
