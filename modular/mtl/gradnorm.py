"""GradNorm: learned loss weights that balance the tasks' gradient norms.

With ``n_t = ||g_t||`` the norm of task ``t``'s gradient on the shared parameters
(read off the Gram diagonal), ``G_t = w_t n_t``, ``Gbar`` their mean over present
tasks, ``r_t = (L_t / L_t(0)) / mean(L / L(0))`` the relative inverse training rate,
GradNorm minimises ``L_grad = sum_t |G_t - Gbar r_t^alpha|`` over ``w`` with the
target held constant. One step per ``combine``:

  ``w_t <- w_t - lr * sign(G_t - Gbar r_t^alpha) * n_t``,

then the present tasks' weights are renormalised to keep their sum (so that
``sum_t w_t = T`` as in the paper, weights start at 1). The update of the network
uses the weights before this step: ``d = sum_t w_t g_t``. ``L_t(0)`` is the loss of
task ``t`` the first time it is present.

Bounds: every weight stays in ``[MIN_WEIGHT, T]`` and the weights keep summing to
``T``. The renormalisation is affine about ``MIN_WEIGHT`` (``w <- m + (w - m) k`` with
``k`` restoring the present tasks' sum), so it keeps the floor without pushing weights
below it. ``r_t`` is clipped to ``[0, MAX_RATIO]`` (``0 / 0 = 1``, ``x / 0 =
MAX_RATIO``); a task whose loss or gradient norm is not finite sits out the update of
the weights (its own weight is kept), so losses of 1e30, exact zeros and long
absences keep every weight finite.

The paper measures ``n_t`` on the last shared layer to save compute; here ``n_t`` is
over all shared parameters (as LibMTL does), which the Gram matrix gives for free.
Plain SGD on ``w``; the paper uses the network's optimizer.

References:
  Chen et al. 2018, "GradNorm: Gradient Normalization for Adaptive Loss Balancing in
  Deep Multitask Networks", ICML.
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from modular.mtl.method import Method, register
from modular.mtl.options import at_least, greater, option

MIN_WEIGHT = 1e-6   # floor of every weight
MAX_RATIO = 100.0   # largest L_t / L_t(0)


class GradNormState(NamedTuple):
  """Loss weights and the first observed loss of each task."""
  weights: jax.Array        # [T]
  initial_losses: jax.Array # [T] L_t(0)
  seen: jax.Array           # [T] bool: L_t(0) recorded


def gradnorm_step(state: GradNormState, norms: jax.Array, losses: jax.Array,
                  present: jax.Array, alpha: float, lr: float) -> tuple[GradNormState, dict]:
  """One GradNorm update of the weights.

  Args:
    state: current state.
    norms: ``[T]`` gradient norms ``n_t``.
    losses: ``[T]`` current losses.
    present: ``[T]`` float 0/1.
    alpha: restoring-force exponent.
    lr: learning rate of the weights.

  Returns:
    ``(new_state, stats)`` with stats ``gradnorm_loss`` [] and ``targets`` [T].
  """
  losses = jnp.asarray(losses, jnp.float32)
  norms = jnp.asarray(norms, jnp.float32)
  p = (present > 0) & jnp.isfinite(losses) & jnp.isfinite(norms)
  losses, norms = jnp.where(p, losses, 0.0), jnp.where(p, norms, 0.0)
  n_present = jnp.maximum(jnp.sum(p), 1)
  # L_t(0) is the loss at the task's first present step; absent tasks keep their entry.
  initial = jnp.where(state.seen | ~p, state.initial_losses, losses)
  safe = jnp.where(initial > 0, initial, 1.0)
  ratio = jnp.where(initial > 0, losses / safe, jnp.where(losses > 0, MAX_RATIO, 1.0))
  ratio = jnp.where(p, jnp.clip(ratio, 0.0, MAX_RATIO), 0.0)
  mean_ratio = jnp.sum(ratio) / n_present
  rel_rate = ratio / jnp.where(mean_ratio > 0, mean_ratio, 1.0)    # in [0, T]
  g_w = state.weights * norms                                      # [T]
  g_bar = jnp.sum(jnp.where(p, g_w, 0.0)) / n_present
  target = g_bar * rel_rate ** alpha                               # held constant
  grad = jnp.where(p, jnp.sign(g_w - target) * norms, 0.0)
  stepped = jnp.maximum(state.weights - lr * grad, MIN_WEIGHT)
  # Affine renormalisation about the floor: the present weights keep their sum.
  n = jnp.sum(p)
  room_before = jnp.maximum(jnp.sum(jnp.where(p, state.weights, 0.0)) - n * MIN_WEIGHT, 0.0)
  room_after = jnp.sum(jnp.where(p, stepped - MIN_WEIGHT, 0.0))
  scale = room_before / jnp.where(room_after > 0, room_after, 1.0)
  renormed = jnp.where(room_after > 0, MIN_WEIGHT + (stepped - MIN_WEIGHT) * scale,
                       MIN_WEIGHT + room_before / jnp.maximum(n, 1))
  t = state.weights.shape[0]
  new_w = jnp.where(p, jnp.clip(renormed, MIN_WEIGHT, t), state.weights)
  new = GradNormState(new_w, initial, state.seen | p)
  stats = {"gradnorm_loss": jnp.sum(jnp.where(p, jnp.abs(g_w - target), 0.0)),
           "targets": jnp.where(p, target, 0.0)}
  return new, stats


@register("gradnorm")
@dataclasses.dataclass(eq=False)
class GradNorm(Method):
  """GradNorm as a Gram-space method.

  The weights and first losses are the state: checkpoints and resumes bit for bit.

  Args:
    num_tasks: T.
    alpha: restoring-force exponent (1.5 is the paper's common choice).
    lr: learning rate of the weights.
    task_specific: path regexes of task-specific parameters.
  """

  num_tasks: int = 0
  alpha: float = option(1.5, at_least(0.0))
  lr: float = option(0.025, greater(0.0))

  def init(self, params):
    del params
    t = self._require_num_tasks()
    return GradNormState(jnp.ones((t,), jnp.float32), jnp.ones((t,), jnp.float32),
                         jnp.zeros((t,), bool))

  def solve(self, gram, state, losses, present):
    if losses is None:
      raise ValueError("mtl method 'gradnorm' needs losses= in combine/update")
    norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
    new, stats = gradnorm_step(state, norms, losses, present, self.alpha, self.lr)
    return jnp.diag(jnp.where(present > 0, state.weights, 0.0)), new, stats

  def weight_bounds(self, num_tasks):
    return MIN_WEIGHT, float(num_tasks)


def gradnorm(num_tasks: int, alpha: float = 1.5, lr: float = 0.025,
             task_specific: Sequence[str] = ()) -> optax.GradientTransformationExtraArgs:
  """GradNorm as an optax transform (needs ``losses=`` in update).

  Args:
    num_tasks: T.
    alpha: restoring-force exponent.
    lr: learning rate of the weights.
    task_specific: path regexes of task-specific parameters.

  Returns:
    The transform.
  """
  return GradNorm(num_tasks, alpha, lr, task_specific=task_specific).as_optax()
