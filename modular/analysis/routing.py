"""Routing analysis: task x expert / task x skill usage, entropy, load, task clusters.

Routing modules record task-level statistics as [T, K] matrices in ``ctx.stats``
(the loop logs them to ``telemetry.jsonl``): a task x expert usage matrix for
mixtures of experts (``block0/ffn/task_expert_usage``), a task x skill allocation for
Polytropon (``block0/ffn/task_skill``, or ``polytropon/task_skill`` when shared by all
layers). For each such matrix M:

  route      r_t = M[t] / sum_k M[t, k]            (each task's distribution)
  entropy    H_t = -sum_k r_t,k log r_t,k            (nats; normalized by log K too)
  load       l_k = sum_t M[t, k] / sum M             (share of all routing mass)
  clusters   average-linkage hierarchical clustering of the tasks' routes

Ye et al. and Ponti et al. read task families off such clusterings.

References:
  Ye et al. 2022, "Eliciting and Understanding Cross-Task Skills with Task-Level
  Mixture-of-Experts"; Ponti et al. 2022, "Combining Modular Skills in Multitask
  Learning"; Fedus et al. 2021, "Switch Transformers" (expert load).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping

import numpy as np
from scipy.cluster import hierarchy
from scipy.spatial import distance

ROUTE_NAME = re.compile(r"(usage|allocation|skill|skills|route|routes|routing|gate|gates|probs|"
                        r"weights|load)$")


@dataclasses.dataclass
class RoutingSummary:
  """Summary of one task x choice matrix.

  Attributes:
    name: the statistic's name ("block0/ffn/usage").
    matrix: [T, K] the matrix as recorded.
    routes: [T, K] rows normalized to sum to 1 (zero rows stay zero).
    entropy: [T] routing entropy per task (nats).
    normalized_entropy: [T] entropy / log K (1 = uniform).
    load: [K] share of all routing mass per choice.
    load_cv: coefficient of variation of ``load`` (0 = perfectly balanced).
    linkage: [T - 1, 4] scipy linkage of the tasks' routes (None for T < 2).
    order: [T] leaf order of the dendrogram.
  """

  name: str
  matrix: np.ndarray
  routes: np.ndarray
  entropy: np.ndarray
  normalized_entropy: np.ndarray
  load: np.ndarray
  load_cv: float
  linkage: np.ndarray | None
  order: np.ndarray


def route_matrices(stats: Mapping[str, np.ndarray], num_tasks: int) -> dict[str, np.ndarray]:
  """The task x choice matrices among a module's statistics.

  Args:
    stats: {name: array} (a forward pass's ``ctx.stats`` or a telemetry record).
    num_tasks: T.

  Returns:
    {name: [T, K]} for 2-D statistics with T rows whose name ends in a routing word
    (usage, allocation, skill(s), route(s), routing, gate(s), probs, weights, load).
  """
  out = {}
  for name, value in stats.items():
    try:
      arr = np.asarray(value, np.float64)
    except (TypeError, ValueError):
      continue
    if arr.ndim == 2 and arr.shape[0] == num_tasks and arr.shape[1] > 1 and ROUTE_NAME.search(name):
      out[name] = arr
  return out


def normalize_rows(matrix: np.ndarray) -> np.ndarray:
  """Each row divided by its sum; rows summing to 0 stay 0. [T, K] -> [T, K]."""
  m = np.clip(np.asarray(matrix, np.float64), 0.0, None)
  total = m.sum(-1, keepdims=True)
  return np.where(total > 0, m / np.where(total > 0, total, 1.0), 0.0)


def entropy(routes: np.ndarray) -> np.ndarray:
  """Shannon entropy (nats) of each row of [..., K] distributions (0 log 0 = 0)."""
  p = np.asarray(routes, np.float64)
  with np.errstate(divide="ignore", invalid="ignore"):
    return -np.sum(np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0), -1)


def cluster_tasks(routes: np.ndarray, method: str = "average",
                  metric: str = "euclidean") -> tuple[np.ndarray | None, np.ndarray]:
  """Hierarchical clustering of tasks by their routes.

  Args:
    routes: [T, K] each task's route (normalized rows).
    method: scipy linkage method.
    metric: scipy distance metric between routes.

  Returns:
    (linkage [T - 1, 4] or None when T < 2, leaf order [T]).
  """
  num_tasks = routes.shape[0]
  if num_tasks < 2:
    return None, np.arange(num_tasks)
  dist = np.nan_to_num(distance.pdist(routes, metric=metric))  # [T (T - 1) / 2]
  link = hierarchy.linkage(dist, method=method)
  return link, hierarchy.leaves_list(link)


def summarize_routing(name: str, matrix: np.ndarray, method: str = "average",
                      metric: str = "euclidean") -> RoutingSummary:
  """Entropy, load and task clustering of one task x choice matrix.

  Args:
    name: the statistic's name.
    matrix: [T, K] usage / allocation.
    method: linkage method for the clustering.
    metric: distance between routes.

  Returns:
    A ``RoutingSummary``.
  """
  matrix = np.asarray(matrix, np.float64)
  routes = normalize_rows(matrix)
  ent = entropy(routes)
  k = matrix.shape[1]
  clipped = np.clip(matrix, 0.0, None)
  total = clipped.sum()
  load = clipped.sum(0) / total if total > 0 else np.zeros(k)
  mean_load = load.mean()
  load_cv = float(load.std() / mean_load) if mean_load > 0 else 0.0
  link, order = cluster_tasks(routes, method, metric)
  return RoutingSummary(
      name=name, matrix=matrix, routes=routes, entropy=ent,
      normalized_entropy=ent / np.log(k) if k > 1 else np.zeros_like(ent),
      load=load, load_cv=load_cv, linkage=link, order=order)


def routing_analysis(stats: Mapping[str, np.ndarray], num_tasks: int,
                     method: str = "average", metric: str = "euclidean"
                     ) -> dict[str, RoutingSummary]:
  """Summaries of every task x choice matrix among ``stats``.

  Args:
    stats: {name: array}.
    num_tasks: T.
    method: linkage method.
    metric: distance between routes.

  Returns:
    {name: RoutingSummary}.
  """
  return {name: summarize_routing(name, m, method, metric)
          for name, m in route_matrices(stats, num_tasks).items()}


def entropy_over_training(values: np.ndarray) -> np.ndarray:
  """Per-task routing entropy along training: [S, T, K] -> [S, T] (nats)."""
  return entropy(normalize_rows(values))


def entropy_tracking(similarity: np.ndarray, entropy_per_task: np.ndarray,
                     keep: np.ndarray | None = None) -> tuple[float, float]:
  """Does route similarity just follow how undecided the routes are?

  Two uniform routes are identical, so tasks whose routes never sharpened look
  alike. Over pairs i < j of kept tasks, the Spearman correlation between the route
  similarity S[i, j] and the summed entropy H_i + H_j says how much of the
  similarity is indecision.

  Args:
    similarity: [T, T] route similarity.
    entropy_per_task: [T] route entropy (nats).
    keep: [T] bool tasks to use (default all).

  Returns:
    (Spearman rho, its p-value); NaN with fewer than 3 pairs or constant inputs.
  """
  from scipy import stats  # pylint: disable=g-import-not-at-top
  t = similarity.shape[0]
  keep = np.ones(t, bool) if keep is None else np.asarray(keep, bool)
  i, j = np.triu_indices(t, 1)
  ok = keep[i] & keep[j] & np.isfinite(similarity[i, j])
  x = similarity[i, j][ok]
  y = (entropy_per_task[i] + entropy_per_task[j])[ok]
  if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
    return float("nan"), float("nan")
  res = stats.spearmanr(x, y)
  return float(res.statistic), float(res.pvalue)


def families_recovered(routes: np.ndarray, labels: np.ndarray,
                       keep: np.ndarray | None = None, method: str = "average",
                       metric: str = "euclidean") -> tuple[int, int]:
  """How many declared families form a clade of the tasks' route dendrogram.

  A family (a group of at least two kept tasks) is recovered when some subtree of
  the average-linkage dendrogram of the kept tasks' routes holds exactly its tasks:
  the way task-level MoE and Polytropon papers read families off routes.

  Args:
    routes: [T, K] normalized routes.
    labels: [T] group labels (``groups.declared_groups``).
    keep: [T] bool tasks to use.
    method: linkage method.
    metric: distance between routes.

  Returns:
    (recovered families, declared families with >= 2 kept tasks).
  """
  t = routes.shape[0]
  keep = np.ones(t, bool) if keep is None else np.asarray(keep, bool)
  idx = np.flatnonzero(keep)
  lab = np.asarray(labels)[idx]
  fams = [frozenset(np.flatnonzero(lab == g).tolist()) for g in np.unique(lab)
          if np.sum(lab == g) >= 2]
  if len(idx) < 3 or not fams:
    return 0, len(fams)
  link, _ = cluster_tasks(routes[idx], method, metric)
  clades = [frozenset(hierarchy.to_tree(link).pre_order())]
  stack = [hierarchy.to_tree(link)]
  while stack:
    node = stack.pop()
    clades.append(frozenset(node.pre_order()))
    stack += [c for c in (node.left, node.right) if c is not None]
  clades = set(clades)
  return sum(f in clades for f in fams), len(fams)
