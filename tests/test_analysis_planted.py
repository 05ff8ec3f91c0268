"""A planted model whose task-specific heads and neurons are known: recovered exactly.

The weights are set so that task t's signal lives only in an "indicator" dimension
of the residual stream (written by task t's task token, never by any layer, and
zero-mean everywhere else so layer norm keeps it zero for other tasks):

  head (l, h) reads values only from the indicator dims of its planted tasks, so
    its output is (up to float32 rounding) zero on every other task's examples;
  FFN neuron (l, n) reads only its tasks' indicator dims with a negative bias, so it
    fires only on its tasks' task tokens; unplanted neurons never fire.

Gradient importance, zero ablation, the important-head sets, their IoU / overlap,
the shared and task-specific heads, and the specialized-neuron sets and IoU must all
come out as planted.

References:
  Michel et al. 2019; Merullo et al. 2023; Tan et al. 2024.
"""

from __future__ import annotations

import itertools

import jax
import numpy as np
import pytest

from modular.analysis import (ablation_matrices, collect_activations,
                              gradient_head_importance, head_reuse, important_heads,
                              neuron_specialization, prepare_batches, synthetic_batches)
from modular.models import build_model, default_model_config
from modular.objective import FunctionalModel

T, NL, H, D, F, V, L = 3, 2, 3, 24, 16, 16, 8
HEADS = {(0, 0): {0}, (0, 1): {0, 1}, (0, 2): set(),
         (1, 0): {1, 2}, (1, 1): {2}, (1, 2): {0, 1, 2}}
NEURONS = {0: {0: {0}, 1: {0}, 2: {0, 1}, 3: {1}, 4: {1}, 5: {2}, 6: {0, 1, 2}},
           1: {0: {0, 1, 2}, 1: {2}, 2: {2}, 3: {1}}}


def _free(rng, shape):
  """Random rows that are zero on the indicator dims [0, T) and zero-mean over D."""
  x = rng.normal(size=shape)
  x[..., :T] = 0.0
  x[..., T:] -= x[..., T:].sum(-1, keepdims=True) / (D - T)
  return x


def planted_model():
  cfg = default_model_config()
  for k, v in dict(d_model=D, num_heads=H, num_layers=NL, d_ff=F, vocab_size=V, seq_len=L,
                   num_tasks=T).items():
    cfg[k] = v
  fm, params, _ = FunctionalModel.split(build_model(cfg, 0))
  p = jax.tree.map(lambda x: np.array(x, np.float64), params)
  rng = np.random.default_rng(0)
  dh = D // H
  p["embed"] = _free(rng, (V, D))
  for t in range(T):  # task token 2 + t writes a into its indicator dim, mean kept 0
    p["embed"][2 + t, t] = 3.0
    p["embed"][2 + t, T:] -= 3.0 / (D - T)
  p["pos_embed"] = 0.3 * _free(rng, (L, D))
  for l in range(NL):
    a, f = p["blocks"][l]["attn"], p["blocks"][l]["ffn"]
    a["wv"] = np.zeros((D, H, dh))
    for h in range(H):
      for t in HEADS[(l, h)]:
        a["wv"][t, h] = rng.normal(size=dh)
    a["wo"] = _free(rng, (H, dh, D))
    f["w_in"] = np.zeros((D, F))
    f["b_in"] = -np.ones(F)
    for n, tasks in NEURONS[l].items():
      f["w_in"][list(tasks), n] = 1.0
      f["b_in"][n] = -0.1
    f["w_out"] = 0.3 * _free(rng, (F, D))
    f["b_out"] = np.zeros(D)
  params = jax.tree.map(lambda x: np.asarray(x, np.float32), p)
  return fm, params


def planted_head_sets():
  sets = np.zeros((T, NL, H), bool)
  for (l, h), tasks in HEADS.items():
    for t in tasks:
      sets[t, l, h] = True
  return sets


def planted_neuron_sets():
  sets = np.zeros((T, NL, F), bool)
  for l, neurons in NEURONS.items():
    for n, tasks in neurons.items():
      for t in tasks:
        sets[t, l, n] = True
  return sets


@pytest.fixture(scope="module")
def planted():
  fm, params = planted_model()
  batches = prepare_batches(synthetic_batches(T, V, L, 12, answer_len=3, seed=3), 36)
  return fm, params, batches


def test_gradient_importance_recovers_planted_heads(planted):
  fm, params, batches = planted
  imp = gradient_head_importance(fm, params, batches)
  want = planted_head_sets()
  assert imp.raw[want].min() > 1e-3, imp.raw
  assert imp.raw[~want].max() < 1e-5, imp.raw
  np.testing.assert_array_equal(important_heads(imp.raw, threshold=1e-4), want)
  k = want.sum((1, 2))  # every task has 3 planted heads
  np.testing.assert_array_equal(important_heads(imp.raw, top_k=int(k[0])), want)


def test_zero_ablation_recovers_planted_heads(planted):
  fm, params, batches = planted
  res = ablation_matrices(fm, params, batches, modes=("zero",))
  effect = np.abs(np.transpose(res.delta_loss["zero"], (2, 0, 1)))  # [T, NL, H]
  want = planted_head_sets()
  assert effect[want].min() > 1e-3, effect
  assert effect[~want].max() < 1e-5, effect  # float32 rounding of a loss near 3
  np.testing.assert_array_equal(important_heads(effect, threshold=1e-4), want)


def test_head_reuse_of_planted_sets():
  sets = planted_head_sets()
  reuse = head_reuse(sets=sets)
  flat = [{(l, h) for l, h in itertools.product(range(NL), range(H)) if sets[t, l, h]}
          for t in range(T)]
  for i, j in itertools.product(range(T), repeat=2):
    inter = len(flat[i] & flat[j])
    assert reuse.iou[i, j] == pytest.approx(inter / len(flat[i] | flat[j]))
    assert reuse.overlap[i, j] == pytest.approx(inter / min(len(flat[i]), len(flat[j])))
  assert reuse.shared == [(1, 2)]
  assert reuse.specific == {0: [(0, 0)], 1: [], 2: [(1, 1)]}
  # layer 0: task 2 uses no head there, so its IoU with itself is undefined
  assert np.isnan(reuse.iou_per_layer[0, 2, 2])
  assert reuse.iou_per_layer[0, 0, 1] == pytest.approx(1 / 2)
  assert reuse.iou_per_layer[1, 1, 2] == pytest.approx(2 / 3)


def test_neuron_specialization_recovers_planted_neurons(planted):
  fm, params, batches = planted
  acts = collect_activations(fm, params, batches)
  spec = neuron_specialization(acts, k=0.9)
  want = planted_neuron_sets()
  np.testing.assert_array_equal(spec.sets, want)
  # planted neurons fire on exactly the task token: frequency 1 / L per task token
  np.testing.assert_allclose(spec.frequency[want], 1.0 / L)
  np.testing.assert_array_equal(spec.frequency[~want], 0.0)
  for l in range(NL):
    for i, j in itertools.product(range(T), repeat=2):
      a, b = set(np.flatnonzero(want[i, l])), set(np.flatnonzero(want[j, l]))
      assert spec.iou[l, i, j] == pytest.approx(len(a & b) / len(a | b))
