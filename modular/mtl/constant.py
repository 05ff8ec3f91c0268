"""Constant loss weights (TorchJD's ``Constant``; ``sum`` is all ones).

``w_t`` fixed by ``options.weights`` (one per task); the default (empty) means 1 for
every task, i.e. the plain sum of the losses (TorchJD's ``Sum``; ``mean`` divides by
the number of present tasks). Absent tasks get 0. Stateless, one backward pass.

References:
  Quinton & Rey 2024, "Jacobian Descent for Multi-Objective Optimization" (TorchJD's
  Constant and Sum aggregators); Caruana 1997, "Multitask Learning" (fixed weights).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from modular.mtl.method import Weighting, register
from modular.mtl.options import option


def _finite(v):
  return None if all(isinstance(x, (int, float)) and abs(x) < float("inf") for x in v) \
      else f"must be finite numbers, got {v!r}"


@register("constant", "sum")
@dataclasses.dataclass(eq=False)
class Constant(Weighting):
  """Fixed loss weights.

  Args:
    weights: one weight per task (empty: all ones); ``config.mtl.options.weights``
      must have ``num_tasks`` entries.
  """

  weights: tuple = option((), _finite)
  needs_losses = False

  def loss_weights(self, state, present):
    del state
    p = jnp.asarray(present, jnp.float32)
    if not self.weights:
      return p
    if len(self.weights) != p.shape[0]:
      raise ValueError(f"config.mtl.options.weights: has {len(self.weights)} entries for "
                       f"{p.shape[0]} tasks")
    return jnp.asarray(self.weights, jnp.float32) * p

  def observe(self, state, losses, present):
    del losses
    return state, {"weights": self.loss_weights(state, present)}
