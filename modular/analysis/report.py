"""The analysis report of a run folder: PNG figures, JSON metrics and an index page.

``write_report(workdir)`` (the ``modular-analyze`` command) restores the run's latest
checkpoint (sharded or not) with ``modular.train.checkpoint.load_for_analysis``,
rebuilds the tasks' evaluation data from the saved config, runs
``analyze.analyze_model`` and reads ``telemetry.jsonl`` for the routing statistics
and gradient cosines logged during training. It writes into ``out_dir``:

  metrics.json     every number behind the figures
  *.png            head importance / ablation heatmaps, head and neuron overlap
                   matrices and per-layer curves, routing usage with dendrograms,
                   routing entropy and gradient cosines over training
  index.html       a page that shows them all

With ``patching`` (``modular-analyze --patching``) the report also has the head
patching map of the run's own tasks and its sentence (``patching_report.py``).

A run without a checkpoint still gets its telemetry figures.

References:
  Michel et al. 2019; Merullo et al. 2023; Tan et al. 2024; Ye et al. 2022; Ponti et
  al. 2022; Yu et al. 2020 (see the modules that compute each figure).
"""

from __future__ import annotations

import dataclasses
import html
import json
import os
import time
from typing import Any

import numpy as np

from modular.analysis import plots
from modular.analysis import telemetry as telemetry_lib
from modular.analysis import groups as groups_lib
from modular.analysis import patching_report
from modular.analysis import summary as summary_lib
from modular.analysis import views as views_lib
from modular.analysis.ablation import MODES as ABLATION_MODES
from modular.analysis.analyze import Analysis, analyze_model
from modular.analysis.competence import competence_lines
from modular.analysis.routing import entropy_over_training, routing_analysis


def to_jsonable(x: Any) -> Any:
  """Arrays, dataclasses and NumPy scalars -> JSON values (NaN and inf -> None)."""
  if dataclasses.is_dataclass(x) and not isinstance(x, type):
    return {f.name: to_jsonable(getattr(x, f.name)) for f in dataclasses.fields(x)}
  if isinstance(x, dict):
    return {str(k): to_jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [to_jsonable(v) for v in x]
  if isinstance(x, (np.ndarray, np.generic)) or hasattr(x, "__array__"):
    arr = np.asarray(x)
    if arr.dtype.kind in "fc":
      return to_jsonable(arr.tolist()) if arr.ndim else _float(float(arr))
    return arr.tolist()
  if isinstance(x, float):
    return _float(x)
  return x


def _float(v: float) -> float | None:
  return v if np.isfinite(v) else None


def _choice_label(name: str) -> str:
  return "skill" if ("alloc" in name or "skill" in name) else "expert"


def _figures(a: Analysis, out: str, views: dict | None = None) -> list[tuple[str, str, str]]:
  """Draws the model figures; returns (section, caption, file) triples.

  Tasks at chance are marked in every figure ("name (at chance)").
  """
  names = a.competence.labels(a.task_names) if a.competence is not None else a.task_names
  figs = []

  def add(section, caption, path):
    figs.append((section, caption, os.path.basename(path)))

  imp = a.importance
  add("Head importance", "Gradient importance E|dL/dxi| per task, normalized per layer "
      f"after zeroing importances at or below the noise floor {imp.floor:.2g}",
      plots.head_heatmap(imp.normalized, names, "gradient importance (per-layer L2 norm)",
                         os.path.join(out, "head_importance_gradient.png")))
  if a.ablation is not None:
    for mode, delta in a.ablation.delta_loss.items():
      add("Head importance", f"{mode} ablation: loss increase per task",
          plots.head_heatmap(np.transpose(delta, (2, 0, 1)), names,
                             f"{mode} ablation: delta loss", os.path.join(
                                 out, f"head_ablation_{mode}_loss.png"),
                             cmap="RdBu_r", center=True))
      add("Head importance", f"{mode} ablation: accuracy change per task",
          plots.head_heatmap(np.transpose(a.ablation.delta_accuracy[mode], (2, 0, 1)), names,
                             f"{mode} ablation: delta accuracy", os.path.join(
                                 out, f"head_ablation_{mode}_accuracy.png"),
                             cmap="RdBu", center=True))
  for source, reuse in a.reuse.items():
    how = (f"top-{reuse.top_k}" if reuse.top_k is not None
           else f"score >= {reuse.threshold:.3g}")
    sizes = ", ".join(f"{n}: {int(k)}" for n, k in zip(a.task_names, reuse.sets.sum((1, 2))))
    add("Head reuse", f"IoU of important-head sets ({source}; {how} above the noise floor "
        f"{reuse.floor:.2g}; set sizes {sizes})",
        plots.task_matrix(reuse.iou, names, f"head-set IoU ({source})",
                          os.path.join(out, f"head_reuse_iou_{source}.png")))
    add("Head reuse", f"Overlap coefficient of important-head sets ({source})",
        plots.task_matrix(reuse.overlap, names, f"head-set overlap coefficient ({source})",
                          os.path.join(out, f"head_reuse_overlap_{source}.png")))
    add("Head reuse", f"Head-set IoU within each layer ({source})",
        plots.layer_matrices(reuse.iou_per_layer, names, f"head-set IoU per layer ({source})",
                             os.path.join(out, f"head_reuse_iou_per_layer_{source}.png")))
  curves = {f"heads ({s})": r.mean_iou_per_layer for s, r in a.reuse.items()}
  if a.neurons is not None:
    n = a.neurons
    curves[f"neurons (k={n.k})"] = n.mean_iou
    add("Neuron specialization", f"IoU of specialized neuron sets per layer (k={n.k})",
        plots.layer_matrices(n.iou, names, f"specialized-neuron IoU (k={n.k})",
                             os.path.join(out, "neuron_iou_per_layer.png"),
                             layer_names=n.layers))
  depth_note = ("" if a.importance.raw.shape[1] > 2 else
                f" (only {a.importance.raw.shape[1]} layers: no depth trend can be read "
                "from so few points)")
  add("Overlap against depth", "Mean pairwise IoU of tasks' sets per layer" + depth_note,
      plots.layer_curves(curves, "task overlap against depth",
                         os.path.join(out, "overlap_by_layer.png")))
  for name, r in a.routing.items():
    safe = name.replace("/", "_")
    ent_names = [f"{n} (H={h:.2f})" for n, h in zip(names, r.entropy)]
    add("Routing (evaluation data)", f"{name}: usage per task, tasks clustered by route; "
        "H = route entropy in nats (uniform routes look alike)",
        plots.routing_figure(r.matrix, r.linkage, ent_names, name,
                             os.path.join(out, f"routing_eval_{safe}.png"),
                             xlabel=_choice_label(name)))
  for name, v in (views or {}).items():
    safe = name.replace("/", "_").replace(" ", "_")
    if v.kind == "continuous":
      add("Task similarity (continuous)", f"{name}: cosine between tasks' vectors",
          plots.task_matrix(v.matrix, names, name, os.path.join(out, f"view_{safe}.png"),
                            vmin=-1, vmax=1, cmap="RdBu"))
    elif v.expected is not None:
      add("Task similarity (sets against random sets)",
          f"{name} minus the IoU of random sets of the same sizes ({v.note})",
          plots.task_matrix(v.matrix - v.expected, names, f"{name} - random",
                            os.path.join(out, f"view_{safe}_excess.png"), vmin=-1, vmax=1,
                            cmap="RdBu"))
  return figs


def _telemetry_figures(records: list[dict], names: list[str], out: str,
                       eval_routing: dict | None = None
                       ) -> tuple[list[tuple[str, str, str]], dict]:
  """Routing statistics and gradient conflict logged during training.

  A route matrix equal to the one measured on the evaluation data (Polytropon's
  allocation is a parameter, the same on any data; the logged value averages the
  last logging window, so "equal" allows 0.01 of drift) is not drawn a second time.
  """
  figs, metrics = [], {}
  eval_routing = eval_routing or {}
  series = telemetry_lib.stats_over_training(records)
  num_tasks = len(names)
  last = {k: v["values"][-1] for k, v in series.items()}
  routing = routing_analysis(last, num_tasks)
  metrics["routing_final_step"] = {k: to_jsonable(r) for k, r in routing.items()}
  for name, r in routing.items():
    safe = name.replace("/", "_")
    same = name in eval_routing and eval_routing[name].matrix.shape == r.matrix.shape and (
        np.allclose(eval_routing[name].matrix, r.matrix, rtol=0.0, atol=0.01))
    metrics["routing_final_step"][name]["same_as_evaluation"] = bool(same)
    if not same:
      figs.append(("Routing (training telemetry)", f"{name} at the last logged step",
                   os.path.basename(plots.routing_figure(
                       r.matrix, r.linkage, names,
                       f"{name} (step {int(series[name]['steps'][-1])})",
                       os.path.join(out, f"routing_train_{safe}.png"),
                       xlabel=_choice_label(name)))))
    ent = entropy_over_training(series[name]["values"])
    figs.append(("Routing (training telemetry)", f"{name}: per-task entropy over training",
                 os.path.basename(plots.entropy_curves(
                     series[name]["steps"], ent, names, f"{name} entropy",
                     os.path.join(out, f"routing_entropy_{safe}.png")))))
  conflict = telemetry_lib.conflict_over_training(records)
  if conflict is not None:
    metrics["conflict"] = to_jsonable(telemetry_lib.conflict_summary(conflict))
    metrics["conflict"]["steps"] = conflict["steps"].tolist()
    figs.append(("Gradient conflict", "Gradient cosine between tasks over training",
                 os.path.basename(plots.cosine_over_training(
                     conflict["steps"], conflict["cosine"], names,
                     os.path.join(out, "gradient_cosine.png"),
                     conflict_fraction=conflict["conflict_fraction"]))))
    mean = telemetry_lib.conflict_summary(conflict)["mean_cosine"]
    figs.append(("Gradient conflict", "Gradient cosine averaged over training",
                 os.path.basename(plots.task_matrix(
                     mean, names, "mean gradient cosine", os.path.join(
                         out, "gradient_cosine_mean.png"), vmin=-1, vmax=1, cmap="RdBu"))))
  return figs, metrics


def analysis_metrics(a: Analysis) -> dict:
  """The JSON summary of an ``Analysis`` (neuron frequencies left out for size)."""
  neurons = None
  if a.neurons is not None:
    n = a.neurons
    neurons = {"layers": n.layers, "k": n.k, "set_sizes": n.set_sizes, "iou": n.iou,
               "mean_iou_per_layer": n.mean_iou}
  return to_jsonable({
      "tasks": a.task_names,
      "examples": a.importance.examples,
      "head_importance": {"raw": a.importance.raw, "normalized": a.importance.normalized},
      "ablation": None if a.ablation is None else {
          "base_loss": a.ablation.base_loss, "base_accuracy": a.ablation.base_accuracy,
          "delta_loss": a.ablation.delta_loss, "delta_accuracy": a.ablation.delta_accuracy},
      "head_reuse": {k: r.to_json(a.task_names) for k, r in a.reuse.items()},
      "neurons": neurons,
      "routing_eval": {k: r for k, r in a.routing.items()},
      "timings_s": a.timings,
  })


def _index(out: str, title: str, figs: list[tuple[str, str, str]], summary: dict) -> str:
  parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
           "</title><style>body{font-family:sans-serif;margin:2em;max-width:1200px}"
           "figure{display:inline-block;margin:1em;vertical-align:top}"
           "figcaption{font-size:0.85em;max-width:520px}img{max-width:560px}"
           "td,th{padding:2px 8px;text-align:right}</style></head><body>",
           f"<h1>{html.escape(title)}</h1>"]
  if summary.get("summary"):
    parts.append("<h2>What the data support</h2><ul>")
    parts += [f"<li>{html.escape(line)}</li>" for line in summary["summary"]]
    parts.append("</ul>")
  if summary.get("competence"):
    parts.append("<h3>Which tasks were learned</h3><ul>")
    parts += [f"<li>{html.escape(line)}</li>" for line in summary["competence"]]
    parts.append("</ul>")
  rows = summary.get("rows")
  if rows:
    parts.append("<table><tr><th>task</th><th>loss</th><th>accuracy</th></tr>")
    parts += [f"<tr><td>{html.escape(n)}</td><td>{l:.4f}</td><td>{acc:.4f}</td></tr>"
              for n, l, acc in rows]
    parts.append("</table>")
  parts.append(f"<p>{html.escape(summary.get('note', ''))} Numbers: "
               "<a href='metrics.json'>metrics.json</a>.</p>")
  section = None
  for sec, caption, fname in figs:
    if sec != section:
      parts.append(f"<h2>{html.escape(sec)}</h2>")
      section = sec
    parts.append(f"<figure><img src='{html.escape(fname)}' alt='{html.escape(caption)}'>"
                 f"<figcaption>{html.escape(caption)}</figcaption></figure>")
  parts.append("</body></html>")
  path = os.path.join(out, "index.html")
  with open(path, "w") as f:
    f.write("\n".join(parts))
  return path


@dataclasses.dataclass
class RunAnalysis:
  """One run folder analyzed: the trained checkpoint, its step-0 control, telemetry.

  Attributes:
    workdir: the run folder.
    analysis: the trained model's ``Analysis``.
    control: the step-0 model's ``Analysis`` (None without a step-0 checkpoint).
    records: telemetry records.
    groups: {group: tasks} declared (None: the built-in families).
    step: the analyzed checkpoint's step.
    patching: (``PatchingResult``, pairs per task) of head patching, or None.
  """

  workdir: str
  analysis: Analysis
  control: Analysis | None
  records: list[dict]
  groups: dict | None = None
  step: int | None = None
  patching: tuple | None = None


def group_results(a: Analysis, records: list[dict] | None = None,
                  control: Analysis | None = None, groups: dict | None = None):
  """Views of the trained model (and control), their group tests and sentences.

  Returns:
    (views {name: View}, results {name: ViewResult}, sentences [str], labels [T]).
  """
  labels = groups_lib.declared_groups(a.task_names, groups)
  keep = a.competence.competent if a.competence is not None else None
  v = views_lib.model_views(a)
  routes = {f"routes {n}": r.matrix for n, r in a.routing.items()}
  if records:
    series = telemetry_lib.stats_over_training(records)
    final = routing_analysis({k: x["values"][-1] for k, x in series.items()}, len(labels))
    conflict = telemetry_lib.conflict_over_training(records)
    v.update(views_lib.telemetry_views(final, conflict, skip=set(v)))
    routes.update({f"routes {n}": r.matrix for n, r in final.items() if f"routes {n}" not in
                   routes})
  cv = views_lib.model_views(control) if control is not None else None
  results = summary_lib.test_views(v, labels, a.task_names, keep, cv, routes)
  gated = a.competence.gated(a.task_names) if a.competence is not None else []
  return v, results, summary_lib.sentences(results, gated), labels


def write_analysis(a: Analysis, out_dir: str, records: list[dict] | None = None,
                   title: str = "modular analysis", control: Analysis | None = None,
                   groups: dict | None = None, step: int | None = None,
                   patching: tuple | None = None) -> str:
  """Writes the figures, metrics.json and index.html of an in-memory analysis.

  Args:
    a: the ``Analysis``.
    out_dir: report folder (created).
    records: optional telemetry records (``telemetry.read_telemetry``).
    title: page title.
    control: the same analysis of the untrained (step-0) model.
    groups: {group name: tasks} declared (default the built-in families).
    step: the checkpoint step analyzed (stated at the top of the summary).
    patching: (``patching.PatchingResult``, pairs per task) of head patching: its map
      and sentence join the report.

  Returns:
    The report folder.
  """
  os.makedirs(out_dir, exist_ok=True)
  views, results, lines, labels = group_results(a, records, control, groups)
  if step is not None:
    lines = [f"checkpoint: step {step}" + (" (the untrained initialization: nothing "
                                          "here was learned)" if step == 0 else "")] + lines
  figs = _figures(a, out_dir, views)
  metrics = analysis_metrics(a)
  if records:
    tfigs, tmetrics = _telemetry_figures(records, a.task_names, out_dir, a.routing)
    figs += tfigs
    metrics.update(tmetrics)
  if patching is not None:
    pfigs, line = patching_report.write_patching(patching[0], a.task_names, patching[1],
                                                 out_dir)
    figs += pfigs
    lines = lines + [line]
    metrics["patching"] = to_jsonable(patching[0])
  metrics["summary"] = lines
  metrics["step"] = step
  metrics["groups"] = to_jsonable({"labels": labels, "views": results})
  comp = []
  if a.competence is not None:
    metrics["competence"] = to_jsonable(a.competence)
    comp = competence_lines(a.competence, a.task_names)
  if control is not None:
    metrics["control"] = {"head_reuse": {k: r.to_json(a.task_names)
                                         for k, r in control.reuse.items()},
                          "competence": to_jsonable(control.competence)}
  with open(os.path.join(out_dir, "metrics.json"), "w") as f:
    json.dump(metrics, f)
  with open(os.path.join(out_dir, "summary.txt"), "w") as f:
    f.write("\n".join(lines + [""] + comp) + "\n")
  rows = None
  if a.ablation is not None:
    rows = list(zip(a.task_names, a.ablation.base_loss, a.ablation.base_accuracy))
  _index(out_dir, title, figs, {"rows": rows, "note": "", "summary": lines,
                                "competence": comp})
  return out_dir


def analyze_run(workdir: str, step: int | None = None, *, control: bool = True,
                max_eval_batches: int | None = 1, eval_batch_size: int = 64,
                batch_size: int = 64, groups: dict | None = None, patching: int = 0,
                **kw) -> RunAnalysis | None:
  """Analyzes a run folder's checkpoint and, when kept, its step-0 control.

  Args:
    workdir: a run folder.
    step: checkpoint step (default the latest).
    control: also analyze the step-0 checkpoint (when there is one and it is not
      ``step``).
    max_eval_batches: evaluation batches per task.
    eval_batch_size: examples per evaluation batch of one task.
    batch_size: examples per analysis batch.
    groups: declared groups (default ``analysis.groups`` of the run's config, else
      the built-in families).
    patching: pairs per task of head patching (0: none).
    **kw: ``analyze_model`` options (top_k, threshold, neuron_k, margin, ...).

  Returns:
    A ``RunAnalysis``, or None when the folder has no checkpoint.
  """
  from modular import data as data_lib  # pylint: disable=g-import-not-at-top
  from modular.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  records = telemetry_lib.read_telemetry(workdir)
  try:
    cfg, fm, params = ckpt_lib.load_for_analysis(workdir, step)
  except ckpt_lib.CheckpointError as e:
    if "no checkpoint" not in str(e):
      raise
    return None
  if groups is None and "analysis" in cfg and "groups" in cfg.analysis:
    groups = {k: list(v) for k, v in cfg.analysis.groups.items()}
  names = data_lib.task_names(cfg.data)
  eval_batches = data_lib.make_eval_batches(cfg.data, eval_batch_size)
  opts = dict(batch_size=batch_size, max_batches_per_task=max_eval_batches, **kw)
  a = analyze_model(fm, params, eval_batches, names, **opts)
  c = None
  steps = ckpt_lib.Checkpointer(workdir, async_save=False).all_steps()
  step = step if step is not None else max(steps)
  if control and 0 in steps and step != 0:
    _, fm0, params0 = ckpt_lib.load_for_analysis(workdir, 0)
    # The control enters only the views (``views.model_views``), which read the mean
    # ablation: its zero ablation (half of the control's cost) is skipped.
    modes = tuple(opts.get("modes", ABLATION_MODES))
    c = analyze_model(fm0, params0, eval_batches, names,
                      **{**opts, "modes": ("mean",) if "mean" in modes else modes})
  patched = None
  if patching:
    out = patching_report.run_patching(cfg, fm, params, examples_per_task=patching,
                                       batch_size=batch_size)
    patched = None if out is None else (out[0], patching)
  return RunAnalysis(workdir, a, c, records, groups, step, patched)


def write_report(workdir: str, out_dir: str | None = None, *, step: int | None = None,
                 max_eval_batches: int | None = 1, eval_batch_size: int = 64,
                 batch_size: int = 64, top_k: int | None = None,
                 threshold: float | None = None, neuron_k: float = 0.9,
                 control: bool = True, groups: dict | None = None, patching: int = 0,
                 **kw) -> str:
  """Writes the analysis report of a run folder.

  The evaluation data are the first ``max_eval_batches`` batches of
  ``eval_batch_size`` held-out examples of every task (64 per task by default: the
  default model's full report then takes well under a minute on a 2-core CPU).
  The step-0 checkpoint (kept by ``train.keep_step0``) is analyzed the same way as
  the control.

  Args:
    workdir: a run folder (``config.json``, ``checkpoints/``, ``telemetry.jsonl``).
    out_dir: report folder (default ``workdir/report``).
    step: checkpoint step (default the latest).
    max_eval_batches: evaluation batches per task (None: all ``num_eval`` examples).
    eval_batch_size: examples per evaluation batch of one task.
    batch_size: examples per analysis batch (all tasks mixed).
    top_k: at most this many important heads per task (default a quarter).
    threshold: important heads reach this share of the largest score instead.
    neuron_k: cumulative threshold of neuron specialization.
    control: analyze the step-0 control too.
    groups: declared task groups (default the run's ``analysis.groups`` or the
      built-in families).
    patching: pairs per task of head patching (0: no patching view).
    **kw: further ``analyze_model`` options (margin, relative_floor).

  Returns:
    The report folder.
  """
  t0 = time.perf_counter()
  out_dir = out_dir or os.path.join(workdir, "report")
  os.makedirs(out_dir, exist_ok=True)
  title = f"modular analysis: {os.path.basename(os.path.abspath(workdir))}"
  run = analyze_run(workdir, step, control=control, max_eval_batches=max_eval_batches,
                    eval_batch_size=eval_batch_size, batch_size=batch_size, groups=groups,
                    top_k=top_k, threshold=threshold, neuron_k=neuron_k,
                    patching=patching, **kw)
  if run is None:  # telemetry only
    from modular import data as data_lib  # pylint: disable=g-import-not-at-top
    from modular.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
    cfg = ckpt_lib.load_config(workdir)
    names = data_lib.task_names(cfg.data)
    figs, metrics = _telemetry_figures(telemetry_lib.read_telemetry(workdir), names, out_dir)
    with open(os.path.join(out_dir, "metrics.json"), "w") as f:
      json.dump(metrics, f)
    _index(out_dir, title, figs, {"note": "No checkpoint: training telemetry only."})
    return out_dir
  write_analysis(run.analysis, out_dir, run.records, f"{title} (step {run.step})",
                 run.control, run.groups, run.step, run.patching)
  run.analysis.timings["total"] = time.perf_counter() - t0
  with open(os.path.join(out_dir, "timings.json"), "w") as f:
    json.dump(run.analysis.timings, f, indent=2)
  return out_dir
