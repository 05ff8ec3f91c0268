"""Routing summaries, task clustering and training telemetry against NumPy.

Entropy, load and row normalization are checked against loops; the task clustering
against a naive average-linkage (UPGMA) implementation and on planted task
families; routing statistics collected from a real router against per-batch
forward passes; telemetry parsing against a hand-written ``telemetry.jsonl``.

References:
  Ye et al. 2022; Ponti et al. 2022 (routing analysis); Yu et al. 2020 (conflict).
"""

from __future__ import annotations

import json
import math

import jax
import numpy as np
import pytest
from scipy.cluster import hierarchy

from modular.analysis import routing
from modular.analysis import telemetry
from modular.analysis.activations import collect_activations
from modular.analysis.batches import prepare_batches, synthetic_batches
from modular.models import build_model, default_model_config
from modular.objective import FunctionalModel


def test_summary_matches_loops():
  rng = np.random.default_rng(0)
  m = rng.random((4, 5))
  m[2] = 0.0  # a task that routes nowhere
  s = routing.summarize_routing("block0/ffn/task_expert_usage", m)
  for t in range(4):
    total = m[t].sum()
    row = [v / total for v in m[t]] if total else [0.0] * 5
    np.testing.assert_allclose(s.routes[t], row)
    ent = -sum(p * math.log(p) for p in row if p > 0)
    assert s.entropy[t] == pytest.approx(ent)
    assert s.normalized_entropy[t] == pytest.approx(ent / math.log(5))
  load = [m[:, k].sum() / m.sum() for k in range(5)]
  np.testing.assert_allclose(s.load, load)
  assert s.load_cv == pytest.approx(np.std(load) / np.mean(load))
  uniform = routing.summarize_routing("u", np.ones((3, 4)))
  np.testing.assert_allclose(uniform.normalized_entropy, 1.0)
  assert uniform.load_cv == pytest.approx(0.0)


def _naive_upgma(x):
  """Average linkage by repeated merging: the sorted merge heights."""
  clusters = [[i] for i in range(len(x))]
  d = lambda a, b: np.mean([np.linalg.norm(x[i] - x[j]) for i in a for j in b])
  heights = []
  while len(clusters) > 1:
    pairs = [(d(a, b), i, j) for i, a in enumerate(clusters)
             for j, b in enumerate(clusters) if i < j]
    h, i, j = min(pairs)
    heights.append(h)
    clusters = [c for k, c in enumerate(clusters) if k not in (i, j)] + [
        clusters[i] + clusters[j]]
  return np.asarray(heights)


def test_clustering_matches_naive_average_linkage_and_finds_families():
  rng = np.random.default_rng(1)
  fam_a, fam_b = np.array([0.7, 0.1, 0.1, 0.1]), np.array([0.1, 0.1, 0.1, 0.7])
  m = np.stack([fam_a, fam_a, fam_b, fam_a, fam_b, fam_b]) + 0.02 * rng.random((6, 4))
  s = routing.summarize_routing("block1/ffn/task_expert_usage", m)
  np.testing.assert_allclose(s.linkage[:, 2], _naive_upgma(s.routes), rtol=1e-10)
  labels = hierarchy.fcluster(s.linkage, 2, criterion="maxclust")
  assert len(set(labels[[0, 1, 3]])) == 1 and len(set(labels[[2, 4, 5]])) == 1
  assert labels[0] != labels[2]
  assert sorted(s.order.tolist()) == list(range(6))


def test_route_matrices_selects_task_by_choice_stats():
  stats = {"block0/ffn/task_expert_usage": np.ones((3, 4)),
           "block0/adapter_ffn/allocation": np.ones((3, 6)),
           "polytropon/task_skill": np.ones((3, 5)),
           "polytropon/skill_entropy": np.ones(()),
           "block0/ffn/expert_load": np.ones(4),  # [E]: not per task
           "block0/ffn/routing_entropy": np.ones(()),
           "block0/ffn/something": np.ones((3, 4))}  # not a routing name
  assert set(routing.route_matrices(stats, 3)) == {"block0/ffn/task_expert_usage",
                                                   "block0/adapter_ffn/allocation",
                                                   "polytropon/task_skill"}


def test_router_statistics_are_task_weighted_means_over_batches():
  cfg = default_model_config()
  for k, v in dict(d_model=16, num_heads=2, num_layers=1, d_ff=16, vocab_size=20, seq_len=6,
                   num_tasks=3).items():
    cfg[k] = v
  cfg.ffn = {"name": "moe", "num_experts": 4, "top_k": 1}
  fm, params, _ = FunctionalModel.split(build_model(cfg, 0))
  data = synthetic_batches(3, 20, 6, 7, answer_len=2, seed=0)
  batches = prepare_batches(data, 8)
  acts = collect_activations(fm, params, batches)
  name = "block0/ffn/task_expert_usage"
  stats = jax.jit(lambda p, b: fm.apply(p, b)[1].stats[name])
  num, den = np.zeros((3, 4)), np.zeros((3, 1))
  for b in batches:
    n = np.bincount(b["task_id"], weights=(b["mask"].sum(-1) > 0), minlength=3)[:, None]
    num += np.asarray(stats(params, b)) * n
    den += n
  np.testing.assert_allclose(acts.stats[name], num / den, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(acts.stats[name].sum(-1), 1.0, rtol=1e-5)
  assert name in routing.routing_analysis(acts.stats, 3)


def _write_telemetry(path, steps, cos, frac):
  with open(path, "w") as f:
    for i, s in enumerate(steps):
      rec = {"step": int(s), "train": {"loss": [1.0, 2.0, 3.0]},
             "stats": {"block0/ffn/task_expert_usage": np.full((3, 2), 0.5 + 0.1 * i).tolist(),
                       "block0/ffn/routing_entropy": 0.3},
             "mtl": {"cosine": cos[i].tolist(), "conflict_fraction": frac[i],
                     "norms_before": [1.0, 2.0, 3.0], "norms_after": [1.0, 1.0, 1.0]}}
      f.write(json.dumps(rec) + "\n")
    f.write('{"step": 99, "train"')  # a line cut off by a killed run: skipped


def test_telemetry_conflict_and_stats(tmp_path):
  rng = np.random.default_rng(2)
  steps = [5, 10, 15, 20]
  cos = rng.uniform(-1, 1, (4, 3, 3))
  cos = (cos + cos.transpose(0, 2, 1)) / 2
  for c in cos:
    np.fill_diagonal(c, 1.0)
  frac = [0.0, 1 / 3, 2 / 3, 1 / 3]
  _write_telemetry(tmp_path / "telemetry.jsonl", steps, cos, frac)
  records = telemetry.read_telemetry(str(tmp_path))
  assert [r["step"] for r in records] == steps
  c = telemetry.conflict_over_training(records)
  np.testing.assert_array_equal(c["steps"], steps)
  np.testing.assert_allclose(c["cosine"], cos)
  np.testing.assert_allclose(c["conflict_fraction"], frac)
  summ = telemetry.conflict_summary(c)
  np.testing.assert_allclose(summ["mean_cosine"], cos.mean(0))
  np.testing.assert_allclose(summ["final_cosine"], cos[-1])
  np.testing.assert_allclose(summ["negative_fraction"], (cos < 0).mean(0))
  pairs = sorted(((i, j, cos.mean(0)[i, j]) for i in range(3) for j in range(i + 1, 3)),
                 key=lambda p: p[2])
  assert [(i, j) for i, j, _ in summ["most_conflicting"]] == [(i, j) for i, j, _ in pairs]
  assert summ["mean_conflict_fraction"] == pytest.approx(np.mean(frac))
  series = telemetry.stats_over_training(records)
  usage = series["block0/ffn/task_expert_usage"]
  np.testing.assert_array_equal(usage["steps"], steps)
  np.testing.assert_allclose(usage["values"][:, 0, 0], [0.5, 0.6, 0.7, 0.8])
  ent = routing.entropy_over_training(usage["values"])
  np.testing.assert_allclose(ent, math.log(2))
  assert telemetry.conflict_over_training([{"step": 1, "mtl": {}}]) is None
  assert telemetry.read_telemetry(str(tmp_path / "missing")) == []
