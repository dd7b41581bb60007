"""The Method interface: what a published method gives the generic train / evaluate / enhance / checkpoint code.

A method is built from its full config (``Method(config)``) and is then a set of pure functions over explicit
pytrees. The core (:mod:`lliejax.train`, :mod:`lliejax.evaluate`, :mod:`lliejax.inference`,
:mod:`lliejax.checkpoint`) knows nothing else about it.

Pytrees a method deals in:

* ``params``: everything the optimiser trains. Any pytree, so a method with several networks keeps them under
  names (e.g. ``{'denoiser': ..., 'cond': ..., 'he': ...}``).
* ``frozen``: what the method needs but never trains: a teacher restored from an export, a released encoder, a
  fixed prior. Built by :meth:`Method.init_frozen` on every start (fresh or resumed), passed to :meth:`Method.loss`
  and :meth:`Method.sample` as an argument that is neither differentiated nor donated, and not stored in training
  checkpoints. :meth:`Method.inference_frozen` selects the part an export must carry for sampling (a distilled
  student needs no teacher; a conditional encoder is needed).
* ``ema``: named moving averages of ``params``, one per rule of :meth:`Method.ema_rules` (``{}``: none). The
  training loop updates them after every optimizer step and passes them (without gradient) to :meth:`Method.loss`,
  so a method can use a target network (consistency distillation). :attr:`Method.export_ema` names the copy that is
  exported and evaluated (``None``: the online ``params``).

Randomness: :meth:`Method.loss` receives the key of the step (the run's key with the step folded in) and
:meth:`Method.sample` the key of one image; a method splits them as it needs, so results never depend on how a
batch is sharded.

Images are NHWC float32 RGB in [0, 1] at the interface: a batch is ``{'lq': ..., 'gt': ...}`` and ``sample`` returns
the (unclamped) enhanced image; a method that works in [-1, 1] converts inside.
"""
from __future__ import annotations

import abc
from typing import Any, ClassVar, Mapping

import jax

from lliejax import config_utils as cu
from lliejax import ema as ema_lib
from lliejax import metrics

Pytree = Any

#: The ``config.data.augment`` policies of :data:`lliejax.data.augment.POLICIES` (named here so that validating a
#: config does not import the data pipeline).
AUGMENT_POLICIES = ("lqgt", "crop_flip")
#: The ``config.ema.kind`` rules of :func:`lliejax.ema.from_config`.
EMA_KINDS = ("ema_pytorch", "constant")


class Method(abc.ABC):
  """Base class of every method (see the module docstring). Subclasses set :attr:`name` and register."""

  #: Registry name, also recorded in exports and workdirs.
  name: ClassVar[str] = ""
  #: Config sections that fix the shapes of ``params``: a workdir refuses to resume with different values.
  architecture_sections: ClassVar[tuple[str, ...]] = ("model",)
  #: Sampler names :meth:`sample` accepts (the first is the default).
  samplers: ClassVar[tuple[str, ...]] = ()
  #: The EMA copy exported and evaluated (a key of :meth:`ema_rules`); ``None``: the online params.
  export_ema: ClassVar[str | None] = "ema"

  def __init__(self, config):
    self.config = config

  # ---------------------------------------------------------------------------------------------- required
  @abc.abstractmethod
  def init_params(self, key: jax.Array) -> Pytree:
    """Freshly initialised trainable parameters."""

  @abc.abstractmethod
  def loss(self, params: Pytree, frozen: Pytree, batch: Mapping[str, jax.Array], key: jax.Array, *,
           ema: Mapping[str, Pytree], step: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``(scalar loss, {name: scalar})`` of one global batch (traced inside the jitted train step).

    ``step`` is the (traced) step being taken, for objectives that change over training (warm-ups, schedules).
    """

  @abc.abstractmethod
  def sample(self, params: Pytree, frozen: Pytree, lq: jax.Array, key: jax.Array, *, sampler: str | None = None,
             steps: int | None = None) -> jax.Array:
    """The enhanced images of ``lq`` (NHWC in [0, 1], any size), unclamped. Traceable (the caller jits)."""

  # ---------------------------------------------------------------------------------------------- defaults
  @property
  def size_multiple(self) -> int:
    """The multiple the method's network pads its input to (size buckets of ``enhance`` round up to it)."""
    return 1

  def init_frozen(self, key: jax.Array) -> Pytree:
    """What the method uses but never trains (default: nothing). Called on every start, fresh or resumed."""
    del key
    return {}

  def inference_frozen(self, frozen: Pytree) -> Pytree:
    """The part of ``frozen`` that :meth:`sample` needs, stored in exports (default: all of it)."""
    return frozen

  def ema_rules(self) -> dict[str, ema_lib.EmaRule]:
    """Named EMA rules (default: ``{'ema': rule of config.ema}`` when the config has an ``ema`` section)."""
    if self.config.get("ema") is None:
      return {}
    return {"ema": ema_lib.from_config(self.config.ema)}

  @property
  def convention(self) -> metrics.Convention:
    """How this method's paper turns outputs into numbers (default: IR-SDE's)."""
    return metrics.IRSDE

  def default_sampler(self, purpose: str = "test") -> str | None:
    """The sampler for ``purpose``: ``'test'`` (evaluation, enhance) or ``'validation'`` (during training).

    Default: ``config.test_sampler`` / ``config.eval_sampler`` when set, else the first of :attr:`samplers`.
    """
    key = "eval_sampler" if purpose == "validation" else "test_sampler"
    value = self.config.get(key)
    return value if value else (self.samplers[0] if self.samplers else None)

  @classmethod
  def validate_config(cls, config, *, device_count: int | None = None) -> None:
    """Reject impossible values of ``config`` with a :class:`lliejax.config_utils.ConfigError` naming the key.

    :func:`lliejax.config_utils.load_config` runs it (through :func:`lliejax.config_utils.validate_config`) after
    the overrides, so a bad value stops a command before any work. The base checks the generic keys, where the
    config has them: ``batch_size`` (>= 1, a multiple of ``device_count`` when given), ``num_train_steps``,
    ``seed``, the logging / checkpoint / validation intervals, ``eval_sampler`` / ``test_sampler`` (one of
    :attr:`samplers`, or empty for the default), ``optim`` (:mod:`lliejax.optim`), ``ema`` (:mod:`lliejax.ema`)
    and ``data`` (:mod:`lliejax.data`). A method extends it, calling ``super().validate_config(...)`` first, with
    the checks of its own sections.

    Args:
      config: a full config of this method.
      device_count: the number of devices a training batch is split over; None skips the divisibility check
        (evaluation and conversion do not split the batch).

    Raises:
      lliejax.config_utils.ConfigError: an impossible value (a ``ValueError`` whose message starts with the key).
    """
    from lliejax import optim  # pylint: disable=import-outside-toplevel

    if "batch_size" in config:
      batch = config.batch_size
      if not cu.is_int(batch) or batch < 1 or (device_count and batch % device_count):
        need = "must be >= 1" + (f" and divisible by the device count ({device_count})" if device_count else "")
        raise cu.ConfigError("batch_size", f"{need}, got {batch!r}")
    cu.check_int(config, "num_train_steps", min_value=1)
    cu.check_int(config, "seed")
    for key in ("log_every", "checkpoint_every", "keep_checkpoints", "eval_num_images"):
      cu.check_int(config, key, min_value=1)
    cu.check_int(config, "eval_every", min_value=0)  # 0: no validation during training
    cu.check_bool(config, "write_images")
    if cls.samplers:
      for key in ("eval_sampler", "test_sampler"):
        if config.get(key):  # None or '': the method's default
          cu.check_choice(config, key, cls.samplers)

    cu.check_choice(config, "optim.name", optim.OPTIMIZERS)
    cu.check_float(config, "optim.learning_rate", min_value=0, min_open=True)
    for key in ("optim.b1", "optim.b2"):
      cu.check_float(config, key, min_value=0, max_value=1, max_open=True)
    for key in ("optim.eps", "optim.weight_decay", "optim.eta_min", "optim.grad_clip"):
      cu.check_float(config, key, min_value=0)
    if cu.check_choice(config, "optim.schedule", optim.SCHEDULES) == "linear":
      for key in ("optim.constant_steps", "optim.decay_steps"):
        if cu.lookup(config, key, None) is None:
          raise cu.ConfigError(key, "optim.schedule='linear' needs it (an int >= 0)")
        cu.check_int(config, key, min_value=0)
    cu.check_int(config, "optim.warmup_steps", min_value=0, allow_none=True)

    cu.check_choice(config, "ema.kind", EMA_KINDS)
    cu.check_float(config, "ema.decay", min_value=0, max_value=1)
    cu.check_float(config, "ema.inv_gamma", min_value=0, min_open=True)
    cu.check_float(config, "ema.power", min_value=0, min_open=True)
    for key in ("ema.update_every", "ema.every"):
      cu.check_int(config, key, min_value=1)
    for key in ("ema.update_after_step", "ema.start"):
      cu.check_int(config, key, min_value=0)

    cu.check_str(config, "data.name")
    cu.check_str(config, "data.eval_split")
    for key in ("data.data_dir", "data.manual_dir"):
      cu.check_str(config, key, nonempty=False, allow_none=True)
    cu.check_choice(config, "data.augment", AUGMENT_POLICIES)
    cu.check_int(config, "data.patch_size", min_value=1)
    cu.check_float(config, "data.resize_prob", min_value=0, max_value=1)
    cu.check_float(config, "data.resize_scale", min_value=0, min_open=True)
    for key in ("data.flip", "data.transpose", "data.rot90"):
      cu.check_bool(config, key)
    for key in ("data.worker_count", "data.read_threads", "data.prefetch"):
      cu.check_int(config, key, min_value=0)
    cu.check_int(config, "data.eval_max_images", min_value=1, allow_none=True)

  @classmethod
  def legacy_config(cls, info: dict):
    """The config of an export written before exports recorded one (lliejax 0.1 ``lliejax-params`` files)."""
    raise ValueError(f"method {cls.name!r} has no exports without a config; re-export it")

  def describe(self, params: Pytree) -> str:
    """One line for the training log."""
    return f"{self.name}: {count_params(params):,} trainable parameters"


def count_params(tree: Pytree) -> int:
  """Number of scalars in a pytree of arrays."""
  return sum(int(x.size) for x in jax.tree_util.tree_leaves(tree))
