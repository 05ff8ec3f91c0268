"""Declared task groups, and whether a task x task similarity is higher within them.

The built-in tasks share sub-skills by design (``modular.data.tasks.TASK_FAMILIES``:
{copy, reverse, duplicate} and {assoc_recall, induction}); ``analysis.groups`` in a
run's config, or ``groups=`` here, declares others. Each task gets a group label
(tasks in no family are groups of one). For a similarity matrix S [T, T] (route
cosine, head-set IoU, ablation-vector cosine, neuron IoU, gradient cosine):

  within = mean of S[i, j] over pairs i < j with the same label
  across = mean of S[i, j] over pairs i < j with different labels
  stat   = within - across

and the p-value is the share of label assignments (permutations of the label vector
over the tasks) whose statistic is at least the observed one: exact, by enumerating
every distinct assignment, when there are at most ``exact_limit`` of them (8 tasks
with groups of 3, 2, 1, 1, 1: 3360), else Monte Carlo with ``samples`` random
permutations and p = (1 + #{stat_perm >= stat}) / (1 + samples). Tasks left out
(not learned: ``competence.py``) are dropped before anything is computed, and pairs
whose similarity is undefined (NaN) count in no mean.

The smallest exact p is 1 / (number of distinct partitions), so with few tasks no
result can be significant: 6 tasks in groups of 3 and 3 give p >= 0.1, and the
report says so.

References:
  Good 2005, "Permutation, Parametric, and Bootstrap Tests of Hypotheses" (exact
  permutation tests); Ye et al. 2022 and Ponti et al. 2022 (task families read off
  learned routes).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterator, Mapping, Sequence

import numpy as np

EXACT_LIMIT = 20000
SAMPLES = 10000


@dataclasses.dataclass
class GroupTest:
  """Within- against across-group similarity with its permutation p-value.

  Attributes:
    within: mean similarity over same-group pairs (NaN if none).
    across: mean similarity over different-group pairs (NaN if none).
    p: one-sided p-value of within - across (NaN when untestable).
    exact: whether every assignment was enumerated.
    assignments: number of assignments behind ``p``.
    min_p: the smallest p this design can give (exact case).
    tasks: names of the tasks the test used.
  """

  within: float
  across: float
  p: float
  exact: bool
  assignments: int
  min_p: float
  tasks: list[str]

  @property
  def diff(self) -> float:
    return self.within - self.across


def declared_groups(task_names: Sequence[str],
                    groups: Mapping[str, Sequence[str]] | None = None) -> np.ndarray:
  """Group label of every task.

  Args:
    task_names: T names.
    groups: {group name: member task names} (default the built-in
      ``TASK_FAMILIES``, whose members not among ``task_names`` are ignored).
      Declared groups must name tasks of the run.

  Returns:
    [T] int labels; tasks in no group get labels of their own.

  Raises:
    ValueError: when a task is declared in two groups, or a declared group names a
      task the run does not have.
  """
  index = {n: i for i, n in enumerate(task_names)}
  if groups is None:
    from modular.data.tasks import TASK_FAMILIES  # pylint: disable=g-import-not-at-top
    groups = TASK_FAMILIES
  else:
    unknown = [m for members in groups.values() for m in members if m not in index]
    if unknown:
      raise ValueError(f"analysis.groups: no task named {', '.join(map(repr, unknown))} in "
                       f"this run; its tasks: {', '.join(task_names)}")
  labels = -np.ones(len(task_names), int)
  for g, (name, members) in enumerate(groups.items()):
    for m in members:
      if m in index:
        if labels[index[m]] >= 0:
          raise ValueError(f"analysis.groups: task {m!r} is in two groups ({name!r})")
        labels[index[m]] = g
  nxt = len(groups)
  for i in range(len(labels)):
    if labels[i] < 0:
      labels[i], nxt = nxt, nxt + 1
  return labels


def num_assignments(labels: np.ndarray) -> int:
  """Distinct permutations of a label vector: T! / prod(n_g!)."""
  _, counts = np.unique(labels, return_counts=True)
  return math.factorial(len(labels)) // math.prod(math.factorial(int(c)) for c in counts)


def _multiset_permutations(labels: Sequence[int]) -> Iterator[tuple[int, ...]]:
  counts: dict[int, int] = {}
  for x in labels:
    counts[x] = counts.get(x, 0) + 1
  keys, n, out = sorted(counts), len(labels), [0] * len(labels)

  def rec(i):
    if i == n:
      yield tuple(out)
      return
    for k in keys:
      if counts[k]:
        counts[k] -= 1
        out[i] = k
        yield from rec(i + 1)
        counts[k] += 1

  yield from rec(0)


def within_across(sim: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Within- and across-group mean similarity for one or many label vectors.

  Args:
    sim: [T, T] similarity (NaN entries ignored).
    labels: [T] or [P, T] labels.

  Returns:
    (within, across), each [] or [P] (NaN where a kind of pair is missing).
  """
  sim = np.asarray(sim, np.float64)
  t = sim.shape[0]
  upper = np.triu(np.ones((t, t), bool), 1) & np.isfinite(sim)
  vals = np.where(upper, sim, 0.0)
  lab = np.asarray(labels)
  same = lab[..., :, None] == lab[..., None, :]  # [..., T, T]
  n_in = np.sum(same & upper, (-2, -1))
  n_out = np.sum(~same & upper, (-2, -1))
  s_in = np.sum(np.where(same, vals, 0.0), (-2, -1))
  s_out = np.sum(np.where(~same, vals, 0.0), (-2, -1))
  with np.errstate(invalid="ignore", divide="ignore"):
    return (np.where(n_in > 0, s_in / np.maximum(n_in, 1), np.nan),
            np.where(n_out > 0, s_out / np.maximum(n_out, 1), np.nan))


def permutation_test(sim: np.ndarray, labels: np.ndarray,
                     task_names: Sequence[str] | None = None,
                     keep: np.ndarray | None = None, exact_limit: int = EXACT_LIMIT,
                     samples: int = SAMPLES, seed: int = 0) -> GroupTest:
  """Is the similarity higher within declared groups than across them?

  Args:
    sim: [T, T] task x task similarity.
    labels: [T] group labels (``declared_groups``).
    task_names: T names (for the record).
    keep: [T] bool, tasks that take part (default all).
    exact_limit: enumerate every distinct assignment up to this many.
    samples: Monte Carlo permutations beyond it.
    seed: Monte Carlo seed.

  Returns:
    A ``GroupTest`` (p NaN when there is no same-group or no cross-group pair).
  """
  sim = np.asarray(sim, np.float64)
  t = sim.shape[0]
  keep = np.ones(t, bool) if keep is None else np.asarray(keep, bool)
  names = list(task_names) if task_names is not None else [str(i) for i in range(t)]
  idx = np.flatnonzero(keep)
  sim, lab = sim[np.ix_(idx, idx)], np.asarray(labels)[idx]
  names = [names[i] for i in idx]
  w, a = within_across(sim, lab)
  w, a = float(w), float(a)
  total = num_assignments(lab) if len(lab) else 1
  nan = GroupTest(w, a, float("nan"), True, total, float("nan"), names)
  if not (np.isfinite(w) and np.isfinite(a)):
    return nan
  stat = w - a
  if total <= exact_limit:
    perms = np.asarray(list(_multiset_permutations(list(lab))))  # [P, T']
    pw, pa = within_across(sim, perms)
    d = pw - pa
    ok = np.isfinite(d)
    p = float(np.sum(d[ok] >= stat - 1e-12) / max(ok.sum(), 1))
    # the observed partition is reached by every relabelling of equal-size groups
    return GroupTest(w, a, p, True, total, _min_p(lab, total), names)
  rng = np.random.default_rng(seed)
  perms = np.stack([rng.permutation(lab) for _ in range(samples)])
  pw, pa = within_across(sim, perms)
  d = np.nan_to_num(pw - pa, nan=-np.inf)
  p = float((1 + np.sum(d >= stat - 1e-12)) / (1 + samples))
  return GroupTest(w, a, p, False, samples, 1.0 / (1 + samples), names)


def _min_p(labels: np.ndarray, total: int) -> float:
  """Smallest exact p: assignments that give the observed partition / all."""
  _, counts = np.unique(labels, return_counts=True)
  same = 1
  for size in set(counts.tolist()):
    same *= math.factorial(int(np.sum(counts == size)))
  return same / total
