"""What each view supports: group tests, controls, routing honesty, one sentence each.

For every task x task view (``views.py``) of a model, the learned tasks only
(``competence.py``):

  * within- against across-group similarity with its permutation p (``groups.py``);
  * the same test on the step-0 control and the verdict (``controls.py``);
  * for set views, the IoU random sets of the same sizes would have (within mean);
  * for route views, route entropy beside the similarity, the Spearman correlation
    of similarity with summed entropy (a warning above ``ENTROPY_RHO``), and how many
    declared families the route dendrogram recovers.

``sentences`` turns these into the report's first lines, e.g.
"neurons IoU: within-group 0.81 vs across 0.39 (p = 0.002, exact); absent at step 0
(control d = +0.03, p = 0.61)".

References:
  Merullo et al. 2023; Tan et al. 2024; Ye et al. 2022; Ponti et al. 2022.
"""

from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from modular.analysis.controls import control_verdict
from modular.analysis.groups import GroupTest, permutation_test, within_across
from modular.analysis.routing import entropy_tracking, families_recovered, normalize_rows
from modular.analysis.views import View

ALPHA = 0.05
ENTROPY_RHO = 0.5  # warn when route similarity follows entropy at least this much


@dataclasses.dataclass
class ViewResult:
  """The verdict on one view.

  Attributes:
    name: view name.
    kind: "set" or "continuous".
    test: the trained model's group test.
    control: the step-0 model's group test (None without a control).
    verdict: ``controls.control_verdict``.
    random_within: mean within-group IoU of random sets of the same sizes (set views).
    entropy_rho: (rho, p) of route similarity against summed entropy (route views).
    families: (recovered, declared) families by route clustering (route views).
    note: how the sets were built.
  """

  name: str
  kind: str
  test: GroupTest
  control: GroupTest | None = None
  verdict: str = "no control"
  random_within: float | None = None
  entropy_rho: tuple[float, float] | None = None
  families: tuple[int, int] | None = None
  note: str | None = None


def test_views(views: Mapping[str, View], labels: np.ndarray, task_names: Sequence[str],
               keep: np.ndarray | None = None,
               control_views: Mapping[str, View] | None = None,
               routes: Mapping[str, np.ndarray] | None = None) -> dict[str, ViewResult]:
  """Group test, control and routing honesty of every view.

  Args:
    views: {name: View} of the trained model.
    labels: [T] group labels.
    task_names: T names.
    keep: [T] learned tasks (default all).
    control_views: {name: View} of the step-0 model (same names).
    routes: {view name: [T, K] route matrix} for family recovery (route views).

  Returns:
    {name: ViewResult}.
  """
  t = len(task_names)
  keep = np.ones(t, bool) if keep is None else np.asarray(keep, bool)
  out = {}
  for name, v in views.items():
    test = permutation_test(v.matrix, labels, task_names, keep)
    control = None
    if control_views and name in control_views:
      control = permutation_test(control_views[name].matrix, labels, task_names, keep)
    res = ViewResult(name, v.kind, test, control, control_verdict(test, control),
                     note=v.note)
    if v.expected is not None:
      idx = np.flatnonzero(keep)
      w, _ = within_across(v.expected[np.ix_(idx, idx)], np.asarray(labels)[idx])
      res.random_within = float(w)
    if v.entropy is not None:
      res.entropy_rho = entropy_tracking(v.matrix, v.entropy, keep)
      if routes and name in routes:
        res.families = families_recovered(normalize_rows(routes[name]), labels, keep)
    out[name] = res
  return out


def _p(p: float) -> str:
  return "n/a" if not np.isfinite(p) else (f"{p:.3f}" if p >= 0.001 else f"{p:.1e}")


def sentence(r: ViewResult, seeds: int = 1) -> str:
  """One line on what a view supports."""
  t = r.test
  if not np.isfinite(t.p):
    return (f"{r.name}: untestable (needs a declared group with two learned tasks and a "
            f"pair across groups; learned tasks: {', '.join(t.tasks) or 'none'})")
  supported = t.p < ALPHA and t.diff > 0
  head = "within-group similarity exceeds across" if supported else "no within-group excess"
  exact = "exact" if t.exact else f"Monte Carlo, {t.assignments} permutations"
  s = (f"{r.name}: {head} ({t.within:.2f} vs {t.across:.2f}, p = {_p(t.p)}, {exact}"
       f"{'' if t.min_p < ALPHA else f'; this design cannot reach p < {ALPHA}'})")
  if seeds > 1:
    s += f", {seeds} seeds"
  if r.random_within is not None and np.isfinite(r.random_within):
    s += f"; random sets of these sizes: {r.random_within:.2f} within"
  if supported:
    s += f"; {r.verdict}"
  if r.families is not None:
    s += f"; clustering recovers {r.families[0]} of {r.families[1]} families"
    s += f" (summed over {seeds} seeds)" if seeds > 1 else ""
  if r.entropy_rho is not None and np.isfinite(r.entropy_rho[0]):
    rho = r.entropy_rho[0]
    warn = "WARNING: similarity tracks entropy" if rho >= ENTROPY_RHO else "entropy"
    s += f"; {warn} (Spearman rho {rho:.2f})"
  return s


def sentences(results: Mapping[str, ViewResult], gated: Sequence[str] = (),
              seeds: int = 1) -> list[str]:
  """The report's top lines: one per view, then the tasks left out."""
  lines = [sentence(r, seeds) for r in results.values()]
  if gated:
    lines.append(f"left out of every reuse statistic (accuracy within the margin of "
                 f"chance): {', '.join(gated)}")
  return lines
