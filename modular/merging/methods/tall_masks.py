"""TALL masks: one binary mask per task over the task-arithmetic merged vector.

The merged vector is Task Arithmetic's ``tau_MTL = sum_t w_t tau_t``; task ``t`` keeps
the coordinates where its own task vector carries more of the merged vector than the
other tasks do,

  m_t = |w_t tau_t| >= lam * |tau_MTL - w_t tau_t|,     theta_t = theta_0 + lambda * m_t * tau_MTL,

so each task gets its own model from one shared vector plus a 1-bit mask (the paper's
compression: ``tau_MTL`` and ``T`` masks instead of ``T`` fine-tuned models). The
result is one model per task (``per_task_output``; ``merging.merge_tasks``, and
``merge_runs`` evaluates each run's tasks with its own model). The paper selects
``lam`` per task from ``{0.2, 0.3, 0.4, 0.5, 0.6}`` on validation data; the default 0.4
is the middle of that grid. ``lambda`` (``scaling``) is 1, as the paper's
reconstruction ``theta_0 + m_t * tau_MTL``.

References:
  Wang et al. 2024, "Localizing Task Information for Improved Model Merging and
  Compression", ICML, Sec. 3 (Eq. 3, TALL masks).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from modular.merging.method import MergeMethod, at_least, option, per_task, register


def tall_masks(tau: jax.Array, weights: jax.Array, lam: float) -> tuple[jax.Array, jax.Array]:
  """The merged vector and every task's mask.

  Args:
    tau: ``[T, *shape]`` task vectors of one leaf.
    weights: ``[T]``.
    lam: the mask threshold ``lambda_t`` (one for all tasks).

  Returns:
    ``(tau_MTL [*shape], masks bool [T, *shape])``.
  """
  weighted = tau * per_task(weights, tau)  # [T, *shape]
  merged = jnp.sum(weighted, axis=0)  # [*shape]
  masks = jnp.abs(weighted) >= lam * jnp.abs(merged[None] - weighted)
  return merged, masks


@register("tall_masks")
@dataclasses.dataclass(eq=False)
class TallMasks(MergeMethod):
  """Task-specific masks over the task-arithmetic vector (one model per task).

  Attributes:
    lam: the mask threshold.
    scaling: lambda on the masked merged vector.
  """

  per_task_output = True
  lam: float = option(0.4, at_least(0.0))
  scaling: float = option(1.0, at_least(0.0))

  def combine(self, tau: jax.Array, weights: jax.Array, **unused) -> jax.Array:
    """``[T, *shape], [T] -> [T, *shape]``: ``m_t * tau_MTL`` per task."""
    merged, masks = tall_masks(tau, weights, self.lam)
    return jnp.where(masks, merged[None], 0).astype(tau.dtype)
