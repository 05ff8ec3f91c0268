"""DualProj: project the average gradient onto the dual cone of the task gradients.

The mean ``g_0 = J^T u`` (``u = 1 / T``) is projected onto ``{d : <g_t, d> >= 0}``
(Eq. 11 of Lopez-Paz & Ranzato's GEM, applied to the tasks' gradients as in Quinton &
Rey): ``w = argmin_{v >= u} v^T G v`` on the Gram matrix (``qp.project_to_dual_cone``).

Peer convention: as UPGrad, TorchJD regularises with ``reg_eps=1e-4`` on the
trace-normalised Gram matrix; the default here is the exact projection (0).

References:
  Quinton & Rey 2024, "Jacobian Descent for Multi-Objective Optimization" (DualProj);
  Lopez-Paz & Ranzato 2017, "Gradient Episodic Memory for Continual Learning", Eq. 11.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from modular.mtl import qp
from modular.mtl.method import Method, register
from modular.mtl.options import at_least, option
from modular.mtl.upgrad import normalized_gram


@register("dualproj")
@dataclasses.dataclass(eq=False)
class DualProj(Method):
  """DualProj on the Gram matrix. Stateless.

  Args:
    reg_eps: ridge on the trace-normalised Gram matrix (0: exact; 1e-4: TorchJD).
    sweeps: Gauss-Seidel passes.
  """

  reg_eps: float = option(0.0, at_least(0.0))
  sweeps: int = option(200, at_least(1))

  def solve(self, gram, state, losses, present):
    del losses
    g = normalized_gram(gram, present, self.reg_eps)
    u = present / jnp.maximum(jnp.sum(present), 1.0)
    return jnp.diag(qp.project_to_dual_cone(g, u, self.sweeps)), state, {}
