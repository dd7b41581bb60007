"""Config overrides typed by the config's declared types, and the validation pass that names the key (issue 16).

Bad values stop ``lliejax train`` at once (exit 2, one line naming the key, nothing written in the workdir);
:func:`lliejax.config_utils.apply_overrides` parses ``key=value`` with the type of the field (placeholders and
FieldReferences included); :meth:`lliejax.methods.Method.validate_config` (generic keys) and its extension in
Entropy-SDE (``model``, ``sde``, ``loss``) reject impossible values.
"""
import os
import sys
import time

import ml_collections
import pytest
from ml_collections import config_dict

from lliejax import cli, config_utils, ema, methods
from lliejax.config_utils import ConfigError
from lliejax.configs import entropy_sde as entropy_cfg
from lliejax.methods import base

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
TINY = os.path.join(REPO, "configs", "entropy_sde.py") + ":tiny"
sys.path.insert(0, TESTS)
import ddpm_method  # noqa: E402  (registers "test_ddpm", as tests/test_methods.py does)


# ------------------------------------------------------------------------------------------------ the CLI
@pytest.mark.parametrize("override, key", [
    ("data.flip=maybe", "config.data.flip: expected a boolean"),  # used to become False silently
    ("batch=0", "config.batch_size: must be >= 1"),  # used to fail deep inside ("batch_size must be positive")
    ("batch=-2", "config.batch_size: must be >= 1"),
    ("lr=-1", "config.optim.learning_rate: must be > 0"),  # used to fail as a non-finite loss at step 3
    ("sde.T=0", "config.sde.T: must be >= 1, got 0"),
    ("model.enc_blk_nums=()", "config.model.enc_blk_nums: must not be empty"),
    ("model.dtype=float8", "config.model.dtype: must be one of float32, bfloat16, float16, got 'float8'"),
    ("steps=abc", "config.num_train_steps: expected an integer, got 'abc'"),  # used to say "invalid literal"
    ("loss.eps=abc", "config.loss.eps: expected a number, got 'abc'"),
    ("data.eval_max_images=0", "config.data.eval_max_images: must be None or >= 1, got 0"),
])
def test_train_cli_rejects_bad_values_at_once_naming_the_key(override, key, tmp_path, capsys):
  workdir = tmp_path / "w"
  t0 = time.monotonic()
  assert cli.main(["train", "--config", f"{TINY},{override}", "--workdir", str(workdir)]) == 2
  elapsed = time.monotonic() - t0
  err = capsys.readouterr().err
  assert f"lliejax train: error: {key}" in err, err
  assert "Traceback" not in err
  assert not workdir.exists()  # nothing built, compiled or written
  assert elapsed < 15, elapsed


def test_train_cli_error_for_a_section_and_an_unknown_key(tmp_path, capsys):
  assert cli.main(["train", "--config", f"{TINY},model=3", "--workdir", str(tmp_path / "w")]) == 2
  assert "config.model: is a section" in capsys.readouterr().err
  assert cli.main(["train", "--config", f"{TINY},stepz=3", "--workdir", str(tmp_path / "w")]) == 2
  assert "unknown key 'stepz' (did you mean 'steps'?)" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------------ loading
def test_keys_with_an_unset_default_take_values():
  """``placeholder(float)`` / ``placeholder(int)`` defaults used to refuse every value (TypeError)."""
  config = config_utils.load_config(f"{TINY},loss.eps=1e-10,data.eval_max_images=2")
  assert config.loss.eps == 1e-10 and type(config.loss.eps) is float
  assert config.data.eval_max_images == 2 and type(config.data.eval_max_images) is int
  config = config_utils.load_config(f"{TINY},loss.eps=1e-10,loss.eps=none,data.manual_dir=/data/LOL")
  assert config.loss.eps is None and config.data.manual_dir == "/data/LOL"


def test_every_none_default_of_the_packaged_configs_is_typed():
  """A None default must be a ``placeholder(T)`` so that overrides know the type."""
  config = entropy_cfg.base_config()
  untyped = []

  def walk(section, prefix):
    for k in section:
      if isinstance(section[k], ml_collections.ConfigDict):
        walk(section[k], f"{prefix}{k}.")
      elif section[k] is None and section.get_type(k) is type(None):
        untyped.append(prefix + k)

  walk(config, "")
  walk(ddpm_method.get_config("teacher"), "")
  assert not untyped


def test_spaces_around_keys_and_values_are_ignored():
  config = config_utils.load_config(f"{TINY}, steps=5 ,  model.dtype = bfloat16")  # ' steps' was unknown
  assert config.num_train_steps == 5 and config.model.dtype == "bfloat16"


def test_lists_keep_their_commas():
  config = config_utils.load_config(f"{TINY},model.enc_blk_nums=(1,1),model.dec_blk_nums=[2, 1],loss.windows=1:3")
  assert list(config.model.enc_blk_nums) == [1, 1] and list(config.model.dec_blk_nums) == [2, 1]
  assert tuple(config.loss.windows) == (1, 3) and isinstance(config.loss.windows, tuple)
  with pytest.raises(ConfigError, match=r"^config\.model\.enc_blk_nums: .*unbalanced"):
    config_utils.load_config(f"{TINY},model.enc_blk_nums=(1,1")


def test_parse_arg_splits_outside_brackets():
  variant, items = config_utils.parse_arg(" tiny , a=(1, 2),b=[3,4], c=5 ,", "lolv1", ("tiny",))
  assert variant == "tiny" and items == ["a=(1, 2)", "b=[3,4]", "c=5"]


# ------------------------------------------------------------------------------------------------ the parser
def _config():
  c = ml_collections.ConfigDict()
  c.flag = True
  c.n = 3
  c.x = 0.5
  c.name = "adamw"
  c.ints = [1, 2]
  c.floats = (0.5, 1.0)
  c.empty = []
  c.unset = None
  c.pf = config_dict.placeholder(float)
  c.pi = config_dict.placeholder(int)
  c.ps = config_dict.placeholder(str)
  c.pl = config_dict.placeholder(tuple)
  c.ref = config_dict.FieldReference(1e-3)
  c.sub = ml_collections.ConfigDict({"lr": c.get_ref("ref"), "k": 1})
  return c


@pytest.mark.parametrize("text, value", [("true", True), ("True", True), ("YES", True), ("1", True),
                                         ("false", False), ("No", False), ("0", False), (" FALSE ", False)])
def test_booleans(text, value):
  c = _config()
  config_utils.apply_overrides(c, [f"flag={text}"])
  assert c.flag is value


@pytest.mark.parametrize("text", ["maybe", "2", "", "on", "none"])
def test_bad_booleans_name_the_key(text):
  with pytest.raises(ConfigError, match=r"^config\.flag: expected a boolean") as e:
    config_utils.apply_overrides(_config(), [f"flag={text}"])
  assert e.value.key == "flag" and isinstance(e.value, ValueError)


def test_numbers_and_strings():
  c = _config()
  config_utils.apply_overrides(c, ["n=500_000", "x=2", "name='adam'", "sub.k=-4"])
  assert c.n == 500_000 and c.x == 2.0 and type(c.x) is float and c.name == "adam" and c.sub.k == -4
  config_utils.apply_overrides(c, ["name=none"])  # a string field that is never None: the word itself
  assert c.name == "none"
  for item, match in (("n=1.5", r"^config\.n: expected an integer, got '1.5'"),
                      ("n=none", r"^config\.n: expected an integer"),
                      ("sub.k=x", r"^config\.sub\.k: expected an integer, got 'x' \(override 'sub\.k=x'\)"),
                      ("x=fast", r"^config\.x: expected a number")):
    with pytest.raises(ConfigError, match=match):
      config_utils.apply_overrides(_config(), [item])


def test_placeholders_and_field_references_take_their_declared_type():
  c = _config()
  config_utils.apply_overrides(c, ["pf=1e-10", "pi=7", "ps=normal", "pl=(1,2)", "ref=2"])
  assert c.pf == 1e-10 and c.pi == 7 and type(c.pi) is int and c.ps == "normal" and c.pl == (1, 2)
  assert c.ref == 2.0 and type(c.ref) is float and c.sub.lr == 2.0  # the reference follows
  config_utils.apply_overrides(c, ["pf=None", "pi=null", "ps=NONE", "pl=none"])
  assert c.pf is None and c.pi is None and c.ps is None and c.pl is None
  with pytest.raises(ConfigError, match=r"^config\.pi: expected an integer, got '2\.5'"):
    config_utils.apply_overrides(c, ["pi=2.5"])


def test_lists_and_tuples():
  c = _config()
  config_utils.apply_overrides(c, ["ints=(3, 4, 5)", "floats=[1,2]", "empty=(1, 'a')"])
  assert c.ints == [3, 4, 5] and c.floats == (1.0, 2.0) and type(c.floats[0]) is float and c.empty == [1, "a"]
  config_utils.apply_overrides(c, ["ints=7:8", "floats=()"])
  assert c.ints == [7, 8] and c.floats == ()
  with pytest.raises(ConfigError, match=r"^config\.ints\[1\]: expected an integer, got 'b'"):
    config_utils.apply_overrides(c, ["ints=(1,b)"])


def test_untyped_none_defaults_take_python_literals():
  for text, value in (("3", 3), ("0.25", 0.25), ("abc", "abc"), ("true", True), ("(1, 2)", (1, 2)), ("None", None)):
    c = _config()
    config_utils.apply_overrides(c, [f"unset={text}"])
    assert c.unset == value


def test_override_errors():
  with pytest.raises(KeyError, match=r"unknown key 'sub\.kk' \(did you mean 'k'\?\)"):
    config_utils.apply_overrides(_config(), ["sub.kk=1"])
  with pytest.raises(KeyError, match="unknown section 'nope'"):
    config_utils.apply_overrides(_config(), ["nope.k=1"])
  with pytest.raises(ConfigError, match=r"^config\.sub: is a section"):
    config_utils.apply_overrides(_config(), ["sub=1"])
  with pytest.raises(ValueError, match="not of the form key=value"):
    config_utils.apply_overrides(_config(), ["n"])
  c = _config()
  config_utils.apply_overrides(c, ["short=3"], {"short": "sub.k"})
  assert c.sub.k == 3


# ------------------------------------------------------------------------------------------------ validation
def test_config_error_is_a_usage_error():
  e = ConfigError("sde.T", "must be >= 1, got 0")
  assert str(e) == "config.sde.T: must be >= 1, got 0" and e.key == "sde.T"
  assert cli.exit_code(e, "train") == 2 and cli.error_message(e) == str(e)


def test_batch_must_split_over_the_devices():
  config = entropy_cfg.get_config("tiny")
  config_utils.validate_config(config, device_count=8)
  config.batch_size = 12
  config_utils.validate_config(config)  # evaluation / conversion: the batch is not split
  with pytest.raises(ConfigError, match=r"^config\.batch_size: must be >= 1 and divisible by the device count "
                                        r"\(8\), got 12$"):
    config_utils.validate_config(config, device_count=8)


@pytest.mark.parametrize("variant", entropy_cfg.VARIANTS)
def test_packaged_variants_are_valid_on_8_devices(variant):
  config_utils.validate_config(entropy_cfg.get_config(variant), device_count=8)


def test_test_method_configs_are_valid_and_get_the_generic_checks():
  for variant in ddpm_method.VARIANTS:
    config_utils.validate_config(ddpm_method.get_config(variant), device_count=8)
  with pytest.raises(ConfigError, match=r"^config\.ema\.decay: must be in \[0, 1\], got 2\.0"):
    config_utils.validate_config(ddpm_method.get_config("teacher,ema.decay=2"))
  with pytest.raises(ConfigError, match=r"^config\.eval_sampler: must be one of ddim, ancestral, got 'sde'"):
    config_utils.validate_config(ddpm_method.get_config("teacher,eval_sampler=sde"))


@pytest.mark.parametrize("override, message", [
    ("optim.name=sgd", "config.optim.name: must be one of adamw, adam, lion, got 'sgd'"),
    ("optim.b2=1", "config.optim.b2: must be in [0, 1), got 1.0"),
    ("lr=nan", "config.optim.learning_rate: must be a finite number > 0, got nan"),
    ("optim.schedule=step", "config.optim.schedule: must be one of cosine, constant"),
    ("ema.update_every=0", "config.ema.update_every: must be >= 1, got 0"),
    ("ema.kind=swa", "config.ema.kind: must be one of ema_pytorch, constant"),
    ("log_every=0", "config.log_every: must be >= 1, got 0"),
    ("eval_every=-1", "config.eval_every: must be >= 0, got -1"),
    ("data.patch_size=0", "config.data.patch_size: must be >= 1, got 0"),
    ("data.augment=none", "config.data.augment: must be one of lqgt, crop_flip, got 'none'"),
    ("test_sampler=ddim", "config.test_sampler: must be one of posterior, sde, ode, strided, got 'ddim'"),
    ("model.dec_blk_nums=(1,1,1)", "config.model.dec_blk_nums: must have as many levels as model.enc_blk_nums"),
    ("model.width=0", "config.model.width: must be >= 1, got 0"),
    ("sde.eps=1", "config.sde.eps: must be in (0, 1), got 1.0"),
    ("sde.schedule=sigmoid", "config.sde.schedule: must be one of cosine, linear, constant"),
    ("loss=l3", "config.loss.name: must be one of l1, l2, kl"),
    ("loss.bins=1", "config.loss.bins: must be >= 2, got 1"),
    ("loss.windows=(1,2)", "config.loss.windows: must hold odd integers >= 1, got [1, 2]"),
    ("loss.weights=gauss", "config.loss.weights: must be one of normal, shuffled_gaussian, mean (or None)"),
])
def test_impossible_values_are_rejected_naming_the_key(override, message):
  with pytest.raises(ConfigError) as e:
    config_utils.load_config(f"{TINY},{override}")
  assert str(e.value).startswith(message), str(e.value)


def test_entropy_sde_extends_the_generic_checks():
  """The base hook checks the shared keys only; Entropy-SDE adds model / sde / loss."""
  config = entropy_cfg.get_config("tiny,model.dtype=float8,sde.T=0")
  methods.Method.validate_config(config, device_count=8)
  with pytest.raises(ConfigError, match=r"^config\.model\.dtype"):
    methods.get("entropy_sde").validate_config(config)
  config = entropy_cfg.get_config("tiny,batch=0")
  with pytest.raises(ConfigError, match=r"^config\.batch_size"):
    methods.Method.validate_config(config)
  unvalidated = config_utils.load_config(f"{TINY},sde.T=0", validate=False)
  assert unvalidated.sde.T == 0


def test_validation_names_match_the_modules():
  """The choices the base hook lists without importing the data pipeline are those of the modules."""
  from lliejax.data import augment  # pylint: disable=import-outside-toplevel
  assert set(base.AUGMENT_POLICIES) == set(augment.POLICIES)
  for kind in base.EMA_KINDS:
    ema.from_config(ml_collections.ConfigDict(dict(kind=kind, decay=0.9, update_every=1, update_after_step=0)))
