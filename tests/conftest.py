"""Test configuration: 8 simulated CPU devices (set before jax is imported) and a persistent compile cache."""
import os
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# Many tests compile the same small programs (train steps, samplers) in separate processes and workdirs;
# XLA:CPU compilation dominates the suite's time, so share compiled executables across them.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", os.path.join(tempfile.gettempdir(), "lliejax_test_jax_cache"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import pytest  # noqa: E402


def pytest_configure(config):
  config.addinivalue_line("markers", "slow: slower end-to-end cases (still run in CI)")


@pytest.fixture(scope="session")
def tfds_dir(tmp_path_factory):
  """A TFDS data dir shared by the tests that need the offline demo dataset."""
  return str(tmp_path_factory.mktemp("tfds"))
