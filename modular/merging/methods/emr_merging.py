"""EMR-merging: elect one unified task vector, then a mask and a rescaler per task.

1. Elect: ``sigma = sign(sum_t tau_t)`` per coordinate, and the largest magnitude among
   the tasks that agree with it, ``eps = max_t |tau_t| [tau_t sigma > 0]``: the unified
   vector ``tau_uni = sigma * eps``.
2. Mask: ``M_t = tau_t * tau_uni > 0`` (the coordinates where task ``t`` moves the way
   ``tau_uni`` does).
3. Rescale: ``lambda_t = sum |tau_t| / sum |M_t * tau_uni|`` over the whole model, so
   task ``t``'s model moves as far as its fine-tuning did (0 when nothing is kept).

Task ``t``'s model is ``theta_0 + lambda_t M_t * tau_uni``: one model per task
(``per_task_output``; ``merging.merge_tasks``; ``merge_runs`` evaluates each run's
tasks with its own). Tuning-free: no option but ``scaling`` (1). Weights ``w_t`` scale
each task vector before the election (ones in the paper). Where ``sum_t tau_t = 0`` the
elected sign is + (as TIES's election here).

References:
  Huang et al. 2024, "EMR-Merging: Tuning-Free High-Performance Model Merging",
  NeurIPS, Sec. 3 (Eqs. 1-5).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp

from modular.merging import ops
from modular.merging.method import MergeMethod, at_least, option, per_task, register


def unified(weighted: jax.Array) -> tuple[jax.Array, jax.Array]:
  """``tau_uni [*shape]`` and the masks ``M bool [T, *shape]`` of ``weighted [T, *shape]``."""
  sign = ops.elect_sign(weighted, "total")  # [*shape]
  agree = weighted * sign[None] > 0  # [T, *shape]
  eps = jnp.max(jnp.where(agree, jnp.abs(weighted), 0), axis=0)
  tau_uni = sign * eps
  return tau_uni, weighted * tau_uni[None] > 0


@register("emr_merging")
@dataclasses.dataclass(eq=False)
class EMRMerging(MergeMethod):
  """Elect, Mask & Rescale (one model per task).

  Attributes:
    scaling: lambda on each task's rescaled, masked unified vector.
  """

  per_task_output = True
  scaling: float = option(1.0, at_least(0.0))

  def prepare(self, leaves: Callable[[], Iterable[jax.Array]], *,
              weights: jax.Array | None = None, **unused) -> jax.Array:
    """The rescalers ``lambda [T]`` over the whole model (one leaf at a time)."""
    num = den = 0.0
    for tau in leaves():
      w = jnp.ones((tau.shape[0],), jnp.float32) if weights is None else weights
      weighted = tau.astype(jnp.float32) * per_task(w, tau)
      tau_uni, masks = unified(weighted)
      axes = tuple(range(1, tau.ndim))
      num = num + jnp.sum(jnp.abs(weighted), axis=axes)
      den = den + jnp.sum(jnp.where(masks, jnp.abs(tau_uni)[None], 0), axis=axes)
    return jnp.where(den > 0, num / jnp.where(den > 0, den, 1.0), 0.0)

  def combine(self, tau: jax.Array, weights: jax.Array, *, context: Any = None,
              **unused) -> jax.Array:
    """``[T, *shape], [T] -> [T, *shape]``: ``lambda_t M_t tau_uni`` per task."""
    tau_uni, masks = unified(tau * per_task(weights, tau))
    out = jnp.where(masks, tau_uni[None], 0) * per_task(context, tau)
    return out.astype(tau.dtype)
