"""The Ray engine: a sweep's points as Ray Tune trials, on this machine or a cluster.

  modular-sweep --experiment experiments/mixture_ablation.py --workdir runs/abl \
      --engine ray [--address HOST:PORT] [--cpus-per-trial 1] [--gpus-per-trial 0] \
      [--max-concurrent 0] [--max-failures 2] [--asha] [--tpu-slice v4-16]

Without ``--address`` (and without ``RAY_ADDRESS``) a local Ray cluster is started
for the sweep and stopped after it. Each trial trains one point with the declared
resources and reports every evaluation (``tune.report`` from the loop's ``on_eval``)
so that ASHA (``--asha``, off by default) can stop bad trials early.

Faults: a trial whose worker process dies is restarted by Tune (``--max-failures``)
and resumes from its own newest orbax checkpoint, because its run folder is fixed by
its point. An error raised by training (a bad value met at run time, a diverged run
halted by the non-finite guard) ends that trial as "failed" with its message, is not
retried, and stops no other trial. A dead driver is recovered by running the same
command again (``run_sweep`` skips finished runs). Every host must see the sweep
folder and the data dir at the same path (one machine, NFS, or a bucket path) and
have this package installed.

This is the only module that imports Ray.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import time
from typing import Any, Callable

import ml_collections
import ray
from ray import tune

from modular.experiments import multihost
from modular.experiments.engine import Outcome, Trial, error_line, train_trial


def _flat(step: int, evals: dict[str, dict[str, float]]) -> dict[str, Any]:
  """Tune metrics of one evaluation: step, per-task and mean values, the eval as JSON."""
  out: dict[str, Any] = {"step": step, "pid": os.getpid(), "eval_json": json.dumps(evals)}
  for metric, per_task in evals.items():
    for task, v in per_task.items():
      out[f"{metric}/{task}"] = v
    out[f"{metric}/mean"] = sum(per_task.values()) / max(len(per_task), 1)
  return out


def _trainable(config: dict[str, Any], specs: dict[str, dict[str, Any]]) -> None:
  """One Tune trial: trains (or resumes) its point; reports each evaluation."""
  name = config["run"]
  spec = specs[name]
  if spec["tpu_slice"]:
    return _train_on_slice(spec)
  started_at = time.time()  # wall clock when this worker began the trial
  trial = Trial(name, ml_collections.ConfigDict(spec["cfg"]), spec["workdir"])
  step = 0

  def on_eval(s: int, evals: dict) -> None:
    nonlocal step
    step = s
    tune.report({**_flat(s, evals), "started_at": started_at})

  try:
    summary = train_trial(trial, on_eval)
  except Exception as e:  # noqa: BLE001 - a run-time failure ends this trial only
    tune.report({"step": step, "pid": os.getpid(), "error": error_line(e), **spec["worst"]})
    return
  tune.report({**_flat(summary["end_step"], summary["eval"]), "final": True,
               "started_at": started_at, "summary_json": json.dumps(summary, default=str)})


def _run_host(cmd: list[str], env: dict[str, str]) -> tuple[int, str]:
  proc = subprocess.run(cmd, env={**os.environ, **env}, capture_output=True, text=True)
  return proc.returncode, proc.stderr[-2000:]


def _train_on_slice(spec: dict[str, Any]) -> None:
  """A multi-host trial: one training process per host of this trial's TPU slice."""
  import ray.util.tpu as ray_tpu
  from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
  slice_spec = multihost.SliceSpec.parse(spec["tpu_slice"])
  slice_name = ray_tpu.get_current_pod_name()
  coordinator = ray.util.get_node_ip_address()
  head_node = ray.get_runtime_context().get_node_id()
  cmd = multihost.host_command(spec["config_json"], spec["workdir"])
  host_task = ray.remote(_run_host)
  refs = []
  for i in range(slice_spec.hosts):
    where = (NodeAffinitySchedulingStrategy(head_node, soft=False) if i == 0 else "DEFAULT")
    refs.append(host_task.options(
        num_cpus=1, resources=multihost.host_resources(slice_spec, slice_name),
        scheduling_strategy=where).remote(cmd, multihost.host_env(
            coordinator, slice_spec.hosts, i)))
  seen, pending = 0, list(refs)
  while pending:
    _, pending = ray.wait(pending, num_returns=len(pending), timeout=5.0)
    seen = _report_new_evals(spec["workdir"], seen)
  results = ray.get(refs)
  if any(rc < 0 for rc, _ in results):  # a host was killed: let Tune retry the trial
    raise RuntimeError(f"a host of {slice_name} died: {[rc for rc, _ in results]}")
  bad = [tail for rc, tail in results if rc > 0]
  if bad:
    lines = [ln for ln in bad[0].strip().splitlines() if ln.strip()]
    tune.report({"step": 0, "error": lines[-1] if lines else "host failed", **spec["worst"]})
    return
  with open(os.path.join(spec["workdir"], "summary.json")) as f:
    summary = json.load(f)
  tune.report({**_flat(summary["end_step"], summary["eval"]), "final": True,
               "summary_json": json.dumps(summary)})


def _report_new_evals(workdir: str, seen: int) -> int:
  path = os.path.join(workdir, "eval.jsonl")
  if not os.path.exists(path):
    return seen
  with open(path) as f:
    lines = f.read().splitlines()
  for line in lines[seen:]:
    record = json.loads(line)
    tune.report(_flat(record["step"], record["eval"]))
  return len(lines)


class _LiveTable(tune.Callback):
  """Prints the trials' state, step and key metric; hands each ended trial to the sweep."""

  def __init__(self, metric: str, on_outcome: Callable[[Outcome], None], every_s: float):
    self.metric, self.on_outcome, self.every_s = metric, on_outcome, every_s
    self.rows: dict[str, list[Any]] = {}
    self.running = self.max_running = 0
    self.outcomes: dict[str, Outcome] = {}
    self._last_print = 0.0

  def _print(self, force: bool = False) -> None:
    if not force and time.monotonic() - self._last_print < self.every_s:
      return
    self._last_print = time.monotonic()
    width = max([len(n) for n in self.rows] + [5])
    lines = [f"{'trial':<{width}}  {'state':<10} {'step':>6}  {self.metric}"]
    for name, (state, step, value) in self.rows.items():
      shown = "" if value is None else f"{value:.4f}"
      lines.append(f"{name:<{width}}  {state:<10} {step:>6}  {shown}")
    print("\n".join(lines), flush=True)

  def on_trial_start(self, iteration, trials, trial, **info):
    self.running += 1
    self.max_running = max(self.max_running, self.running)
    self.rows[trial.config["run"]] = ["RUNNING", 0, None]
    self._print(force=True)

  def on_trial_result(self, iteration, trials, trial, result, **info):
    value = result.get(self.metric)
    self.rows[trial.config["run"]] = ["RUNNING", result.get("step", 0),
                                      value if isinstance(value, float) else None]
    self._print()

  def on_trial_recover(self, iteration, trials, trial, **info):
    self.running -= 1
    print(f"== trial {trial.config['run']}: worker lost, retrying from its checkpoint",
          flush=True)

  def _end(self, trial, outcome: Outcome) -> None:
    self.running -= 1
    self.outcomes[outcome.name] = outcome
    self.rows[outcome.name][0] = outcome.status.upper()
    self._print(force=True)
    self.on_outcome(outcome)

  def on_trial_complete(self, iteration, trials, trial, **info):
    name, last = trial.config["run"], trial.last_result or {}
    if last.get("error"):
      outcome = Outcome(name, "failed", error=last["error"])
    elif last.get("final"):
      outcome = Outcome(name, "finished", summary=json.loads(last["summary_json"]))
    else:  # stopped early by the scheduler: its last evaluation
      evals = json.loads(last["eval_json"]) if "eval_json" in last else {}
      outcome = Outcome(name, "stopped", summary={"eval": evals, "end_step": last.get("step")})
    self._end(trial, outcome)

  def on_trial_error(self, iteration, trials, trial, **info):
    text = "worker failed more than --max-failures times"
    if trial.error_file and os.path.exists(trial.error_file):
      with open(trial.error_file) as f:
        lines = [ln for ln in f.read().strip().splitlines() if ln.strip()]
      text = lines[-1] if lines else text
    self._end(trial, Outcome(trial.config["run"], "failed", error=text))


class RayExecutor:
  """Runs trials as Ray Tune trials (see the module docstring)."""

  def __init__(self, *, address: str | None = None, num_cpus: int | None = None,
               cpus_per_trial: float = 1.0, gpus_per_trial: float = 0.0,
               max_concurrent: int = 0, max_failures: int = 2, asha: bool = False,
               metric: str = "accuracy/mean", tpu_slice: str | None = None,
               table_every_s: float = 10.0, callbacks: tuple = ()):
    """Args:
      address: a Ray cluster to join (default ``RAY_ADDRESS``, else a local cluster).
      num_cpus: CPUs of the local cluster started when there is no address.
      cpus_per_trial, gpus_per_trial: each trial's resources.
      max_concurrent: at most this many trials at once (0: as resources allow).
      max_failures: restarts of a trial whose worker died.
      asha: stop bad trials early with ASHA on ``metric`` (maximized unless "loss").
      metric: the key metric of the live table and of ASHA.
      tpu_slice: one trial per TPU slice of this type ("v4-16"), one process per host.
      table_every_s: seconds between live-table prints.
      callbacks: extra ``tune.Callback``s.
    """
    if tpu_slice:
      multihost.SliceSpec.parse(tpu_slice)
    self.address = address or os.environ.get("RAY_ADDRESS") or None
    self.num_cpus, self.cpus, self.gpus = num_cpus, cpus_per_trial, gpus_per_trial
    self.max_concurrent, self.max_failures, self.asha = max_concurrent, max_failures, asha
    self.metric, self.tpu_slice, self.table_every_s = metric, tpu_slice, table_every_s
    self.callbacks = list(callbacks)
    self.max_running = 0

  def _resources(self):
    if self.tpu_slice:
      spec = multihost.SliceSpec.parse(self.tpu_slice)
      return tune.PlacementGroupFactory(multihost.trial_bundles(spec, self.cpus))
    return {"cpu": self.cpus, "gpu": self.gpus}

  def run(self, trials: list[Trial], on_outcome: Callable[[Outcome], None]) -> list[Outcome]:
    started = not ray.is_initialized()
    if started:
      if self.address:
        ray.init(address=self.address)
      else:
        ray.init(num_cpus=self.num_cpus, include_dashboard=False)
    try:
      return self._fit(trials, on_outcome)
    finally:
      if started:
        ray.shutdown()

  def _fit(self, trials: list[Trial], on_outcome: Callable[[Outcome], None]) -> list[Outcome]:
    sweep_dir = os.path.dirname(os.path.abspath(trials[0].workdir))
    mode = "min" if self.metric.startswith("loss") else "max"
    # A failed trial reports the worst value of the key metric only to ASHA (which needs it).
    worst = {self.metric: math.inf if mode == "min" else -math.inf} if self.asha else {}
    specs = {}
    for t in trials:
      config_json = None
      if self.tpu_slice:
        config_json = multihost.write_point_config(
            os.path.join(sweep_dir, "_points", f"{t.name}.json"), t.cfg)
      specs[t.name] = {"cfg": t.cfg.to_dict(), "workdir": os.path.abspath(t.workdir),
                       "tpu_slice": self.tpu_slice, "config_json": config_json,
                       "metric": self.metric, "worst": worst}
    scheduler = None
    if self.asha:
      steps = max(t.cfg.train.steps for t in trials)
      grace = min(t.cfg.train.eval_every for t in trials)
      scheduler = tune.schedulers.ASHAScheduler(time_attr="step", metric=self.metric,
                                                mode=mode, max_t=steps, grace_period=grace)
    table = _LiveTable(self.metric, on_outcome, self.table_every_s)
    trainable = tune.with_resources(tune.with_parameters(_trainable, specs=specs),
                                    self._resources())
    tuner = tune.Tuner(
        trainable,
        param_space={"run": tune.grid_search([t.name for t in trials])},
        tune_config=tune.TuneConfig(max_concurrent_trials=self.max_concurrent or None,
                                    scheduler=scheduler, reuse_actors=False),
        run_config=tune.RunConfig(
            name=time.strftime("tune-%Y%m%d-%H%M%S"),
            storage_path=os.path.join(sweep_dir, "_ray"), verbose=0,
            failure_config=tune.FailureConfig(max_failures=self.max_failures),
            callbacks=[table] + self.callbacks))
    tuner.fit()
    self.max_running = table.max_running
    return [table.outcomes.get(t.name, Outcome(t.name, "failed", error="trial did not end"))
            for t in trials]
