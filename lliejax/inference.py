"""Inference with any method: load an export or a workdir, enhance arrays and image files on every device.

:func:`load` rebuilds the method from an export (its recorded method name and config) or from a training workdir
(its ``export/`` when present, else the latest checkpoint), so nothing else is needed.

:meth:`Enhancer.enhance_many` runs ``method.sample`` on many images: images of one shape are processed in chunks of
as many images as this process has devices, each chunk one jitted call whose batch is sharded over the local
devices (one image per device); each image ``i`` draws its randomness from ``fold_in(key, i)`` alone, so outputs
do not depend on the chunking, the number of devices or of processes. Across processes, the callers
(:func:`enhance_files`, :func:`lliejax.evaluate.evaluate_dataset`) give every process its share of the items
(:func:`lliejax.parallel.process_share`).

Size buckets (:class:`BucketPolicy`): the sampler is compiled once per input shape (tens of seconds for the
100-step sampler), so a folder of photos of many sizes would compile one program per size. With ``buckets``, every
image is padded at the bottom / right to its bucket (:meth:`BucketPolicy.shape`: sides rounded up to a multiple of
``step``, coarser for large sides), enhanced, and cropped back to exactly its own size, so a folder compiles one
program per bucket; images of different sizes in one bucket are batched together. The padded border is part of
what the network sees (its convolutions near the bottom / right edge, its global channel-attention means, and the
noise, drawn per pixel at the bucket shape), so a bucketed output differs slightly from the exact-size one (see
:class:`BucketPolicy`); it depends only on the image, its index and the policy, never on the other images.
:func:`enhance_files` (``lliejax enhance``) buckets by default (:data:`DEFAULT_BUCKETS`); :meth:`Enhancer.enhance`,
:meth:`Enhancer.enhance_many` and :func:`lliejax.evaluate.evaluate_dataset` (the paper numbers) run exact sizes
unless given ``buckets``. :attr:`Enhancer.compiled_programs` counts the sampler programs an Enhancer has compiled.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from lliejax import checkpoint, methods, parallel, runtime


PAD_MODES = ("constant", "reflect", "symmetric", "edge")


@dataclasses.dataclass(frozen=True)
class BucketPolicy:
  """Size buckets: the padded shape an image is enhanced at, so that many sizes share a few compiled programs.

  A side of ``n`` pixels is rounded up to a multiple of ``q = step * 2**k``, ``k >= 0`` the smallest with
  ``n <= 2 * per_octave * q``: multiples of ``step`` up to ``2 * per_octave * step`` pixels (1024 by default),
  then ``per_octave`` buckets per doubling of the size (1152, 1280, ..., 2048; 2304, 2560, ..., 4096; ...).
  ``per_octave=0``: multiples of ``step`` at every size. ``step`` is first rounded up to a multiple of the
  network's own padding factor (``2 ** levels``: 32 for the released NAFNet, 16 for the demo one).

  Compute overhead (extra pixels per side): under ``step`` pixels up to ``2 * per_octave * step``, under
  ``1 / per_octave`` (12.5%) of the side above; per image, the area grows by at most ~27% for sides over 1024
  pixels, ~9% on average for sides uniform in 1024..4096. Small images pay more in relative terms (a 40x40 image
  runs at 64x64) but little in absolute time, and the saved compilations (tens of seconds each) dominate.

  Attributes:
    step: the finest bucket granularity in pixels (default 64).
    per_octave: buckets per doubling of the size above ``2 * per_octave * step`` (default 8; 0: none).
    mode: ``numpy.pad`` mode of the padding: ``constant`` (zeros, default: what the network's own padding
      adds), ``reflect``, ``symmetric`` or ``edge``. With the trained demo network and the same noise in the
      image region, zeros kept the output closest to the exact-size one (PSNR 28-36 dB between the two on the
      170x256 demo photos at 192x256, ODE sampler; reflect / edge 27-33 dB); every mode's difference is smaller
      than that between two sampler seeds (22-24 dB), which is what the per-pixel noise drawn at the bucket
      shape amounts to with the stochastic samplers.
  """

  step: int = 64
  per_octave: int = 8
  mode: str = "constant"

  def __post_init__(self):
    if not isinstance(self.step, int) or self.step < 1:
      raise ValueError(f"bucket step must be a positive number of pixels, got {self.step!r}")
    if not isinstance(self.per_octave, int) or self.per_octave < 0:
      raise ValueError(f"bucket per_octave must be >= 0 (0: multiples of the step only), got {self.per_octave!r}")
    if self.mode not in PAD_MODES:
      raise ValueError(f"bucket padding mode {self.mode!r}: choose one of {', '.join(PAD_MODES)}")

  def side(self, n: int, multiple: int = 1) -> int:
    """The bucket of a side of ``n`` pixels for a network that pads to a multiple of ``multiple``."""
    if n < 1:
      raise ValueError(f"image side must be positive, got {n}")
    q = -(-self.step // multiple) * multiple
    if self.per_octave:
      while n > 2 * self.per_octave * q:
        q *= 2
    return -(-n // q) * q

  def shape(self, height: int, width: int, multiple: int = 1) -> tuple[int, int]:
    """``(bucket height, bucket width)`` of an image (:meth:`side` of each)."""
    return self.side(height, multiple), self.side(width, multiple)


#: The policy of :func:`enhance_files` (``lliejax enhance``): sides to multiples of 64 (up to 1024), zero padding.
DEFAULT_BUCKETS = BucketPolicy()


def bucket_policy(buckets: BucketPolicy | int | None) -> BucketPolicy | None:
  """``buckets`` as a policy: ``None`` or ``0``: exact sizes; a positive int: :class:`BucketPolicy` of that step."""
  if buckets is None or isinstance(buckets, BucketPolicy):
    return buckets
  if isinstance(buckets, bool) or not isinstance(buckets, int) or buckets < 0:
    raise ValueError(f"buckets must be a BucketPolicy, a step in pixels (0: exact sizes) or None, got {buckets!r}")
  return BucketPolicy(step=buckets) if buckets else None


def size_multiple(method: methods.Method) -> int:
  """The multiple the method's network pads its input to (:attr:`lliejax.methods.Method.size_multiple`)."""
  return int(getattr(method, "size_multiple", 1))


@dataclasses.dataclass(eq=False)
class Enhancer:
  """A method with its parameters: ``enhance(image, key)`` runs the method's sampler on one image."""

  method: methods.Method
  params: Any
  frozen: Any
  source: str
  info: dict
  # Jitted samplers (shared by with_params copies: compiled once per training run) and params placed per mesh.
  _jitted: dict = dataclasses.field(default_factory=dict, repr=False)
  _placed: dict = dataclasses.field(default_factory=dict, repr=False)
  # (sampler, steps, devices, batch shape) of every sampler program run so far (shared like _jitted).
  _programs: set = dataclasses.field(default_factory=set, repr=False)

  @property
  def compiled_programs(self) -> int:
    """How many sampler programs this Enhancer (and its :meth:`with_params` copies) has compiled so far.

    One per distinct (sampler, steps, devices, batch shape) it ran: ``lliejax enhance`` on a folder compiles one
    per bucket (per exact size without buckets), plus one per smaller last batch on several devices.
    """
    return len(self._programs)

  def with_params(self, params) -> Enhancer:
    """The same method with other parameters, reusing the compiled samplers (validation during training)."""
    return dataclasses.replace(self, params=params, _placed={})

  def _runner(self, sampler: str | None, steps: int | None, devices: tuple) -> Callable:
    """``(lq (n, H, W, C), keys (n,)) -> outputs``: jitted, the batch sharded over ``devices`` (n of them)."""
    mesh = parallel.make_mesh(devices)
    repl, data = parallel.replicated(mesh), parallel.data_sharded(mesh)
    cache_key = (sampler, steps, devices)
    if cache_key not in self._jitted:
      method = self.method

      def one(params, frozen, lq, key):
        return method.sample(params, frozen, lq[None], key, sampler=sampler, steps=steps)[0]

      self._jitted[cache_key] = jax.jit(jax.vmap(one, in_axes=(None, None, 0, 0)),
                                        in_shardings=(repl, repl, data, data), out_shardings=data,
                                        compiler_options=runtime.compiler_options(runtime.mesh_platform(mesh)))
    if devices not in self._placed:
      # Once, not at every call. Replicated global arrays (during multi-host training) via their local copy.
      self._placed[devices] = jax.device_put(jax.tree_util.tree_map(_host_local, (self.params, self.frozen)), repl)
    run, (params, frozen) = self._jitted[cache_key], self._placed[devices]

    def call(lq, keys):
      self._programs.add((cache_key, lq.shape, str(lq.dtype)))
      return run(params, frozen, lq, keys)

    return call

  def bucket_shape(self, height: int, width: int, buckets: BucketPolicy | int | None) -> tuple[int, int]:
    """The ``(height, width)`` an image of that size is enhanced at under ``buckets`` (None/0: its own)."""
    policy = bucket_policy(buckets)
    return (height, width) if policy is None else policy.shape(height, width, size_multiple(self.method))

  def _pad(self, image: np.ndarray, policy: BucketPolicy) -> np.ndarray:
    """``image`` (H, W, C) padded at the bottom / right to its bucket, float32."""
    h, w = image.shape[:2]
    bh, bw = policy.shape(h, w, size_multiple(self.method))
    image = np.asarray(image, np.float32)
    if (bh, bw) == (h, w):
      return image
    return np.pad(image, ((0, bh - h), (0, bw - w), (0, 0)), mode=policy.mode)

  def enhance(self, image: np.ndarray, key: jax.Array, *, sampler: str | None = None, steps: int | None = None,
              buckets: BucketPolicy | int | None = None) -> np.ndarray:
    """``image``: (H, W, C) float32 in [0, 1]. Returns the unclamped (H, W, C) output drawn with ``key``.

    ``buckets``: enhance at the image's bucket shape and crop back (module docstring); default its exact size.
    """
    run = self._runner(sampler, steps, tuple(jax.local_devices()[:1]))
    policy = bucket_policy(buckets)
    if policy is None:
      return np.asarray(run(np.asarray(image[None], np.float32), key[None]))[0]
    h, w = image.shape[:2]
    return np.array(np.asarray(run(self._pad(image, policy)[None], key[None]))[0, :h, :w])

  def enhance_many(self, items: Iterable[tuple[int, np.ndarray]], key: jax.Array, *, sampler: str | None = None,
                   steps: int | None = None,
                   buckets: BucketPolicy | int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """``(index, output)`` for every ``(index, image)``; image ``index`` is drawn with ``fold_in(key, index)``.

    Without ``buckets`` (default): consecutive images of one shape are batched, up to one per local device, and
    outputs come in input order. With ``buckets`` (a :class:`BucketPolicy`, or a step in pixels; 0: none): every
    image is padded to its bucket and its output cropped back to its own size; images of one bucket are batched
    whatever their order, a batch running when it has one image per local device (the rest at the end), so
    outputs come as their batches complete, not in input order. Either way an image's output depends only on
    the image, its index and the policy.
    """
    policy = bucket_policy(buckets)
    if policy is not None:
      yield from self._enhance_bucketed(items, key, sampler=sampler, steps=steps, policy=policy)
      return
    devices = jax.local_devices()
    pending: list[tuple[int, np.ndarray]] = []

    def flush():
      n = len(pending)
      run = self._runner(sampler, steps, tuple(devices[:n]))
      lq = np.stack([img for _, img in pending]).astype(np.float32)
      keys = jnp.stack([jax.random.fold_in(key, i) for i, _ in pending])
      out = np.asarray(run(lq, keys))
      done = [(i, out[j]) for j, (i, _) in enumerate(pending)]
      pending.clear()
      return done

    for index, image in items:
      if pending and (pending[0][1].shape != image.shape or len(pending) == len(devices)):
        yield from flush()
      pending.append((index, image))
    if pending:
      yield from flush()

  def _enhance_bucketed(self, items: Iterable[tuple[int, np.ndarray]], key: jax.Array, *, sampler: str | None,
                        steps: int | None, policy: BucketPolicy) -> Iterator[tuple[int, np.ndarray]]:
    """:meth:`enhance_many` with buckets: one queue per bucket shape (and channel count), flushed when full."""
    devices = jax.local_devices()
    queues: dict[tuple, list[tuple[int, tuple[int, int], np.ndarray]]] = {}

    def flush(bucket):
      pending = queues.pop(bucket)
      run = self._runner(sampler, steps, tuple(devices[:len(pending)]))
      lq = np.stack([padded for _, _, padded in pending])
      keys = jnp.stack([jax.random.fold_in(key, i) for i, _, _ in pending])
      out = np.asarray(run(lq, keys))
      return [(i, np.array(out[j, :h, :w])) for j, (i, (h, w), _) in enumerate(pending)]

    for index, image in items:
      padded = self._pad(image, policy)
      queue = queues.setdefault(padded.shape, [])
      queue.append((index, image.shape[:2], padded))
      if len(queue) == len(devices):
        yield from flush(padded.shape)
    for bucket in list(queues):
      yield from flush(bucket)


def _host_local(x):
  """A replicated array spanning other processes' devices -> this process's copy (others unchanged)."""
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    if not x.is_fully_replicated:
      raise ValueError("an Enhancer needs replicated parameters, got an array sharded across processes")
    return x.addressable_data(0)
  return x


def load(source: str, *, ema: bool = True) -> Enhancer:
  """An :class:`Enhancer` from an export directory or a training workdir.

  Args:
    source: an export directory (``lliejax_export.json``, either format) or a workdir (``config.json``). A
      workdir's ``export/`` is used when present and ``ema`` is requested; otherwise its latest checkpoint.
    ema: with a workdir's checkpoint, the exported EMA copy (True) or the online parameters (False).

  Raises:
    FileNotFoundError / ValueError: naming ``source`` when it is neither, or unreadable.
  """
  source = os.path.abspath(os.path.expanduser(source))
  if not os.path.exists(source):
    raise FileNotFoundError(f"model path {source} does not exist")
  if checkpoint.is_export_dir(source):
    exp = checkpoint.load_export(source)
    method_cls = methods.get(exp.method, module=exp.info.get("method_module"))
    config = exp.config if exp.config is not None else method_cls.legacy_config(exp.info)
    params, frozen, info = exp.params, exp.frozen, exp.info
    method = method_cls(config)
  elif checkpoint.is_workdir(source):
    export = os.path.join(source, "export")
    if ema and checkpoint.is_export_dir(export):
      return load(export)
    from lliejax import state as state_lib  # pylint: disable=import-outside-toplevel
    train_state, method, _, step = state_lib.restore_from_workdir(source)
    params = train_state.export_params(method) if ema else train_state.params
    frozen = method.inference_frozen(method.init_frozen(state_lib.run_keys(method.config)["init"]))
    info = {"source": source, "step": step, "ema": ema and method.export_ema in train_state.ema}
  else:
    raise ValueError(f"{source} is neither a lliejax export directory ({checkpoint.EXPORT_META}) nor a training "
                     f"workdir ({checkpoint.CONFIG_FILE})")
  to_device = lambda tree: jax.tree_util.tree_map(jnp.asarray, tree)
  return Enhancer(method=method, params=to_device(params), frozen=to_device(frozen), source=source, info=info)


# ------------------------------------------------------------------------------------------------ image files
def plan_outputs(inputs: list[str], out_dir: str, *, overwrite: bool) -> list[tuple[str, str]]:
  """Map every input file (folders: their images) to ``out_dir/<stem>.png``.

  Raises:
    FileNotFoundError: an input is missing, or no image is found.
    ValueError: two inputs would share an output, or an output is one of the inputs.
    FileExistsError: an output exists and ``overwrite`` is false.
  """
  from lliejax.data import image_io  # pylint: disable=import-outside-toplevel

  files = []
  for item in inputs:
    if os.path.isdir(item):
      files.extend(str(f) for f in image_io.list_images(item))
    elif os.path.exists(item):
      files.append(item)
    else:
      raise FileNotFoundError(f"input {item} does not exist")
  if not files:
    raise FileNotFoundError(f"no image files found in {', '.join(inputs)}")
  out_dir = os.path.abspath(os.path.expanduser(out_dir))
  real_inputs = {os.path.realpath(f) for f in files}
  plan, seen = [], {}
  for f in files:
    out = os.path.join(out_dir, os.path.splitext(os.path.basename(f))[0] + ".png")
    if out in seen:
      raise ValueError(f"{f} and {seen[out]} would both be written to {out}; enhance them into separate --out "
                       "folders")
    seen[out] = f
    if os.path.realpath(out) in real_inputs:
      raise ValueError(f"refusing to write {out}: it is one of the input files (choose another --out)")
    if os.path.exists(out) and not overwrite:
      raise FileExistsError(f"{out} already exists; pass --overwrite to replace existing outputs")
    plan.append((f, out))
  return plan


def enhance_files(enhancer: Enhancer, plan: list[tuple[str, str]], key: jax.Array, *, sampler: str | None = None,
                  steps: int | None = None, overwrite: bool = False, bit_depth: int = 8, progress: bool = True,
                  buckets: BucketPolicy | int | None = DEFAULT_BUCKETS) -> list[str]:
  """Enhance ``plan`` (from :func:`plan_outputs`) with this process's share of the files; returns unreadable ones.

  File ``i`` of the plan is drawn with ``fold_in(key, i)`` whichever process enhances it. Conversion notes and
  unreadable files are reported on stdout / stderr by name; the others are still processed. ``buckets``: size
  buckets (default :data:`DEFAULT_BUCKETS`; ``None`` or ``0``: every image at its exact size, one compiled
  program per size); every output has its input's size either way. ``enhancer.compiled_programs`` then says how
  many sampler programs were compiled.
  """
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel

  from lliejax.data import image_io  # pylint: disable=import-outside-toplevel

  mine = parallel.process_share(list(enumerate(plan)))
  failed: list[str] = []
  bar = tqdm(total=len(mine), desc="enhance", unit="img", disable=not progress)

  def images():
    for i, (src, _) in mine:
      try:
        image, notes = image_io.read_image(src)
      except image_io.ImageReadError as e:
        failed.append(src)
        tqdm.write(f"skipped {src}: {e}", file=sys.stderr)
        bar.update()
        continue
      for note in notes:
        tqdm.write(f"{src}: {note}")
      yield i, image

  for i, out in enhancer.enhance_many(images(), key, sampler=sampler, steps=steps, buckets=buckets):
    image_io.write_png(plan[i][1], out, overwrite=overwrite, bit_depth=bit_depth)
    bar.update()
  bar.close()
  return failed
