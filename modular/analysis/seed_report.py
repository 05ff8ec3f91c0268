"""The report over runs of one config at several seeds (``modular-analyze --workdir A B C``).

Each run gets its own report (``report.write_report``: trained model, step-0
control, one sentence per view), and the folder ``out_dir`` gets the aggregate:
for every view shared by the runs, the seed-mean matrix with its per-pair interval,
the seed-to-seed rank correlation, the group test of the seed-mean matrix and of the
seed-mean step-0 control, and for important-head sets the pooled share of heads two
tasks have in common with its Wilson interval (``seeds.py``). Only tasks learned in
every run take part; the first lines of ``summary.txt`` and ``index.html`` say, per
view, what survives the change of seed.

References:
  Merullo et al. 2023 (share of in-circuit heads in common); Ye et al. 2022 (task-level
  MoE routes across seeds).
"""

from __future__ import annotations

import html
import json
import os
from typing import Sequence

import numpy as np

from modular.analysis import groups as groups_lib
from modular.analysis import plots
from modular.analysis import report as report_lib
from modular.analysis import seeds as seeds_lib
from modular.analysis import summary as summary_lib
from modular.analysis.controls import control_verdict


def aggregate_runs(runs: Sequence[report_lib.RunAnalysis]) -> dict:
  """Aggregates analyzed runs of one config.

  Args:
    runs: ``report.analyze_run`` results with the same tasks.

  Returns:
    {"tasks", "keep", "labels", "views": {name: {"aggregate", "control", "result",
    "sentence"}}, "head_share": {source: ...}, "summary": [str]}.

  Raises:
    ValueError: when the runs have different tasks.
  """
  names = runs[0].analysis.task_names
  for r in runs[1:]:
    if r.analysis.task_names != names:
      raise ValueError(f"--workdir {r.workdir}: tasks {r.analysis.task_names} differ from "
                       f"{runs[0].workdir}'s {names}")
  labels = groups_lib.declared_groups(names, runs[0].groups)
  keep = np.all([r.analysis.competence.competent for r in runs], 0)
  per_run = [report_lib.group_results(r.analysis, r.records, r.control, r.groups)
             for r in runs]
  control_views = [None if r.control is None else
                   report_lib.views_lib.model_views(r.control) for r in runs]
  shared = [n for n in per_run[0][0] if all(n in v for v, *_ in per_run)]
  out = {"tasks": names, "keep": keep, "labels": labels, "views": {}, "head_share": {}}
  lines = []
  for name in shared:
    agg = seeds_lib.aggregate_view(name, [v[name].matrix for v, *_ in per_run], labels,
                                   names, keep)
    ctrl = None
    if all(c is not None and name in c for c in control_views):
      ctrl = seeds_lib.aggregate_view(name, [c[name].matrix for c in control_views], labels,
                                      names, keep).test
    first = per_run[0][1][name]
    res = summary_lib.ViewResult(name, first.kind, agg.test, ctrl,
                                 control_verdict(agg.test, ctrl), note=first.note)
    if first.random_within is not None:
      res.random_within = float(np.mean([p[1][name].random_within for p in per_run]))
    if first.entropy_rho is not None:
      res.entropy_rho = (float(np.nanmean([p[1][name].entropy_rho[0] for p in per_run])),
                         float("nan"))
    if first.families is not None:
      res.families = (sum(p[1][name].families[0] for p in per_run),
                      sum(p[1][name].families[1] for p in per_run))
    s = summary_lib.sentence(res, len(runs))
    s += f"; seed-to-seed rank correlation {agg.rank_correlation:+.2f}"
    lines.append(s)
    out["views"][name] = {"aggregate": agg, "control": ctrl, "result": res, "sentence": s}
  for source in runs[0].analysis.reuse:
    sets = [r.analysis.reuse[source].sets for r in runs]
    share = seeds_lib.shared_head_share(sets, labels, keep)
    out["head_share"][source] = share
    w, a = share["within"], share["across"]
    lines.append(f"heads/{source}: share of important heads two tasks have in common "
                 f"{_pct(w)} within groups vs {_pct(a)} across ({len(runs)} seeds, "
                 f"Wilson 95% intervals)")
  gated = [n for n, k in zip(names, keep) if not k]
  if gated:
    lines.append("left out (at chance in at least one seed): " + ", ".join(gated))
  out["summary"] = lines
  return out


def _pct(s: dict) -> str:
  if not np.isfinite(s["share"]):
    return "n/a"
  return f"{100 * s['share']:.0f}% [{100 * s['low']:.0f}, {100 * s['high']:.0f}]"


def write_seed_report(workdirs: Sequence[str], out_dir: str | None = None, **kw) -> str:
  """Per-run reports and their aggregate over seeds.

  Args:
    workdirs: run folders of one config at different seeds.
    out_dir: aggregate report folder (default ``<first workdir>/../report_seeds``).
    **kw: ``report.analyze_run`` options (top_k, threshold, max_eval_batches, ...).

  Returns:
    The aggregate report folder.

  Raises:
    ValueError: when a folder has no checkpoint or the runs' tasks differ.
  """
  out_dir = out_dir or os.path.join(os.path.dirname(os.path.abspath(workdirs[0])),
                                    "report_seeds")
  os.makedirs(out_dir, exist_ok=True)
  runs = []
  for w in workdirs:
    run = report_lib.analyze_run(w, **kw)
    if run is None:
      raise ValueError(f"--workdir {w}: no checkpoint to analyze")
    report_lib.write_analysis(run.analysis, os.path.join(w, "report"), run.records,
                              f"modular analysis: {os.path.basename(os.path.abspath(w))}",
                              run.control, run.groups)
    runs.append(run)
  agg = aggregate_runs(runs)
  figs = []
  names = [n + ("" if k else " (at chance)") for n, k in zip(agg["tasks"], agg["keep"])]
  for name, v in agg["views"].items():
    a = v["aggregate"]
    safe = name.replace("/", "_").replace(" ", "_")
    lo = -1.0 if v["result"].kind == "continuous" else 0.0
    path = plots.task_matrix(a.mean, names, f"{name}: mean over {a.seeds} seeds",
                             os.path.join(out_dir, f"seeds_{safe}.png"), vmin=lo, vmax=1,
                             cmap="RdBu" if lo < 0 else "magma")
    figs.append((name, os.path.basename(path)))
  with open(os.path.join(out_dir, "metrics.json"), "w") as f:
    json.dump(report_lib.to_jsonable(
        dict(agg, workdirs=[os.path.abspath(w) for w in workdirs],
             views={k: {"mean": v["aggregate"].mean, "low": v["aggregate"].low,
                        "high": v["aggregate"].high,
                        "rank_correlation": v["aggregate"].rank_correlation,
                        "test": v["aggregate"].test, "control": v["control"],
                        "sentence": v["sentence"]} for k, v in agg["views"].items()})), f)
  with open(os.path.join(out_dir, "summary.txt"), "w") as f:
    f.write("\n".join(agg["summary"]) + "\n")
  parts = ["<!doctype html><html><head><meta charset='utf-8'><title>seeds</title></head>"
           f"<body style='font-family:sans-serif'><h1>{len(runs)} seeds</h1><ul>"]
  parts += [f"<li>{html.escape(s)}</li>" for s in agg["summary"]]
  parts.append("</ul><p>Per-run reports: " + ", ".join(
      html.escape(os.path.join(os.path.abspath(w), "report")) for w in workdirs) + "</p>")
  parts += [f"<figure><img src='{html.escape(p)}'><figcaption>{html.escape(n)}</figcaption>"
            "</figure>" for n, p in figs]
  parts.append("</body></html>")
  with open(os.path.join(out_dir, "index.html"), "w") as f:
    f.write("\n".join(parts))
  return out_dir
