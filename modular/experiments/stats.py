"""The statistics of a sweep over seeds: intervals, a paired test and its combination.

  t_interval        mean +- t_{(1+level)/2, S-1} * sd / sqrt(S) over S seeds (Student t)
  mcnemar_exact     two runs on the same n test examples: b = examples only the first
                    gets right, c = only the second; two-sided exact binomial p-value
                    min(1, 2 P[Bin(b + c, 1/2) <= min(b, c)]) (1 when b + c = 0)
  fisher_combine    independent p-values p_1..p_k of the seeds -> one:
                    P[chi2_{2k} >= -2 sum log p_i]
  bootstrap_interval  the test-set bootstrap: resample each task's test examples with
                    replacement (the same draw for every seed), recompute the mean over
                    seeds and tasks of the per-task accuracy; percentile interval

References:
  McNemar 1947, "Note on the sampling error of the difference between correlated
  proportions or percentages"; Fisher 1932, "Statistical Methods for Research
  Workers" (combining p-values); Efron & Tibshirani 1993, "An Introduction to the
  Bootstrap" (percentile interval); Dietterich 1998 (McNemar for comparing classifiers).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import stats

PAIRED_TEST = "McNemar exact (two-sided binomial)"
COMBINATION = "Fisher's method"


def t_interval(values: Sequence[float], level: float = 0.95
               ) -> tuple[float, float, float, int]:
  """Mean and Student-t interval over seeds.

  Args:
    values: one value per seed (NaNs are dropped).
    level: the coverage.

  Returns:
    ``(mean, low, high, n)``; low and high are NaN for fewer than two values.
  """
  x = np.asarray([v for v in values if v is not None and math.isfinite(v)], np.float64)
  n = len(x)
  if n == 0:
    return math.nan, math.nan, math.nan, 0
  mean = float(x.mean())
  if n < 2:
    return mean, math.nan, math.nan, n
  half = float(stats.t.ppf(0.5 + level / 2, n - 1) * x.std(ddof=1) / math.sqrt(n))
  return mean, mean - half, mean + half, n


def mcnemar_exact(first: np.ndarray, second: np.ndarray) -> tuple[int, int, float]:
  """McNemar's exact test of two classifiers on the same examples.

  Args:
    first: bool [n], which examples the first run gets right.
    second: bool [n], the same examples for the second run.

  Returns:
    ``(b, c, p)``: b = right only in ``first``, c = right only in ``second``, and the
    two-sided exact p-value.

  Raises:
    ValueError: the two arrays differ in length (not the same examples).
  """
  first, second = np.asarray(first, bool), np.asarray(second, bool)
  if first.shape != second.shape:
    raise ValueError(f"paired test: {first.shape} and {second.shape} examples are not the "
                     "same test set")
  b = int(np.sum(first & ~second))
  c = int(np.sum(~first & second))
  if b + c == 0:
    return b, c, 1.0
  p = float(stats.binom.cdf(min(b, c), b + c, 0.5))
  return b, c, min(1.0, 2.0 * p)


def fisher_combine(pvalues: Sequence[float]) -> float:
  """Fisher's combination of independent p-values (NaN for none)."""
  ps = [max(float(p), 1e-300) for p in pvalues if p is not None and math.isfinite(p)]
  if not ps:
    return math.nan
  return float(stats.chi2.sf(-2.0 * sum(math.log(p) for p in ps), 2 * len(ps)))


def bootstrap_interval(correct: Sequence[np.ndarray], reps: int = 1000, seed: int = 0,
                       level: float = 0.95) -> tuple[float, float]:
  """The test-set bootstrap interval of the mean accuracy over seeds and tasks.

  Args:
    correct: per task, bool or float [S, n_t]: seed s right on test example i.
    reps: bootstrap replicates.
    seed: seeds ``numpy.random.default_rng``; per replicate, each task's indices are
      drawn in task order as ``rng.integers(0, n_t, n_t)``.
    level: the coverage.

  Returns:
    ``(low, high)``: the percentiles ``(1 -+ level) / 2`` of the replicates.
  """
  rng = np.random.default_rng(seed)
  mats = [np.asarray(c, np.float64) for c in correct]
  out = np.empty(reps)
  for r in range(reps):
    accs = []
    for m in mats:
      idx = rng.integers(0, m.shape[1], m.shape[1])
      accs.append(m[:, idx].mean(1))  # [S]
    out[r] = np.mean(np.stack(accs))  # mean over tasks and seeds
  lo, hi = np.percentile(out, [50 * (1 - level), 50 * (1 + level)])
  return float(lo), float(hi)
