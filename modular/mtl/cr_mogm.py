"""CR-MOGM: smooth another method's task weights with an exponential moving average.

``lambda_k = alpha lambda_(k-1) + (1 - alpha) lambda_hat_k``, where ``lambda_hat_k`` are
the weights the base method (``options.base``, any Gram-space method: ``mgda`` by
default, as in the paper) gives this step; ``lambda_1 = lambda_hat_1``. The update is
``sum_t lambda_t g_t``. The base method's state and ``lambda`` are the state:
checkpoints and resumes bit for bit. The base runs with its default options.

Absent tasks: the average runs over the steps where a task is present. An absent task
keeps its ``lambda_t`` (and gets 0 in the update), and ``lambda_t = lambda_hat_t`` at
the task's first present step, not at the run's first step (the EMA of a task missing
from the first batch would otherwise start from 0 and climb by ``1 - alpha`` a step).

References:
  Zhou et al. 2022, "On the Convergence of Stochastic Multi-Objective Gradient
  Manipulation and Beyond", NeurIPS (CR-MOGM); TorchJD 0.18.0's ``CRMOGMWeighting`` is
  the reference.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from modular.mtl.method import METHODS, Method, register
from modular.mtl.options import in_range, option


class CRMOGMState(NamedTuple):
  base: Any               # the base method's state
  weights: jax.Array      # [T] lambda
  started: jax.Array      # [T] bool: the task has been present


def _gram_method(name: str) -> str | None:
  if name == "cr_mogm" or name not in METHODS:
    return f"must name another registered method, got {name!r}"
  cls = METHODS.get(name)
  if not cls.needs_task_grads or not cls.linear_in_grads:
    return f"must be a Gram-space method (one giving task weights), got {name!r}"
  return None


@register("cr_mogm")
@dataclasses.dataclass(eq=False)
class CRMOGM(Method):
  """EMA of a base method's weights.

  Args:
    num_tasks: T.
    base: registry name of the base method.
    alpha: EMA factor (0.9).
  """

  num_tasks: int = 0
  base: str = option("mgda", _gram_method)
  alpha: float = option(0.9, in_range(0.0, 1.0))

  def __post_init__(self):
    super().__post_init__()
    cls = METHODS.get(self.base)
    kwargs = {"task_specific": self.task_specific, "num_tasks": self.num_tasks}
    self._base = cls(**kwargs)

  def init(self, params):
    t = self._require_num_tasks()
    return CRMOGMState(self._base.init(params), jnp.zeros((t,), jnp.float32),
                       jnp.zeros((t,), bool))

  def solve(self, gram, state, losses, present):
    contrib, base_state, extra = self._base.solve(gram, state.base, losses, present)
    hat = jnp.sum(contrib * present[:, None] * present[None, :], axis=0)
    p = present > 0
    lam = jnp.where(state.started, self.alpha * state.weights + (1 - self.alpha) * hat, hat)
    lam = jnp.where(jnp.isfinite(lam) & p, lam, state.weights)
    new = CRMOGMState(base_state, lam, state.started | p)
    return jnp.diag(lam), new, {f"base_{k}": v for k, v in extra.items()}

  def weight_bounds(self, num_tasks):
    """An EMA of the base's weights at the steps where the task is present."""
    return self._base.weight_bounds(num_tasks)
