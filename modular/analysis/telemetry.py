"""Reading a run's ``telemetry.jsonl``: routing statistics and gradient conflict.

The training loop writes one JSON object per logging step:

  {"step": int,
   "train": {metric: [T]},
   "stats": {name: nested list},     # routing statistics, e.g. "block0/ffn/usage" [T, E]
   "mtl": {"cosine": [T][T], "conflict_fraction": float,
           "norms_before": [T], "norms_after": [T]}}   # only with gradient surgery

This file turns those records into arrays over training steps.

References:
  Yu et al. 2020, "Gradient Surgery for Multi-Task Learning" (the logged cosines and
  conflict fraction).
"""

from __future__ import annotations

import json
import os
from typing import Any, Iterable

import numpy as np


def read_telemetry(path: str) -> list[dict[str, Any]]:
  """Reads ``telemetry.jsonl`` (a file or a run directory); [] if absent.

  Malformed lines (a run killed mid-write) are skipped.
  """
  if os.path.isdir(path):
    path = os.path.join(path, "telemetry.jsonl")
  if not os.path.exists(path):
    return []
  records = []
  with open(path) as f:
    for line in f:
      line = line.strip()
      if not line:
        continue
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return sorted(records, key=lambda r: r.get("step", 0))


def stats_over_training(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, np.ndarray]]:
  """Every logged statistic as an array over the steps that logged it.

  Returns:
    {name: {"steps": [S], "values": [S, ...]}} for names whose shape stays fixed.
  """
  series: dict[str, tuple[list[int], list[np.ndarray]]] = {}
  for r in records:
    for name, value in (r.get("stats") or {}).items():
      try:
        arr = np.asarray(value, np.float64)
      except (TypeError, ValueError):
        continue
      steps, values = series.setdefault(name, ([], []))
      if values and values[0].shape != arr.shape:
        continue
      steps.append(int(r.get("step", len(steps))))
      values.append(arr)
  return {k: {"steps": np.asarray(s), "values": np.stack(v)} for k, (s, v) in series.items()}


def conflict_over_training(records: Iterable[dict[str, Any]]) -> dict[str, np.ndarray] | None:
  """Gradient cosines and conflict logged by gradient surgery, over training.

  Returns:
    None if no record has "mtl" cosines, else {"steps": [S], "cosine": [S, T, T],
    "conflict_fraction": [S], "norms_before": [S, T], "norms_after": [S, T]}
    (missing fields are NaN).
  """
  rows = [r for r in records if (r.get("mtl") or {}).get("cosine") is not None]
  if not rows:
    return None
  cos = [np.asarray(r["mtl"]["cosine"], np.float64) for r in rows]
  num_tasks = cos[0].shape[-1]
  keep = [i for i, c in enumerate(cos) if c.shape == (num_tasks, num_tasks)]

  def field(name, shape):
    out = []
    for i in keep:
      v = rows[i]["mtl"].get(name)
      out.append(np.full(shape, np.nan) if v is None else np.asarray(v, np.float64))
    return np.stack(out)

  return {
      "steps": np.asarray([int(rows[i].get("step", i)) for i in keep]),
      "cosine": np.stack([cos[i] for i in keep]),
      "conflict_fraction": field("conflict_fraction", ()),
      "norms_before": field("norms_before", (num_tasks,)),
      "norms_after": field("norms_after", (num_tasks,)),
  }


def conflict_summary(conflict: dict[str, np.ndarray]) -> dict[str, Any]:
  """Training-averaged and final cosine matrices and the most conflicting pairs.

  Args:
    conflict: the output of ``conflict_over_training``.

  Returns:
    {"mean_cosine": [T, T], "final_cosine": [T, T], "negative_fraction": [T, T]
    (fraction of logged steps with cos < 0), "mean_conflict_fraction": float,
    "most_conflicting": [(i, j, mean cosine)] over pairs i < j, lowest first}.
  """
  cos = conflict["cosine"]  # [S, T, T]
  mean = np.nanmean(cos, 0)
  neg = np.mean(cos < 0, 0)
  num_tasks = cos.shape[-1]
  pairs = [(i, j, float(mean[i, j])) for i in range(num_tasks) for j in range(i + 1, num_tasks)]
  pairs.sort(key=lambda p: p[2])
  frac = conflict["conflict_fraction"]
  return {
      "mean_cosine": mean, "final_cosine": cos[-1], "negative_fraction": neg,
      "mean_conflict_fraction": float(np.nanmean(frac)) if np.isfinite(frac).any() else None,
      "most_conflicting": pairs[:5],
  }


def train_metrics_over_training(records: Iterable[dict[str, Any]]) -> dict[str, dict]:
  """Per-task training metrics over steps: {metric: {"steps": [S], "values": [S, T]}}."""
  out: dict[str, tuple[list[int], list[np.ndarray]]] = {}
  for r in records:
    for name, value in (r.get("train") or {}).items():
      try:
        arr = np.asarray(value, np.float64)
      except (TypeError, ValueError):
        continue
      steps, values = out.setdefault(name, ([], []))
      if values and values[0].shape != arr.shape:
        continue
      steps.append(int(r.get("step", len(steps))))
      values.append(arr)
  return {k: {"steps": np.asarray(s), "values": np.stack(v)} for k, (s, v) in out.items()}
