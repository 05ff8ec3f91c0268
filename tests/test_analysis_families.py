"""A model with planted task families is recovered in every view; shuffled labels are not.

Eight tasks in declared groups {t0, t1, t2}, {t3, t4} and singletons t5, t6, t7. The
weights (``planted_models.planted_model``) make each family share its heads and FFN
neurons; the training telemetry carries routes and gradient cosines shared within
families. The exact test enumerates 8! / (3! 2!) = 3360 assignments (smallest p
6/3360), and every view must give p < 0.01; the same model with the groups declared
across the families must not (p > 0.2). The evaluation targets are the model's own
predictions, so there is no chance level (margin -1); gating a task that was never
learned is tested in test_analysis_noise.py, and here through the seed aggregate.

References:
  Merullo et al. 2023; Tan et al. 2024; Ye et al. 2022; Ponti et al. 2022.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

from modular.analysis import analyze_model
from modular.analysis.report import RunAnalysis, _telemetry_figures, group_results
from modular.analysis.seed_report import aggregate_runs

from planted_models import planted_model, teacher_batches

T, NL, H, D, F, V, L = 8, 2, 4, 32, 16, 20, 8
NAMES = [f"t{i}" for i in range(T)]
GROUPS = {"a": ["t0", "t1", "t2"], "b": ["t3", "t4"]}
A, B = {0, 1, 2}, {3, 4}
HEADS = {(0, 0): A, (1, 0): A, (0, 1): B, (1, 1): B, (0, 2): {5}, (1, 2): {6}, (0, 3): {7}}
NEURONS = {0: {0: A, 1: A, 2: B, 3: B, 4: {5}, 5: {6}, 6: {7}},
           1: {0: A, 1: B, 2: {5}, 3: {6}, 4: {7}}}


def _records(seed=0):
  rng = np.random.default_rng(seed)
  routes = np.full((T, 4), 0.1)
  for t in range(T):
    routes[t, 0 if t in A else 1 if t in B else (t - 3) % 4] = 0.7
  routes[7] = 0.25
  routes += 0.02 * rng.random(routes.shape)
  fam = np.array([0, 0, 0, 1, 1, 2, 3, 4])
  cos = np.where(fam[:, None] == fam[None, :], 0.6, 0.0) + 0.05 * rng.standard_normal((T, T))
  cos = (cos + cos.T) / 2
  np.fill_diagonal(cos, 1.0)
  return [{"step": s, "stats": {"polytropon/task_skill": routes.tolist()},
           "mtl": {"cosine": cos.tolist(), "conflict_fraction": 0.1}} for s in (10, 20)]


@pytest.fixture(scope="module")
def planted():
  fm, params = planted_model(T, NL, H, D, F, V, L, HEADS, NEURONS, value_scale=4.0,
                             neuron_scale=10.0)
  batches = teacher_batches(fm, params, T, V, L, 8)
  # zero ablation: a mean-ablated head adds its all-task mean output to every task
  a = analyze_model(fm, params, batches, NAMES, batch_size=64, modes=("zero",), margin=-1.0)
  return a


def test_planted_families_recovered_in_every_view(planted):
  views, results, lines, _ = group_results(planted, _records(), groups=GROUPS)
  want = {"heads/gradient IoU", "heads/ablation IoU", "heads/gradient cosine",
          "heads/ablation cosine", "neurons IoU", "neurons cosine",
          "routes polytropon/task_skill", "gradient cosine"}
  assert want <= set(results), set(results)
  for name, r in results.items():
    assert r.test.exact and r.test.assignments == 3360
    assert r.test.p < 0.01 and r.test.diff > 0, (name, r.test)
  routes = results["routes polytropon/task_skill"]
  assert routes.families == (2, 2)
  assert views["heads/gradient IoU"].expected is not None
  assert all("exceeds" in s for s in lines[:len(results)])


def test_shuffled_labels_are_not_significant(planted):
  wrong = {"x": ["t0", "t3", "t5"], "y": ["t1", "t6"]}
  _, results, lines, _ = group_results(planted, _records(), groups=wrong)
  for name, r in results.items():
    assert r.test.p > 0.2, (name, r.test)
  assert all("no within-group excess" in s for s in lines[:len(results)])


def test_seed_aggregate_and_routes_drawn_once(planted, tmp_path):
  other = copy.deepcopy(planted)
  other.competence.competent[7] = False  # t7 not learned at one seed: left out
  runs = [RunAnalysis("s0", planted, None, _records(0), GROUPS),
          RunAnalysis("s1", other, None, _records(1), GROUPS)]
  agg = aggregate_runs(runs)
  assert agg["keep"].tolist() == [True] * 7 + [False]
  assert all(v["aggregate"].test.tasks == NAMES[:7] for v in agg["views"].values())
  assert any("t7" in s and "left out" in s for s in agg["summary"])
  assert agg["views"]["neurons IoU"]["aggregate"].rank_correlation == pytest.approx(1.0)
  share = agg["head_share"]["gradient"]
  assert share["within"]["share"] == 1.0 and share["across"]["share"] == 0.0
  assert 0.0 < share["within"]["low"] < 1.0  # a Wilson interval, not a point
  # a route matrix equal to the evaluation one is drawn once (Polytropon's allocation)
  from modular.analysis.routing import routing_analysis
  rec = _records()
  ev = routing_analysis({"polytropon/task_skill": np.asarray(
      rec[-1]["stats"]["polytropon/task_skill"])}, T)
  figs, m = _telemetry_figures(rec, NAMES, str(tmp_path), ev)
  assert m["routing_final_step"]["polytropon/task_skill"]["same_as_evaluation"]
  assert not any(f.startswith("routing_train") for _, _, f in figs)
