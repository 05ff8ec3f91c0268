"""The small solvers of ``mtl.qp`` against NumPy, at every magnitude the methods meet.

``project_simplex`` (MoDo, SDMGrad, MoCo) is checked against a float64 bisection on
the threshold, a different algorithm from the sort-based one, for inputs from 1e-3 to
1e30 with random masks. Before the shift to a masked maximum of 0, inputs of 1e9 and
more came back all 0 or summing to 2 (MoCo's weights reached 2.0 on the adversarial
losses of ``test_mtl_edge_cases``). ``nonneg_qp`` is checked by its KKT conditions.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modular.mtl import qp


def simplex_reference(v: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Projection onto the simplex of the masked entries by bisection on theta (float64)."""
  out = np.zeros_like(v, np.float64)
  if not mask.any():
    return out
  x = v[mask].astype(np.float64)
  x = x - x.max()  # float64 keeps the float32 inputs' differences (even at 1e30)
  lo, hi = x.max() - 1.0, x.max()  # sum(max(x - theta, 0)) is >= 1 at lo and 0 at hi
  for _ in range(200):
    mid = 0.5 * (lo + hi)
    lo, hi = (mid, hi) if np.maximum(x - mid, 0).sum() > 1.0 else (lo, mid)
  out[mask] = np.maximum(x - 0.5 * (lo + hi), 0)
  return out


@pytest.mark.parametrize("scale", [1e-3, 1.0, 1e3, 1e9, 1e18, 1e30])
def test_project_simplex_matches_bisection_at_every_magnitude(scale):
  rng = np.random.default_rng(int(np.log10(scale)) + 10)
  project = jax.jit(qp.project_simplex)
  for trial in range(50):
    t = int(rng.integers(1, 7))
    v = (rng.normal(size=t) * scale).astype(np.float32)
    if trial % 5 == 0:  # an offset far larger than the spread (entries close together)
      v = (v / scale + scale).astype(np.float32)
    mask = rng.uniform(size=t) < 0.8
    got = np.asarray(project(jnp.asarray(v), jnp.asarray(mask)), np.float64)
    want = simplex_reference(v, mask)
    np.testing.assert_allclose(got, want, atol=2e-6, err_msg=f"v={v} mask={mask}")
    assert np.all(got >= 0) and np.all(got[~mask] == 0)
    if mask.any():
      np.testing.assert_allclose(got.sum(), 1.0, atol=2e-6)


def test_project_simplex_without_mask_and_the_issue_input():
  np.testing.assert_allclose(qp.project_simplex(jnp.array([0.3, 0.2, 0.1])),
                             simplex_reference(np.array([0.3, 0.2, 0.1]), np.ones(3, bool)),
                             atol=1e-7)
  got = qp.project_simplex(jnp.array([-1.0e18, -1.3e18, -1.6e18], jnp.float32))
  np.testing.assert_array_equal(got, [1.0, 0.0, 0.0])  # was [0, 0, 0]


def test_nonneg_qp_satisfies_kkt():
  rng = np.random.default_rng(0)
  for _ in range(20):
    t = int(rng.integers(1, 6))
    a = rng.normal(size=(t, t + 2))
    q_mat, q_vec = a @ a.T + 1e-3 * np.eye(t), rng.normal(size=t)
    x = np.asarray(qp.nonneg_qp(jnp.asarray(q_mat, jnp.float32),
                                jnp.asarray(q_vec, jnp.float32)), np.float64)
    grad = q_mat @ x + q_vec
    assert np.all(x >= 0)
    np.testing.assert_allclose(grad[x > 1e-6], 0.0, atol=1e-3)  # stationary on the support
    assert np.all(grad[x <= 1e-6] >= -1e-3)                   # no descent into the bound
