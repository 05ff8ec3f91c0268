"""DB-MTL: dual balancing, log losses for the scales and equal-norm tracked gradients.

Loss-scale balancing: each task trains on ``log L_t``, whose gradient is
``h_t = g_t / L_t``. Gradient-magnitude balancing: an EMA of these gradients,
``ghat_t <- beta_k ghat_t + (1 - beta_k) h_t`` with ``beta_k = beta / k^sigma``
(``k = 1, 2, ...``; ``ghat = 0`` at start), is rescaled to the largest norm:
``update = sum_t (max_s ||ghat_s|| / ||ghat_t||) ghat_t`` (Algorithm 1; ``beta = 0.9``,
``sigma = 0.5``). The EMA is per coordinate, so this method needs the gradients and keeps
``[T, ...]`` state shaped like the shared parameters (T times their memory); it and the
step counts are the state: checkpoints and resumes bit for bit. Losses are floored at
``eps``; absent tasks keep their EMA and get weight 0. Each task's ``k`` counts its own
present steps, so the EMA of a task missing from the first batches starts at ``k = 1``
when it appears, as every task's does at the run's first step. The update is a combination of
the tracked gradients, not of this step's (``linear_in_grads = False``); ``weights`` in
the stats are the coefficients ``max ||ghat|| / ||ghat_t||``.

NumPy reference from Algorithm 1 in ``tests/golden/mtl/make_golden.py``.

References:
  Lin et al. 2023, "Dual-Balancing for Multi-Task Learning", arXiv:2308.12029,
  Algorithm 1.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from modular.mtl.leafwise import LeafwiseMethod
from modular.mtl.method import register
from modular.mtl.options import at_least, greater, in_range, option


class TrackedState(NamedTuple):
  tracked: tuple          # per shared leaf [T, ...]
  steps: jax.Array        # int32 [T] present steps of each task


def task_norms(leaves) -> jax.Array:
  """``[T]`` norms over all leaves, scaled to avoid float32 overflow."""
  big = jnp.max(jnp.stack([jnp.max(jnp.abs(x).reshape(x.shape[0], -1), axis=1)
                           for x in leaves]), axis=0)
  big = jnp.where(big > 0, big, 1.0)
  sq = sum(jnp.sum(jnp.square(x / big.reshape((-1,) + (1,) * (x.ndim - 1))).reshape(
      x.shape[0], -1), axis=1) for x in leaves)
  return big * jnp.sqrt(sq)


@register("db_mtl")
@dataclasses.dataclass(eq=False)
class DBMTL(LeafwiseMethod):
  """DB-MTL (needs the gradients and losses; ``[T, ...]`` state).

  Args:
    num_tasks: T.
    beta: EMA factor of the tracked gradients.
    sigma: decay exponent of ``beta_k = beta / k^sigma``.
    eps: floor on the losses.
  """

  num_tasks: int = 0
  beta: float = option(0.9, in_range(0.0, 1.0))
  sigma: float = option(0.5, at_least(0.0))
  eps: float = option(1e-8, greater(0.0))
  linear_in_grads = False

  def init(self, params):
    t = self._require_num_tasks()
    return TrackedState(self.shared_zeros(params, t), jnp.zeros((t,), jnp.int32))

  def aggregate(self, leaves, state, gram, losses, present):
    del gram
    if losses is None:
      raise ValueError("mtl method 'db_mtl' needs losses= in combine/update")
    p = present > 0
    steps = state.steps + p.astype(jnp.int32)
    b = self.beta / jnp.maximum(steps, 1).astype(jnp.float32) ** self.sigma      # [T]
    inv = jnp.where(p, 1.0 / jnp.maximum(jnp.asarray(losses, jnp.float32), self.eps), 0.0)
    shape = lambda x: (-1,) + (1,) * (x.ndim - 1)
    tracked = tuple(
        jnp.where(p.reshape(shape(y)), b.reshape(shape(y)) * y + (1 - b.reshape(shape(y)))
                  * g.astype(jnp.float32) * inv.reshape(shape(y)), y)
        for g, y in zip(leaves, state.tracked))
    norms = task_norms(tracked)
    top = jnp.max(jnp.where(p, norms, 0.0))
    coef = jnp.where(p & (norms > top * 1e-30), top / jnp.where(norms > 0, norms, 1.0), 0.0)
    coef = jnp.where(jnp.isfinite(coef), coef, 0.0)
    out = [jnp.tensordot(coef, y, axes=(0, 0)).astype(g.dtype) for g, y in zip(leaves, tracked)]
    return out, TrackedState(tracked, steps), {"weights": coef}
