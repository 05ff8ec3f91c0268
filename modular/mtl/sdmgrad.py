"""SDMGrad: stochastic direction-oriented multi-objective gradient.

The weights ``w`` (simplex, uniform at start, kept between steps) take ``n_iter``
projected momentum steps on ``1/2 ||J^T (w + lambda w~)||^2`` (``w~``: the preference,
uniform), on the Gram matrix scaled by the mean squared gradient norm; the update is
``sum_t (w_t + lambda w~_t) / (1 + lambda) g_t`` (Algorithm 1 with the direction
regularisation ``lambda``). Defaults: ``lr = 10``, ``momentum = 0.5``, ``n_iter = 20``,
``lambda = 0.3`` (TorchJD 0.18.0's, from the authors' code). ``w`` is the state:
checkpoints and resumes bit for bit.

Convention: the paper uses ``A = J_1 J_2^T`` from two independent batches; our
one-batch step uses ``G = J J^T`` (the golden test feeds TorchJD's
``SDMGradWeighting`` the same ``J J^T``). Absent tasks get weight 0 and keep their
entry of ``w``.

References:
  Xiao et al. 2023, "Direction-oriented Multi-objective Learning: Simple and Provable
  Stochastic Algorithms", NeurIPS, Algorithm 1.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from modular.mtl import qp
from modular.mtl.method import Method, register
from modular.mtl.modo import _finite_or, simplex_state
from modular.mtl.options import at_least, greater, in_range, option


@register("sdmgrad")
@dataclasses.dataclass(eq=False)
class SDMGrad(Method):
  """SDMGrad on the Gram matrix (state: ``w`` ``[T]``).

  Args:
    num_tasks: T.
    lr: inner step size.
    momentum: inner momentum.
    n_iter: inner steps per update.
    lambda_: weight of the preference direction.
  """

  num_tasks: int = 0
  lr: float = option(10.0, greater(0.0))
  momentum: float = option(0.5, in_range(0.0, 1.0))
  n_iter: int = option(20, at_least(1))
  lambda_: float = option(0.3, at_least(0.0))
  simplex_weights = True  # a convex combination of simplex points

  def init(self, params):
    del params
    return simplex_state(self._require_num_tasks())

  def solve(self, gram, state, losses, present):
    del losses
    p = present > 0
    n = jnp.maximum(jnp.sum(p), 1)
    pref = jnp.where(p, 1.0, 0.0) / n
    g = jnp.where(p[:, None] & p[None, :], gram, 0.0)
    scale = jnp.sum(jnp.sqrt(jnp.maximum(jnp.diag(g), 0.0))) / n
    a = g / (scale * scale + 1e-8)

    def step(k, carry):
      w, vel = carry
      grad = a @ (w + self.lambda_ * pref)
      vel = jnp.where(k == 0, grad, self.momentum * vel + grad)
      return qp.project_simplex(w - self.lr * vel, p), vel

    w0 = jnp.where(p, state, 0.0)
    w, _ = jax.lax.fori_loop(0, self.n_iter, step, (w0, jnp.zeros_like(w0)))
    w = _finite_or(w, pref)
    weights = jnp.where(p, (w + self.lambda_ * pref) / (1.0 + self.lambda_), 0.0)
    return jnp.diag(weights), jnp.where(p, w, state), {}
