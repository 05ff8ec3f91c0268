"""Aligned-MTL: align the principal components of the task gradients, in Gram space.

With the Gram matrix ``G = V diag(lambda) V^T`` (eigenvalues above a rank tolerance),
the aligned task gradients are ``G_hat = G_mat B`` with

  ``B = sqrt(lambda_min) V diag(lambda)^(-1/2) V^T``,

so that ``G_hat^T G_hat = lambda_min I`` on the span: orthogonal, equal-norm
components, a condition number of one. The update is ``sum_i g_hat_i``, i.e. the
original gradients weighted by ``alpha = B 1``. Task ``i``'s contribution is
``g_hat_i = sum_k B[k, i] g_k``. Absent tasks are removed from ``G`` (their zero
eigenvalues fall under the rank tolerance) and get weight 0.

References:
  Senushkin et al. 2023, "Independent Component Alignment for Multi-Task Learning",
  CVPR (Aligned-MTL, Algorithm 1 with uniform task weights).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import optax

from modular.mtl.method import Method, register


def alignment_matrix(gram: jax.Array, present: jax.Array) -> jax.Array:
  """The ``T x T`` matrix ``B`` of Aligned-MTL (zero rows/columns for absent tasks).

  Args:
    gram: ``[T, T]`` Gram matrix.
    present: ``[T]`` float 0/1.

  Returns:
    ``B`` ``[T, T]`` (symmetric): ``g_hat_i = sum_k B[k, i] g_k``.
  """
  p = present > 0
  g = jnp.where(p[:, None] & p[None, :], gram, 0.0)
  lam, vecs = jnp.linalg.eigh(g)                                   # ascending
  tol = jnp.max(lam) * g.shape[0] * jnp.finfo(g.dtype).eps
  keep = lam > tol
  inv_sqrt = jnp.where(keep, jax.lax.rsqrt(jnp.where(keep, lam, 1.0)), 0.0)
  lam_min = jnp.min(jnp.where(keep, lam, jnp.inf))
  scale = jnp.where(jnp.isfinite(lam_min), jnp.sqrt(lam_min), 0.0)
  return scale * (vecs * inv_sqrt[None, :]) @ vecs.T


@register("aligned_mtl")
@dataclasses.dataclass(eq=False)
class AlignedMTL(Method):
  """Aligned-MTL on the Gram matrix.

  Args:
    task_specific: path regexes of task-specific parameters.
  """

  def solve(self, gram, state, losses, present):
    del losses
    return alignment_matrix(gram, present).T, state, {}


def aligned_mtl(task_specific: Sequence[str] = ()) -> optax.GradientTransformationExtraArgs:
  """Aligned-MTL as an optax transform over per-task gradients ``[T, ...]``.

  Args:
    task_specific: path regexes of task-specific parameters.

  Returns:
    The transform.
  """
  return AlignedMTL(task_specific=task_specific).as_optax()
