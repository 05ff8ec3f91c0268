"""Runs of one config at several seeds: what survives a change of seed.

For every view shared by the runs (matrices [S, T, T], one per seed):

  per-pair mean        mean over seeds of S[i, j]
  per-pair interval    mean +- t_{0.975, S-1} * sd / sqrt(S) (Student t; with two
                       seeds the factor is 12.7, and the report shows it)
  rank correlation     Spearman correlation of the pairs' values (i < j, learned
                       tasks) between every two seeds, averaged: does the same pair
                       come out most similar again?
  group test           the permutation test on the seed-mean matrix

and for important-head sets the share of heads two tasks have in common,
|A n B| / min(|A|, |B|) (Merullo et al.'s overlap of in-circuit heads), pooled over
seeds as sum |A n B| / sum min(|A|, |B|) with a Wilson 95% interval, within groups
and across groups. A task is kept only if it was learned in every seed.

References:
  Merullo et al. 2023, "Circuit Component Reuse Across Tasks in Transformer Language
  Models" (78% overlap of in-circuit heads); Wilson 1927 (score interval).
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Sequence

import numpy as np
from scipy import stats

from modular.analysis.groups import GroupTest, permutation_test


@dataclasses.dataclass
class SeedAggregate:
  """One view over seeds.

  Attributes:
    name: the view.
    mean: [T, T] per-pair mean over seeds.
    low: [T, T] lower 95% bound; high: upper bound (NaN with one seed).
    rank_correlation: mean Spearman correlation between seeds (NaN if < 2 seeds).
    test: group test of the seed-mean matrix.
    seeds: number of runs.
  """

  name: str
  mean: np.ndarray
  low: np.ndarray
  high: np.ndarray
  rank_correlation: float
  test: GroupTest
  seeds: int


def pair_interval(mats: np.ndarray, level: float = 0.95
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Mean and Student-t interval over the leading (seed) axis of [S, ...]."""
  mats = np.asarray(mats, np.float64)
  s = np.sum(np.isfinite(mats), 0)
  with np.errstate(invalid="ignore", divide="ignore"):
    mean = np.nanmean(mats, 0) if np.isfinite(mats).any() else np.full(mats.shape[1:], np.nan)
    sd = np.nanstd(mats, 0, ddof=1) if mats.shape[0] > 1 else np.full(mats.shape[1:], np.nan)
    half = stats.t.ppf(0.5 + level / 2, np.maximum(s - 1, 1)) * sd / np.sqrt(s)
  half = np.where(s > 1, half, np.nan)
  return mean, mean - half, mean + half


def rank_correlation(mats: np.ndarray, keep: np.ndarray) -> float:
  """Mean Spearman correlation of the pairs' values between every two seeds."""
  t = mats.shape[-1]
  i, j = np.triu_indices(t, 1)
  ok = keep[i] & keep[j]
  rhos = []
  for a, b in itertools.combinations(range(mats.shape[0]), 2):
    x, y = mats[a][i, j][ok], mats[b][i, j][ok]
    fin = np.isfinite(x) & np.isfinite(y)
    if fin.sum() >= 3 and np.ptp(x[fin]) > 0 and np.ptp(y[fin]) > 0:
      rhos.append(stats.spearmanr(x[fin], y[fin]).statistic)
  return float(np.mean(rhos)) if rhos else float("nan")


def aggregate_view(name: str, mats: Sequence[np.ndarray], labels: np.ndarray,
                   task_names: Sequence[str], keep: np.ndarray) -> SeedAggregate:
  """Mean, interval, seed-to-seed rank correlation and group test of one view."""
  mats = np.stack([np.asarray(m, np.float64) for m in mats])
  mean, low, high = pair_interval(mats)
  return SeedAggregate(name, mean, low, high, rank_correlation(mats, keep),
                       permutation_test(mean, labels, task_names, keep), len(mats))


def wilson(k: float, n: float, z: float = 1.959964) -> tuple[float, float]:
  """Wilson score interval of a proportion k / n (NaN for n = 0)."""
  if n <= 0:
    return float("nan"), float("nan")
  p = k / n
  den = 1 + z * z / n
  mid = (p + z * z / (2 * n)) / den
  half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
  return float(mid - half), float(mid + half)


def shared_head_share(sets: Sequence[np.ndarray], labels: np.ndarray,
                      keep: np.ndarray) -> dict[str, dict[str, float]]:
  """Pooled share of important heads two tasks have in common, within and across groups.

  Args:
    sets: per seed, [T, NL, H] bool important-head sets.
    labels: [T] group labels.
    keep: [T] tasks used.

  Returns:
    {"within"|"across": {"share", "low", "high", "shared", "possible"}}: shared =
    sum over seeds and pairs of |A n B|, possible = sum of min(|A|, |B|).
  """
  out = {}
  t = len(labels)
  for kind in ("within", "across"):
    shared = possible = 0.0
    for s in sets:
      flat = np.asarray(s, bool).reshape(t, -1)
      for i, j in itertools.combinations(range(t), 2):
        if not (keep[i] and keep[j]) or (labels[i] == labels[j]) != (kind == "within"):
          continue
        shared += np.sum(flat[i] & flat[j])
        possible += min(flat[i].sum(), flat[j].sum())
    low, high = wilson(shared, possible)
    out[kind] = {"share": shared / possible if possible else float("nan"), "low": low,
                 "high": high, "shared": shared, "possible": possible}
  return out
