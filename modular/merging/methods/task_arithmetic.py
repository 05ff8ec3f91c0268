"""Task Arithmetic: add the weighted sum of the task vectors to the base.

``theta = theta_0 + lambda * sum_t w_t tau_t``. The paper picks ``lambda`` on held-out
validation data; the default 0.3 is FusionBench's, a common choice for several tasks.
``average`` is the weighted mean ``sum_t w_t tau_t / sum_t w_t`` with ``lambda = 1``:
with equal weights, the plain average of the fine-tuned models.

References:
  Ilharco et al. 2023, "Editing Models with Task Arithmetic", ICLR, Eq. 1 and Sec. 2.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from modular.merging.method import MergeMethod, at_least, option, per_task, register


@register("task_arithmetic")
@dataclasses.dataclass(eq=False)
class TaskArithmetic(MergeMethod):
  """``delta = sum_t w_t tau_t`` (peft's ``task_arithmetic``).

  Attributes:
    scaling: lambda (default 0.3).
  """

  scaling: float = option(0.3, at_least(0.0))
  identity_options = {"scaling": 1.0}

  def combine(self, tau: jax.Array, weights: jax.Array, **unused) -> jax.Array:
    """``[T, *shape], [T] -> [*shape]``."""
    return jnp.sum(tau * per_task(weights, tau), axis=0)


@register("average")
@dataclasses.dataclass(eq=False)
class Average(MergeMethod):
  """``delta = sum_t w_t tau_t / sum_t w_t`` (simple or weighted averaging).

  Attributes:
    scaling: lambda (default 1: the mean of the fine-tuned models).
  """

  scaling: float = option(1.0, at_least(0.0))

  def combine(self, tau: jax.Array, weights: jax.Array, **unused) -> jax.Array:
    """``[T, *shape], [T] -> [*shape]``; zero weights everywhere give zero."""
    total = jnp.sum(weights)
    w = weights / jnp.where(total == 0, 1.0, total)
    return jnp.sum(tau * per_task(w, tau), axis=0)
