"""IMTL: impartial multi-task learning, loss scales (IMTL-L) with gradient weights (IMTL-G).

IMTL-L learns a log-scale ``s_t`` per task and trains on ``e^{s_t} L_t - s_t``: the
scale's gradient ``e^{s_t} L_t - 1`` drives every scaled loss towards 1 (``observe`` /
``solve`` take one SGD step on ``s`` with ``lr``). IMTL-G then weights the scaled
gradients ``e^{s_t} g_t`` so that the update has equal projections on every task's unit
gradient (``imtl.impartial_weights`` on ``D G D``, ``D = diag(e^s)``). The update is
``sum_t alpha_t e^{s_t} g_t``. ``s`` is the state (checkpoints and resumes bit for bit)
and is clipped to ``[-max_log_scale, max_log_scale]``, so a task whose loss is exactly 0
(whose ``s`` would grow without end) keeps a finite scale.

LibMTL 1.1.5's ``IMTL`` is the reference: it updates ``s`` with the model's optimizer
(ours: plain SGD at ``lr``); at ``s = 0`` both give IMTL-G on the raw gradients.

References:
  Liu et al. 2021, "Towards Impartial Multi-task Learning", ICLR (IMTL-L Eq. 2,
  IMTL-G Eq. 4).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from modular.mtl.imtl import impartial_weights
from modular.mtl.method import Method, register
from modular.mtl.options import greater, option


@register("imtl")
@dataclasses.dataclass(eq=False)
class IMTL(Method):
  """IMTL-L + IMTL-G (state: log-scales ``s`` ``[T]``; needs ``losses``).

  Args:
    num_tasks: T.
    lr: SGD step of the log-scales.
    max_log_scale: clip of ``|s|``.
  """

  num_tasks: int = 0
  lr: float = option(1e-2, greater(0.0))
  max_log_scale: float = option(10.0, greater(0.0))

  def init(self, params):
    del params
    return jnp.zeros((self._require_num_tasks(),), jnp.float32)

  def solve(self, gram, state, losses, present):
    if losses is None:
      raise ValueError("mtl method 'imtl' needs losses= in combine/update")
    p = present > 0
    scale = jnp.exp(state)
    alpha = impartial_weights(gram * scale[:, None] * scale[None, :], present)
    grad_s = jnp.where(p, scale * jnp.asarray(losses, jnp.float32) - 1.0, 0.0)
    grad_s = jnp.where(jnp.isfinite(grad_s), grad_s, 1.0)
    new = jnp.clip(state - self.lr * grad_s, -self.max_log_scale, self.max_log_scale)
    return jnp.diag(alpha * scale), new, {"log_scale": new}
