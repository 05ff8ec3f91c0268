"""Competence gating: which tasks the model learned, so that only those are compared.

A task at chance has no circuit to find: its head scores are noise, its neurons fire
on the input format, its route never sharpened. Its rows in a task x task matrix say
nothing about reuse, yet they enter every mean. Each task is therefore gated:

  chance_t     accuracy of always answering the task's most frequent answer token
               (the majority baseline over its evaluation answer tokens)
  competent_t  accuracy_t > chance_t + margin

Gated tasks are marked in every figure ("name (at chance)") and left out of every
reuse statistic (within/across-group tests, seed aggregates, summary sentences); the
report prints each task's largest effect (ablation loss increase and gradient
importance) beside its accuracy, so a reader sees why.

References:
  Merullo et al. 2023 (circuits are only compared for tasks the model solves).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import numpy as np

from modular.analysis.batches import Batch, example_valid
from modular.objective import FunctionalModel, Params, per_task_metrics

DEFAULT_MARGIN = 0.05  # accuracy points above chance a task needs to count as learned
MARK = " (at chance)"


@dataclasses.dataclass
class Competence:
  """Per-task accuracy against chance.

  Attributes:
    accuracy: [T] token accuracy on the evaluation data.
    chance: [T] majority-baseline accuracy.
    margin: the margin above chance a task needs.
    competent: [T] bool, accuracy > chance + margin.
    largest_effect: {score name: [T]} each task's largest head effect.
  """

  accuracy: np.ndarray
  chance: np.ndarray
  margin: float
  competent: np.ndarray
  largest_effect: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)

  def labels(self, task_names: Sequence[str]) -> list[str]:
    """Task names with gated tasks marked, for figure axes."""
    return [n + ("" if ok else MARK) for n, ok in zip(task_names, self.competent)]

  def gated(self, task_names: Sequence[str]) -> list[str]:
    return [n for n, ok in zip(task_names, self.competent) if not ok]


def chance_accuracy(batches: Sequence[Batch], num_tasks: int) -> np.ndarray:
  """Majority-baseline token accuracy of every task.

  Args:
    batches: evaluation batches (targets [B, L], mask [B, L], task_id [B]).
    num_tasks: T.

  Returns:
    [T] share of each task's answer tokens equal to its most frequent answer token
    (NaN for a task without answer tokens).
  """
  counts: list[dict[int, float]] = [dict() for _ in range(num_tasks)]
  for b in batches:
    if "label" in b and "targets" not in b:  # classification: the majority class
      tid, tgt = np.asarray(b["task_id"]), np.asarray(b["label"])
      on = tgt >= 0
    else:
      mask = np.asarray(b["mask"]) * example_valid(b)[:, None]
      tid = np.broadcast_to(np.asarray(b["task_id"])[:, None], mask.shape)
      tgt = np.asarray(b["targets"])
      on = mask > 0
    for t, y in zip(tid[on], tgt[on]):
      counts[int(t)][int(y)] = counts[int(t)].get(int(y), 0.0) + 1.0
  out = np.full(num_tasks, np.nan)
  for t, c in enumerate(counts):
    if c:
      out[t] = max(c.values()) / sum(c.values())
  return out


@functools.partial(jax.jit, static_argnums=0)
def _sums(fm: FunctionalModel, params: Params, batch: dict):
  logits, _ = fm.apply(params, batch)
  m = per_task_metrics(logits, batch, fm.num_tasks)
  return m["accuracy"] * m["tokens"], m["tokens"]


def task_accuracy(fm: FunctionalModel, params: Params, batches: Sequence[Batch]) -> np.ndarray:
  """[T] token accuracy of the unablated model over the batches (one compile)."""
  correct = np.zeros(fm.num_tasks)
  tokens = np.zeros(fm.num_tasks)
  for b in batches:
    c, n = jax.device_get(_sums(fm, params, b))
    correct += c
    tokens += n
  return correct / np.maximum(tokens, 1.0)


def gate(accuracy: np.ndarray, chance: np.ndarray, margin: float = DEFAULT_MARGIN,
         largest_effect: dict[str, np.ndarray] | None = None) -> Competence:
  """Marks tasks within ``margin`` of chance.

  Args:
    accuracy: [T] token accuracy.
    chance: [T] chance accuracy (NaN: unknown, the task is gated).
    margin: accuracy points above chance needed (>= 0; a negative margin lets every
      task through, for models whose data have no chance level, e.g. planted tests).
    largest_effect: {score name: [T]} printed beside the verdict.

  Returns:
    A ``Competence``.
  """
  accuracy = np.asarray(accuracy, np.float64)
  chance = np.asarray(chance, np.float64)
  ok = np.nan_to_num(accuracy - chance, nan=-np.inf) > margin
  return Competence(accuracy=accuracy, chance=chance, margin=float(margin), competent=ok,
                    largest_effect=dict(largest_effect or {}))


def competence_lines(c: Competence, task_names: Sequence[str]) -> list[str]:
  """One line per task: accuracy, chance, verdict and largest effects."""
  lines = []
  for t, name in enumerate(task_names):
    eff = ", ".join(f"largest {k} {float(v[t]):.3g}" for k, v in c.largest_effect.items())
    verdict = "learned" if c.competent[t] else "AT CHANCE: left out of reuse statistics"
    lines.append(f"{name}: accuracy {c.accuracy[t]:.3f} vs chance (the majority answer) "
                 f"{c.chance[t]:.3f} ({verdict}); {eff}")
  return lines
