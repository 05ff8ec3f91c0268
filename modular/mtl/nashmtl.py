"""Nash-MTL: the Nash bargaining solution between tasks, from the Gram matrix.

The update is ``d = sum_t alpha_t g_t`` with ``alpha > 0`` solving
``G alpha = 1 / alpha`` (elementwise). That is the stationarity condition of the
strictly convex ``f(alpha) = 1/2 alpha^T G alpha - sum_t log alpha_t``, which we
minimise with damped Newton steps (Hessian ``G + diag(1 / alpha^2)``), keeping
``alpha > 0`` by a fraction-to-the-boundary rule and an Armijo backtracking. The
problem is solved on the diagonally scaled ``K = D G D`` (``D = diag(1/||g_t||)``,
``alpha = D beta``), which leaves the solution unchanged and makes it scale-free;
a relative ridge ``eps`` keeps it defined when ``G`` is singular (then the exact
problem has no solution). Note ``||d||^2 = alpha^T G alpha = T``.

The authors' code divides ``G`` by its Frobenius norm before solving, which scales
the update by ``sqrt(||G||_F)``; we follow the definition ``G alpha = 1/alpha``.
Absent tasks and tasks with a zero gradient get ``alpha = 0``.

References:
  Navon et al. 2022, "Multi-Task Learning as a Bargaining Game", ICML.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import optax

from modular.mtl import gram as gram_lib
from modular.mtl.method import Method, register
from modular.mtl.options import at_least, greater, option

_BACKTRACK = 30


def bargaining_weights(gram: jax.Array, present: jax.Array, iters: int = 20,
                       eps: float = 1e-6) -> jax.Array:
  """Solves ``G alpha = 1 / alpha`` over the present tasks.

  Args:
    gram: ``[T, T]`` Gram matrix.
    present: ``[T]`` float 0/1.
    iters: Newton iterations (quadratic convergence; 20 is plenty).
    eps: ridge added to the scaled Gram matrix (unit diagonal).

  Returns:
    ``alpha`` ``[T]``, positive on present tasks with a nonzero gradient, else 0.
  """
  num_tasks = gram.shape[0]
  active = (present > 0) & (jnp.diag(gram) > 0)
  g = gram_lib.masked_gram(gram, active.astype(jnp.float32))
  scale = jax.lax.rsqrt(jnp.diag(g))                                    # [T]
  k = g * scale[:, None] * scale[None, :] + eps * jnp.eye(num_tasks)    # unit diagonal

  def objective(b):
    return 0.5 * b @ k @ b - jnp.sum(jnp.log(b))

  def newton(_, b):
    grad = k @ b - 1.0 / b
    step = -jnp.linalg.solve(k + jnp.diag(1.0 / (b * b)), grad)
    to_boundary = jnp.min(jnp.where(step < 0, -b / jnp.where(step < 0, step, -1.0), jnp.inf))
    f0, slope = objective(b), grad @ step

    def halve(_, t):
      ok = objective(b + t * step) <= f0 + 0.25 * t * slope
      return jnp.where(ok, t, 0.5 * t)

    t = jax.lax.fori_loop(0, _BACKTRACK, halve, jnp.minimum(1.0, 0.95 * to_boundary))
    return b + t * step

  beta = jax.lax.fori_loop(0, iters, newton, jnp.ones((num_tasks,), gram.dtype))
  return jnp.where(active, beta * scale, 0.0)


@register("nashmtl")
@dataclasses.dataclass(eq=False)
class NashMTL(Method):
  """Nash-MTL on the Gram matrix.

  Args:
    iters: Newton iterations.
    eps: relative ridge on the scaled Gram matrix.
    task_specific: path regexes of task-specific parameters.
  """

  iters: int = option(20, at_least(1))
  eps: float = option(1e-6, greater(0.0))

  def solve(self, gram, state, losses, present):
    del losses
    alpha = bargaining_weights(gram, present, self.iters, self.eps)
    residual = jnp.where(alpha > 0, alpha * (gram @ alpha) - 1.0, 0.0)
    return jnp.diag(alpha), state, {"residual": jnp.max(jnp.abs(residual))}


def nash_mtl(iters: int = 20, eps: float = 1e-6,
             task_specific: Sequence[str] = ()) -> optax.GradientTransformationExtraArgs:
  """Nash-MTL as an optax transform over per-task gradients ``[T, ...]``.

  Args:
    iters: Newton iterations.
    eps: relative ridge.
    task_specific: path regexes of task-specific parameters.

  Returns:
    The transform.
  """
  return NashMTL(iters, eps, task_specific=task_specific).as_optax()
