"""Loss weightings that need no per-task gradients: mean, uncertainty weighting, DWA.

The training loop differentiates ``sum_t stop_gradient(w_t) L_t + extra_loss`` once
(the cost of a plain step) and then calls ``observe`` with the per-task losses to
advance the method's state. Weights of absent tasks are 0.

* ``mean``: ``w_t = 1 / #present`` (the default; ``equal`` is an alias).
* ``uncertainty``: learned log-variances ``s_t``, objective
  ``sum_t exp(-s_t) L_t + s_t``; ``w_t = exp(-s_t)``. ``observe`` takes one SGD step
  on ``s`` with the gradient ``1 - exp(-s_t) L_t`` (present tasks with a finite loss
  only). ``extra_loss`` returns ``sum_t s_t``, constant in the parameters (it only
  completes the reported objective). Bounds: ``s_t`` is clipped to
  ``[LOG_VAR_MIN, LOG_VAR_MAX] = [-5, 5]``, so ``w_t`` stays in ``[e^-5, e^5]``
  ``~ [0.0067, 148]``: the optimum ``s_t = log L_t`` is -inf for a solved task
  (``L_t = 0``), and without the clip ``w_t`` overflows (inf after ~8900 steps at
  lr 0.01) and the objective becomes NaN.
* ``dwa``: ``w_t = T' softmax_t(r_t / temperature)`` over the ``T'`` present tasks,
  ``r_t = L_t(k-1) / L_t(k-2)`` from the last two observations of task ``t``
  (``r_t = 1`` until a task has two). The paper uses epoch-average losses; call
  ``observe`` with averaged losses at the period you want. Weights sum to ``T'``, as
  in the paper, so the update is ``T'`` times the ``mean`` one at equal weights.
  Bounds: ``r_t`` is clipped to ``[0, MAX_RATIO] = [0, 100]`` with ``0 / 0 = 1`` and
  ``x / 0 = MAX_RATIO``; a non-finite loss is not recorded (as if absent); so every
  present weight is in ``[0, T']``.

References:
  Kendall et al. 2018, "Multi-Task Learning Using Uncertainty to Weigh Losses for
  Scene Geometry and Semantics", CVPR; Liu et al. 2019, "End-to-End Multi-Task
  Learning with Attention", CVPR (DWA).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from modular.mtl.method import Weighting, register
from modular.mtl.options import greater, option

LOG_VAR_MIN, LOG_VAR_MAX = -5.0, 5.0  # uncertainty: s_t range, w_t in [e^-5, e^5]
MAX_RATIO = 100.0                      # DWA: largest loss ratio L(k-1) / L(k-2)


def _present_mask(present: jax.Array) -> jax.Array:
  return jnp.asarray(present, jnp.float32) > 0


@register("mean", "equal")
@dataclasses.dataclass(eq=False)
class Mean(Weighting):
  """Plain mean over the present tasks (the default method)."""

  needs_losses = False

  def loss_weights(self, state, present):
    del state
    p = _present_mask(present)
    return jnp.where(p, 1.0, 0.0) / jnp.maximum(jnp.sum(p), 1)

  def observe(self, state, losses, present):
    del losses
    return state, {"weights": self.loss_weights(state, present)}


class UncertaintyState(NamedTuple):
  """Learned log-variances ``s`` ``[T]``."""
  log_var: jax.Array


@register("uncertainty")
@dataclasses.dataclass(eq=False)
class Uncertainty(Weighting):
  """Uncertainty weighting with an SGD step on ``s`` per ``observe``.

  ``s`` is the state: checkpoints and resumes bit for bit.

  Args:
    num_tasks: T.
    lr: learning rate of ``s``.
    init: initial ``s_t``.
    task_specific: path regexes (used by ``combine`` only).
  """

  num_tasks: int = 0
  lr: float = option(1e-2, greater(0.0))
  init_value: float = option(0.0)

  def init(self, params):
    del params
    s0 = min(max(self.init_value, LOG_VAR_MIN), LOG_VAR_MAX)
    return UncertaintyState(jnp.full((self._require_num_tasks(),), s0, jnp.float32))

  def loss_weights(self, state, present):
    return jnp.where(_present_mask(present), jnp.exp(-state.log_var), 0.0)

  def observe(self, state, losses, present):
    weights = self.loss_weights(state, present)
    losses = jnp.asarray(losses, jnp.float32)
    ok = _present_mask(present) & jnp.isfinite(losses)
    # exp(-s) <= e^5, so the product is finite or +-inf, never NaN; the clip absorbs inf.
    grad = jnp.where(ok, 1.0 - jnp.exp(-state.log_var) * jnp.where(ok, losses, 0.0), 0.0)
    new = UncertaintyState(jnp.clip(state.log_var - self.lr * grad, LOG_VAR_MIN, LOG_VAR_MAX))
    return new, {"weights": weights, "log_var": new.log_var}

  def weight_bounds(self, num_tasks):
    del num_tasks
    return float(jnp.exp(-LOG_VAR_MAX)), float(jnp.exp(-LOG_VAR_MIN))

  def extra_loss(self, state):
    return jnp.sum(state.log_var)


class DWAState(NamedTuple):
  """Last two observed losses per task and how many were observed."""
  last: jax.Array       # [T] L_t(k-1)
  before: jax.Array     # [T] L_t(k-2)
  count: jax.Array      # [T] int32


@register("dwa")
@dataclasses.dataclass(eq=False)
class DWA(Weighting):
  """Dynamic Weight Average.

  The last two losses are the state: checkpoints and resumes bit for bit.

  Args:
    num_tasks: T.
    temperature: softmax temperature (2 in the paper).
    task_specific: path regexes (used by ``combine`` only).
  """

  num_tasks: int = 0
  temperature: float = option(2.0, greater(0.0))

  def init(self, params):
    del params
    t = self._require_num_tasks()
    return DWAState(jnp.ones((t,), jnp.float32), jnp.ones((t,), jnp.float32),
                    jnp.zeros((t,), jnp.int32))

  def loss_weights(self, state, present):
    p = _present_mask(present)
    safe = jnp.where(state.before > 0, state.before, 1.0)
    ratio = jnp.where(state.before > 0, state.last / safe,
                      jnp.where(state.last > 0, MAX_RATIO, 1.0))  # x / 0, 0 / 0
    ratio = jnp.where(state.count >= 2, jnp.clip(ratio, 0.0, MAX_RATIO), 1.0)
    logits = jnp.where(p, ratio / self.temperature, -1e30)  # finite: no NaN if none present
    return jnp.where(p, jnp.sum(p) * jax.nn.softmax(logits), 0.0)

  def observe(self, state, losses, present):
    weights = self.loss_weights(state, present)
    losses = jnp.asarray(losses, jnp.float32)
    p = _present_mask(present) & jnp.isfinite(losses)  # a non-finite loss is not recorded
    new = DWAState(last=jnp.where(p, losses, state.last),
                   before=jnp.where(p, state.last, state.before),
                   count=state.count + p.astype(jnp.int32))
    return new, {"weights": weights}

  def weight_bounds(self, num_tasks):
    return 0.0, float(num_tasks)


def mean() -> optax.GradientTransformationExtraArgs:
  """The mean over present tasks as an optax transform over ``[T, ...]`` gradients."""
  return Mean().as_optax()


def uncertainty(num_tasks: int, lr: float = 1e-2, init: float = 0.0,
                task_specific: Sequence[str] = ()) -> optax.GradientTransformationExtraArgs:
  """Uncertainty weighting as an optax transform (needs ``losses=`` in update).

  Args:
    num_tasks: T.
    lr: learning rate of the log-variances.
    init: their initial value.
    task_specific: path regexes of task-specific parameters.

  Returns:
    The transform.
  """
  return Uncertainty(num_tasks, lr, init, task_specific=task_specific).as_optax()


def dwa(num_tasks: int, temperature: float = 2.0,
        task_specific: Sequence[str] = ()) -> optax.GradientTransformationExtraArgs:
  """DWA as an optax transform (needs ``losses=`` in update).

  Args:
    num_tasks: T.
    temperature: softmax temperature.
    task_specific: path regexes of task-specific parameters.

  Returns:
    The transform.
  """
  return DWA(num_tasks, temperature, task_specific=task_specific).as_optax()
