"""The sweep's results table (``results.csv``, ``results.md``) and its Δm column.

Rows hold each run's final per-task evaluation; a failed run keeps its row with
status ``failed`` and its error below the table; a run not finished yet (a
partial table written while others still train) has status ``pending``. A sweep
with a seed axis (``hyper.seeds``) gets a second table in ``results.md``, its seeds
aggregated per point (``protocol.seed_table``: intervals over seeds, the test-set
bootstrap, Δm with its interval, a paired test against a reference point).
"""

from __future__ import annotations

import csv
import json
import math
import os
from typing import Any

import ml_collections

from modular.experiments.spec import DATA_SEED_KEY, SEED_KEY

METRICS = ("accuracy", "seq_accuracy", "loss")
# (-1)^{l_t}: +1 where higher is better, -1 where lower is better.
METRIC_SIGN = {"accuracy": 1.0, "seq_accuracy": 1.0, "loss": -1.0}
DELTA_M_METRICS = ("accuracy", "loss")


def finished_summary(workdir: str, cfg: ml_collections.ConfigDict) -> dict[str, Any] | None:
  """The saved summary of a run that already reached ``cfg.train.steps``, else None.

  A finished run is never retrained by a restarted sweep: its ``summary.json``
  (written by the loop once it evaluated the last step) is the result.
  """
  path = os.path.join(workdir, "summary.json")
  try:
    with open(path) as f:
      summary = json.load(f)
  except (OSError, ValueError):
    return None
  if summary.get("end_step") != cfg.train.steps or not summary.get("eval"):
    return None
  return summary


def delta_m(evals: dict[str, dict[str, float]], single: dict[str, dict[str, float]],
            metrics: tuple[str, ...] = DELTA_M_METRICS) -> float:
  """Multi-task gain over single-task baselines, in percent.

  delta_m = 100 / |P| * sum_{(t, m) in P} s_m (M_{t,m} - B_{t,m}) / B_{t,m}, over the
  pairs P of a task t that has a baseline and a metric m, with s_m = +1 if higher
  is better and -1 if lower is better.

  Args:
    evals: the multi-task run's ``{metric: {task: value}}``.
    single: ``{metric: {task: value}}`` of the single-task baselines.
    metrics: the metrics averaged.

  Returns:
    Δm in percent (positive: the multi-task run beats single-task training);
    NaN when no task has a baseline.

  References:
    Maninis, Radosavovic, Kokkinos. Attentive Single-Tasking of Multiple Tasks. CVPR 2019.
  """
  terms = []
  for m in metrics:
    for task, value in evals.get(m, {}).items():
      base = single.get(m, {}).get(task)
      if base is None or base == 0:
        continue
      terms.append(METRIC_SIGN[m] * (value - base) / base)
  return 100.0 * sum(terms) / len(terms) if terms else float("nan")


def baseline_metrics(rows: list[dict[str, Any]]) -> dict[str, dict[str, float]]:
  """``{metric: {task: mean over that task's finished baseline runs}}``."""
  sums: dict[str, dict[str, list[float]]] = {}
  for r in rows:
    if not r.get("baseline") or r["status"] != "finished":
      continue
    for m in METRICS:
      for task, v in r["eval"].get(m, {}).items():
        sums.setdefault(m, {}).setdefault(task, []).append(v)
  return {m: {t: sum(v) / len(v) for t, v in per.items()} for m, per in sums.items()}


def _cell(v: float | None) -> Any:
  return "" if v is None or (isinstance(v, float) and math.isnan(v)) else round(v, 4)


def results_table(rows: list[dict[str, Any]], tasks: list[str]
                  ) -> tuple[list[str], list[list[Any]]]:
  """Header and rows: run, swept values, status, per-task metrics and means, Δm.

  Args:
    rows: ``{"name", "point", "status", "eval", "baseline"}`` per run, in sweep order.
    tasks: the multi-task runs' tasks (columns).

  Returns:
    The header and one line per row; a missing value is an empty cell. The ``delta_m``
    column (percent) is there only when some row is a baseline.
  """
  keys = sorted({k for r in rows for k in r["point"]
                 if not (k == DATA_SEED_KEY and r["point"].get(SEED_KEY) == r["point"][k])})
  has_baselines = any(r.get("baseline") for r in rows)
  header = ["run"] + [k.split(".")[-1] for k in keys] + ["status"]
  for metric in METRICS:
    header += [f"{metric}/{t}" for t in tasks] + [f"{metric}/mean"]
  if has_baselines:
    header.append("delta_m")
  single = baseline_metrics(rows) if has_baselines else {}
  table = []
  for r in rows:
    line = [r["name"]] + [_text(r["point"].get(k, "")) for k in keys] + [r["status"]]
    for metric in METRICS:
      per = r["eval"].get(metric, {})
      vals = [per.get(t) for t in tasks]
      present = [v for v in vals if v is not None]
      line += [_cell(v) for v in vals]
      line.append(_cell(sum(present) / len(present)) if present else "")
    if has_baselines:
      dm = delta_m(r["eval"], single) if not r.get("baseline") and r["eval"] else None
      line.append(_cell(dm))
    table.append(line)
  return header, table


def _text(v: Any) -> Any:
  return "+".join(str(x) for x in v) if isinstance(v, (list, tuple)) else v


def write_results(workdir: str, rows: list[dict[str, Any]], tasks: list[str],
                  reference: str | None = None) -> str:
  """Writes ``results.csv`` and ``results.md`` (atomically); returns the Markdown.

  Args:
    workdir: the sweep folder.
    rows: the sweep's rows (``results_table``; with ``group`` and ``seed`` per run).
    tasks: the multi-task runs' tasks.
    reference: the point the seed table tests every other point against (default:
      the first).
  """
  header, table = results_table(rows, tasks)
  os.makedirs(workdir, exist_ok=True)
  tmp = os.path.join(workdir, "results.csv.tmp")
  with open(tmp, "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header + ["error"])
    for line, r in zip(table, rows):
      w.writerow(line + [r.get("error") or ""])
  os.replace(tmp, os.path.join(workdir, "results.csv"))
  md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  md += ["| " + " | ".join(str(x) for x in line) + " |" for line in table]
  failed = [r for r in rows if r["status"] == "failed"]
  if failed:
    md += ["", "Failed runs:"] + [f"- {r['name']}: {r['error']}" for r in failed]
  if any(r.get("seed") is not None for r in rows):
    from modular.experiments import protocol  # pylint: disable=g-import-not-at-top
    md += ["", "## Over seeds", "", protocol.seed_table(workdir, rows, tasks, reference)]
  text = "\n".join(md)
  tmp = os.path.join(workdir, "results.md.tmp")
  with open(tmp, "w") as f:
    f.write(text + "\n")
  os.replace(tmp, os.path.join(workdir, "results.md"))
  return text
