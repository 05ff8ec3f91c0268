"""Head reuse across tasks: per-task sets of important heads and their overlap.

From any per-task head score [T, NL, H] (gradient importance, or the loss increase
under ablation) each task gets a set of important heads: its top-k heads, or the
heads whose score reaches a threshold, in both cases only among heads whose score is
above the model's noise floor (``noise.noise_floor``): a task that no head matters
for gets an empty set, and k is a maximum, not a quota. Between tasks the sets are compared by IoU
and by the overlap coefficient, over all heads and within each layer; the heads in
every task's set are "shared" and the heads in exactly one task's set are
"specific" to it.

References:
  Merullo et al. 2023, "Circuit Component Reuse Across Tasks in Transformer Language
  Models" (about 78% overlap of in-circuit heads between two tasks);
  Michel et al. 2019, "Are Sixteen Heads Really Better than One?" (the scores).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from modular.analysis.noise import above_floor
from modular.analysis.sets import iou_matrix, mean_off_diagonal, overlap_matrix


@dataclasses.dataclass
class HeadReuse:
  """Important-head sets and their overlap across tasks.

  Attributes:
    sets: [T, NL, H] bool, head (l, h) is important for task t.
    iou: [T, T] IoU over all heads.
    overlap: [T, T] overlap coefficient over all heads.
    iou_per_layer: [NL, T, T] IoU of the sets restricted to each layer.
    overlap_per_layer: [NL, T, T].
    shared: [(layer, head)] heads important for every task.
    specific: {task index: [(layer, head)]} heads important for that task only.
    mean_iou: mean off-diagonal IoU over all heads (NaN when undefined).
    mean_iou_per_layer: [NL].
    set_sizes: [T] number of important heads of each task.
    top_k: the k of the top-k sets (None for threshold sets).
    threshold: the score threshold (None for top-k sets).
    floor: the noise floor the scores had to exceed.
  """

  sets: np.ndarray
  iou: np.ndarray
  overlap: np.ndarray
  iou_per_layer: np.ndarray
  overlap_per_layer: np.ndarray
  shared: list[tuple[int, int]]
  specific: dict[int, list[tuple[int, int]]]
  mean_iou: float
  mean_iou_per_layer: np.ndarray
  set_sizes: np.ndarray | None = None
  top_k: int | None = None
  threshold: float | None = None
  floor: float = 0.0

  def to_json(self, task_names: Sequence[str] | None = None) -> dict:
    """A JSON-ready dict (task indices replaced by names when given)."""
    name = (lambda t: task_names[t]) if task_names else str
    return {
        "sets": {name(t): [list(map(int, lh)) for lh in np.argwhere(s)]
                 for t, s in enumerate(self.sets)},
        "iou": _nan_to_none(self.iou), "overlap": _nan_to_none(self.overlap),
        "iou_per_layer": _nan_to_none(self.iou_per_layer),
        "overlap_per_layer": _nan_to_none(self.overlap_per_layer),
        "shared": [list(lh) for lh in self.shared],
        "specific": {name(t): [list(lh) for lh in v] for t, v in self.specific.items()},
        "mean_iou": _nan_to_none(self.mean_iou),
        "mean_iou_per_layer": _nan_to_none(self.mean_iou_per_layer),
        "set_sizes": {name(t): int(n) for t, n in enumerate(self.sets.sum((1, 2)))},
        "top_k": self.top_k, "threshold": self.threshold, "floor": self.floor,
    }


def _nan_to_none(x):
  """NaN -> None in nested lists (JSON has no NaN)."""
  x = np.asarray(x, np.float64)
  if x.ndim == 0:
    return None if np.isnan(x) else float(x)
  return [_nan_to_none(v) for v in x]


def important_heads(scores: np.ndarray, top_k: int | None = None,
                    threshold: float | None = None, floor: float = 0.0) -> np.ndarray:
  """Per-task important-head sets.

  Args:
    scores: [T, NL, H] importance (higher = more important).
    top_k: each task's at most k highest-scoring heads over all layers (ties broken
      by the lower flat index l * H + h).
    threshold: heads with score >= threshold. Exactly one of top_k / threshold.
    floor: only heads with a score > floor qualify (``noise.noise_floor``; the
      default 0 means a head with no effect is never chosen), so sets can be empty.

  Returns:
    [T, NL, H] boolean sets.
  """
  if (top_k is None) == (threshold is None):
    raise ValueError("give exactly one of top_k or threshold")
  scores = np.asarray(scores, np.float64)
  if threshold is not None:
    return (scores >= threshold) & above_floor(scores, floor)
  num_tasks = scores.shape[0]
  flat = scores.reshape(num_tasks, -1)  # [T, NL * H]
  order = np.argsort(-flat, axis=-1, kind="stable")[:, :top_k]  # [T, k]
  sets = np.zeros_like(flat, bool)
  np.put_along_axis(sets, order, True, axis=-1)
  return (sets & above_floor(flat, floor)).reshape(scores.shape)


def head_reuse(scores: np.ndarray | None = None, top_k: int | None = None,
               threshold: float | None = None, sets: np.ndarray | None = None,
               floor: float = 0.0) -> HeadReuse:
  """Important heads per task and their reuse across tasks.

  Args:
    scores: [T, NL, H] head importance per task (ignored when ``sets`` is given).
    top_k: see ``important_heads``.
    threshold: see ``important_heads``.
    sets: [T, NL, H] precomputed boolean sets.
    floor: see ``important_heads``.

  Returns:
    A ``HeadReuse``.
  """
  if sets is None:
    sets = important_heads(scores, top_k=top_k, threshold=threshold, floor=floor)
  sets = np.asarray(sets, bool)
  num_tasks, num_layers, num_heads = sets.shape
  flat = sets.reshape(num_tasks, -1)
  per_layer = np.transpose(sets, (1, 0, 2))  # [NL, T, H]
  iou_l = iou_matrix(per_layer)
  counts = sets.sum(0)  # [NL, H] tasks using each head
  shared = [(int(l), int(h)) for l, h in np.argwhere(counts == num_tasks)] if num_tasks else []
  specific = {}
  for t in range(num_tasks):
    only = sets[t] & (counts == 1)
    specific[t] = [(int(l), int(h)) for l, h in np.argwhere(only)]
  iou = iou_matrix(flat)
  return HeadReuse(
      sets=sets, iou=iou, overlap=overlap_matrix(flat), iou_per_layer=iou_l,
      overlap_per_layer=overlap_matrix(per_layer), shared=shared, specific=specific,
      mean_iou=float(mean_off_diagonal(iou)), mean_iou_per_layer=mean_off_diagonal(iou_l),
      set_sizes=flat.sum(-1), top_k=top_k, threshold=threshold, floor=floor)


def default_top_k(num_layers: int, num_heads: int, fraction: float = 0.25) -> int:
  """A quarter of all heads (at least one): the report's default set size."""
  return max(1, int(round(fraction * num_layers * num_heads)))
