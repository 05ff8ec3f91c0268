"""FAMO: fast adaptive multitask optimisation, loss weights from one backward pass.

FAMO keeps task logits ``xi`` ``[T]``, ``z = softmax(xi)``, and descends along
``sum_t c z_t g_t / L_t`` with ``c = 1 / sum_t (z_t / L_t)``: weights
``w_t = c z_t / L_t`` from this step's losses (in ``[0, 1]``, summing to 1). After a
step the logits move so that every task's log-loss decreases at the same rate:

  ``delta = log L(k-1) - log L(k)``, ``xi <- xi - lr (J_z^T delta + gamma xi)``,
  ``J_z = diag(z) - z z^T`` (Algorithm 1; ``lr = 0.025``, ``gamma = 1e-3``).

Convention: the paper (and the authors' code) recompute the losses on the same batch
after the parameter update; in our single-pass loop ``observe`` sees the next step's
losses, so ``delta`` compares consecutive batches (a noisier estimate of the same
quantity, no extra forward pass), and the logits are updated from ``(L(k-1), L(k))``
before step ``k``'s weights are formed. The authors' code steps ``xi`` with Adam; the paper's
Algorithm 1 (followed here) uses a plain gradient step. Losses are floored at ``eps``
before the logarithm; absent tasks keep their logit and get weight 0. The logits and
the last losses are the state: checkpoints and resumes bit for bit.

NumPy reference from Algorithm 1 in ``tests/golden/mtl/make_golden.py``.

References:
  Liu et al. 2023, "FAMO: Fast Adaptive Multitask Optimization", NeurIPS, Algorithm 1.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from modular.mtl.method import Weighting, register
from modular.mtl.options import at_least, greater, option


class FAMOState(NamedTuple):
  """Task logits, last observed losses and whether each task has one."""
  logits: jax.Array     # [T]
  last: jax.Array       # [T]
  seen: jax.Array       # [T] bool


def _z(logits, p):
  return jnp.where(p, jax.nn.softmax(jnp.where(p, logits, -jnp.inf)), 0.0)


def famo_weights(logits, losses, present, eps: float):
  """``[T]``: ``c z_t / L_t`` over the present tasks."""
  p = present > 0
  inv = jnp.where(p, _z(logits, p) / jnp.maximum(jnp.asarray(losses, jnp.float32), eps), 0.0)
  total = jnp.sum(inv)
  w = inv / jnp.where(total > 0, total, 1.0)
  return jnp.where(jnp.isfinite(w), w, 0.0)


@register("famo")
@dataclasses.dataclass(eq=False)
class FAMO(Weighting):
  """FAMO (state: logits and last losses).

  Args:
    num_tasks: T.
    lr: step size of the logits (``beta`` in the paper).
    gamma: weight decay of the logits.
    eps: floor on the losses.
  """

  num_tasks: int = 0
  lr: float = option(0.025, greater(0.0))
  gamma: float = option(1e-3, at_least(0.0))
  eps: float = option(1e-8, greater(0.0))
  simplex_weights = True  # weights c z_t / L_t with c = 1 / sum_i z_i / L_i sum to 1

  def init(self, params):
    del params
    t = self._require_num_tasks()
    return FAMOState(jnp.zeros((t,), jnp.float32), jnp.ones((t,), jnp.float32),
                     jnp.zeros((t,), bool))

  def loss_weights(self, state, present):
    """The weights at the last observed losses (the step uses ``current_weights``)."""
    return famo_weights(state.logits, state.last, present, self.eps)

  def _advance(self, state, losses, present):
    """The logits after the update from the last and this step's losses."""
    p = jnp.asarray(present) > 0
    both = p & state.seen
    log = lambda x: jnp.log(jnp.maximum(x, self.eps))
    delta = jnp.where(both, log(state.last) - log(jnp.asarray(losses, jnp.float32)), 0.0)
    delta = jnp.where(jnp.isfinite(delta), delta, 0.0)
    z = _z(state.logits, both)
    grad = z * delta - z * jnp.sum(z * delta)                           # J_z^T delta
    return jnp.where(both, state.logits - self.lr * (grad + self.gamma * state.logits),
                     state.logits)

  def current_weights(self, state, losses, present):
    return famo_weights(self._advance(state, losses, present), losses, present, self.eps)

  def observe(self, state, losses, present):
    p = jnp.asarray(present) > 0
    losses = jnp.asarray(losses, jnp.float32)
    logits = self._advance(state, losses, present)
    weights = famo_weights(logits, losses, present, self.eps)
    new = FAMOState(logits, jnp.where(p, losses, state.last), state.seen | p)
    return new, {"weights": weights, "logits": logits}
