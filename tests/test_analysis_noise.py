"""Head analysis must not call noise important (issue 8, part 4).

Inputs from the issue: in a layer where no head matters (raw importances 6e-9 to
2e-8), per-layer normalization used to give scores of 0.18 to 0.67 and the default
top-k sets took those heads ([(0, 1), (1, 2)] for a task whose only important head is
(1, 2); four heads at threshold 0.5). Now importances are compared with a noise floor
(relative to the model's largest effect and to float32 precision), noise layers stay
0 after normalization, sets can be empty, and a model whose weights make exactly
(1, 2) matter gives exactly [(1, 2)] through ``analyze_model`` with default settings,
and its task that was never learned (random targets) is gated.

References:
  Michel et al. 2019 (importance, ablation, per-layer normalization).
"""

from __future__ import annotations

import numpy as np
import pytest

from modular.analysis import analyze_model
from modular.analysis.head_importance import normalize_per_layer
from modular.analysis.head_reuse import default_top_k, head_reuse
from modular.analysis.noise import EPS32, noise_floor

from planted_models import planted_model, teacher_batches

# the numbers: layer 0 is float noise, layer 1 has one important head (1, 2)
RAW = np.array([[[6e-9, 2e-8, 1.7e-8, 1.6e-8], [1.2e-8, 9e-9, 0.37, 1.5e-8]]])


def test_noise_floor_matches_definition():
  s = np.array([[[0.5, -2.0], [1e-9, 0.0]]])
  assert noise_floor(s) == pytest.approx(0.02 * 2.0)
  assert noise_floor(s, relative=0.0, scale=3.0) == pytest.approx(64 * EPS32 * 3.0)
  assert noise_floor(np.zeros((1, 2, 2))) == 0.0
  with pytest.raises(ValueError):
    noise_floor(s, relative=-1)


def test_per_layer_normalization_keeps_noise_at_zero():
  old = normalize_per_layer(RAW)  # no floor: the bug as reported
  assert 0.15 < old[0, 0].min() < 0.25 and 0.6 < old[0, 0].max() < 0.7
  new = normalize_per_layer(RAW, noise_floor(RAW))
  np.testing.assert_array_equal(new[0, 0], 0.0)  # the noise layer stays 0
  np.testing.assert_allclose(new[0, 1], [0, 0, 1, 0])


@pytest.mark.parametrize("kw", [dict(top_k=default_top_k(2, 4)), dict(top_k=8),
                                dict(threshold=0.5 * 0.37)])
def test_noise_heads_never_enter_a_set(kw):
  floor = noise_floor(RAW)
  r = head_reuse(RAW, floor=floor, **kw)
  assert [tuple(x) for x in np.argwhere(r.sets[0])] == [(1, 2)]
  assert r.set_sizes.tolist() == [1] and r.floor == floor
  empty = head_reuse(RAW * 0 + 1e-9, floor=noise_floor(RAW), **kw)  # all noise: empty set
  assert empty.set_sizes.tolist() == [0] and np.isnan(empty.iou[0, 0])


def test_analyze_model_finds_exactly_the_planted_head():
  # task 0 needs only head (1, 2); task 1 needs (0, 0) and (1, 2); task 2 needs nothing
  heads = {(1, 2): {0, 1}, (0, 0): {1}}
  fm, params = planted_model(3, 2, 4, 24, 16, 16, 8, heads, {0: {0: {0}}, 1: {0: {1}}})
  batches = teacher_batches(fm, params, 3, 16, 8, 12, batch_size=36, unlearned=(2,))
  # zero ablation: a mean-ablated head adds its all-task mean output, a real effect
  a = analyze_model(fm, params, batches, ["a", "b", "c"], batch_size=36, modes=("zero",))
  assert a.reuse["gradient"].top_k == default_top_k(2, 4) == 2
  for source, r in a.reuse.items():
    got = {t: [tuple(map(int, x)) for x in np.argwhere(r.sets[t])] for t in range(3)}
    assert got[0] == [(1, 2)] and got[2] == [], (source, got)
    assert set(got[1]) <= {(0, 0), (1, 2)}, (source, got)  # a head may lower a loss
  assert np.argwhere(a.reuse["gradient"].sets[1]).tolist() == [[0, 0], [1, 2]]
  # task c was never learned (random targets): gated, and marked in figures
  assert a.competence.competent.tolist() == [True, True, False]
  assert a.competence.accuracy[:2].min() == 1.0
  assert a.competence.labels(["a", "b", "c"])[2] == "c (at chance)"
  # the normalized heatmap shows nothing where nothing matters
  np.testing.assert_array_equal(a.importance.normalized[0, 0], 0.0)
  np.testing.assert_array_equal(a.importance.normalized[2], 0.0)
  t = analyze_model(fm, params, batches, ["a", "b", "c"], batch_size=36, threshold=0.05,
                    modes=("zero",))
  assert t.reuse["ablation"].threshold is not None
  assert t.reuse["ablation"].sets[2].sum() == 0 and t.reuse["ablation"].sets[0, 1, 2]
