"""Sweeps on Ray Tune: same table as the local engine, worker and driver deaths, failures.

One local Ray cluster (2 CPUs) for the module, started and stopped by its own
handle; its temp dir and any Ray token file the module created are removed.
The reference is the local engine's sweep of the same points (uninterrupted runs).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray")
from ray import tune  # noqa: E402

from modular import experiments  # noqa: E402
from modular.experiments.ray_engine import RayExecutor  # noqa: E402
from modular.paths import flat_paths  # noqa: E402
from modular.train import checkpoint as ckpt_lib  # noqa: E402

# Each trial compiles on a 2-core machine: minutes in all, longer when the machine is shared.
pytestmark = [pytest.mark.timeout(1800), pytest.mark.slow]  # CI runs it; -m "not slow" skips it

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STEPS = 40
TOKEN = os.path.join(os.path.expanduser("~"), ".ray", "auth_token")


def write_experiment(path, data_dir: str, hyper: str) -> str:
  path.write_text(f'''
import sys
sys.path.insert(0, {os.path.join(ROOT, "configs")!r})
import quickstart
def get_config(arg=None):
  c = quickstart.get_config("tiny")
  c.data.data_dir = {data_dir!r}
  c.data.tasks = ["copy", "reverse"]
  c.train.steps = {STEPS}
  c.train.progress = False
  return c
def get_hyper(h):
  return {hyper}
''')
  return str(path)


FOUR = 'h.product([h.sweep("config.train.seed", [0, 1]), h.sweep("config.mtl.method", ["mean", "pcgrad"])])'
TWO_AND_BAD = ('h.chain(h.product([h.sweep("config.train.seed", [0, 1]), '
               'h.sweep("config.mtl.method", ["mean"])]), '
               'h.fixed("config.train.init_from", "/nonexistent/run"))')


@pytest.fixture(scope="module")
def cluster():
  """A 2-CPU local Ray cluster; yields its address; stops it and removes its files."""
  token_existed = os.path.exists(TOKEN)
  temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")
  saved = {k: os.environ.get(k) for k in ("RAY_AUTH_TOKEN", "PYTHONPATH")}
  os.environ["RAY_AUTH_TOKEN"] = os.urandom(16).hex()  # no token file is written
  os.environ["PYTHONPATH"] = ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")  # workers
  ctx = ray.init(num_cpus=2, include_dashboard=False, _temp_dir=temp,
                 log_to_driver=False)
  node = ray._private.worker._global_node
  pids = [p.process.pid for procs in node.all_processes.values() for p in procs]
  try:
    yield ctx.address_info["gcs_address"]
  finally:
    ray.shutdown()
    deadline = time.time() + 30
    while time.time() < deadline and any(_alive(p) for p in pids):
      time.sleep(0.2)
    left = [p for p in pids if _alive(p)]
    shutil.rmtree(temp, ignore_errors=True)
    if not token_existed and os.path.exists(TOKEN):
      os.remove(TOKEN)
    for k, v in saved.items():
      if v is None:
        os.environ.pop(k, None)
      else:
        os.environ[k] = v
    assert not left, f"Ray processes still alive after shutdown: {left}"


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  try:  # a zombie child of ours counts as stopped
    with open(f"/proc/{pid}/stat") as f:
      return f.read().split()[2] != "Z"
  except OSError:
    return False


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory, data_dir):
  """The 4-point sweep on the local engine (the uninterrupted reference)."""
  d = tmp_path_factory.mktemp("local")
  exp = write_experiment(d / "exp.py", data_dir, FOUR)
  experiments.run_sweep(exp, str(d / "sweep"))
  return d / "sweep"


def rows(sweep_dir) -> dict[str, dict[str, str]]:
  with open(os.path.join(sweep_dir, "results.csv")) as f:
    return {r["run"]: r for r in csv.DictReader(f)}


def params(run_dir) -> dict[str, np.ndarray]:
  _, _, p = ckpt_lib.load_for_analysis(str(run_dir))
  return {k: np.asarray(v) for k, v in flat_paths(p).items()}


def finalized_checkpoint(run_dir: str) -> bool:
  """A finished checkpoint after step 0 (step 0 is the untrained control)."""
  d = os.path.join(run_dir, "checkpoints")
  return os.path.isdir(d) and any(n.isdigit() and int(n) > 0 for n in os.listdir(d))


class KillWorkerOnce(tune.Callback):
  """kill -9 of one trial's worker once it has a checkpoint and is still training."""

  def __init__(self, run: str, run_dir: str):
    self.run, self.run_dir, self.killed_at = run, run_dir, None

  def on_trial_result(self, iteration, trials, trial, result, **info):
    if (self.killed_at is None and trial.config["run"] == self.run
        and result["step"] < STEPS and finalized_checkpoint(self.run_dir)):
      os.kill(result["pid"], signal.SIGKILL)
      self.killed_at = result["step"]


def test_ray_table_equals_local_and_killed_worker_resumes(cluster, local_sweep, tmp_path,
                                                          data_dir):
  exp = write_experiment(tmp_path / "exp.py", data_dir, FOUR)
  sweep = tmp_path / "sweep"
  target = "seed=1,method=pcgrad"
  killer = KillWorkerOnce(target, str(sweep / target))
  executor = RayExecutor(max_concurrent=2, max_failures=2, callbacks=(killer,))
  experiments.run_sweep(exp, str(sweep), executor=executor)

  assert executor.max_running == 2  # two trials at a time on 2 CPUs
  assert killer.killed_at is not None, "the trial ended before it could be killed"
  # The table is the local engine's, bit for bit.
  assert open(sweep / "results.csv").read() == open(local_sweep / "results.csv").read()
  # The killed trial was retried and resumed from a checkpoint, not from step 0 ...
  summary = json.load(open(sweep / target / "summary.json"))
  assert 0 < summary["start_step"] <= killer.killed_at and summary["end_step"] == STEPS
  # ... and ends with the parameters of the uninterrupted run, bit for bit.
  got, want = params(sweep / target), params(local_sweep / target)
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_array_equal(got[k], want[k], err_msg=k)


def _sweep_cmd(exp: str, sweep: str, address: str) -> list[str]:
  return [sys.executable, "-c", "import sys; from modular.cli import sweep_main; "
          "sys.argv[0] = 'modular-sweep'; sweep_main()", "--experiment", exp,
          "--workdir", sweep, "--engine", "ray", "--address", address,
          "--max-concurrent", "1"]


def test_driver_killed_then_rerun_skips_finished_and_reports_failure(
    cluster, local_sweep, tmp_path, data_dir):
  exp = write_experiment(tmp_path / "exp.py", data_dir, TWO_AND_BAD)
  sweep = str(tmp_path / "sweep")
  first, second = (os.path.join(sweep, n) for n in ("seed=0,method=mean", "seed=1,method=mean"))
  env = {**os.environ, "PYTHONPATH": ROOT}
  log = open(tmp_path / "driver1.log", "w")
  driver = subprocess.Popen(_sweep_cmd(exp, sweep, cluster), env=env, stdout=log,
                            stderr=subprocess.STDOUT)
  deadline = time.time() + 400
  while time.time() < deadline and driver.poll() is None:
    done = experiments.finished_summary(first, _cfg_steps())
    if done is not None and finalized_checkpoint(second):
      break
    time.sleep(0.1)
  assert driver.poll() is None, open(tmp_path / "driver1.log").read()[-3000:]
  driver.send_signal(signal.SIGKILL)
  driver.wait()
  assert experiments.finished_summary(second, _cfg_steps()) is None  # killed mid-sweep
  stamp = os.stat(os.path.join(first, "summary.json")).st_mtime_ns
  evals = open(os.path.join(first, "eval.jsonl")).read()
  deadline = time.time() + 60  # Ray stops the dead driver's trial workers
  while time.time() < deadline and ray.available_resources().get("CPU", 0) < 2:
    time.sleep(0.2)

  again = subprocess.run(_sweep_cmd(exp, sweep, cluster), env=env, capture_output=True,
                         text=True, timeout=600)
  assert again.returncode == 1, again.stderr[-3000:]  # one point failed, the others ran
  assert "init_from=_nonexistent_run" in again.stderr and "/nonexistent/run" in again.stderr
  # The finished run was not rerun; the unfinished one resumed from its checkpoint.
  assert os.stat(os.path.join(first, "summary.json")).st_mtime_ns == stamp
  assert open(os.path.join(first, "eval.jsonl")).read() == evals
  assert json.load(open(os.path.join(second, "summary.json")))["start_step"] > 0
  # The table is complete and equals the local engine's rows for the same points.
  got, want = rows(sweep), rows(local_sweep)
  for name in ("seed=0,method=mean", "seed=1,method=mean"):
    metrics = [k for k in want[name] if "/" in k]
    assert [got[name][k] for k in metrics] == [want[name][k] for k in metrics], name
    assert got[name]["status"] == "finished"
  bad = got["init_from=_nonexistent_run"]
  assert bad["status"] == "failed" and "/nonexistent/run" in bad["error"]


def _cfg_steps():
  import ml_collections
  return ml_collections.ConfigDict({"train": {"steps": STEPS}})
