"""Controls: what an overlap would be by chance, and whether an untrained model shows it.

Two tasks whose sets hold 2 of 8 heads each share a head by chance with probability
0.46, and IoU of sets of one head can only be 0 or 1. An overlap therefore means
nothing without the overlap of random sets of the same sizes:

  |A n B| ~ Hypergeometric(M, |A|, |B|)        (A, B uniform random subsets of M)
  E[IoU]  = sum_i P(i) * i / (|A| + |B| - i)
  E[overlap coefficient] = E|A n B| / min(|A|, |B|) = |A| |B| / (M min(|A|, |B|))

The second control is the model before training (the step-0 checkpoint that training
keeps by default, ``train.keep_step0``): a within-family similarity that the
untrained model already shows comes from the input format, not from learning.
``control_verdict`` says which, by the control's own permutation test: "already
shown at step 0" only when that test is significant, "inconclusive" when the control's
within - across difference is large (>= half the trained one) but not significant,
else "absent at step 0"; the control's difference and p-value are in the sentence.

References:
  Merullo et al. 2023 (head overlap between tasks' circuits); Tan et al. 2024
  (neuron overlap).
"""

from __future__ import annotations

import numpy as np
from scipy import stats

from modular.analysis.groups import GroupTest


def expected_random_iou(a: int, b: int, m: int) -> float:
  """E[IoU] of two uniform random subsets of sizes a and b of m components.

  Returns:
    The expectation (NaN when both sets are empty).
  """
  a, b, m = int(a), int(b), int(m)
  if a == 0 and b == 0:
    return float("nan")
  if a == 0 or b == 0:
    return 0.0
  i = np.arange(max(0, a + b - m), min(a, b) + 1)
  pmf = stats.hypergeom(m, a, b).pmf(i)
  return float(np.sum(pmf * i / (a + b - i)))


def expected_iou_matrix(sizes: np.ndarray, m: int) -> np.ndarray:
  """[T, T] expected IoU of random sets with the tasks' sizes [T] out of m."""
  sizes = np.asarray(sizes, int)
  t = len(sizes)
  out = np.empty((t, t))
  cache: dict[tuple[int, int], float] = {}
  for i in range(t):
    for j in range(t):
      key = (min(sizes[i], sizes[j]), max(sizes[i], sizes[j]))
      if key not in cache:
        cache[key] = expected_random_iou(key[0], key[1], m)
      out[i, j] = cache[key]
  return out


def expected_overlap_matrix(sizes: np.ndarray, m: int) -> np.ndarray:
  """[T, T] expected overlap coefficient of random sets (NaN where a set is empty)."""
  s = np.asarray(sizes, np.float64)
  small = np.minimum(s[:, None], s[None, :])
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(small > 0, s[:, None] * s[None, :] / (m * np.maximum(small, 1)), np.nan)


def control_verdict(trained: GroupTest, control: GroupTest | None, alpha: float = 0.05) -> str:
  """Whether the untrained control already shows the trained model's effect.

  The verdict follows the control's own permutation test (``control.p``): only a
  significant control "already shows" the effect. A control whose within - across
  difference is at least half the trained one but not significant cannot rule the
  effect in or out, so it is "inconclusive", never "already shown".

  Args:
    trained: the trained model's group test.
    control: the same test on the step-0 model (None without a step-0 checkpoint).
    alpha: significance level of the control's test.

  Returns:
    One of "no control"; "already shown at step 0 (control d = {d:+.2f}, p = {p})"
    when ``control.p < alpha``; "inconclusive (control d = ..., p = ...)" when the
    control's difference is >= 0.5 x the trained one (or the control is untestable)
    but not significant; else "absent at step 0 (control d = ..., p = ...)".
  """
  if control is None or not np.isfinite(control.diff):
    return "no control"
  stats_ = f"control d = {control.diff:+.2f}, p = {control.p:.3g}"
  if np.isfinite(control.p) and control.p < alpha:
    return f"already shown at step 0 ({stats_})"
  large = np.isfinite(trained.diff) and trained.diff > 0 and control.diff >= 0.5 * trained.diff
  if large or not np.isfinite(control.p):
    return f"inconclusive ({stats_})"
  return f"absent at step 0 ({stats_})"
