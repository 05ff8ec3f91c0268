"""Small solvers on T x T problems: nonnegative quadratic programs, simplex projection.

UPGrad, DualProj and PCD project onto a dual cone; in Gram space each projection is a
nonnegative quadratic program ``min_{x >= 0} 1/2 x^T Q x + q^T x`` with ``Q = G``
(``T x T``). We solve it with projected Gauss-Seidel (cyclic coordinate descent with
exact minimisation along each coordinate, clipped at 0), which converges for any
positive semi-definite ``Q`` with a positive diagonal and needs no factorisation; a
fixed number of sweeps keeps it jit-friendly. MoDo, SDMGrad and MoCo take projected
gradient steps on the simplex (``project_simplex``).

References:
  Cottle, Pang & Stone 1992, "The Linear Complementarity Problem" (projected
  Gauss-Seidel for LCPs with a PSD matrix); Duchi et al. 2008, "Efficient Projections
  onto the l1-Ball for Learning in High Dimensions" (sort-based simplex projection).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def nonneg_qp(q_mat: jax.Array, q_vec: jax.Array, sweeps: int = 200) -> jax.Array:
  """Solves ``min_{x >= 0} 1/2 x^T Q x + q^T x`` by projected Gauss-Seidel.

  Args:
    q_mat: ``[T, T]`` symmetric positive semi-definite.
    q_vec: ``[T]``.
    sweeps: passes over the ``T`` coordinates.

  Returns:
    ``x`` ``[T]`` (coordinates with ``Q_ii = 0`` stay 0).
  """
  num = q_vec.shape[0]
  if num == 0:
    return q_vec
  diag = jnp.diag(q_mat)
  safe = jnp.where(diag > 0, diag, 1.0)

  def coord(k, x):
    i = k % num
    r = q_mat[i] @ x + q_vec[i]                      # partial derivative along x_i
    xi = jnp.where(diag[i] > 0, jnp.maximum(x[i] - r / safe[i], 0.0), 0.0)
    return x.at[i].set(xi)

  return jax.lax.fori_loop(0, sweeps * num, coord, jnp.zeros_like(q_vec))


def project_to_dual_cone(gram: jax.Array, u: jax.Array, sweeps: int = 200) -> jax.Array:
  """Weights ``w`` of the projection of ``J^T u`` onto ``{d : J d >= 0}``.

  Proposition 1 of Quinton & Rey 2024: ``w = argmin_{v >= u} v^T G v``; with
  ``v = u + x`` this is ``nonneg_qp(G, G u)``.

  Args:
    gram: ``[T, T]``.
    u: ``[..., T]`` weights to project (batched over leading axes).
    sweeps: Gauss-Seidel passes.

  Returns:
    ``w`` with the shape of ``u``.
  """
  solve = lambda ui: ui + nonneg_qp(gram, gram @ ui, sweeps)
  for _ in range(u.ndim - 1):
    solve = jax.vmap(solve)
  return solve(u)


def project_simplex(v: jax.Array, mask: jax.Array | None = None) -> jax.Array:
  """Euclidean projection of ``v`` ``[T]`` onto the simplex (of the masked entries).

  Args:
    v: ``[T]``.
    mask: ``[T]`` bool; entries outside are set to 0 (default: all in).

  Returns:
    ``[T]`` nonnegative, summing to 1 over the mask (all 0 for an empty mask).

  The projection commutes with adding a constant to every entry, so ``v`` is first
  shifted to a masked maximum of 0: without the shift, entries of magnitude 1e9 and
  more (a MoCo step on gradients of norm 1e9) lost the ``- 1`` of the threshold to
  float32 rounding and came back all 0 or summing to 2.
  """
  if mask is None:
    mask = jnp.ones(v.shape, bool)
  top = jnp.max(jnp.where(mask, v, -jnp.inf))
  v = v - jnp.where(jnp.isfinite(top), top, 0.0)
  big = jnp.where(mask, v, -jnp.inf)
  s = jnp.sort(big)[::-1]                                   # descending, masked last
  s_fin = jnp.where(jnp.isfinite(s), s, 0.0)
  css = jnp.cumsum(s_fin)
  k = jnp.arange(1, v.shape[0] + 1, dtype=v.dtype)
  cond = jnp.isfinite(s) & (s_fin - (css - 1.0) / k > 0)
  rho = jnp.max(jnp.where(cond, jnp.arange(v.shape[0]), 0))
  theta = (css[rho] - 1.0) / (rho + 1.0)
  return jnp.where(mask, jnp.maximum(v - theta, 0.0), 0.0)
