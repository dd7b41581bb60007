"""Workdir reliability: the run lock, changed configs on resume, NaN stops, unwritable / full / misplaced workdirs,
a checkpoint folder that fails mid-run, and the training progress bar.

Where a failure needs the file system to refuse root (the tests may run as root, for whom ``chmod`` blocks nothing),
a real mechanism is used when the machine allows it (a full tmpfs, a read-only bind mount, ``chattr +i``), else
``chmod`` (non-root), else Orbax's lowest Python-level write is made to fail (named in the test's output).
"""
import contextlib
import errno
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from lliejax import checkpoint, state as state_lib, train
from lliejax.configs.entropy_sde import get_config
from tiny_configs import tiny_train_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "entropy_sde.py") + ":tiny"


def _params(workdir):
  state, _, _, step = state_lib.restore_from_workdir(workdir)
  return jax.device_get(state.params), step


def _assert_same(a, b):
  for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def _train_capturing_stderr(config, workdir, **kwargs):
  err = io.StringIO()
  with contextlib.redirect_stderr(err):
    train.train_and_evaluate(config, workdir, progress=True, **kwargs)
  return err.getvalue()


def _dead_pid() -> int:
  proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                        check=True)
  return int(proc.stdout)


def _write_lock(workdir, **record):
  record = {"pid": 1, "host": socket.gethostname(), "started": "2025-01-02T03:04:05+00:00",
            "command": "lliejax train --workdir w", **record}
  path = os.path.join(workdir, checkpoint.LOCK_FILE)
  with open(path, "w") as f:
    json.dump(record, f)
  return path


@pytest.fixture(scope="module")
def reference(tfds_dir, tmp_path_factory):
  """An uninterrupted 6-step run (with the progress bar): (workdir, its stderr, its final params)."""
  from lliejax.data import registry
  registry.prepare("lliejax_demo", data_dir=tfds_dir)
  workdir = str(tmp_path_factory.mktemp("workdir") / "reference")
  err = _train_capturing_stderr(tiny_train_config(tfds_dir), workdir)
  params, step = _params(workdir)
  assert step == 6
  return workdir, err, params


# ------------------------------------------------------------------------------------------------ mechanisms
def _mount_tmpfs(path, size="64m") -> bool:
  """Mounts a tmpfs of ``size`` at ``path`` (root with mount rights only); returns whether it did.

  The default holds two train-state checkpoints of the tiny config with room to spare: Orbax's OCDBT files for one
  step took 5.2-10.4 MB in repeated runs, so the 16 MB used before made a resume after a full disk fail in about one
  run in three (step 3 kept plus step 6 rewritten did not fit)."""
  if os.geteuid() != 0 or not shutil.which("mount"):
    return False
  os.makedirs(path, exist_ok=True)
  return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                        capture_output=True).returncode == 0


def _umount(path):
  subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def _fill(folder) -> str:
  """Fills the file system of ``folder`` (a small tmpfs) with one file; returns its path."""
  path = os.path.join(folder, "filler")
  with open(path, "wb", buffering=0) as f:
    for size in (1 << 20, 1 << 12, 1):
      try:
        while True:
          f.write(b"\0" * size)
      except OSError as e:
        assert e.errno == errno.ENOSPC, e
  return path


@contextlib.contextmanager
def _read_only(folder):
  """Makes ``folder`` unwritable for this process, really: chmod (non-root), a read-only bind mount or
  ``chattr +i`` (root); skips when none is possible. Yields the mechanism's name."""
  if os.geteuid() != 0:
    os.chmod(folder, 0o500)
    try:
      yield "chmod 0o500"
    finally:
      os.chmod(folder, 0o755)
    return
  if subprocess.run(["mount", "--bind", str(folder), str(folder)], capture_output=True).returncode == 0:
    try:
      if subprocess.run(["mount", "-o", "remount,ro,bind", str(folder)], capture_output=True).returncode == 0:
        yield "read-only bind mount"
        return
    finally:
      _umount(folder)
  if shutil.which("chattr") and subprocess.run(["chattr", "+i", str(folder)], capture_output=True).returncode == 0:
    try:
      yield "chattr +i"
    finally:
      subprocess.run(["chattr", "-i", str(folder)], check=False)
    return
  pytest.skip("running as root without mount or chattr rights: no real way to make a folder unwritable for root")


def _fail_orbax_writes(monkeypatch, folder, code=errno.ENOSPC):
  """Orbax's lowest Python-level write (etils.epath ``open`` for writing, e.g. ``_CHECKPOINT_METADATA``) raises
  ``OSError(code)`` under ``folder``; the arrays (TensorStore, C++) are written, the step is never completed."""
  from etils.epath import gpath
  real_open = gpath._GPath.open  # pylint: disable=protected-access

  def failing_open(self, mode="r", *args, **kwargs):
    if any(c in mode for c in "wax") and str(self).startswith(str(folder)):
      raise OSError(code, os.strerror(code), str(self))
    return real_open(self, mode, *args, **kwargs)

  monkeypatch.setattr(gpath._GPath, "open", failing_open)  # pylint: disable=protected-access


# ------------------------------------------------------------------------------------------------ 1. the lock
def test_second_run_is_refused_while_the_workdir_is_locked(tfds_dir, tmp_path):
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  with checkpoint.lock_workdir(workdir, command="lliejax train --workdir run (first)") as lock:
    record = checkpoint.read_lock(workdir)
    assert record["pid"] == os.getpid() and record["host"] == socket.gethostname()
    assert record["command"] == "lliejax train --workdir run (first)" and record["started"]
    t0 = time.monotonic()
    with pytest.raises(checkpoint.WorkdirLockedError) as info:
      train.train_and_evaluate(tiny_train_config(tfds_dir), workdir)
    assert time.monotonic() - t0 < 10  # before any compilation
    message = str(info.value)
    assert "\n" not in message and info.value.exit_code == 2
    assert f"workdir {workdir} is in use by another training run (pid {os.getpid()} on host " \
           f"{socket.gethostname()}, since {record['started']}: lliejax train --workdir run (first))" in message
    assert "use another --workdir" in message
    assert os.listdir(workdir) == [checkpoint.LOCK_FILE]  # nothing written: no config.json, no checkpoints
    assert lock.held
  assert not lock.held and os.listdir(workdir) == [] and checkpoint.read_lock(workdir) is None


def test_cli_second_run_exits_2_naming_the_first(tfds_dir, tmp_path):
  """The CLI prints the lock error as one line and exits with 2 (a second `lliejax train` on a busy workdir)."""
  from lliejax.data import registry
  registry.prepare("lliejax_demo", data_dir=tfds_dir)
  workdir = str(tmp_path / "run")
  os.makedirs(workdir)
  with checkpoint.lock_workdir(workdir, command="lliejax train (first)"):
    proc = subprocess.run([sys.executable, "-m", "lliejax.cli", "train", "--config", TINY, "--workdir", workdir,
                           "--data-dir", tfds_dir, "--mode", "train"], capture_output=True, text=True, timeout=240,
                          cwd=tmp_path, env={**os.environ, "JAX_PLATFORMS": "cpu"})
  lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("lliejax train: error:")]
  assert proc.returncode == 2, proc.stderr[-3000:]
  assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-3000:]
  assert f"is in use by another training run (pid {os.getpid()} on host {socket.gethostname()}" in lines[0]
  assert os.listdir(workdir) == []


_RACER = """
import os, sys, time
from lliejax import checkpoint
workdir, go = sys.argv[1], sys.argv[2]
print("ready", flush=True)
while not os.path.exists(go):
  time.sleep(0.001)
try:
  lock = checkpoint.prepare_workdir(workdir)
except checkpoint.WorkdirLockedError as e:
  print("refused", e, flush=True)
else:
  print("locked", os.getpid(), flush=True)
  time.sleep(2)
  lock.release()
"""


def test_runs_started_together_take_the_lock_once(tmp_path):
  """Several runs started in the same instant: exactly one gets the workdir (the others are refused at once)."""
  workdir, go = str(tmp_path / "run"), str(tmp_path / "go")
  procs = [subprocess.Popen([sys.executable, "-c", _RACER, workdir, go], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={**os.environ, "JAX_PLATFORMS": "cpu"})
           for _ in range(3)]
  try:
    for p in procs:
      assert p.stdout.readline().strip() == "ready", p.communicate(timeout=60)[1][-2000:]
    with open(go, "w"):
      pass
    outs = [p.communicate(timeout=120) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
  assert all(p.returncode == 0 for p in procs), [err[-2000:] for _, err in outs]
  results = [out.split()[0] for out, _ in outs]
  assert sorted(results) == ["locked", "refused", "refused"], outs
  winner = next(out.split()[1] for out, _ in outs if out.startswith("locked"))
  assert all(f"(pid {winner} on host" in out for out, _ in outs if out.startswith("refused")), outs
  assert not os.path.exists(os.path.join(workdir, checkpoint.LOCK_FILE))


def test_stale_and_unverifiable_locks(tmp_path, monkeypatch, caplog):
  workdir = str(tmp_path)
  host = socket.gethostname()
  # A run killed on this host (its pid is gone, the kernel dropped its flock): reclaimed with a warning.
  dead = _dead_pid()
  _write_lock(workdir, pid=dead)
  with caplog.at_level("WARNING"), checkpoint.lock_workdir(workdir):
    assert checkpoint.read_lock(workdir)["pid"] == os.getpid()
  assert f"reclaimed the stale lock of {workdir} (pid {dead} on host {host}" in caplog.text
  assert checkpoint.read_lock(workdir) is None
  # A lock file its writer left half-written: reclaimed.
  with open(os.path.join(workdir, checkpoint.LOCK_FILE), "w") as f:
    f.write('{"pid": 12')
  with checkpoint.lock_workdir(workdir):
    pass
  # Another host: cannot be checked, reported with the remedy (and left alone).
  path = _write_lock(workdir, pid=4242, host="gpu-node-7")
  with pytest.raises(checkpoint.WorkdirLockedError) as info:
    checkpoint.lock_workdir(workdir)
  assert str(info.value) == (f"workdir {workdir} is locked by pid 4242 on host gpu-node-7, since "
                             "2025-01-02T03:04:05+00:00: lliejax train --workdir w; lliejax cannot check a process on "
                             f"another host: remove {path} if no run is using this workdir")
  assert checkpoint.read_lock(workdir)["host"] == "gpu-node-7"
  # A live process of this host named in a lock file nobody flocks (a file system whose flock does nothing).
  _write_lock(workdir, pid=os.getpid())
  with pytest.raises(checkpoint.WorkdirLockedError, match=f"in use by another training run \\(pid {os.getpid()}"):
    checkpoint.lock_workdir(workdir)
  # A file system without flock: a dead owner is reported as stale, with how to clear it.
  monkeypatch.setattr(checkpoint, "_flock", lambda fd: None)
  _write_lock(workdir, pid=dead)
  with pytest.raises(checkpoint.WorkdirLockedError) as info:
    checkpoint.lock_workdir(workdir)
  assert info.value.stale
  assert str(info.value) == (f"stale lock from pid {dead} on host {host} since 2025-01-02T03:04:05+00:00 (no such "
                             f"process); remove {path} if no run is using this workdir")
  os.unlink(path)
  with checkpoint.lock_workdir(workdir):  # without flock, an absent or removed lock file is taken as before
    assert checkpoint.read_lock(workdir)["pid"] == os.getpid()


def test_lock_is_released_on_errors_and_interrupts(tfds_dir, tmp_path, monkeypatch):
  workdir = str(tmp_path / "run")
  seen = []

  def build(config, exc=KeyboardInterrupt):
    seen.append(checkpoint.read_lock(workdir)["pid"])  # the lock is held while the run builds its method
    raise exc()

  monkeypatch.setattr(train.methods, "build", build)
  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(tiny_train_config(tfds_dir), workdir)
  monkeypatch.setattr(train.methods, "build", lambda config: build(config, ZeroDivisionError))
  with pytest.raises(ZeroDivisionError):
    train.train_and_evaluate(tiny_train_config(tfds_dir), workdir)
  assert seen == [os.getpid()] * 2
  assert checkpoint.read_lock(workdir) is None and os.listdir(workdir) == []


def test_multi_process_runs_share_the_lock_of_process_0(tmp_path, monkeypatch):
  """Only process 0 takes the lock; the others wait for its outcome and raise its error (jax.distributed's
  key-value store, faked here)."""
  import orbax.checkpoint as ocp

  store = {}

  class Client:
    def key_value_set(self, key, value):
      store[key] = value

    def blocking_key_value_get(self, key, timeout_ms):
      return store[key]

  monkeypatch.setattr(ocp.multihost, "get_jax_distributed_client", Client)
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  workdir = str(tmp_path / "run")
  rank = {"index": 0}
  monkeypatch.setattr(jax, "process_index", lambda: rank["index"])
  counter = checkpoint._OUTCOMES[0]  # pylint: disable=protected-access
  lock0 = checkpoint.prepare_workdir(workdir)  # process 0: locks, publishes success
  assert lock0.held and list(store.values()) == [""]
  checkpoint._OUTCOMES[0] = counter  # pylint: disable=protected-access  (process 1 counts from the same start)
  rank["index"] = 1
  lock1 = checkpoint.prepare_workdir(workdir)
  assert not lock1.held and checkpoint.read_lock(workdir)["pid"] == os.getpid()
  lock1.release()  # a no-op: process 0 owns the lock
  assert checkpoint.read_lock(workdir) is not None
  # A second job on the same workdir: its process 0 is refused, and so is its process 1.
  rank["index"] = 0
  counter = checkpoint._OUTCOMES[0]  # pylint: disable=protected-access
  with pytest.raises(checkpoint.WorkdirLockedError):
    checkpoint.prepare_workdir(workdir)
  checkpoint._OUTCOMES[0] = counter  # pylint: disable=protected-access
  rank["index"] = 1
  with pytest.raises(checkpoint.WorkdirLockedError, match="is in use by another training run"):
    checkpoint.prepare_workdir(workdir)
  lock0.release()
  assert checkpoint.read_lock(workdir) is None


# ------------------------------------------------------------------------------------------------ 2. the config
def test_changed_config_is_refused_unless_forced(reference, tfds_dir, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(reference[0], workdir)
  saved = checkpoint.load_workdir_config(workdir)
  other = tiny_train_config(tfds_dir)
  other.seed, other.optim.learning_rate = 1, 5e-4
  with pytest.raises(checkpoint.ConfigChangedError) as info:
    train.train_and_evaluate(other, workdir)
  message = str(info.value)
  assert "\n" not in message and info.value.exit_code == 2
  assert "the config differs from the one this workdir was trained with: optim.learning_rate 0.001 -> 0.0005, " \
         "seed 0 -> 1; " in message
  assert "force_config=True (--force-config)" in message and "use a new --workdir" in message
  assert set(info.value.changes) == {"seed", "optim.learning_rate"}
  many = tiny_train_config(tfds_dir)
  for i, key in enumerate(("b1", "b2", "eps", "weight_decay", "eta_min", "grad_clip", "learning_rate")):
    many.optim[key] = 0.5 + i
  many.seed, many.batch_size, many.loss.bins = 3, 16, 8
  with pytest.raises(checkpoint.ConfigChangedError, match=r"\(and 2 more\); resume with the same config"):
    train.train_and_evaluate(many, workdir)
  assert checkpoint.load_workdir_config(workdir).to_dict() == saved.to_dict()  # not replaced
  # Keys a resume may change: the run length, data paths, log / checkpoint / validation settings.
  fine = tiny_train_config(tfds_dir)
  fine.data.data_dir = tfds_dir + os.sep
  fine.log_every, fine.checkpoint_every, fine.keep_checkpoints, fine.eval_num_images = 1, 2, 5, 1
  fine.test_sampler = "sde"
  train.train_and_evaluate(fine, workdir)
  assert checkpoint.load_workdir_config(workdir).data.data_dir == tfds_dir + os.sep
  # force_config: resumes with the new values, config.json replaced.
  train.train_and_evaluate(other, workdir, force_config=True)
  assert checkpoint.load_workdir_config(workdir).seed == 1
  # Another architecture stays refused, forced or not (its checkpoints would not fit).
  wide = tiny_train_config(tfds_dir)
  wide.model.width = 16
  with pytest.raises(ValueError, match="created with a different config.model .*use a new --workdir"):
    train.train_and_evaluate(wide, workdir, force_config=True)
  assert checkpoint.read_lock(workdir) is None


def test_changed_config_without_checkpoints_is_not_a_resume(tmp_path):
  """A run that failed before its first checkpoint (e.g. a bad batch size) may be rerun with a fixed config."""
  config = get_config("tiny")
  checkpoint.save_config(str(tmp_path), config)
  config.batch_size = 16
  checkpoint.save_config(str(tmp_path), config)
  os.makedirs(tmp_path / "checkpoints" / "3")
  config.batch_size = 8
  with pytest.raises(checkpoint.ConfigChangedError, match="batch_size 16 -> 8"):
    checkpoint.save_config(str(tmp_path), config)


# ------------------------------------------------------------------------------------------------ 3. NaN stop
def test_nan_stop_names_the_last_finite_step_and_exports_nothing(reference, tfds_dir, tmp_path):
  workdir = str(tmp_path / "run")
  shutil.copytree(reference[0], workdir)
  export_info = os.path.join(workdir, "export", checkpoint.EXPORT_META)
  mtime = os.stat(export_info).st_mtime_ns
  config = tiny_train_config(tfds_dir, steps=9)  # train longer: allowed ...
  config.loss.weight = float("nan")  # ... but this change needs force_config
  with pytest.raises(checkpoint.ConfigChangedError, match=r"loss.weight 1.0 -> NaN; ") as info:
    train.train_and_evaluate(config, workdir)
  assert set(info.value.changes) == {"loss.weight"}
  with pytest.raises(FloatingPointError) as info:
    train.train_and_evaluate(config, workdir, force_config=True)
  message = str(info.value)
  print(message)
  checkpoints = os.path.join(workdir, "checkpoints")
  assert message.startswith("non-finite loss (nan) or gradient norm at step 7; training stopped (the loss was "
                            f"last finite at step 6), the last good checkpoint is step 6 in {checkpoints} "
                            "(params global norm "), message
  assert ": finite, usable); fix the cause" in message and ", ema " in message
  params, step = _params(workdir)
  assert step == 6
  _assert_same(params, reference[2])
  assert os.stat(export_info).st_mtime_ns == mtime  # the export of the completed run is untouched
  assert checkpoint.read_lock(workdir) is None


def test_export_refuses_non_finite_params(tmp_path):
  target = str(tmp_path / "export")
  good = {"conv": {"kernel": np.ones((2, 2), np.float32)}, "steps": np.arange(3)}
  checkpoint.export(target, good, config={"method": "entropy_sde"}, method="entropy_sde")
  bad = {"conv": {"kernel": np.array([[1.0, np.nan], [np.inf, 0.0]], np.float32)}, "steps": np.arange(3)}
  with pytest.raises(checkpoint.NonFiniteParamsError) as info:
    checkpoint.export(target, bad, config={"method": "entropy_sde"}, method="entropy_sde", overwrite=True)
  assert str(info.value) == (f"refusing to export to {target}: the parameters are not finite (2 of 4 values of "
                             "['conv']['kernel'] are NaN or infinite); export a checkpoint from before the divergence")
  _assert_same(checkpoint.load_export(target).params, good)  # the previous export is kept


# ------------------------------------------------------------------------------------------------ 4. bad workdirs
def test_workdir_that_is_a_file(tfds_dir, tmp_path):
  config = tiny_train_config(tfds_dir)
  path = tmp_path / "run"
  path.write_text("not a folder")
  with pytest.raises(checkpoint.WorkdirError) as info:
    train.train_and_evaluate(config, str(path))
  assert info.value.errno == errno.ENOTDIR and info.value.exit_code == 2 and info.value.path == str(path)
  assert str(info.value) == (f"--workdir {path} is a file, not a folder (move the file or choose another --workdir; "
                             "the folder is created if missing)")
  with pytest.raises(checkpoint.WorkdirError, match=f"cannot create the workdir {path}/sub: Not a directory "
                     r"\(a file stands where a folder is expected: move it or choose another --workdir\)"):
    train.train_and_evaluate(config, str(path / "sub"))
  workdir = tmp_path / "wd"
  workdir.mkdir()
  (workdir / "checkpoints").write_text("not a folder")
  with pytest.raises(checkpoint.WorkdirError, match=f"{workdir}/checkpoints is a file, not the workdir's checkpoint "
                     "folder"):
    train.train_and_evaluate(config, str(workdir))
  assert sorted(os.listdir(workdir)) == ["checkpoints"]  # lock released, nothing written


def test_unwritable_workdir(tfds_dir, tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  with _read_only(workdir) as how:
    print(f"unwritable workdir by {how}")
    t0 = time.monotonic()
    with pytest.raises(checkpoint.WorkdirError) as info:
      train.train_and_evaluate(tiny_train_config(tfds_dir), str(workdir))
    assert time.monotonic() - t0 < 10  # before any compilation
  assert info.value.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and info.value.exit_code == 2
  assert str(info.value).startswith(f"cannot lock the workdir {workdir}: {os.strerror(info.value.errno)} (")
  assert "choose another --workdir" in str(info.value)
  assert os.listdir(workdir) == []


def test_full_disk(tfds_dir, tmp_path, monkeypatch):
  # A full disk under the workdir: refused when the lock is written, before anything else (real, where a small
  # tmpfs can be mounted).
  mnt = tmp_path / "full"
  if _mount_tmpfs(mnt, size="64k"):
    try:
      _fill(mnt)
      with pytest.raises(checkpoint.WorkdirError) as info:
        train.train_and_evaluate(tiny_train_config(tfds_dir), str(mnt / "run"))
      assert info.value.errno == errno.ENOSPC and info.value.exit_code == 1
      assert f"{mnt}/run: No space left on device (free some space on that disk or choose another --workdir)" in \
          str(info.value)
      assert os.listdir(mnt / "run") == []
    finally:
      _umount(mnt)
  else:
    print("no tmpfs mount rights: the full-disk lock case is not run")
  # A checkpoint save that meets a full disk (simulated at Orbax's lowest Python-level write).
  workdir = str(tmp_path / "run")
  folder = os.path.join(workdir, "checkpoints")
  _fail_orbax_writes(monkeypatch, folder)
  with pytest.raises(checkpoint.WorkdirError) as info, checkpoint.TrainCheckpoints(workdir) as ckpts:
    ckpts.save(1, {"w": np.ones(3, np.float32)})
    ckpts.wait()
  assert info.value.errno == errno.ENOSPC and info.value.exit_code == 1 and info.value.path == folder
  assert str(info.value) == (f"cannot write the checkpoint of step 1 in {folder}: No space left on device (free some "
                             "space on that disk or choose another --workdir); training stopped, no complete "
                             "checkpoint was written")


# ------------------------------------------------------------------------------------------------ 5. fault injection
def test_checkpoint_folder_fails_mid_run_then_resumes(reference, tfds_dir, tmp_path, monkeypatch):
  """The checkpoint folder stops taking writes after step 3's checkpoint: the run stops at the step-6 save
  naming the folder, step 3 stays intact, and the rerun (obstacle removed) ends with the uninterrupted params."""
  workdir = str(tmp_path / "run")
  folder = os.path.join(workdir, "checkpoints")
  mounted = _mount_tmpfs(folder)
  how = ("a full tmpfs (real ENOSPC)" if mounted else "chmod 0o500 (real EACCES)" if os.geteuid() != 0 else
         "Orbax's writes failing with ENOSPC (simulated: no mount rights as root)")
  print(f"checkpoint folder broken mid-run by {how}")
  undo = []

  def break_folder():
    if mounted:
      filler = _fill(folder)
      undo.append(lambda: os.unlink(filler))
    elif os.geteuid() != 0:
      os.chmod(folder, 0o500)
      undo.append(lambda: os.chmod(folder, 0o755))
    else:
      patch = pytest.MonkeyPatch()
      _fail_orbax_writes(patch, folder)
      undo.append(patch.undo)

  real_save = checkpoint.TrainCheckpoints.save

  def save(self, step, state):
    if step == 6 and not undo:
      self.wait()  # step 3 is complete on disk
      break_folder()
    real_save(self, step, state)

  try:
    monkeypatch.setattr(checkpoint.TrainCheckpoints, "save", save)
    with pytest.raises(checkpoint.WorkdirError) as info:
      train.train_and_evaluate(tiny_train_config(tfds_dir), workdir)
    message = str(info.value)
    print(message)
    assert message.startswith(f"cannot write the checkpoint of step 6 in {folder}: "), message
    assert message.endswith("training stopped, the last complete checkpoint is step 3, from which the same command "
                            "resumes once the disk is fixed"), message
    assert "\n" not in message and "choose another --workdir" in message
    assert not os.path.exists(os.path.join(workdir, "export")) and checkpoint.read_lock(workdir) is None
    for fix in undo:
      fix()
    _assert_same(_params(workdir)[0], jax.device_get(  # step 3 intact: equal to the reference's step 3
        state_lib.restore_from_workdir(reference[0], step=3)[0].params))
    assert _params(workdir)[1] == 3
    err = _train_capturing_stderr(tiny_train_config(tfds_dir), workdir)  # resumes from step 3
    assert "3/6" in err and "6/6" in err
    params, step = _params(workdir)
    assert step == 6
    _assert_same(params, reference[2])
    assert checkpoint.load_export(os.path.join(workdir, "export")).info["step"] == 6
  finally:
    if mounted:
      _umount(folder)


# ------------------------------------------------------------------------------------------------ 6. progress bar
def test_progress_bar(reference):
  err = reference[1]
  assert "train:" in err and "0/6" in err and "6/6" in err and "steps/s" in err and "loss " in err
  assert "compiling" in err


def test_keys_of_another_version_do_not_block_a_resume(tmp_path, tfds_dir, caplog):
  """A key absent from the saved config (added by a newer lliejax) is reported, not refused; real changes are."""
  workdir = str(tmp_path / "wd")
  os.makedirs(workdir)
  config = tiny_train_config(tfds_dir)
  checkpoint.write_config(workdir, config)
  path = os.path.join(workdir, checkpoint.CONFIG_FILE)
  with open(path) as f:
    saved = json.load(f)
  del saved["loss"]["chunk_size"]  # as if written by a version without that key
  with open(path, "w") as f:
    json.dump(saved, f)
  with caplog.at_level("WARNING"):
    assert checkpoint.check_config(workdir, config, resuming=True) is not None
  assert "loss.chunk_size" in caplog.text and "another lliejax version" in caplog.text
  config.loss.bins = 8
  with pytest.raises(checkpoint.ConfigChangedError, match="loss.bins 32 -> 8"):
    checkpoint.check_config(workdir, config, resuming=True)
