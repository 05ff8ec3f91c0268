"""Controls: the chance overlap of random sets and the step-0 control's verdict.

The verdict must follow the control's own permutation test: a planted control whose
within - across difference is large but not significant is "inconclusive", never
"already shown" (the fault of the old ``control.diff >= 0.5 * trained.diff`` branch).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from modular.analysis.controls import (control_verdict, expected_iou_matrix,
                                       expected_overlap_matrix, expected_random_iou)
from modular.analysis.groups import permutation_test


def _brute_iou(a: int, b: int, m: int) -> float:
  """E[IoU] by enumerating every pair of subsets of sizes a, b of range(m)."""
  vals = [len(set(x) & set(y)) / len(set(x) | set(y))
          for x in itertools.combinations(range(m), a)
          for y in itertools.combinations(range(m), b)]
  return float(np.mean(vals))


@pytest.mark.parametrize("a,b,m", [(1, 1, 4), (2, 2, 8), (2, 3, 6), (3, 5, 7), (4, 4, 5)])
def test_expected_iou_matches_enumeration(a, b, m):
  assert expected_random_iou(a, b, m) == pytest.approx(_brute_iou(a, b, m), abs=1e-12)
  mat = expected_iou_matrix(np.array([a, b]), m)
  assert mat[0, 1] == mat[1, 0] == pytest.approx(_brute_iou(a, b, m), abs=1e-12)
  ov = expected_overlap_matrix(np.array([a, b]), m)
  assert ov[0, 1] == pytest.approx(a * b / m / min(a, b))


LABELS = np.array([0, 0, 0, 1, 1, 1, 2, 2, 2])  # 1680 assignments, min p = 6/1680


def _planted(effect: float, noise: float, seed: int) -> np.ndarray:
  """[9, 9] symmetric similarity: +effect within the three groups of ``LABELS``."""
  rng = np.random.default_rng(seed)
  s = rng.normal(0.0, noise, (9, 9))
  s = (s + s.T) / 2
  return s + effect * (LABELS[:, None] == LABELS[None, :])


def test_verdict_follows_the_controls_own_test():
  trained = permutation_test(_planted(1.0, 0.05, 0), LABELS)
  assert trained.p < 0.05 and trained.diff > 0.9
  # a planted control with a large difference (> half the trained one) that its own
  # exact permutation test does not find significant: noise swamps it
  noisy = next(c for c in (permutation_test(_planted(0.8, 1.5, s), LABELS) for s in range(200))
               if c.p >= 0.05 and c.diff >= 0.5 * trained.diff)
  verdict = control_verdict(trained, noisy)
  assert verdict.startswith("inconclusive"), verdict
  assert f"p = {noisy.p:.3g}" in verdict and f"d = {noisy.diff:+.2f}" in verdict
  # a significant control already shows it, whatever its size relative to the trained one
  strong = permutation_test(_planted(0.3, 0.01, 1), LABELS)
  assert strong.p < 0.05
  assert control_verdict(trained, strong).startswith("already shown at step 0")
  assert f"p = {strong.p:.3g}" in control_verdict(trained, strong)
  # a small, non-significant control: the effect is absent at step 0, p in the sentence
  flat = next(c for c in (permutation_test(_planted(0.0, 0.3, s), LABELS) for s in range(200))
              if c.p >= 0.05 and c.diff < 0.5 * trained.diff)
  assert control_verdict(trained, flat) == (
      f"absent at step 0 (control d = {flat.diff:+.2f}, p = {flat.p:.3g})")
  # alpha is the control test's level
  assert control_verdict(trained, noisy, alpha=1.01).startswith("already shown")


def test_verdict_without_a_usable_control():
  trained = permutation_test(_planted(1.0, 0.05, 0), LABELS)
  assert control_verdict(trained, None) == "no control"
  untestable = permutation_test(np.full((9, 9), np.nan), LABELS)
  assert control_verdict(trained, untestable) == "no control"
  one_group = permutation_test(_planted(0.5, 0.1, 3), np.zeros(9, int))  # no across pair
  assert not np.isfinite(one_group.p)
  assert control_verdict(trained, one_group) == "no control"
