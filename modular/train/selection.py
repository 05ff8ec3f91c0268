"""Model selection on validation, the result on test (``config.data.val_share > 0``).

With a validation split the loop evaluates on it every ``train.eval_every`` steps
and checkpoints at each of those steps; the score of an evaluation is the mean over
tasks of ``train.select_metric`` (negated for the loss), and the history is written
to ``selection.json`` before the step's checkpoint, so orbax keeps the newest
checkpoint (to resume from) and the best one (``Checkpointer(best=True)``,
``best_step``). Once the last step is done, the loop:

  1. restores the validation-best checkpoint (the earliest of equal scores),
  2. measures the test split (its first ``data.num_eval`` examples per task: set it to
     the split's size for all of them) once with it, per example
     (``predictions.npz``: per task ``<task>/correct``, ``/loss``, ``/pred``,
     ``/label``, in the test split's order, the same for every run of the data),
  3. writes ``selection.json`` (the validation history, the best step, its
     validation and test metrics, ``done``), then
  4. deletes every other checkpoint: a finished run keeps only its best one.

Each step is idempotent, so a run killed anywhere in these steps completes them when
launched again; a finished run launched again trains nothing and returns its saved
summary. The run's ``summary.json`` then reports the test metrics as ``eval``
(what the sweep's tables read), and the validation ones as ``val``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import numpy as np

SELECTION_FILE = "selection.json"
PREDICTIONS_FILE = "predictions.npz"
SELECT_METRICS = {"accuracy": 1.0, "seq_accuracy": 1.0, "loss": -1.0}  # sign: higher is better


def score(result: dict[str, dict[str, float]], metric: str) -> float:
  """The selection score of one evaluation: sign x mean over tasks of ``metric``."""
  values = list(result[metric].values())
  return SELECT_METRICS[metric] * float(np.mean(values))


class Selection:
  """The validation history of a run (``selection.json``) and its best step.

  Args:
    workdir: the run folder.
    metric: ``train.select_metric``.
    start: the step the run resumes from; evaluations recorded after it (a launch
      killed between an evaluation and its checkpoint) are dropped.
  """

  def __init__(self, workdir: str, metric: str, start: int = 0):
    self.path = os.path.join(workdir, SELECTION_FILE)
    self.metric = metric
    self.saved = read(workdir) or {}
    self.history = [h for h in self.saved.get("history", []) if h["step"] <= start]

  @property
  def done(self) -> bool:
    return bool(self.saved.get("done"))

  def record(self, step: int, result: dict[str, dict[str, float]]) -> int:
    """Adds an evaluation; returns the best step so far."""
    s = score(result, self.metric)
    self.history = [h for h in self.history if h["step"] != step]
    self.history.append({"step": step, "score": s, "eval": result})
    return self.best()["step"]

  def best(self) -> dict[str, Any]:
    """The history entry with the highest score, the earliest of equal ones."""
    if not self.history:
      raise ValueError(f"{self.path}: no validation evaluation to select from")
    return max(self.history, key=lambda h: (h["score"], -h["step"]))

  def write(self, **extra: Any) -> None:
    """Writes ``selection.json`` atomically (history, best step so far, ``extra``)."""
    best = self.best() if self.history else None
    self.saved = {"metric": self.metric, "history": self.history,
                  "best_step": best["step"] if best else None, **extra}
    tmp = self.path + ".tmp"
    with open(tmp, "w") as f:
      json.dump(self.saved, f, indent=1)
    os.replace(tmp, self.path)


def read(workdir: str) -> dict[str, Any] | None:
  """A run's ``selection.json``, or None."""
  try:
    with open(os.path.join(workdir, SELECTION_FILE)) as f:
      return json.load(f)
  except (OSError, ValueError):
    return None


def predict(predict_step, params: Any, batches: dict[str, list[dict]],
            to_global) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """Per-example outputs and summed per-task counts over every batch of a split.

  Args:
    predict_step: jitted ``(params, batch) -> {"correct", "loss", "pred", "valid"}`` [B]
      and ``"sums"``, the eval step's per-task sums (``step.make_predict_step``).
    params: the parameters.
    batches: ``{task: [batch, ...]}`` (``data.make_eval_batches``).
    to_global: the loop's ``local batch -> global batch``.

  Returns:
    ``({"<task>/<key>": [n_task]}, per-task sums)``; padding rows are dropped.
  """
  arrays: dict[str, np.ndarray] = {}
  total = None
  for task, task_batches in batches.items():
    parts: dict[str, list[np.ndarray]] = {}
    for b in task_batches:
      g = to_global(b)
      out = jax.device_get(predict_step(params, g))
      sums = out["sums"]
      total = sums if total is None else jax.tree.map(np.add, total, sums)
      keep = np.asarray(out["valid"]) > 0
      for key in ("correct", "loss", "pred"):
        parts.setdefault(key, []).append(np.asarray(out[key])[keep])
      if "label" in b:
        parts.setdefault("label", []).append(np.asarray(b["label"])[keep])
    for key, chunks in parts.items():
      arrays[f"{task}/{key}"] = np.concatenate(chunks)
  return arrays, total


def save_predictions(workdir: str, arrays: dict[str, np.ndarray], step: int) -> str:
  """Writes ``predictions.npz`` (atomically; ``step``: the checkpoint measured)."""
  path = os.path.join(workdir, PREDICTIONS_FILE)
  tmp = path + ".tmp.npz"
  np.savez_compressed(tmp, step=np.int64(step), **{
      k: v.astype(np.bool_ if k.endswith("/correct") else v.dtype) for k, v in arrays.items()})
  os.replace(tmp, path)
  return path


def load_predictions(workdir: str) -> dict[str, np.ndarray] | None:
  """A run's ``predictions.npz`` as ``{"<task>/<key>": array}`` (None if absent)."""
  path = os.path.join(workdir, PREDICTIONS_FILE)
  if not os.path.exists(path):
    return None
  with np.load(path) as f:
    return {k: f[k] for k in f.files}


def prune(checkpointer, keep: int, keep_steps: tuple[int, ...] = ()) -> None:
  """Deletes every checkpoint but ``keep`` (and ``keep_steps``)."""
  for step in checkpointer.all_steps():
    if step != keep and step not in keep_steps:
      checkpointer.delete(step)
