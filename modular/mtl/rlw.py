"""Random loss weighting (RLW): fresh random task weights at every step.

``w = softmax(z)`` over the present tasks with ``z ~ N(0, I)`` drawn per step (the
paper's Normal variant, LibMTL's ``dist='Normal'`` and TorchJD's ``Random``); the
weights sum to 1. A loss weighting: one backward pass. The draws come from a PRNG key
in the state (advanced by ``observe``), so a resumed run draws the same weights (bit
for bit). Registered as ``rlw`` and ``random`` (TorchJD's name).

References:
  Lin et al. 2022, "Reasonable Effectiveness of Random Weighting: A Litmus Test for
  Multi-Task Learning", TMLR, Algorithm 1 (Normal distribution).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from modular.mtl.graddrop import KeyState
from modular.mtl.method import Weighting, register
from modular.mtl.pcgrad import _key_data


def random_weights(z, present):
  """``softmax(z)`` over the present tasks ``[T]`` (0 elsewhere)."""
  p = present > 0
  return jnp.where(p, jax.nn.softmax(jnp.where(p, z, -jnp.inf)), 0.0)


@register("rlw", "random")
@dataclasses.dataclass(eq=False)
class RLW(Weighting):
  """Random loss weighting (state: a PRNG key).

  Args:
    seed: int seed or PRNG key of the draws.
  """

  seed: Any = 0
  needs_losses = False

  def init(self, params):
    del params
    return KeyState(_key_data(self.seed))

  def loss_weights(self, state, present):
    p = jnp.asarray(present, jnp.float32)
    z = jax.random.normal(jax.random.wrap_key_data(state.key), p.shape, jnp.float32)
    return random_weights(z, p)

  def observe(self, state, losses, present):
    del losses
    weights = self.loss_weights(state, present)
    key = jax.random.split(jax.random.wrap_key_data(state.key))[0]
    return KeyState(jax.random.key_data(key)), {"weights": weights}
