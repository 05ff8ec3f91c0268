"""Issue #10, inputs 6 and 7: concurrent runs on one data dir, two trainers on one workdir.

Kinds covered: two processes preparing the same fresh TFDS data dir (both succeed and read
identical data: preparation holds ``data_dir/.prepare.lock``), a second trainer on a
workdir in use (refused, naming the holder's pid and host), and a holder killed with
``kill -9`` (the ``flock`` is released by the kernel: the workdir is usable at once).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from modular import filelock
from modular.train import loop

pytestmark = pytest.mark.slow  # an integration test: CI runs it; -m "not slow" skips it

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

READ_DATA = textwrap.dedent("""
    import hashlib, json, sys
    import numpy as np
    from modular.overrides import load_config_file
    from modular.data import sources
    cfg = load_config_file("configs/quickstart.py", "tiny").data
    cfg.data_dir = sys.argv[1]
    cfg.tasks = ["copy", "sort", "count"]
    h = hashlib.sha256()
    for name, splits in sources.build_task_sources(cfg).items():
      for split in ("train", "test"):
        for i in range(len(splits[split])):
          r = splits[split][i]
          h.update(np.asarray(r["prompt"]).tobytes() + np.asarray(r["answer"]).tobytes())
    print(json.dumps({"sha256": h.hexdigest()}))
""")


def _env():
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  return env


def test_two_runs_prepare_one_fresh_data_dir(tmp_path):
  data_dir = str(tmp_path / "tfds")
  procs = [subprocess.Popen([sys.executable, "-c", READ_DATA, data_dir], cwd=ROOT, env=_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(2)]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  hashes = [json.loads(out.strip().splitlines()[-1])["sha256"] for out, _ in outs]
  assert hashes[0] == hashes[1]
  assert not [d for d in os.listdir(data_dir) if "incomplete" in d]


HOLD = textwrap.dedent("""
    import sys, time
    from modular import filelock
    filelock.FileLock(sys.argv[1], "workdir").acquire(blocking=False)
    print("held", flush=True)
    time.sleep(300)
""")


def test_workdir_lock_names_the_holder_and_dies_with_it(tiny_config, tmp_path):
  workdir = tmp_path / "run"
  workdir.mkdir()
  holder = subprocess.Popen([sys.executable, "-c", HOLD, str(workdir / ".lock")], cwd=ROOT,
                            env=_env(), stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == "held"
    tiny_config.train.steps = 5
    with pytest.raises(filelock.LockHeldError, match=rf"in use by pid {holder.pid} on host"):
      loop.train(tiny_config, str(workdir))
    assert sorted(os.listdir(workdir)) == [".lock"]  # the refused trainer wrote nothing
  finally:
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
  t0 = time.perf_counter()
  summary = loop.train(tiny_config, str(workdir))  # kill -9 released the lock
  assert summary["end_step"] == 5
  assert time.perf_counter() - t0 < 120
  lock = filelock.FileLock(str(workdir / ".lock"), "workdir")  # and the trainer released it
  lock.acquire(blocking=False)
  lock.release()


def test_object_store_paths_are_not_locked():
  assert not filelock.is_local("gs://bucket/run") and filelock.is_local("/tmp/run")
