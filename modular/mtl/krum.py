"""Krum and Multi-Krum: keep the gradients closest to their neighbours.

Each present task ``i`` gets the score ``sum`` of its distances to its ``P - f - 2``
nearest other task gradients (``P`` present tasks, ``f`` = ``n_byzantine``); the
``n_selected`` lowest-scoring gradients are averaged (one for Krum). Distances come
from the Gram matrix, ``||g_i - g_j||^2 = G_ii + G_jj - 2 G_ij``: no gradient is read
beyond the Gram and the final sum.

Paper vs peer: Blanchard et al. score with squared distances (our default,
``squared=True``); TorchJD 0.18.0 sums plain distances (``squared=False``). With
fewer than ``f + 3`` present tasks (e.g. T = 1, 2) the neighbour count is clamped to
at least 1 (TorchJD raises), and ``n_selected`` to ``P``.

References:
  Blanchard et al. 2017, "Machine Learning with Adversaries: Byzantine Tolerant
  Gradient Descent", NeurIPS (Krum, Multi-Krum).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from modular.mtl.method import Method, register
from modular.mtl.options import at_least, option


def krum_weights(gram, present, n_byzantine: int, n_selected: int, squared: bool):
  """Weights ``[T]``: ``1 / n_selected`` on the selected tasks, else 0."""
  t = gram.shape[0]
  p = present > 0
  num = jnp.sum(p)
  sq = jnp.diag(gram)
  d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2 * gram, 0.0)
  d = d2 if squared else jnp.sqrt(d2)
  valid = p[:, None] & p[None, :] & ~jnp.eye(t, dtype=bool)
  d_sorted = jnp.sort(jnp.where(valid, d, jnp.inf), axis=1)                 # [T, T]
  k = jnp.maximum(num - n_byzantine - 2, 1)
  take = (jnp.arange(t)[None, :] < k) & jnp.isfinite(d_sorted)
  scores = jnp.where(p, jnp.sum(jnp.where(take, d_sorted, 0.0), axis=1), jnp.inf)
  rank = jnp.argsort(jnp.argsort(scores))                                  # 0 = best
  chosen = jnp.minimum(n_selected, num)
  sel = p & (rank < chosen)
  return jnp.where(sel, 1.0 / jnp.maximum(chosen, 1), 0.0).astype(gram.dtype)


@register("krum")
@dataclasses.dataclass(eq=False)
class Krum(Method):
  """(Multi-)Krum on the Gram matrix. Stateless.

  Args:
    n_byzantine: ``f``, how many task gradients may be adversarial.
    n_selected: how many lowest-score gradients to average (1: Krum).
    squared: score with squared distances (paper) or plain ones (TorchJD).
  """

  n_byzantine: int = option(0, at_least(0))
  n_selected: int = option(1, at_least(1))
  squared: bool = option(True)

  def solve(self, gram, state, losses, present):
    del losses
    w = krum_weights(gram, present, self.n_byzantine, self.n_selected, self.squared)
    return jnp.diag(w), state, {}
