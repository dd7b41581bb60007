"""Size buckets for ``lliejax enhance``: a folder of many sizes compiles a few sampler programs, outputs keep their
input's size, are deterministic per image whatever else is in the folder, and the exact-size path is unchanged."""
import jax
import numpy as np
import pytest
from jax import monitoring

from lliejax import inference, methods, parallel
from lliejax.configs.entropy_sde import get_config

# Ten sizes from 17x23 to 70x45: buckets 64x64 (nine) and 128x64 (70x45) under the default policy.
SIZES = [(17, 23), (20, 31), (24, 19), (29, 40), (33, 27), (38, 52), (45, 36), (51, 60), (58, 44), (70, 45)]

# Every backend compilation (persistent-cache hits included) of a jitted function, by name.
_COMPILES: list[str] = []
monitoring.register_event_duration_secs_listener(
    lambda event, _, **kw: _COMPILES.append(kw.get("fun_name")) if event.endswith("backend_compile_duration")
    else None)


def _enhancer() -> inference.Enhancer:
  """The tiny config (T = 8) with fresh parameters; beta / gamma moved off zero so every NAFBlock acts."""
  method = methods.build(get_config("tiny"))
  params = method.init_params(jax.random.key(0))
  params = jax.tree_util.tree_map_with_path(lambda p, v: v + 0.1 if p[-1].key in ("beta", "gamma") else v, params)
  return inference.Enhancer(method=method, params=params, frozen={}, source="test", info={})


def _images(sizes, seed=0):
  rng = np.random.default_rng(seed)
  return [(rng.random((h, w, 3)) * 0.4).astype(np.float32) for h, w in sizes]


@pytest.fixture(scope="module")
def folder():
  """One enhancer, the ten images, their bucketed outputs and the sampler compilations they took."""
  enhancer = _enhancer()
  images = _images(SIZES)
  before = len(_COMPILES)
  outputs = dict(enhancer.enhance_many(enumerate(images), jax.random.key(0), buckets=inference.DEFAULT_BUCKETS))
  compiles = [name for name in _COMPILES[before:] if name == "jit(one)"]
  return enhancer, images, outputs, compiles


def test_bucket_policy_sides():
  p = inference.BucketPolicy()
  assert [p.side(n) for n in (1, 17, 64, 65, 600, 1000, 1024)] == [64, 64, 64, 128, 640, 1024, 1024]
  # Above 2 * per_octave * step: eight buckets per doubling (overhead < 1/8 of the side).
  assert [p.side(n) for n in (1025, 1152, 1153, 2048, 2049, 3000, 4032)] == [1152, 1152, 1280, 2048, 2304, 3072,
                                                                             4096]
  assert all(p.side(n) - n < max(64, n / 8) for n in range(1, 5000))
  # The step is rounded up to the network's padding factor; per_octave=0: plain multiples of the step.
  assert inference.BucketPolicy(step=48).side(50, 32) == 64
  assert inference.BucketPolicy(step=64, per_octave=0).side(3000) == 3008
  assert p.shape(170, 256, 16) == (192, 256)
  assert inference.bucket_policy(0) is None and inference.bucket_policy(None) is None
  assert inference.bucket_policy(128) == inference.BucketPolicy(step=128)
  for bad in (dict(step=0), dict(per_octave=-1), dict(mode="wrap")):
    with pytest.raises(ValueError):
      inference.BucketPolicy(**bad)
  with pytest.raises(ValueError):
    inference.bucket_policy(-64)


def test_a_folder_of_ten_sizes_compiles_at_most_three_programs(folder):
  enhancer, images, outputs, compiles = folder
  assert sorted(outputs) == list(range(len(SIZES)))
  for i, image in enumerate(images):
    assert outputs[i].shape == image.shape and outputs[i].dtype == np.float32
    assert np.all(np.isfinite(outputs[i]))
  # Two buckets; on several devices the 64x64 bucket's last, smaller batch is one more program.
  assert {enhancer.bucket_shape(h, w, inference.DEFAULT_BUCKETS) for h, w in SIZES} == {(64, 64), (128, 64)}
  assert enhancer.compiled_programs <= 3
  jitted = enhancer._jitted.values()  # pylint: disable=protected-access
  assert sum(run._cache_size() for run in jitted) == enhancer.compiled_programs  # pylint: disable=protected-access
  assert len(compiles) == enhancer.compiled_programs


def test_outputs_are_per_image_whatever_else_is_in_the_folder(folder):
  enhancer, images, outputs, _ = folder
  key = jax.random.key(0)
  # A few of the images, in another order, with another image count per bucket (other batch sizes).
  subset = [(i, images[i]) for i in (9, 4, 0, 6)]
  again = dict(enhancer.enhance_many(subset, key, buckets=inference.DEFAULT_BUCKETS))
  for i, out in again.items():
    np.testing.assert_array_equal(out, outputs[i])
  # Alone, and through enhance() with the image's own key.
  (i, alone), = enhancer.enhance_many([(3, images[3])], key, buckets=64)
  np.testing.assert_array_equal(alone, outputs[3])
  np.testing.assert_array_equal(enhancer.enhance(images[7], jax.random.fold_in(key, 7), buckets=64), outputs[7])
  # The output is the bucket's output cropped: padding to the bucket by hand and cropping gives it too.
  h, w = SIZES[5]
  padded = np.zeros((64, 64, 3), np.float32)
  padded[:h, :w] = images[5]
  full = enhancer.enhance(padded, jax.random.fold_in(key, 5))
  np.testing.assert_array_equal(full[:h, :w], outputs[5])
  # Buckets change the output (the network and the noise see the padded border), but not wildly.
  exact = enhancer.enhance(images[5], jax.random.fold_in(key, 5))
  assert not np.array_equal(exact, outputs[5]) and exact.shape == outputs[5].shape


# Checksums (sum of squares, first pixel) of the outputs of the code before size buckets existed, for the case of
# test_the_exact_path_is_unchanged (8 CPU devices).
_BEFORE = {0: (1008633.8597995145, 18.10682487487793), 1: (992607.264747493, 54.534786224365234),
           2: (1018728.8606902901, -77.11695861816406), 3: (591794.4404163024, -6.4447550773620605),
           4: (998396.4952438847, 35.52751159667969), "single": (580266.0700849362, 14.349124908447266)}


def _old_enhance_many(enhancer, items, key):
  """``Enhancer.enhance_many`` as it was before size buckets: the reference of the exact path."""
  devices, pending, out = jax.local_devices(), [], {}

  def flush():
    mesh = parallel.make_mesh(tuple(devices[:len(pending)]))
    repl, data = parallel.replicated(mesh), parallel.data_sharded(mesh)

    def one(params, frozen, lq, k):
      return enhancer.method.sample(params, frozen, lq[None], k)[0]

    run = jax.jit(jax.vmap(one, in_axes=(None, None, 0, 0)), in_shardings=(repl, repl, data, data),
                  out_shardings=data)
    placed = jax.device_put((enhancer.params, enhancer.frozen), repl)
    lq = np.stack([img for _, img in pending]).astype(np.float32)
    res = np.asarray(run(*placed, lq, jax.numpy.stack([jax.random.fold_in(key, i) for i, _ in pending])))
    out.update({i: res[j] for j, (i, _) in enumerate(pending)})
    pending.clear()

  for index, image in items:
    if pending and (pending[0][1].shape != image.shape or len(pending) == len(devices)):
      flush()
    pending.append((index, image))
  flush()
  return out


def test_the_exact_path_is_unchanged():
  enhancer = _enhancer()
  images = _images([(12, 16), (12, 16), (12, 16), (9, 13), (12, 16)], seed=1)
  got = list(enhancer.enhance_many(enumerate(images), jax.random.key(5)))
  assert [i for i, _ in got] == list(range(5))  # input order, as before
  got = dict(got)
  for buckets in (0, None):
    again = dict(enhancer.enhance_many(enumerate(images), jax.random.key(5), buckets=buckets))
    for i in got:
      np.testing.assert_array_equal(again[i], got[i])
  want = _old_enhance_many(enhancer, enumerate(images), jax.random.key(5))
  single = enhancer.enhance(images[3], jax.random.key(7))
  for i in got:
    np.testing.assert_array_equal(got[i], want[i])
  if jax.local_device_count() == 8:
    for name, out in [*got.items(), ("single", single)]:
      sq, first = _BEFORE[name]
      np.testing.assert_allclose([np.square(out, dtype=np.float64).sum(), out[0, 0, 0]], [sq, first], rtol=1e-5)
