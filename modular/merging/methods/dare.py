"""DARE: drop each task-vector entry with probability ``p``, rescale the rest by 1/(1-p).

``tau_t' = m_t * tau_t / (1 - p)`` with ``m_t ~ Bernoulli(1 - p)`` per entry, which keeps
the expectation of every entry; the dropped task vectors are then merged by Task
Arithmetic (``dare``: ``delta = sum_t w_t tau_t'``, peft's ``dare_linear``) or by TIES's
sign election and disjoint mean (``dare_ties``, peft's ``dare_ties``). The paper shows
that ``p = 0.9`` leaves fine-tuned language models' abilities intact.

The keep mask ``m [T, *shape]`` is passed explicitly (e.g. to replay peft's draw) or drawn
from this leaf's key (``merge`` folds the leaf index into the merge's key), so a merge is
reproducible from its seed.

References:
  Yu et al. 2024, "Language Models are Super Mario: Absorbing Abilities from Homologous
  Models as a Free Lunch", ICML, Sec. 4 (Eq. 2).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from modular.merging import ops
from modular.merging.method import MergeMethod, at_least, one_of, option, per_task, register


def _drop_rate(p: float) -> str | None:
  return None if 0.0 <= p < 1.0 else f"must be in [0, 1), got {p!r}"


@register("dare")
@dataclasses.dataclass(eq=False)
class DARE(MergeMethod):
  """Drop And REscale, then task arithmetic (peft's ``dare_linear``, ``density = 1 - p``).

  Attributes:
    p: the drop rate.
    scaling: lambda.
  """

  random = True
  p: float = option(0.9, _drop_rate)
  scaling: float = option(1.0, at_least(0.0))
  identity_options = {"p": 0.0, "scaling": 1.0}

  def drop(self, tau: jax.Array, mask: jax.Array | None, key: jax.Array | None) -> jax.Array:
    """``m * tau / (1 - p)`` for ``tau [T, *shape]``; ``mask`` wins over ``key``."""
    if mask is None:
      if key is None:
        raise ValueError(f"merging: {self.name} needs a keep mask or a PRNG key (seed)")
      mask = ops.random_mask(key, tau.shape, self.p)
    if mask.shape != tau.shape:
      raise ValueError(f"merging.masks: a keep mask of shape {mask.shape} for a leaf of "
                       f"shape {tau.shape}")
    return jnp.where(mask, tau / (1.0 - self.p), 0).astype(tau.dtype)

  def combine(self, tau: jax.Array, weights: jax.Array, *, mask: jax.Array | None = None,
              key: jax.Array | None = None, **unused) -> jax.Array:
    """``[T, *shape], [T] -> [*shape]``."""
    return jnp.sum(self.drop(tau, mask, key) * per_task(weights, tau), axis=0)


@register("dare_ties")
@dataclasses.dataclass(eq=False)
class DARETies(DARE):
  """DARE's drop and rescale, then TIES's sign election and disjoint mean (peft's ``dare_ties``).

  Attributes:
    p: the drop rate.
    sign: ``"total"`` or ``"frequency"``.
    scaling: lambda.
  """

  sign: str = option("total", one_of("total", "frequency"))

  def combine(self, tau: jax.Array, weights: jax.Array, *, mask: jax.Array | None = None,
              key: jax.Array | None = None, **unused) -> jax.Array:
    """``[T, *shape], [T] -> [*shape]``."""
    return ops.ties_combine(self.drop(tau, mask, key), weights, self.sign)
