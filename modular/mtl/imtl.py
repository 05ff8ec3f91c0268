"""IMTL-G: impartial gradient weighting, equal projections of the update on every task.

Find ``alpha`` with ``sum_t alpha_t = 1`` such that ``d = sum_t alpha_t g_t`` has the
same projection on every unit task gradient ``u_t = g_t / ||g_t||``. The paper's
closed form uses differences against the first task; in Gram space it reads
``(G alpha)_t / ||g_t|| = const`` for all present ``t``, hence

  ``alpha = G^+ n / (1^T G^+ n)``,   ``n_t = ||g_t||``,

with ``G^+`` the pseudo-inverse (the paper's inverse when ``G`` is invertible).
Absent tasks and zero gradients are left out (``alpha_t = 0``). This is the
gradient part (IMTL-G) only; IMTL-L's learned loss scales are not included.

References:
  Liu et al. 2021, "Towards Impartial Multi-task Learning", ICLR (IMTL-G, Eq. 4).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import optax

from modular.mtl import gram as gram_lib
from modular.mtl.method import Method, register


def impartial_weights(gram: jax.Array, present: jax.Array) -> jax.Array:
  """IMTL-G weights ``alpha`` ``[T]`` summing to one over the active tasks.

  Args:
    gram: ``[T, T]`` Gram matrix.
    present: ``[T]`` float 0/1.

  Returns:
    ``[T]`` weights (0 for absent tasks and zero gradients).
  """
  active = ((present > 0) & (jnp.diag(gram) > 0)).astype(gram.dtype)
  g = gram_lib.masked_gram(gram, active)
  norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0)) * active              # [T]
  raw = jnp.linalg.pinv(g, hermitian=True) @ norms                          # [T]
  total = jnp.sum(raw)
  return jnp.where(jnp.abs(total) > 0, raw / jnp.where(jnp.abs(total) > 0, total, 1.0), 0.0)


@register("imtl_g")
@dataclasses.dataclass(eq=False)
class IMTLG(Method):
  """IMTL-G on the Gram matrix.

  Args:
    task_specific: path regexes of task-specific parameters.
  """

  def solve(self, gram, state, losses, present):
    del losses
    return jnp.diag(impartial_weights(gram, present)), state, {}


def imtl_g(task_specific: Sequence[str] = ()) -> optax.GradientTransformationExtraArgs:
  """IMTL-G as an optax transform over per-task gradients ``[T, ...]``.

  Args:
    task_specific: path regexes of task-specific parameters.

  Returns:
    The transform.
  """
  return IMTLG(task_specific=task_specific).as_optax()
