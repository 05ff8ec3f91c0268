"""MoCo: multi-objective gradient with correction, tracked gradients and smoothed weights.

Each task's gradient is tracked, ``y_t <- y_t - beta_k (y_t - g_t)`` (``y = 0`` at start),
which removes the bias of stochastic MGDA; the weights take one projected step on the
min-norm objective of the tracked gradients,
``lambda <- Proj_simplex(lambda - gamma_k (Y Y^T lambda + rho lambda))``, and the update is
``Y^T lambda`` (Algorithm 2). ``beta_k = beta / k^sigma_b``, ``gamma_k = gamma / k^sigma_g``
(``beta = 0.5``, ``gamma = 0.1``, both sigmas 0.5, ``rho = 0``: the values of the paper's
multi-task experiments). The tracked gradients are per coordinate: ``[T, ...]`` state
shaped like the shared parameters (T times their memory); with ``lambda`` and the step
counts they are the state: checkpoints and resumes bit for bit. ``weights`` in the stats
is ``lambda`` (applied to the tracked gradients, ``linear_in_grads = False``).

Absent tasks: a task's tracking rate ``beta_k`` counts its own present steps (``k = 1``
at its first, however late), its ``y_t`` and ``lambda_t`` are kept while it is absent,
and it gets 0 in the update; ``gamma_k`` counts the steps where some task is present.

NumPy reference from Algorithm 2 in ``tests/golden/mtl/make_golden.py``.

References:
  Fernando et al. 2023, "Mitigating Gradient Bias in Multi-objective Learning: A
  Provably Convergent Approach", ICLR, Algorithm 2.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from modular.mtl import qp
from modular.mtl.leafwise import LeafwiseMethod
from modular.mtl.method import register
from modular.mtl.options import at_least, greater, in_range, option


class MoCoState(NamedTuple):
  tracked: tuple          # per shared leaf [T, ...]
  weights: jax.Array      # [T] lambda
  steps: jax.Array        # int32 [] steps with some task present (gamma_k)
  counts: jax.Array       # int32 [T] present steps of each task (beta_k)


@register("moco")
@dataclasses.dataclass(eq=False)
class MoCo(LeafwiseMethod):
  """MoCo (needs the gradients; ``[T, ...]`` state).

  Args:
    num_tasks: T.
    beta, beta_sigma: tracking rate ``beta / k^beta_sigma``.
    gamma, gamma_sigma: weight step ``gamma / k^gamma_sigma``.
    rho: l2 regularisation of ``lambda``.
  """

  num_tasks: int = 0
  beta: float = option(0.5, in_range(0.0, 1.0))
  beta_sigma: float = option(0.5, at_least(0.0))
  gamma: float = option(0.1, greater(0.0))
  gamma_sigma: float = option(0.5, at_least(0.0))
  rho: float = option(0.0, at_least(0.0))
  simplex_weights = True  # projected onto the simplex (qp.project_simplex)
  linear_in_grads = False

  def init(self, params):
    t = self._require_num_tasks()
    return MoCoState(self.shared_zeros(params, t), jnp.full((t,), 1.0 / t, jnp.float32),
                     jnp.zeros((), jnp.int32), jnp.zeros((t,), jnp.int32))

  def aggregate(self, leaves, state, gram, losses, present):
    del gram, losses
    p = present > 0
    counts = state.counts + p.astype(jnp.int32)
    b = self.beta / jnp.maximum(counts, 1).astype(jnp.float32) ** self.beta_sigma   # [T]
    shape = lambda x: (-1,) + (1,) * (x.ndim - 1)
    tracked = tuple(jnp.where(p.reshape(shape(y)),
                              y - b.reshape(shape(y)) * (y - g.astype(jnp.float32)), y)
                    for g, y in zip(leaves, state.tracked))
    yy = sum(jax.lax.dot_general(y, y, ((tuple(range(1, y.ndim)),) * 2, ((), ())))
             for y in tracked)                                              # [T, T]
    lam = jnp.where(p, state.weights, 0.0)
    k = (state.steps + 1).astype(jnp.float32)
    step = self.gamma / k ** self.gamma_sigma
    new = qp.project_simplex(lam - step * (yy @ lam + self.rho * lam), p)
    uniform = jnp.where(p, 1.0, 0.0) / jnp.maximum(jnp.sum(p), 1)
    new = jnp.where(jnp.all(jnp.isfinite(new)), new, uniform)
    coef = jnp.where(p, new, 0.0)
    out = [jnp.tensordot(coef, y, axes=(0, 0)).astype(g.dtype) for g, y in zip(leaves, tracked)]
    new_state = MoCoState(tracked, jnp.where(p, new, state.weights),
                          state.steps + jnp.any(p).astype(jnp.int32), counts)
    return out, new_state, {"weights": coef}
