"""Metrics: TensorBoard event files, a JSON-lines telemetry file, and the summary table.

Per logging window the loop hands over the stacked step metrics (device arrays,
fetched once per window, not per step). Written per task:
  TensorBoard   train/<metric>/<task>, eval/<metric>/<task>, aux/<name>,
                stats/<name> (scalars; arrays as their mean), mtl/<name>
  telemetry.jsonl  one object per log step: {"step", "train": {metric: [T]},
                "aux": {...}, "stats": {name: nested list}, "mtl": {name: nested list}}
                (the analysis reads routing usage and gradient cosines from it),
                "nonfinite_steps"; strict JSON (NaN/inf written as null), one
                record per step across resumes (``logs.truncate_after``)
  eval.jsonl    one object per evaluation: {"step", "eval": {metric: {task: value}}}
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from modular.train import logs

try:
  from tensorboardX import SummaryWriter
except ImportError:  # pragma: no cover - tensorboardX is a dependency
  SummaryWriter = None


def _mean_over_window(stacked: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Averages [steps, ...] metrics; per-task metrics weighted by presence.

  A task absent from every step of the window has NaN for its per-task metrics (not
  measured, rather than a loss of 0): null in telemetry, left out of TensorBoard, "-"
  in the summary table.
  """
  out = {}
  present = stacked.get("task/present")
  for k, v in stacked.items():
    if k.startswith("task/") and present is not None and k not in (
        "task/present", "task/tokens", "task/examples"):
      w = present
      seen = w.sum(0)
      mean = (v * w).sum(0) / np.maximum(seen, 1.0)
      out[k] = np.where(seen > 0, mean, np.nan) if mean.shape == seen.shape else mean
    else:
      out[k] = v.mean(0)
  return out


class MetricsWriter:
  """Writes training and evaluation metrics of one run.

  Args:
    workdir: the run folder.
    task_names: names of the T tasks, in task-id order.
    enabled: False on non-zero processes of a multi-host run.
  """

  def __init__(self, workdir: str, task_names: list[str], enabled: bool = True):
    self.task_names = list(task_names)
    self.enabled = enabled
    self.workdir = workdir
    self.tb = None
    if enabled:
      os.makedirs(workdir, exist_ok=True)
      if SummaryWriter is not None:
        self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))
    self.last_train: dict[str, np.ndarray] = {}
    self.last_eval: dict[str, dict[str, float]] = {}

  def _scalar(self, tag: str, value: float, step: int) -> None:
    """One TensorBoard scalar; a non-finite one is left out (telemetry has it as null)."""
    if self.tb is not None and np.isfinite(value):
      self.tb.add_scalar(tag, value, step)

  def _append(self, name: str, record: dict) -> None:
    with open(os.path.join(self.workdir, name), "a") as f:
      f.write(logs.dumps(record) + "\n")

  def write_train(self, step: int, window: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """Logs the mean of a window of step metrics (already fetched to the host)."""
    stacked = {k: np.stack([np.asarray(m[k]) for m in window]) for k in window[0]}
    mean = _mean_over_window(stacked)
    self.last_train = mean
    if not self.enabled:
      return mean
    record: dict[str, Any] = {"step": step, "train": {}, "aux": {}, "stats": {}, "mtl": {}}
    if "nonfinite" in stacked:  # steps of this window whose update was non-finite
      record["nonfinite_steps"] = int(stacked["nonfinite"].sum())
    for k, v in mean.items():
      if k == "nonfinite":
        continue
      group, _, name = k.partition("/")
      if group == "task":
        record["train"][name] = v.tolist()
        if self.tb is not None and name not in ("present", "tokens", "examples"):
          for t, task in enumerate(self.task_names):
            self._scalar(f"train/{name}/{task}", float(v[t]), step)
      elif group in ("aux", "stats", "mtl"):
        record[group][name] = np.asarray(v).tolist()
        self._scalar(f"{group}/{name}", float(np.mean(v)), step)
      else:
        record[k] = float(v)
        self._scalar(f"train/{k}", float(v), step)
    self._append("telemetry.jsonl", record)
    return mean

  def write_eval(self, step: int, sums: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """Logs evaluation from summed per-task counts; returns {metric: {task: value}}."""
    result = eval_values(sums, self.task_names)
    self.last_eval = result
    if self.enabled:
      if self.tb is not None:
        for m, per_task in result.items():
          for task, value in per_task.items():
            self._scalar(f"eval/{m}/{task}", value, step)
          self._scalar(f"eval/{m}/mean", float(np.mean(list(per_task.values()))), step)
        self.tb.flush()
      self._append("eval.jsonl", {"step": step, "eval": result})
    return result

  def summary_table(self) -> str:
    """A plain-text table of the last evaluation (and last training window) per task."""
    width = max([14] + [len(t) + 2 for t in self.task_names])
    header = f"{'task':<{width}}{'train loss':>11}{'train acc':>10}{'eval loss':>10}" \
             f"{'eval acc':>9}{'eval seq':>9}"
    lines = [header, "-" * len(header)]
    tl = self.last_train.get("task/loss")
    ta = self.last_train.get("task/accuracy")
    for t, task in enumerate(self.task_names):
      row = f"{task:<{width}}"
      if tl is None:
        row += f"{'':>21}"
      elif not np.isfinite(tl[t]):  # absent from the last training window
        row += f"{'-':>11}{'-':>10}"
      else:
        row += f"{tl[t]:>11.4f}{ta[t]:>10.3f}"
      if self.last_eval:
        row += (f"{self.last_eval['loss'][task]:>10.4f}{self.last_eval['accuracy'][task]:>9.3f}"
                f"{self.last_eval['seq_accuracy'][task]:>9.3f}")
      lines.append(row)
    return "\n".join(lines)

  def close(self) -> None:
    if self.tb is not None:
      self.tb.close()


def eval_values(sums: dict[str, np.ndarray], task_names: list[str]
                ) -> dict[str, dict[str, float]]:
  """``{metric: {task: value}}`` from an evaluation's summed per-task counts [T]."""
  tokens = np.maximum(sums["tokens"], 1.0)
  examples = np.maximum(sums["examples"], 1.0)
  values = {"loss": sums["loss_sum"] / tokens, "accuracy": sums["correct"] / tokens,
            "seq_accuracy": sums["seq_right"] / examples}
  return {m: {t: float(v[i]) for i, t in enumerate(task_names)} for m, v in values.items()}
