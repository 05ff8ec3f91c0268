"""Task-vector cosines and per-layer sign conflicts against NumPy."""

from __future__ import annotations

import numpy as np

from modular.merging import diagnostics


def _tvs(seed=0, t=3):
  rng = np.random.default_rng(seed)
  return [{"blocks": {"0": {"w": rng.normal(size=(5, 4)).astype(np.float32)},
                      "1": {"w": rng.normal(size=(6,)).astype(np.float32)}},
           "embed": rng.normal(size=(3, 2)).astype(np.float32)} for _ in range(t)]


def test_cosine_matrix_matches_numpy():
  tvs = _tvs()
  flat = np.stack([np.concatenate([tv["blocks"]["0"]["w"].ravel(), tv["blocks"]["1"]["w"],
                                   tv["embed"].ravel()]) for tv in tvs]).astype(np.float64)
  unit = flat / np.linalg.norm(flat, axis=1, keepdims=True)
  np.testing.assert_allclose(diagnostics.cosine_matrix(tvs), unit @ unit.T, atol=1e-6)
  zero = [tvs[0], {k: np.zeros_like(v) if not isinstance(v, dict) else
                   {i: {"w": np.zeros_like(x["w"])} for i, x in v.items()}
                   for k, v in tvs[0].items()}]
  cos = diagnostics.cosine_matrix(zero)
  np.testing.assert_allclose(cos, [[1.0, 0.0], [0.0, 0.0]], atol=1e-6)


def test_sign_conflicts_match_numpy():
  tvs = _tvs(1)
  tvs[0]["embed"][0, 0] = 0.0  # a zero entry never conflicts
  tvs[1]["embed"][0, 0] = 1.0
  tvs[2]["embed"][0, 0] = 2.0
  got = diagnostics.sign_conflicts(tvs)

  def share(xs):
    x = np.stack(xs)
    return float(np.mean(np.any(x > 0, 0) & np.any(x < 0, 0)))

  assert got["embed"] == share([tv["embed"] for tv in tvs])
  assert got["blocks/0"] == share([tv["blocks"]["0"]["w"] for tv in tvs])
  total = sum(share([tv[k] if k == "embed" else tv["blocks"][k]["w"] for tv in tvs]) *
              (tvs[0][k].size if k == "embed" else tvs[0]["blocks"][k]["w"].size)
              for k in ("embed", "0", "1"))
  assert abs(got["all"] - total / (20 + 6 + 6)) < 1e-12
  # Trimmed to the top 1/4 per tensor (TIES's count): fewer conflicts, same definition.
  trimmed = diagnostics.sign_conflicts(tvs, k=0.25)
  x = np.stack([tv["blocks"]["0"]["w"].ravel() for tv in tvs])
  keep = np.abs(x) >= np.sort(np.abs(x), axis=1)[:, [x.shape[1] - 5]]
  assert trimmed["blocks/0"] == share(list(np.where(keep, x, 0)))
  assert trimmed["all"] <= got["all"]
