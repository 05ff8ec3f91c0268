"""Declared task groups and the within/across permutation test against plain loops.

The reference enumerates all T! orderings of the tasks with itertools (every distinct
label assignment is reached equally often, so its p-value equals the exact one over
distinct assignments) and averages pairs with Python loops.

References:
  Good 2005 (exact permutation tests).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from modular.analysis.groups import (declared_groups, num_assignments, permutation_test,
                                     within_across)


def _naive(sim, labels):
  t = len(labels)
  w = [sim[i][j] for i in range(t) for j in range(i + 1, t)
       if labels[i] == labels[j] and np.isfinite(sim[i][j])]
  a = [sim[i][j] for i in range(t) for j in range(i + 1, t)
       if labels[i] != labels[j] and np.isfinite(sim[i][j])]
  return (np.mean(w) if w else np.nan), (np.mean(a) if a else np.nan)


def _naive_p(sim, labels):
  w, a = _naive(sim, labels)
  stat, hits, n = w - a, 0, 0
  for perm in itertools.permutations(labels):
    pw, pa = _naive(sim, perm)
    n += 1
    hits += (pw - pa) >= stat - 1e-12
  return hits / n


def test_declared_groups_builtin_families():
  names = ["copy", "reverse", "sort", "duplicate", "mod_add", "parity", "assoc_recall",
           "induction"]
  lab = declared_groups(names)
  assert lab[0] == lab[1] == lab[3] and lab[6] == lab[7] and lab[0] != lab[6]
  assert len(set(lab[[2, 4, 5]])) == 3 and not set(lab[[2, 4, 5]]) & set(lab[[0, 6]])
  assert num_assignments(lab) == 40320 // (6 * 2)
  custom = declared_groups(names, {"a": ["sort", "parity"]})
  assert custom[2] == custom[5] and len(set(custom.tolist())) == 7
  with pytest.raises(ValueError, match="analysis.groups"):
    declared_groups(names, {"a": ["copy"], "b": ["copy"]})


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_permutation_test_matches_brute_force(seed):
  rng = np.random.default_rng(seed)
  t = 6
  s = rng.random((t, t))
  s = (s + s.T) / 2
  s[0, 1] = s[1, 0] = np.nan  # an undefined pair counts in no mean
  labels = [0, 0, 0, 1, 1, 2]
  s[np.ix_([0, 1, 2], [0, 1, 2])] += seed * 0.3  # a planted effect for seeds 1, 2
  res = permutation_test(s, np.array(labels))
  w, a = _naive(s, labels)
  assert res.within == pytest.approx(w) and res.across == pytest.approx(a)
  assert res.exact and res.assignments == 60
  assert res.p == pytest.approx(_naive_p(s, labels))
  mc = permutation_test(s, np.array(labels), exact_limit=0, samples=4000)
  assert not mc.exact and abs(mc.p - res.p) < 0.03


def test_keep_drops_tasks_and_vectorized_means():
  rng = np.random.default_rng(5)
  s = rng.random((5, 5))
  lab = np.array([0, 0, 1, 1, 2])
  perms = np.array([lab, lab[::-1], [0, 1, 0, 1, 2]])
  w, a = within_across(s, perms)
  for k, p in enumerate(perms):
    assert (w[k], a[k]) == pytest.approx(_naive(s, list(p)))
  res = permutation_test(s, lab, ["a", "b", "c", "d", "e"], keep=np.array([1, 1, 1, 0, 1], bool))
  assert res.tasks == ["a", "b", "c", "e"]
  assert (res.within, res.across) == pytest.approx(_naive(s[np.ix_([0, 1, 2, 4], [0, 1, 2, 4])],
                                                          [0, 0, 1, 2]))
  assert np.isnan(permutation_test(s, np.arange(5)).p)  # no same-group pair: untestable
