"""GLS: the geometric loss strategy, the T-th root of the product of the task losses.

Minimising ``(prod_t L_t)^(1/T)`` gives the gradient ``sum_t w_t g_t`` with
``w_t = (prod_s L_s)^(1/T) / (T L_t)`` (computed from this step's losses, held
constant): tasks with small losses get large weights, which makes the method
scale-invariant per task. Over the ``P`` present tasks. Computed in log space
(``exp(mean log L - log L_t) / P``), so products of many small losses neither
underflow nor overflow; losses are floored at ``eps`` so a zero loss stays finite
and the log-ratio is clipped to +-80 (weights in ``[0, e^80 / P]``, finite in float32).

LibMTL 1.1.5 ``GLS`` is the reference (its gradient, not its returned weights, which
omit the root).

References:
  Chennupati et al. 2019, "MultiNet++: Multi-Stream Feature Aggregation and Geometric
  Loss Strategy for Multi-Task Learning", CVPR Workshops.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from modular.mtl.method import Weighting, register
from modular.mtl.options import greater, option


def gls_weights(losses, present, eps: float):
  """``[T]`` weights of the geometric mean's gradient."""
  p = present > 0
  num = jnp.maximum(jnp.sum(p), 1)
  log_l = jnp.log(jnp.maximum(jnp.asarray(losses, jnp.float32), eps))
  mean_log = jnp.sum(jnp.where(p, log_l, 0.0)) / num
  # |exponent| <= 80 keeps float32 finite whatever the losses (1e-30 .. 1e38).
  return jnp.where(p, jnp.exp(jnp.clip(mean_log - log_l, -80.0, 80.0)) / num, 0.0)


class LastLosses(NamedTuple):
  """The last observed losses ``[T]`` (``loss_weights`` reports their weights)."""
  losses: jax.Array


@register("gls")
@dataclasses.dataclass(eq=False)
class GLS(Weighting):
  """Geometric loss strategy (stateless; weights from the current losses).

  Args:
    eps: floor on the losses (a loss of 0 would give an infinite weight).
  """

  eps: float = option(1e-8, greater(0.0))

  def init(self, params):
    del params
    return LastLosses(jnp.ones((self._require_num_tasks(),), jnp.float32))

  def loss_weights(self, state, present):
    """The weights at the last observed losses (the step uses ``current_weights``)."""
    return gls_weights(state.losses, present, self.eps)

  def current_weights(self, state, losses, present):
    del state
    return gls_weights(losses, present, self.eps)

  def observe(self, state, losses, present):
    p = jnp.asarray(present) > 0
    new = LastLosses(jnp.where(p, jnp.asarray(losses, jnp.float32), state.losses))
    return new, {"weights": gls_weights(losses, present, self.eps)}
