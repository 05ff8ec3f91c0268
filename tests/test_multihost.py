"""Many hosts for real: two local processes, ``jax.distributed.initialize`` on 127.0.0.1.

CPU collectives use gloo (``jax_cpu_collectives_implementation="gloo"``); each process
has one CPU device, so the mesh's ``data`` axis spans the two processes and every step
all-reduces gradients across them. Each process reads its own half of every batch and
saves its own data-iterator state (``data/process_<i>-of-2.json``).

Checked:
  * a two-process run equals the one-process run on the same global batches (each batch
    assembled here from the two processes' shards) within 1e-5 absolute: only the
    order of the cross-process gradient sum differs;
  * both processes killed with ``kill -9`` mid-run, then relaunched, end bit-identical to
    an uninterrupted two-process run (parameters and both processes' data states).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from modular.train import checkpoint as ckpt_lib

pytestmark = pytest.mark.slow  # an integration test: CI runs it; -m "not slow" skips it

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 12

WORKER = textwrap.dedent("""
    import os, sys, time
    index, port, workdir, data_dir, slow = sys.argv[1:6]
    import jax
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{port}", num_processes=2, process_id=int(index))
    from modular.overrides import load_config_file
    from modular.train import loop
    cfg = load_config_file("configs/quickstart.py", "tiny")
    cfg.data.data_dir = data_dir
    cfg.data.tasks = ["copy", "reverse", "sort"]
    cfg.train.progress = False
    cfg.train.steps = %d
    cfg.train.checkpoint_every = 4
    cfg.train.log_every = 4
    cfg.train.eval_every = 100
    if slow == "1":  # leaves time to kill both processes after checkpoint 4
      fetch = loop.global_batch
      def slow_batch(run, local):
        time.sleep(0.5)
        return fetch(run, local)
      loop.global_batch = slow_batch
    loop.train(cfg, workdir)
    print("finished", flush=True)
""" % STEPS)


def _port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(workdir: str, data_dir: str, slow: bool) -> list[subprocess.Popen]:
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="")
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  port = _port()
  return [subprocess.Popen([sys.executable, "-c", WORKER, str(i), str(port), workdir, data_dir,
                            "1" if slow else "0"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True) for i in range(2)]


def _wait(procs, timeout=400) -> None:
  outs = [p.communicate(timeout=timeout) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0 and "finished" in out, err[-4000:]


def _params(workdir, step=None):
  _, _, params = ckpt_lib.load_for_analysis(workdir, step)
  return jax.tree.map(np.asarray, params)


def _data_states(workdir, step):
  folder = os.path.join(workdir, "checkpoints", str(step), "data")
  return {f: json.load(open(os.path.join(folder, f))) for f in sorted(os.listdir(folder))
          if f.startswith("process_")}


def _one_process_reference(data_dir):
  """The same global batches on one process: shard 0's half, then shard 1's."""
  from modular import data as data_lib
  from modular.overrides import load_config_file
  from modular.train import loop
  cfg = load_config_file(os.path.join(ROOT, "configs", "quickstart.py"), "tiny")
  cfg.data.data_dir = data_dir
  cfg.data.tasks = ["copy", "reverse", "sort"]
  cfg.train.steps = STEPS
  run = loop.setup(cfg)
  half = run.cfg.train.batch_size // 2
  its = [data_lib.make_train_iterator(run.cfg.data, half, shard_index=i, shard_count=2)
         for i in range(2)]
  state = run.init()
  for _ in range(STEPS):
    parts = [next(it) for it in its]
    batch = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
    state, _ = run.train_step(state, loop.global_batch(run, batch))
  return jax.tree.map(np.asarray, jax.device_get(state["params"]))


def test_two_processes_match_one_and_resume_bit_exact_after_kill_9(tmp_path, data_dir):
  full, killed = str(tmp_path / "full"), str(tmp_path / "killed")
  # The uninterrupted two-process run.
  _wait(_launch(full, data_dir, slow=False))
  states = _data_states(full, STEPS)
  assert sorted(states) == ["process_0-of-2.json", "process_1-of-2.json"]
  assert states["process_0-of-2.json"] != states["process_1-of-2.json"]

  # Equal to the one-process run on the same global batches.
  reference = _one_process_reference(data_dir)
  two = _params(full)
  diffs = [float(np.max(np.abs(a - b))) for a, b in
           zip(jax.tree.leaves(two), jax.tree.leaves(reference))]
  assert max(diffs) < 1e-5, max(diffs)

  # Both processes killed with kill -9 after checkpoint 4, then relaunched.
  procs = _launch(killed, data_dir, slow=True)
  deadline = time.time() + 300
  while not os.path.isdir(os.path.join(killed, "checkpoints", "4")):
    assert time.time() < deadline and all(p.poll() is None for p in procs), \
        [p.communicate()[1][-2000:] for p in procs if p.poll() is not None]
    time.sleep(0.2)
  time.sleep(1.0)
  for p in procs:
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
  steps_at_kill = ckpt_lib.Checkpointer(killed, async_save=False).all_steps()
  assert 4 in steps_at_kill and STEPS not in steps_at_kill, steps_at_kill
  _wait(_launch(killed, data_dir, slow=False))
  resumed = _params(killed)
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(two)):
    np.testing.assert_array_equal(a, b)
  assert _data_states(killed, STEPS) == states
