"""ConFIG: the conflict-free direction with equal cosine to every task gradient.

With unit gradients ``u_t = g_t / ||g_t||`` and ``U = [u_1; ...; u_T]``, ConFIG takes
``d = U^+ w`` (``w = 1``: the direction whose projections on every unit gradient are
equal), normalises it and scales it by the sum of the projections of the raw
gradients: ``update = (sum_t <g_t, d_hat>) d_hat`` (Eq. 2 of the paper). In Gram space
``U^+ 1 = U^T K^+ 1`` with ``K = D G D``, ``D = diag(1 / ||g_t||)``, so the update is
``sum_t c_t g_t`` with ``c = s D K^+ 1`` and ``s = 1^T G c_0 / c_0^T G c_0`` (``c_0 = D K^+ 1``).
Zero gradients get ``c_t = 0`` (TorchJD's ``nan_to_num``).

The file is ``config_method.py`` because ``config.py`` is the ``mtl`` config section.

References:
  Liu et al. 2024, "ConFIG: Towards Conflict-free Training of Physics Informed Neural
  Networks", Eq. 2 (TorchJD 0.18.0 ``ConFIG`` is the reference).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from modular.mtl import gram as gram_lib
from modular.mtl.method import Method, register


def config_coefficients(gram, present):
  """Coefficients ``c`` ``[T]`` of the ConFIG update over the original gradients.

  Args:
    gram: ``[T, T]`` Gram matrix.
    present: ``[T]`` float 0/1.

  Returns:
    ``[T]`` (0 for absent tasks and zero gradients).
  """
  active = ((present > 0) & (jnp.diag(gram) > 0)).astype(gram.dtype)
  g = gram_lib.masked_gram(gram, active)
  inv_norm = jnp.where(active > 0, 1.0 / jnp.sqrt(jnp.where(active > 0, jnp.diag(g), 1.0)), 0.0)
  k = g * inv_norm[:, None] * inv_norm[None, :] + jnp.diag(1.0 - active)
  c0 = inv_norm * (jnp.linalg.pinv(k, hermitian=True) @ active)        # [T]
  sq = c0 @ g @ c0
  s = jnp.where(sq > 0, jnp.sum(g @ c0 * active) / jnp.where(sq > 0, sq, 1.0), 0.0)
  return s * c0 * active


@register("config")
@dataclasses.dataclass(eq=False)
class ConFIG(Method):
  """ConFIG on the Gram matrix (uniform preference). Stateless."""

  def solve(self, gram, state, losses, present):
    del losses
    return jnp.diag(config_coefficients(gram, present)), state, {}
