"""LiNeS, TALL masks and EMR-merging against NumPy references written here.

LiNeS scales the task-arithmetic update of each leaf by ``alpha + beta * depth`` with
the depths spelled out by hand (embeddings 0, ``blocks/i`` ``i / (L - 1)``, the final
norm and heads 1). TALL masks and EMR-merging give one model per task: each task's
model is rebuilt in NumPy from the flattened task vectors (EMR's rescalers over the
whole model) and compared with ``merge_tasks``.
"""

from __future__ import annotations

import jax
import numpy as np
import pytest

from modular import merging
from modular.merging.methods import lines as lines_lib
from modular.paths import flat_paths

ATOL = 1e-6


def _tree(rng, blocks=4):
  tree = {"embed": rng.normal(size=(7, 4)), "ln_final": {"scale": rng.normal(size=(4,))},
          "heads": {"per_task_kernel": rng.normal(size=(2, 4, 3))},
          "blocks": {str(i): {"ffn": {"w_in": rng.normal(size=(4, 6))},
                              "attn": {"wq": rng.normal(size=(4, 2, 2))}}
                     for i in range(blocks)}}
  return jax.tree.map(lambda x: x.astype(np.float32), tree)


def _flat(tree):
  return flat_paths(tree)


def test_lines_matches_numpy():
  rng = np.random.default_rng(0)
  base, taus = _tree(rng), [_tree(rng) for _ in range(3)]
  w = np.array([1.0, 0.5, 2.0], np.float32)
  depth = {"embed": 0.0, "ln_final/scale": 1.0, "heads/per_task_kernel": 1.0}
  for i in range(4):
    depth[f"blocks/{i}/ffn/w_in"] = depth[f"blocks/{i}/attn/wq"] = i / 3
  for opts, alpha in (({}, 1 / 3), ({"alpha": 0.2, "beta": 0.8}, 0.2)):
    beta = opts.get("beta", 0.5)
    got = _flat(merging.merge(base, taus, "lines", options=opts, weights=w))
    flat_taus = [_flat(t) for t in taus]
    for p, b in _flat(base).items():
      want = b + (alpha + beta * depth[p]) * sum(wt * ft[p] for wt, ft in zip(w, flat_taus))
      np.testing.assert_allclose(np.asarray(got[p]), want, rtol=0, atol=ATOL, err_msg=p)
  assert lines_lib.layer_depth("blocks/0/attn/wq", 1) == 0.0  # one block: depth 0
  assert lines_lib.layer_depth("type_embed", 4) == 0.0
  assert lines_lib.layer_depth("head/kernel", 4) == 1.0


def test_lines_over_ties_and_num_blocks():
  """``merge="ties"`` scales TIES's update (its default options); ``num_blocks`` sets L."""
  rng = np.random.default_rng(1)
  taus = [_tree(rng, blocks=2) for _ in range(3)]
  ties = merging.merge_deltas(taus, "ties")
  got = merging.merge_deltas(taus, "lines", options={"merge": "ties", "alpha": 0.1,
                                                     "num_blocks": 5, "beta": 1.0})
  for p, d in ties.items():
    i = lines_lib.block_index(p)
    factor = 0.1 + (i / 4 if i is not None else lines_lib.layer_depth(p, 5))
    np.testing.assert_allclose(np.asarray(got[p]), factor * np.asarray(d), atol=ATOL)
  cases = [({"num_blocks": 1}, "merging.options.num_blocks: 1, but the task vectors hold "
                               "block 1"),
           ({"merge": "fisher"}, "merging.options.merge: 'fisher' needs statistics"),
           ({"merge": "nope"}, "merging.options.merge: unknown merging method 'nope'")]
  for opts, start in cases:
    with pytest.raises(ValueError) as e:
      merging.merge_deltas(taus, "lines", options=opts)
    assert str(e.value).startswith(start) and "\n" not in str(e.value), str(e.value)


def test_tall_masks_match_numpy():
  rng = np.random.default_rng(2)
  base, taus = _tree(rng), [_tree(rng) for _ in range(4)]
  w = np.array([1.0, 0.5, 1.5, 1.0], np.float32)
  models = merging.merge_tasks(base, taus, "tall_masks", options={"lam": 0.6}, weights=w)
  assert len(models) == 4
  flat_taus = [_flat(t) for t in taus]
  kept = []
  for p, b in _flat(base).items():
    weighted = np.stack([wt * ft[p] for wt, ft in zip(w, flat_taus)]).astype(np.float64)
    merged = weighted.sum(0)
    for t, model in enumerate(models):
      mask = np.abs(weighted[t]) >= 0.6 * np.abs(merged - weighted[t])
      kept.append(mask.mean())
      np.testing.assert_allclose(np.asarray(_flat(model)[p]), b + mask * merged, rtol=0,
                                 atol=ATOL, err_msg=f"{p} task {t}")
  assert 0.1 < np.mean(kept) < 0.9  # the masks select, and differ from all-or-nothing


def test_emr_merging_matches_numpy():
  rng = np.random.default_rng(3)
  base, taus = _tree(rng), [_tree(rng) for _ in range(3)]
  w = np.array([1.0, 2.0, 0.5], np.float32)
  models = merging.merge_tasks(base, taus, "emr_merging", weights=w)
  paths = sorted(_flat(base))
  vec = np.stack([np.concatenate([w[t] * _flat(tau)[p].ravel() for p in paths])
                  for t, tau in enumerate(taus)]).astype(np.float64)  # [T, D]
  sign = np.where(vec.sum(0) >= 0, 1.0, -1.0)
  eps = np.max(np.where(vec * sign > 0, np.abs(vec), 0), axis=0)
  uni = sign * eps
  masks = vec * uni > 0
  lam = np.abs(vec).sum(1) / np.abs(masks * uni).sum(1)
  assert 0.2 < masks.mean() < 0.9 and np.ptp(lam) > 0.1  # real masks, per-task rescalers
  base_vec = np.concatenate([_flat(base)[p].ravel() for p in paths])
  for t, model in enumerate(models):
    got = np.concatenate([np.asarray(_flat(model)[p]).ravel() for p in paths])
    np.testing.assert_allclose(got, base_vec + lam[t] * masks[t] * uni, rtol=1e-6, atol=ATOL)


def test_per_task_methods_refuse_a_single_merge():
  rng = np.random.default_rng(4)
  base, taus = _tree(rng), [_tree(rng) for _ in range(2)]
  for name in ("tall_masks", "emr_merging"):
    with pytest.raises(ValueError, match=rf"^merging: {name} gives one model per task; "
                                         r"use merge_tasks$"):
      merging.merge(base, taus, name)
  # Every other method gives the one merged model T times.
  a, b = merging.merge_tasks(base, taus, "task_arithmetic")
  assert a is b
