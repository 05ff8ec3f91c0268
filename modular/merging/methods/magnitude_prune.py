"""Magnitude-pruned Task Arithmetic: trim each task vector to its top ``k``, then add.

``delta = sum_t w_t trim_k(tau_t)``: TIES's trim step without the sign election, the
ablation in the TIES paper's Table 7 and peft's ``magnitude_prune``. The trim is per
tensor by default (peft; ``trim_scope="model"`` trims over each task's whole model).

References:
  Yadav et al. 2023, "TIES-Merging: Resolving Interference When Merging Models",
  NeurIPS, Sec. 7 (ablation of the steps); Ilharco et al. 2023, "Editing Models with
  Task Arithmetic", ICLR.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from modular.merging.method import at_least, in_range, one_of, option, per_task, register
from modular.merging.methods.ties import TIES


@register("magnitude_prune")
@dataclasses.dataclass(eq=False)
class MagnitudePrune(TIES):
  """Trim then sum (peft's ``magnitude_prune``).

  Attributes:
    k: the kept fraction (peft's ``density``).
    trim_scope: ``"tensor"`` (default, peft) or ``"model"``.
    scaling: lambda.
  """

  k: float = option(0.2, in_range(0.0, 1.0))
  sign: str = option("total", one_of("total"), doc="unused: no sign election")
  trim_scope: str = option("tensor", one_of("model", "tensor"))
  scaling: float = option(1.0, at_least(0.0))
  identity_options = {"k": 1.0, "scaling": 1.0}

  def combine(self, tau: jax.Array, weights: jax.Array, *, context: Any = None,
              **unused) -> jax.Array:
    """``[T, *shape], [T] -> [*shape]``."""
    return jnp.sum(self.trim(tau, context) * per_task(weights, tau), axis=0)
