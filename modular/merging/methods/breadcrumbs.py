"""Model Breadcrumbs: drop both tails of each task vector's magnitudes, then add.

Per task and per layer (tensor), the entries with the smallest ``beta`` fraction of
magnitudes (the noise of fine-tuning) and the largest ``gamma`` fraction (the outliers
that cause interference) are zeroed; the rest is merged by task arithmetic,
``theta = theta_0 + lambda * sum_t w_t mask_t * tau_t``. Defaults: the paper's sweeps
settle near ``beta = 0.85`` and ``gamma = 0.01`` (mergekit's default ``gamma``);
``lambda`` as task arithmetic's. mergekit's ``breadcrumbs`` sets the kept fraction
instead of ``beta`` (its ``density``: our ``k``; the bottom fills what ``gamma`` leaves):
``k`` set selects that rule.

References:
  Davari & Belilovsky 2024, "Model Breadcrumbs: Scaling Multi-Task Model Merging with
  Sparse Masks", ECCV, Sec. 3.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from modular.merging import ops
from modular.merging.method import MergeMethod, at_least, in_range, option, per_task, register


def _fraction_or_none(v) -> str | None:
  if v is None or (isinstance(v, (int, float)) and 0.0 <= v <= 1.0):
    return None
  return f"must be None or in [0, 1], got {v!r}"


@register("breadcrumbs")
@dataclasses.dataclass(eq=False)
class Breadcrumbs(MergeMethod):
  """Outlier-and-noise-masked task arithmetic.

  Attributes:
    beta: fraction of the smallest magnitudes dropped per task and tensor.
    gamma: fraction of the largest magnitudes dropped per task and tensor.
    k: None (the paper's ``beta``) or the kept fraction (mergekit's ``density``).
    scaling: lambda.
  """

  beta: float = option(0.85, in_range(0.0, 1.0))
  gamma: float = option(0.01, in_range(0.0, 1.0))
  k: float | None = option(None, _fraction_or_none)
  scaling: float = option(0.3, at_least(0.0))
  identity_options = {"beta": 0.0, "gamma": 0.0, "scaling": 1.0}

  def __post_init__(self):
    super().__post_init__()
    if self.k is None and self.beta + self.gamma > 1.0:
      raise ValueError(f"merging.options.beta: beta + gamma must be <= 1, got "
                       f"{self.beta} + {self.gamma}")

  def combine(self, tau: jax.Array, weights: jax.Array, **unused) -> jax.Array:
    """``[T, *shape], [T] -> [*shape]``."""
    masked = tau * ops.outlier_mask(tau, self.beta, self.gamma, self.k)
    return jnp.sum(masked * per_task(weights, tau), axis=0)
