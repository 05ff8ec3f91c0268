"""FairGrad: alpha-fair resource allocation between the tasks, on the Gram matrix.

The update ``d = sum_t x_t g_t`` with ``x > 0`` solving ``G x = x^(-1/alpha)``
(elementwise): each task's rate of improvement ``<g_t, d>`` equals its marginal
alpha-fair utility. ``alpha = 1`` is proportional fairness (Nash-MTL's
``G x = 1 / x``); larger alpha moves towards max-min fairness. The equation is the
stationarity condition of the strictly convex
``f(x) = 1/2 x^T G x - sum_t phi(x_t)``, ``phi' = x^(-1/alpha)``, minimised here with
damped Newton steps (Hessian ``G + diag(x^(-1/alpha - 1) / alpha)``), a
fraction-to-the-boundary rule and Armijo backtracking, from ``x = 1/T``. Absent tasks
and zero gradients get ``x = 0``.

TorchJD 0.18.0's ``FairGrad`` (SciPy ``least_squares`` on the same equation, bounds
``x >= 0``) is the reference.

References:
  Ban & Ji 2024, "Fair Resource Allocation in Multi-Task Learning", ICML, Eq. 6.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from modular.mtl import gram as gram_lib
from modular.mtl.method import Method, register
from modular.mtl.options import at_least, greater, option

_BACKTRACK = 30


def fair_weights(gram, present, alpha: float, iters: int = 50, eps: float = 1e-8):
  """Solves ``G x = x^(-1/alpha)`` over the active tasks; ``[T]``."""
  t = gram.shape[0]
  active = (present > 0) & (jnp.diag(gram) > 0)
  g = gram_lib.masked_gram(gram, active.astype(gram.dtype))
  g = g + eps * jnp.mean(jnp.where(active, jnp.diag(g), 0.0)) * jnp.eye(t)
  a = 1.0 / alpha

  def phi(x):
    return jnp.log(x) if alpha == 1.0 else x ** (1.0 - a) / (1.0 - a)

  def objective(x):
    return 0.5 * x @ g @ x - jnp.sum(phi(x))

  def newton(_, x):
    grad = g @ x - x ** (-a)
    step = -jnp.linalg.solve(g + jnp.diag(a * x ** (-a - 1.0)), grad)
    to_boundary = jnp.min(jnp.where(step < 0, -x / jnp.where(step < 0, step, -1.0), jnp.inf))
    f0, slope = objective(x), grad @ step

    def halve(_, s):
      ok = objective(x + s * step) <= f0 + 0.25 * s * slope
      return jnp.where(ok, s, 0.5 * s)

    s = jax.lax.fori_loop(0, _BACKTRACK, halve, jnp.minimum(1.0, 0.95 * to_boundary))
    return x + s * step

  x = jax.lax.fori_loop(0, iters, newton, jnp.full((t,), 1.0 / t, gram.dtype))
  return jnp.where(active, x, 0.0)


@register("fairgrad")
@dataclasses.dataclass(eq=False)
class FairGrad(Method):
  """FairGrad on the Gram matrix. Stateless.

  Args:
    alpha: fairness exponent (1: proportional fairness, the paper's common setting).
    iters: Newton iterations.
  """

  alpha: float = option(1.0, greater(0.0))
  iters: int = option(50, at_least(1))

  def solve(self, gram, state, losses, present):
    del losses
    x = fair_weights(gram, present, self.alpha, self.iters)
    residual = jnp.where(x > 0, gram @ x - x ** (-1.0 / self.alpha), 0.0)
    return jnp.diag(x), state, {"residual": jnp.max(jnp.abs(jnp.where(x > 0, residual, 0.0)))}
