"""Coordinate-wise trimmed mean of the task gradients.

For every coordinate, the ``trim`` largest and ``trim`` smallest of the present tasks'
values are dropped and the rest averaged. The operation is per coordinate, so it
needs the gradients themselves, not the Gram matrix (``leafwise.LeafwiseMethod``); it
sorts each shared ``[T, ...]`` leaf along its task axis in place (no flattening).

With ``P`` present tasks the trim is clamped to ``(P - 1) // 2`` (TorchJD raises when
``P < 2 trim + 1``), so T = 1 returns the one gradient, and a step with no task
present returns 0 (it summed an ``inf`` padding before). ``trim=0`` is the mean.

References:
  Yin et al. 2018, "Byzantine-Robust Distributed Learning: Towards Optimal
  Statistical Rates", ICML (coordinate-wise trimmed mean); TorchJD 0.18.0
  ``TrimmedMean`` is the reference.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from modular.mtl.leafwise import LeafwiseMethod
from modular.mtl.method import register
from modular.mtl.options import at_least, option


def trimmed_mean(g, present, trim: int):
  """Trimmed mean over axis 0 of ``g`` ``[T, ...]`` among present tasks ``[T]``."""
  p = present > 0
  num = jnp.sum(p)
  k = jnp.maximum(jnp.minimum(trim, (num - 1) // 2), 0)  # no task present: k = 0, sum 0
  shape = (-1,) + (1,) * (g.ndim - 1)
  srt = jnp.sort(jnp.where(p.reshape(shape), g, jnp.inf), axis=0)       # present first
  idx = jnp.arange(g.shape[0]).reshape(shape)
  keep = (idx >= k) & (idx < num - k)
  return jnp.sum(jnp.where(keep, srt, 0.0), axis=0) / jnp.maximum(num - 2 * k, 1)


@register("trimmed_mean")
@dataclasses.dataclass(eq=False)
class TrimmedMean(LeafwiseMethod):
  """Coordinate-wise trimmed mean (needs the gradients; stateless).

  Args:
    trim: values dropped at each end per coordinate (1; clamped to ``(P - 1) // 2``).
  """

  trim: int = option(1, at_least(0))
  linear_in_grads = False

  def aggregate(self, leaves, state, gram, losses, present):
    del gram, losses
    return [trimmed_mean(g, present, self.trim) for g in leaves], state, {}
