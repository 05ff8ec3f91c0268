"""``run_sweep``: validate every point, prepare data once, run what is unfinished, tabulate.

Validation includes the run folders already there: a point whose saved
``config.json`` is another run (the sweep folder was made with another ``--arg``)
stops the sweep before anything is run or written.

A sweep is resumable by running the same command again: a run whose
``summary.json`` says it reached its last step is not rerun (its results are read
back), every other run resumes from its own newest checkpoint. The table is
rewritten after each run ends, so a sweep stopped half way leaves partial results.
"""

from __future__ import annotations

import json
import os
from typing import Any

from modular import data as data_lib
from modular.experiments import results as results_lib
from modular.experiments import spec as spec_lib
from modular.experiments.engine import Executor, LocalExecutor, Outcome, Trial


def prepare_data(points: list[spec_lib.Point]) -> int:
  """Builds every dataset the points read, once, before any trial starts.

  On one machine the trials share the data dir (its preparation is locked, so two
  trials never build the same dataset at once); on a cluster ``config.data.data_dir``
  must be storage every host sees (NFS, or a bucket path), and the driver builds it
  here so that no trial does.

  Returns:
    The number of distinct data configs prepared.
  """
  seen = set()
  for p in points:
    key = json.dumps(p.cfg.data.to_dict(), sort_keys=True, default=str)
    if key not in seen:
      seen.add(key)
      data_lib.build_task_sources(p.cfg.data)
  return len(seen)


def _row(point: spec_lib.Point, baseline: bool) -> dict[str, Any]:
  return {"name": point.name, "point": point.overrides, "status": "pending", "eval": {},
          "baseline": baseline, "error": None, "tasks": data_lib.task_names(point.cfg.data),
          "group": point.group, "seed": point.seed}


def run_sweep(experiment: str, workdir: str, *, arg: str | None = None,
              overrides: dict[str, str] | None = None,
              executor: Executor | None = None) -> str:
  """Runs every unfinished point of the experiment's sweep and writes the results table.

  Args:
    experiment: path of the experiment file (``get_config`` + ``get_hyper``, and
      optionally ``get_baselines``).
    workdir: the sweep folder; each run gets ``workdir/<run name>``.
    arg: argument for ``get_config``.
    overrides: ``{"train.steps": "100"}`` applied to every run.
    executor: how runs are executed (default: locally, one after another).

  Returns:
    The Markdown table (also in ``results.md``; ``results.csv`` beside it). Failed
    runs keep their row (status "failed") and their error is listed below the table.

  Raises:
    ValueError: one line, before any run starts and before anything in ``workdir``
      changes: ``workdir`` is a file, a point is bad (the first is named), or a
      point's run folder holds a run of another config (``spec.check_saved_configs``).
  """
  from modular.train.loop import check_workdir  # pylint: disable=g-import-not-at-top
  check_workdir(workdir)
  executor = executor or LocalExecutor()
  points = spec_lib.expand(experiment, arg, overrides)
  baselines = spec_lib.expand_baselines(experiment, arg, overrides)
  everything = points + baselines
  names = [p.name for p in everything]
  if len(set(names)) != len(names):
    raise ValueError(f"{experiment}: a get_baselines point has a get_hyper point's name")
  spec_lib.check_saved_configs(everything, workdir)
  baseline_names = {p.name for p in baselines}
  rows = {p.name: _row(p, p.name in baseline_names) for p in everything}
  tasks = rows[points[0].name]["tasks"] if points else []

  reference = getattr(spec_lib.load_experiment(experiment), "REFERENCE", None)

  def write() -> str:
    return results_lib.write_results(workdir, [rows[n] for n in names], tasks, reference)

  pending = []
  for p in everything:
    run_dir = os.path.join(workdir, p.name)
    summary = results_lib.finished_summary(run_dir, p.cfg)
    if summary is not None:
      print(f"== run {p.name}: finished at step {summary['end_step']}, not rerun", flush=True)
      rows[p.name].update(status="finished", eval=summary["eval"])
    else:
      pending.append(Trial(p.name, p.cfg, run_dir))
  write()
  if pending:
    pending_names = {t.name for t in pending}
    prepare_data([p for p in everything if p.name in pending_names])

  def on_outcome(outcome: Outcome) -> None:
    row = rows[outcome.name]
    row["status"] = outcome.status
    row["error"] = outcome.error
    if outcome.summary is not None:
      row["eval"] = outcome.summary.get("eval") or {}
    write()

  if pending:
    executor.run(pending, on_outcome)
  return write()


def failed_runs(workdir: str) -> list[tuple[str, str]]:
  """``(run, error)`` of each failed run listed in ``workdir/results.csv``."""
  import csv
  with open(os.path.join(workdir, "results.csv")) as f:
    return [(r["run"], r["error"]) for r in csv.DictReader(f) if r["status"] == "failed"]
