"""The sweep's results over seeds: one row per point, its seeds aggregated.

For a sweep with a seed axis (``hyper.seeds``), ``seed_table`` groups the finished
runs by point (``Point.group``) and reports, from each run's test metrics
(``summary.json``'s ``eval``) and per-example test outcomes (``predictions.npz``,
written by runs with a validation split, ``modular.train.selection``):

  <task>          accuracy: mean over seeds +- the half-width of its 95% t-interval
  mean            the mean over tasks: mean over seeds [95% t-interval], n seeds
  test bootstrap  the 95% test-set bootstrap interval of that mean (``stats``)
  Δm              accuracy over the single-task baselines, percent (Maninis et al.
                  2019): per seed s, 100/T sum_t (a_st - b_st) / b_st with b_st the
                  baseline of task t at seed s (the mean of its seeds where seed s
                  is missing); mean [95% t-interval] over seeds
  Δ vs reference  mean over seeds of the mean accuracy minus the reference point's
                  (same seeds), in points
  p               the paired test against the reference point: McNemar's exact test on
                  the pooled test examples of all tasks within each seed, combined over
                  the seeds by Fisher's method; n = test examples x seeds

Seeds are paired by value: seed s of a point against seed s of the reference.
"""

from __future__ import annotations

import math
import os
from typing import Any, Callable

import numpy as np

from modular.experiments import stats
from modular.train import selection as selection_lib


def _fmt(v: float, digits: int = 3) -> str:
  return "" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def _interval(lo: float, hi: float, digits: int = 3) -> str:
  return "" if not (math.isfinite(lo) and math.isfinite(hi)) else \
      f"[{lo:.{digits}f}, {hi:.{digits}f}]"


def groups(rows: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
  """``{group: [finished run rows, sorted by seed]}`` in sweep order (empty groups kept)."""
  out: dict[str, list[dict[str, Any]]] = {}
  for r in rows:
    out.setdefault(r.get("group") or r["name"], [])
    if r["status"] == "finished" and r["eval"]:
      out[r.get("group") or r["name"]].append(r)
  for g in out.values():
    g.sort(key=lambda r: -1 if r.get("seed") is None else r["seed"])
  return out


def baselines(rows: list[dict[str, Any]]) -> dict[str, dict[Any, float]]:
  """``{task: {seed: accuracy}}`` of the finished single-task baselines."""
  out: dict[str, dict[Any, float]] = {}
  for r in rows:
    if r.get("baseline") and r["status"] == "finished":
      for task, v in r["eval"].get("accuracy", {}).items():
        out.setdefault(task, {})[r.get("seed")] = v
  return out


def delta_m_seed(acc: dict[str, float], seed: Any, single: dict[str, dict[Any, float]]
                 ) -> float:
  """Δm on accuracy (percent) of one run against the baselines of its seed."""
  terms = []
  for task, a in acc.items():
    per = single.get(task)
    if not per:
      continue
    b = per.get(seed, float(np.mean(list(per.values()))))
    if b:
      terms.append((a - b) / b)
  return 100.0 * float(np.mean(terms)) if terms else math.nan


def _correct(workdir: str, run: dict[str, Any], tasks: list[str]) -> dict[str, np.ndarray] | None:
  """``{task: bool [n]}`` of a run's test examples, or None without predictions."""
  preds = selection_lib.load_predictions(os.path.join(workdir, run["name"]))
  if preds is None or any(f"{t}/correct" not in preds for t in tasks):
    return None
  return {t: preds[f"{t}/correct"].astype(bool) for t in tasks}


def paired(workdir: str, arm: list[dict[str, Any]], ref: list[dict[str, Any]],
           tasks: list[str]) -> tuple[float, int, int]:
  """The combined paired test of two points: ``(p, n examples per seed, seeds)``.

  Per seed both runs have: McNemar exact on their pooled test examples; Fisher over
  the seeds. NaN when no seed has predictions for both.
  """
  ref_by_seed = {r.get("seed"): r for r in ref}
  ps, n = [], 0
  for r in arm:
    other = ref_by_seed.get(r.get("seed"))
    if other is None:
      continue
    a, b = _correct(workdir, r, tasks), _correct(workdir, other, tasks)
    if a is None or b is None:
      continue
    x = np.concatenate([a[t] for t in tasks])
    y = np.concatenate([b[t] for t in tasks])
    ps.append(stats.mcnemar_exact(x, y)[2])
    n = len(x)
  return stats.fisher_combine(ps), n, len(ps)


def _mean_acc(r: dict[str, Any], tasks: list[str]) -> float:
  acc = r["eval"].get("accuracy", {})
  vals = [acc[t] for t in tasks if t in acc]
  return float(np.mean(vals)) if vals else math.nan


def seed_table(workdir: str, rows: list[dict[str, Any]], tasks: list[str],
               reference: str | None = None,
               extra: Callable[[str], dict[str, str]] | None = None) -> str:
  """The Markdown table over seeds (module docstring).

  Args:
    workdir: the sweep folder (run folders hold ``predictions.npz``).
    rows: the sweep's rows (``name``, ``group``, ``seed``, ``baseline``, ``status``,
      ``eval``), baselines included.
    tasks: the multi-task points' tasks.
    reference: the group every point is tested against (default: the first point's).
    extra: ``extra(group) -> {column: cell}`` appended to each row (e.g. parameters).

  Returns:
    The table, then lines naming the tests and the reference.
  """
  by_group = groups(rows)
  base_groups = {r.get("group") or r["name"] for r in rows if r.get("baseline")}
  points = [g for g in by_group if g not in base_groups]
  reference = reference if reference in by_group else (points[0] if points else None)
  single = baselines(rows)
  extra_cols = list(extra(points[0]).keys()) if extra and points else []
  header = (["point", "seeds"] + tasks + ["mean [95% CI over seeds]", "test bootstrap 95%",
                                         "Δm acc % [95% CI]", f"Δ vs {reference} (pt)",
                                         "p (n)"] + extra_cols)
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for g, runs in by_group.items():
    cells = [g, str(len(runs))]
    is_base = g in base_groups
    own = [t for t in tasks if any(t in r["eval"].get("accuracy", {}) for r in runs)] \
        if is_base else tasks
    for t in tasks:
      m, lo, hi, _ = stats.t_interval([r["eval"]["accuracy"][t] for r in runs
                                       if t in r["eval"].get("accuracy", {})])
      cells.append(_fmt(m) + (f" ± {(hi - lo) / 2:.3f}" if math.isfinite(lo) else ""))
    m, lo, hi, n = stats.t_interval([_mean_acc(r, own) for r in runs])
    cells.append(f"{_fmt(m)} {_interval(lo, hi)}".strip() if n else "")
    correct = [_correct(workdir, r, own) for r in runs]
    if runs and all(c is not None for c in correct):
      lo_b, hi_b = stats.bootstrap_interval([np.stack([c[t] for c in correct]) for t in own])
      cells.append(_interval(lo_b, hi_b))
    else:
      cells.append("")
    if is_base or not runs:
      cells += ["", "", ""]
    else:
      dm, dlo, dhi, _ = stats.t_interval([delta_m_seed(r["eval"]["accuracy"], r.get("seed"),
                                                       single) for r in runs])
      cells.append(f"{_fmt(dm, 1)} {_interval(dlo, dhi, 1)}".strip())
      if g == reference:
        cells += ["(reference)", ""]
      else:
        ref_by_seed = {r.get("seed"): _mean_acc(r, tasks) for r in by_group[reference]}
        diffs = [_mean_acc(r, tasks) - ref_by_seed[r.get("seed")] for r in runs
                 if r.get("seed") in ref_by_seed]
        cells.append(f"{100 * np.mean(diffs):+.1f}" if diffs else "")
        p, n_ex, k = paired(workdir, runs, by_group[reference], tasks)
        cells.append(f"{p:.3g} ({n_ex} × {k})" if math.isfinite(p) else "")
    if extra:
      cells += [extra(g).get(c, "") for c in extra_cols]
    lines.append("| " + " | ".join(cells) + " |")
  lines += ["", "Tasks: test accuracy (the first data.num_eval examples per task), mean over "
            "seeds ± the half-width of the 95% Student-t interval. p: paired test against "
            f"{reference} per seed ({stats.PAIRED_TEST} on the pooled test examples of all "
            f"tasks), combined over the seeds by {stats.COMBINATION}; (n × k): test "
            "examples per seed × seeds. Seeds are paired by value."]
  return "\n".join(lines)
