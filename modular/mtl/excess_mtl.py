"""ExcessMTL: weights that grow with each task's estimated excess risk.

Each task's excess risk is estimated from its gradient with a diagonal (AdaGrad-style)
curvature: ``H_t = sqrt(sum_k g_t(k)^2 + 1e-7)`` accumulated over steps, per
coordinate, and ``r_t = sum g_t^2 / H_t``. The risks are normalised by their first
value (or their mean over ``n_warmup_steps``) and the weights take a multiplicative
(mirror-descent) step on the simplex: ``w <- softmax(log w + robust_step_size r)``,
starting uniform. The update is ``sum_t w_t g_t``. During warm-up the weights stay
uniform. The accumulator is per coordinate, so this method needs the gradients and
keeps ``[T, ...]`` state shaped like the shared parameters (T times their memory);
everything (accumulators, weights, first risks, step count) is in the state:
checkpoints and resumes bit for bit.

TorchJD 0.18.0's ``ExcessMTL`` is the reference (same normalisation: with no warm-up
the first step's risks are not divided). Absent tasks keep their weight and get 0.

References:
  He et al. 2024, "Robust Multi-Task Learning with Excess Risks", ICML, Algorithm 1.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from modular.mtl.leafwise import LeafwiseMethod
from modular.mtl.method import register
from modular.mtl.options import at_least, greater, option


class ExcessMTLState(NamedTuple):
  sq_sum: tuple           # per shared leaf [T, ...] accumulated squared gradients
  weights: jax.Array      # [T]
  initial: jax.Array      # [T] first (or warm-up mean) risks
  warm_sum: jax.Array     # [T]
  steps: jax.Array        # int32 []


@register("excess_mtl")
@dataclasses.dataclass(eq=False)
class ExcessMTL(LeafwiseMethod):
  """ExcessMTL (needs the gradients; state shaped like ``[T, ...]`` shared gradients).

  Args:
    num_tasks: T.
    robust_step_size: step of the weights' mirror descent (1.0).
    n_warmup_steps: steps whose risks are averaged into the normaliser (0).
  """

  num_tasks: int = 0
  robust_step_size: float = option(1.0, greater(0.0))
  n_warmup_steps: int = option(0, at_least(0))
  simplex_weights = True  # mirror descent on the simplex

  def init(self, params):
    t = self._require_num_tasks()
    z = jnp.zeros((t,), jnp.float32)
    return ExcessMTLState(self.shared_zeros(params, t), jnp.full((t,), 1.0 / t, jnp.float32),
                          z, z, jnp.zeros((), jnp.int32))

  def aggregate(self, leaves, state, gram, losses, present):
    del gram, losses
    p = present > 0
    acc = state.sq_sum
    new_acc, risk = [], jnp.zeros_like(state.weights)
    for g, a in zip(leaves, acc):
      sq = jnp.square(g.astype(jnp.float32))
      a = a + sq
      new_acc.append(a)
      risk = risk + jnp.sum(sq / jnp.sqrt(a + 1e-7), axis=tuple(range(1, g.ndim)))
    warm = state.steps < self.n_warmup_steps
    warm_sum = jnp.where(warm, state.warm_sum + risk, state.warm_sum)
    first = state.steps == self.n_warmup_steps
    initial = jnp.where(first, warm_sum / max(self.n_warmup_steps, 1)
                        if self.n_warmup_steps > 0 else risk, state.initial)
    scaled = jnp.where(first & (self.n_warmup_steps == 0), risk, risk / (initial + 1e-7))
    logw = jnp.log(jnp.maximum(state.weights, 1e-30))
    z = jnp.where(p, logw + self.robust_step_size * scaled, -jnp.inf)
    stepped = jnp.where(p, jax.nn.softmax(z) * jnp.sum(jnp.where(p, state.weights, 0.0)),
                        state.weights)
    weights = jnp.where(warm | ~jnp.any(p), state.weights, stepped)
    weights = jnp.where(jnp.isfinite(weights), weights, state.weights)
    sq_sum = tuple(new_acc)
    out = [jnp.tensordot(jnp.where(p, weights, 0.0).astype(g.dtype), g, axes=(0, 0))
           for g in leaves]
    new = ExcessMTLState(sq_sum, weights, initial, warm_sum, state.steps + 1)
    return out, new, {"weights": jnp.where(p, weights, 0.0)}
