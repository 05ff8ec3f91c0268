"""GradDrop: keep, per coordinate, only the gradients of one randomly chosen sign.

For every coordinate, ``P = 1/2 (1 + sum_t g_t / sum_t |g_t|)`` is the purity of the
positive sign; a uniform ``U`` draws the sign kept: task ``t``'s value survives if
``P > U`` and ``g_t > 0``, or ``P < U`` and ``g_t < 0``. The update is
``sum_t (leak + (1 - leak) M_t) g_t``. It needs the gradients (per coordinate), not
the Gram matrix; the shared ``[T, ...]`` leaves keep their layout.

Where applied: the paper drops at an activation layer (with ``rep_value_and_grad``
the gradients are those of the shared representation); TorchJD 0.18.0 applies it to the
Jacobian rows as here. The uniform draws come from a PRNG key in the state, so a
resumed run draws the same numbers (bit for bit).

References:
  Chen et al. 2020, "Just Pick a Sign: Optimizing Deep Multitask Models with Gradient
  Sign Dropout", NeurIPS, Eq. 1-3 (f = identity).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from modular.mtl.leafwise import LeafwiseMethod
from modular.mtl.method import register
from modular.mtl.options import in_range, option
from modular.mtl.pcgrad import _key_data


class KeyState(NamedTuple):
  """Raw PRNG key data (uint32[2])."""
  key: jax.Array


def graddrop_leaf(g, u, leak: float):
  """GradDrop on one leaf ``g`` ``[T, ...]`` with uniforms ``u`` ``[...]``.

  The purity and the draws are float32 whatever ``g``'s dtype (a bfloat16 gradient
  keeps the signs the float32 one keeps); the sum is formed in ``g``'s dtype.
  """
  g32 = g.astype(jnp.float32)
  total = jnp.sum(g32, axis=0)
  mag = jnp.sum(jnp.abs(g32), axis=0)
  purity = 0.5 * (1.0 + total / jnp.where(mag > 0, mag, 1.0))
  keep = ((purity > u) & (g > 0)) | ((purity < u) & (g < 0))
  return jnp.sum((leak + (1.0 - leak) * keep.astype(g.dtype)) * g, axis=0)


@register("graddrop")
@dataclasses.dataclass(eq=False)
class GradDrop(LeafwiseMethod):
  """Gradient sign dropout (needs the gradients; state: a PRNG key).

  Args:
    leak: share of every gradient kept regardless of sign (0 in the paper's main runs).
    seed: int seed or PRNG key of the uniforms.
  """

  leak: float = option(0.0, in_range(0.0, 1.0))
  seed: Any = 0
  linear_in_grads = False

  def init(self, params):
    del params
    return KeyState(_key_data(self.seed))

  def aggregate(self, leaves, state, gram, losses, present):
    del gram, losses, present
    key, sub = jax.random.split(jax.random.wrap_key_data(state.key))
    keys = jax.random.split(sub, len(leaves))
    out = [graddrop_leaf(g, jax.random.uniform(k, g.shape[1:], jnp.float32), self.leak)
           for g, k in zip(leaves, keys)]
    return out, KeyState(jax.random.key_data(key)), {}
