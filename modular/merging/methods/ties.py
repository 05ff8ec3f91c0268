"""TIES-Merging: trim each task vector to its top ``k``, elect a sign, take the disjoint mean.

1. Trim: keep the ``k`` largest-magnitude entries of each task vector, zero the rest. The
   paper (and its code) trims over a task's whole model, one threshold per task
   (``trim_scope="model"``, the default); peft trims each tensor on its own
   (``trim_scope="tensor"``, peft's convention).
2. Elect: per coordinate, the sign of ``sum_t tau_t`` (``sign="total"``, the paper's sign
   with the larger total magnitude; ``"frequency"`` counts tasks instead).
3. Disjoint merge: the mean over the tasks whose trimmed entry has the elected sign,
   each times its weight ``w_t`` (peft's weights; the paper has none: ones).

``theta = theta_0 + lambda * delta``; the paper's defaults are ``k = 0.2`` and
``lambda = 1`` when no validation data is used. Where the sum is exactly 0 the elected
sign is + (peft); the paper's code uses the majority over the whole model there (a set of
measure zero for real task vectors).

References:
  Yadav et al. 2023, "TIES-Merging: Resolving Interference When Merging Models",
  NeurIPS, Algorithm 1.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable

import jax

from modular.merging import ops
from modular.merging.method import MergeMethod, at_least, in_range, one_of, option, register


@register("ties")
@dataclasses.dataclass(eq=False)
class TIES(MergeMethod):
  """TIES-Merging (peft's ``ties`` with ``trim_scope="tensor"``).

  Attributes:
    k: the kept fraction of each task vector (peft's ``density``).
    sign: ``"total"`` or ``"frequency"`` (peft's ``majority_sign_method``).
    trim_scope: ``"model"`` (paper) or ``"tensor"`` (peft).
    scaling: lambda.
  """

  k: float = option(0.2, in_range(0.0, 1.0))
  sign: str = option("total", one_of("total", "frequency"))
  trim_scope: str = option("model", one_of("model", "tensor"))
  scaling: float = option(1.0, at_least(0.0))
  identity_options = {"k": 1.0, "scaling": 1.0}

  def prepare(self, leaves: Callable[[], Iterable[jax.Array]], **unused) -> Any:
    """Per-task thresholds ``[T]`` over the whole model (``trim_scope="model"``)."""
    if self.trim_scope == "model":
      return ops.global_thresholds(leaves(), self.k)
    return None

  def trim(self, tau: jax.Array, context: Any) -> jax.Array:
    """The trimmed leaf ``[T, *shape]``."""
    if self.trim_scope == "model":
      return tau * ops.threshold_mask(tau, context)
    return tau * ops.topk_mask(tau, self.k)

  def combine(self, tau: jax.Array, weights: jax.Array, *, context: Any = None,
              **unused) -> jax.Array:
    """``[T, *shape], [T] -> [*shape]``."""
    return ops.ties_combine(self.trim(tau, context), weights, self.sign)
