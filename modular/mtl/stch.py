"""STCH: smooth Tchebycheff scalarisation of the task losses.

The objective ``mu log sum_t exp(lambda_t (L_t - z_t) / mu)`` is a smooth version of
``max_t lambda_t (L_t - z_t)`` (the Tchebycheff scalarisation, which can reach every
Pareto-optimal point). Its gradient is ``sum_t w_t g_t`` with
``w = lambda * softmax(lambda (L - z) / mu)`` from this step's losses (held constant):
weights in ``[0, max lambda]``, summing to 1 for ``lambda = 1``. Defaults: uniform
preference ``lambda = 1``, ideal point ``z = 0`` (losses are nonnegative), ``mu = 1``.
With ``log_losses=True`` the scalarisation acts on ``log L`` (the variant of the
paper's multi-task experiments that makes tasks' scales comparable); then
``w_t = lambda_t softmax(...)_t / L_t``, floored at ``eps``.

NumPy reference written from the paper's Eq. 9 (``tests/golden/mtl/make_golden.py``).

References:
  Lin et al. 2024, "Smooth Tchebycheff Scalarization for Multi-Objective
  Optimization", ICML, Eq. 9.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from modular.mtl.gls import LastLosses
from modular.mtl.method import Weighting, register
from modular.mtl.options import greater, option


def stch_weights(losses, present, mu: float, log_losses: bool, eps: float):
  """``[T]`` gradient weights of the smooth Tchebycheff scalarisation."""
  p = present > 0
  l = jnp.asarray(losses, jnp.float32)
  l = jnp.where(jnp.isfinite(l), l, jnp.finfo(jnp.float32).max)
  x = jnp.log(jnp.maximum(l, eps)) if log_losses else l
  w = jnp.where(p, jax.nn.softmax(jnp.where(p, x / mu, -jnp.inf)), 0.0)
  w = jnp.where(jnp.isfinite(w), w, 0.0)
  return w / jnp.maximum(l, eps) if log_losses else w


@register("stch")
@dataclasses.dataclass(eq=False)
class STCH(Weighting):
  """Smooth Tchebycheff weighting (weights from the current losses).

  Args:
    mu: smoothing (``mu -> 0``: the max; large: the mean).
    log_losses: scalarise ``log L`` instead of ``L``.
    eps: floor on the losses for ``log_losses``.
  """

  mu: float = option(1.0, greater(0.0))
  log_losses: bool = option(False)
  eps: float = option(1e-8, greater(0.0))


  def weight_bounds(self, num_tasks):
    """A softmax: [0, 1]; with ``log_losses`` divided by ``L_t`` (unbounded above)."""
    del num_tasks
    return 0.0, float("inf") if self.log_losses else 1.0

  def init(self, params):
    del params
    return LastLosses(jnp.ones((self._require_num_tasks(),), jnp.float32))

  def loss_weights(self, state, present):
    """The weights at the last observed losses (the step uses ``current_weights``)."""
    return stch_weights(state.losses, present, self.mu, self.log_losses, self.eps)

  def current_weights(self, state, losses, present):
    del state
    return stch_weights(losses, present, self.mu, self.log_losses, self.eps)

  def observe(self, state, losses, present):
    p = jnp.asarray(present) > 0
    new = LastLosses(jnp.where(p, jnp.asarray(losses, jnp.float32), state.losses))
    return new, {"weights": self.current_weights(state, losses, present)}
