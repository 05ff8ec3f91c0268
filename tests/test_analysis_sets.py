"""Set overlap, important-head selection, head reuse and specialized neurons vs NumPy.

Every function is checked against a plain Python/NumPy loop written from the
definitions in shared/methods.md (IoU, overlap coefficient, top-k / threshold
sets, the cumulative-k specialized set with ties broken by the lower index).

References:
  Merullo et al. 2023 (head reuse); Tan et al. 2024 (neuron specialization).
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from modular.analysis.head_reuse import head_reuse, important_heads
from modular.analysis.neurons import specialized_mask
from modular.analysis.sets import iou_matrix, mean_off_diagonal, overlap_matrix


def _naive_iou(a: set, b: set) -> float:
  return len(a & b) / len(a | b) if a | b else np.nan


def _naive_overlap(a: set, b: set) -> float:
  return len(a & b) / min(len(a), len(b)) if a and b else np.nan


def _as_sets(masks):
  return [set(np.flatnonzero(m)) for m in masks]


def test_iou_and_overlap_match_python_sets():
  rng = np.random.default_rng(0)
  masks = rng.random((5, 30)) < 0.3
  masks[4] = False  # an empty set: NaN entries
  sets = _as_sets(masks)
  iou, ov = iou_matrix(masks), overlap_matrix(masks)
  for i, j in itertools.product(range(5), repeat=2):
    np.testing.assert_equal(iou[i, j], _naive_iou(sets[i], sets[j]))
    np.testing.assert_allclose(ov[i, j], _naive_overlap(sets[i], sets[j]))
  batched = iou_matrix(np.stack([masks, masks[::-1]]))  # leading axes broadcast
  np.testing.assert_allclose(batched[1], iou_matrix(masks[::-1]))


def test_mean_off_diagonal_ignores_nan():
  m = np.array([[1.0, 0.5, np.nan], [0.5, 1.0, 0.2], [np.nan, 0.2, 1.0]])
  assert mean_off_diagonal(m) == pytest.approx((0.5 + 0.5 + 0.2 + 0.2) / 4)
  assert np.isnan(mean_off_diagonal(np.full((2, 2), np.nan)))


def _naive_top_k(scores, k):
  out = np.zeros(scores.shape, bool)
  for t in range(scores.shape[0]):
    flat = [(-s, i) for i, s in enumerate(scores[t].ravel())]
    for _, i in sorted(flat)[:k]:
      if scores[t].ravel()[i] > 0:
        out[t].ravel()[i] = True
  return out


def test_important_heads_top_k_and_threshold():
  rng = np.random.default_rng(1)
  scores = rng.random((4, 3, 5))
  scores[0, 1, 2] = scores[0, 0, 1] = 2.0  # a tie: the lower flat index wins
  scores[3] = 0.0  # no head matters: no head is chosen
  scores[3, 2, 4] = 0.1
  for k in (1, 2, 6):
    np.testing.assert_array_equal(important_heads(scores, top_k=k), _naive_top_k(scores, k))
  top1 = important_heads(scores, top_k=1)
  assert top1[0, 0, 1] and not top1[0, 1, 2]
  assert top1[3].sum() == 1 and important_heads(scores, top_k=4)[3].sum() == 1
  np.testing.assert_array_equal(important_heads(scores, threshold=0.5), scores >= 0.5)
  with pytest.raises(ValueError):
    important_heads(scores)


def test_head_reuse_matches_naive():
  rng = np.random.default_rng(2)
  sets = rng.random((4, 3, 4)) < 0.5
  sets[:, 2, 1] = True  # shared by all
  r = head_reuse(sets=sets)
  heads = [{(l, h) for l, h in itertools.product(range(3), range(4)) if sets[t, l, h]}
           for t in range(4)]
  for i, j in itertools.product(range(4), repeat=2):
    np.testing.assert_equal(r.iou[i, j], _naive_iou(heads[i], heads[j]))
    np.testing.assert_equal(r.overlap[i, j], _naive_overlap(heads[i], heads[j]))
    for l in range(3):
      a = {h for (ll, h) in heads[i] if ll == l}
      b = {h for (ll, h) in heads[j] if ll == l}
      np.testing.assert_equal(r.iou_per_layer[l, i, j], _naive_iou(a, b))
      np.testing.assert_equal(r.overlap_per_layer[l, i, j], _naive_overlap(a, b))
  assert set(r.shared) == set.intersection(*heads)
  for t in range(4):
    others = set.union(*(heads[u] for u in range(4) if u != t))
    assert set(r.specific[t]) == heads[t] - others
  offdiag = [r.iou[i, j] for i in range(4) for j in range(4) if i != j]
  assert r.mean_iou == pytest.approx(np.nanmean(offdiag))
  js = r.to_json(["a", "b", "c", "d"])
  assert js["shared"] == [list(x) for x in r.shared] and set(js["sets"]) == {"a", "b", "c", "d"}


def _naive_specialized(counts, k):
  order = sorted(range(len(counts)), key=lambda i: (-counts[i], i))
  total = sum(counts)
  chosen, acc = set(), 0.0
  if total == 0:
    return chosen
  for i in order:
    chosen.add(i)
    acc += counts[i]
    if acc >= k * total - 1e-9 * total:
      break
  return chosen


@pytest.mark.parametrize("k", [0.5, 0.9, 0.95, 1.0])
def test_specialized_mask_matches_naive(k):
  rng = np.random.default_rng(3)
  counts = rng.integers(0, 6, size=(3, 2, 40)).astype(float)  # many ties
  counts[0, 0] = 0.0  # nothing fires: empty set
  mask = specialized_mask(counts, k)
  for t, l in itertools.product(range(3), range(2)):
    assert set(np.flatnonzero(mask[t, l])) == _naive_specialized(list(counts[t, l]), k)
  with pytest.raises(ValueError):
    specialized_mask(counts, 0.0)
