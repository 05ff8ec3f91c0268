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

TorchJD 0.18.0's ``ExcessMTL`` is the reference (same normalisation: with no warm-up,
``n_warmup_steps=0``, the first step's risks are not divided; our default is 1).

Absent tasks: warm-up, normaliser and first step are per task and count the task's own
present steps, so a task missing from the first batches takes its normaliser from its
first present step(s). An absent task keeps its state entries and weight, gets 0 in the
update, and sits out the mirror-descent step (so do tasks still in their warm-up).
Before, the normaliser was taken at the run's first step, where an absent task's risk is
0: its later risks were divided by 1e-7, its weight went to 1 and every other task's to 0
for the rest of the run.

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
  steps: jax.Array        # int32 [T] present steps of each task


@register("excess_mtl")
@dataclasses.dataclass(eq=False)
class ExcessMTL(LeafwiseMethod):
  """ExcessMTL (needs the gradients; state shaped like ``[T, ...]`` shared gradients).

  Args:
    num_tasks: T.
    robust_step_size: step of the weights' mirror descent (1.0).
    n_warmup_steps: steps whose risks are averaged into the normaliser (1). TorchJD's
      default is 0, where the first weight step takes the raw, undivided risks: on a
      real model those are in the hundreds, the softmax is one-hot and the other tasks
      stop training for the rest of the run; with 1 every step sees normalised risks.
  """

  num_tasks: int = 0
  robust_step_size: float = option(1.0, greater(0.0))
  n_warmup_steps: int = option(1, at_least(0))
  simplex_weights = True  # mirror descent on the simplex

  def init(self, params):
    t = self._require_num_tasks()
    z = jnp.zeros((t,), jnp.float32)
    return ExcessMTLState(self.shared_zeros(params, t), jnp.full((t,), 1.0 / t, jnp.float32),
                          z, z, jnp.zeros((t,), jnp.int32))

  def aggregate(self, leaves, state, gram, losses, present):
    del gram, losses
    p = present > 0
    new_acc, risk = [], jnp.zeros_like(state.weights)
    for g, a in zip(leaves, state.sq_sum):
      sq = jnp.square(g.astype(jnp.float32))
      a = jnp.where(p.reshape((-1,) + (1,) * (g.ndim - 1)), a + sq, a)
      new_acc.append(a)
      risk = risk + jnp.sum(sq / jnp.sqrt(a + 1e-7), axis=tuple(range(1, g.ndim)))
    risk = jnp.where(p, risk, 0.0)
    n_warm = self.n_warmup_steps
    warm = p & (state.steps < n_warm)                      # [T] in its warm-up
    warm_sum = jnp.where(warm, state.warm_sum + risk, state.warm_sum)
    first = p & (state.steps == n_warm)                    # [T] its normaliser is set now
    initial = jnp.where(first, warm_sum / n_warm if n_warm > 0 else risk, state.initial)
    scaled = jnp.where(first & (n_warm == 0), risk, risk / (initial + 1e-7))
    ready = p & (state.steps >= n_warm)                    # [T] takes the weight step
    logw = jnp.log(jnp.maximum(state.weights, 1e-30))
    z = jnp.where(ready, logw + self.robust_step_size * scaled, -jnp.inf)
    stepped = jnp.where(ready, jax.nn.softmax(z) * jnp.sum(jnp.where(ready, state.weights, 0.0)),
                        state.weights)
    stepped = jnp.minimum(stepped, 1.0)  # float drift of the partial sums stays on the simplex
    weights = jnp.where(jnp.any(ready), stepped, state.weights)
    weights = jnp.where(jnp.isfinite(weights), weights, state.weights)
    out = [jnp.tensordot(jnp.where(p, weights, 0.0).astype(g.dtype), g, axes=(0, 0))
           for g in leaves]
    new = ExcessMTLState(tuple(new_acc), weights, initial, warm_sum,
                         state.steps + p.astype(jnp.int32))
    return out, new, {"weights": jnp.where(p, weights, 0.0)}
