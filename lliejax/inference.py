"""Inference with any method: load an export or a workdir, enhance arrays and image files on every device.

:func:`load` rebuilds the method from an export (its recorded method name and config) or from a training workdir
(its ``export/`` when present, else the latest checkpoint), so nothing else is needed.

:meth:`Enhancer.enhance_many` runs ``method.sample`` on many images: images of one shape are processed in chunks of
as many images as this process has devices, each chunk one jitted call whose batch is sharded over the local
devices (one image per device); each image ``i`` draws its randomness from ``fold_in(key, i)`` alone, so outputs
do not depend on the chunking, the number of devices or of processes. Across processes, the callers
(:func:`enhance_files`, :func:`lliejax.evaluate.evaluate_dataset`) give every process its share of the items
(:func:`lliejax.parallel.process_share`).
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any, Callable, Iterable, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from lliejax import checkpoint, methods, parallel


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
                                        in_shardings=(repl, repl, data, data), out_shardings=data)
    if devices not in self._placed:
      # Once, not at every call. Replicated global arrays (during multi-host training) via their local copy.
      self._placed[devices] = jax.device_put(jax.tree_util.tree_map(_host_local, (self.params, self.frozen)), repl)
    run, (params, frozen) = self._jitted[cache_key], self._placed[devices]
    return lambda lq, keys: run(params, frozen, lq, keys)

  def enhance(self, image: np.ndarray, key: jax.Array, *, sampler: str | None = None,
              steps: int | None = None) -> np.ndarray:
    """``image``: (H, W, C) float32 in [0, 1]. Returns the unclamped (H, W, C) output drawn with ``key``."""
    run = self._runner(sampler, steps, tuple(jax.local_devices()[:1]))
    return np.asarray(run(np.asarray(image[None], np.float32), key[None]))[0]

  def enhance_many(self, items: Iterable[tuple[int, np.ndarray]], key: jax.Array, *, sampler: str | None = None,
                   steps: int | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """``(index, output)`` for every ``(index, image)``; image ``index`` is drawn with ``fold_in(key, index)``.

    Consecutive images of one shape are batched, up to one per local device; outputs come in input order.
    """
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
                  steps: int | None = None, overwrite: bool = False, bit_depth: int = 8,
                  progress: bool = True) -> list[str]:
  """Enhance ``plan`` (from :func:`plan_outputs`) with this process's share of the files; returns unreadable ones.

  File ``i`` of the plan is drawn with ``fold_in(key, i)`` whichever process enhances it. Conversion notes and
  unreadable files are reported on stdout / stderr by name; the others are still processed.
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

  for i, out in enhancer.enhance_many(images(), key, sampler=sampler, steps=steps):
    image_io.write_png(plan[i][1], out, overwrite=overwrite, bit_depth=bit_depth)
    bar.update()
  bar.close()
  return failed
