"""PCD: priority-constrained descent, the primary task first, the others guaranteed progress.

Task 0 is the primary objective. With normalised gradients ``g~_i = s_i g_i``
(``s_i = 1 / sqrt(v_i + eps)``, ``v_i`` the bias-corrected EMA of ``||g_i||^2`` with decay
``beta``), PCD solves

  ``min_d 1/2 ||d - g~_1||^2``  s.t.  ``<g~_j, d> >= tau ||g~_j||^2`` for every secondary j,

whose solution is ``d = g~_1 + sum_j mu_j g~_j`` with ``mu >= 0`` the KKT multipliers:
``mu = argmin_{mu >= 0} 1/2 mu^T G~_s mu - b^T mu``, ``b_j = tau G~_jj - G~_j1`` (a
nonnegative QP on the Gram matrix, ``qp.nonneg_qp``; TorchJD 0.18.0 uses Goldfarb-Idnani's
active set, ``_solve_qp``). The output is ``d`` rescaled to ``||g_1||``; zero when
``g_1 = 0`` or ``d`` vanishes. The EMA and the step counts are the state: checkpoints
and resumes bit for bit. Each task's EMA and its bias correction count that task's
present steps only (an absent task's entries are kept), so ``v_t = ||g_t||^2`` at the
task's first present step however late it comes; a global count would shrink a late
task's ``v_t`` by about the number of steps it missed and inflate its scale.

Differences: TorchJD drops the constraints when they are infeasible (returns ``g_1``);
projected Gauss-Seidel instead returns the multipliers after its fixed sweeps. With the
primary task absent from a batch the update is the mean of the present tasks
(the definition needs a primary).

References:
  "Not All Objectives Are Born Equal: Priority-Constrained Descent
  for Hierarchical Multi-Objective Optimization", TMLR 2026, arXiv:2606.29521 (as
  cited by TorchJD 0.18.0 ``PCD``, the reference).
"""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp

from modular.mtl import qp
from modular.mtl.method import Method, register
from modular.mtl.options import at_least, greater, in_range, option


class PCDState(NamedTuple):
  sq_norm_ema: jax.Array   # [T]
  steps: jax.Array         # int32 [T] present steps of each task


def pcd_weights(gram, state, present, tau: float, beta: float, eps: float, sweeps: int):
  """``(weights [T], new_state)`` of one PCD step."""
  p = present > 0
  t = gram.shape[0]
  g = jnp.where(p[:, None] & p[None, :], gram, 0.0)
  sq = jnp.diag(g)
  ema = jnp.where(p, beta * state.sq_norm_ema + (1 - beta) * sq, state.sq_norm_ema)
  steps = state.steps + p.astype(jnp.int32)
  correction = jnp.where(steps > 0, 1.0 - beta ** steps.astype(jnp.float32), 1.0)
  v = ema / correction
  denom = jnp.sqrt(v + eps)
  scales = jnp.where((denom > 0) & p, 1.0 / jnp.where(denom > 0, denom, 1.0), 0.0)
  gn = g * scales[:, None] * scales[None, :]
  gs = gn[1:, 1:] + jnp.diag(jnp.where(p[1:], 0.0, 1.0))
  b = jnp.where(p[1:], tau * jnp.diag(gn)[1:] - gn[1:, 0], 0.0)
  mu = qp.nonneg_qp(gs, -b, sweeps)
  w = jnp.concatenate([jnp.ones((1,), gram.dtype), jnp.where(p[1:], mu, 0.0)])
  dir_sq = w @ gn @ w
  magnitude = (jnp.abs(w) @ jnp.sqrt(jnp.maximum(jnp.diag(gn), 0.0))) ** 2
  precision = 10.0 * jnp.finfo(jnp.float32).eps
  ok = (sq[0] > 0) & (dir_sq > precision * magnitude)
  weights = jnp.where(ok, w * scales * jnp.sqrt(sq[0] / jnp.where(ok, dir_sq, 1.0)), 0.0)
  mean = jnp.where(p, 1.0, 0.0) / jnp.maximum(jnp.sum(p), 1)
  weights = jnp.where(p[0], weights, mean)
  weights = jnp.where(jnp.all(jnp.isfinite(weights)), weights, mean)
  del t
  return weights, PCDState(ema, steps)


@register("pcd")
@dataclasses.dataclass(eq=False)
class PCD(Method):
  """PCD on the Gram matrix; task 0 is the primary objective.

  Args:
    num_tasks: T.
    tau: guaranteed fraction of each secondary task's normalised progress (0.02).
    beta: EMA decay of the squared gradient norms (0.999).
    eps: added under the square root of the scales.
    sweeps: Gauss-Seidel passes of the QP.
  """

  num_tasks: int = 0
  tau: float = option(0.02, in_range(0.0, 1.0))
  beta: float = option(0.999, in_range(0.0, 0.999999))
  eps: float = option(1e-8, greater(0.0))
  sweeps: int = option(200, at_least(1))

  def init(self, params):
    del params
    t = self._require_num_tasks()
    return PCDState(jnp.zeros((t,), jnp.float32), jnp.zeros((t,), jnp.int32))

  def solve(self, gram, state, losses, present):
    del losses
    w, new = pcd_weights(gram, state, present, self.tau, self.beta, self.eps, self.sweeps)
    return jnp.diag(w), new, {}
