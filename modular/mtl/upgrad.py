"""UPGrad: project every task gradient onto the dual cone of all of them, then average.

The dual cone of the task gradients is ``{d : <g_t, d> >= 0 for all t}``: a direction in
it increases no loss. UPGrad projects each ``g_i / T`` onto it and sums the
projections; the result is in the cone (non-conflicting), and for aligned gradients it
is the mean. By Proposition 1 of the paper, projecting ``J^T u`` gives ``J^T w`` with
``w = argmin_{v >= u} v^T G v``: a nonnegative quadratic program on the ``T x T`` Gram
matrix (``qp.project_to_dual_cone``), so the big gradients are read twice only.

Peer convention: TorchJD 0.18 solves the programme with quadprog on
``G / trace(G) + 1e-4 I`` (``reg_eps=1e-4`` here reproduces it, to ~1e-6); the paper's
projection is exact, our default ``reg_eps=0``. The regularisation shrinks the
projected part of the update by a relative ~1e-4 * T.

References:
  Quinton & Rey 2024, "Jacobian Descent for Multi-Objective Optimization", Eq. 3,
  Proposition 1 (UPGrad).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from modular.mtl import gram as gram_lib
from modular.mtl import qp
from modular.mtl.method import Method, register
from modular.mtl.options import at_least, option


def normalized_gram(gram: jax.Array, present: jax.Array, reg_eps: float) -> jax.Array:
  """``G / trace(G) + reg_eps I`` over the present tasks (TorchJD's conditioning)."""
  g = gram_lib.masked_gram(gram, present) * (present[:, None] * present[None, :])
  trace = jnp.trace(g)
  g = jnp.where(trace > 0, g / jnp.where(trace > 0, trace, 1.0), g)
  return g + reg_eps * jnp.diag(present) + jnp.diag(1.0 - present)


@register("upgrad")
@dataclasses.dataclass(eq=False)
class UPGrad(Method):
  """UPGrad on the Gram matrix. Stateless.

  Args:
    reg_eps: ridge on the trace-normalised Gram matrix (0: exact; 1e-4: TorchJD).
    sweeps: Gauss-Seidel passes of the projection (200 reach float32 precision for
      T <= 16 on well-conditioned Gram matrices).
  """

  reg_eps: float = option(0.0, at_least(0.0))
  sweeps: int = option(200, at_least(1))

  def solve(self, gram, state, losses, present):
    del losses
    g = normalized_gram(gram, present, self.reg_eps)
    u = jnp.diag(present / jnp.maximum(jnp.sum(present), 1.0))       # [T, T] rows = e_i / T
    return qp.project_to_dual_cone(g, u, self.sweeps), state, {}
