"""CAGrad: the best worst-task improvement inside a ball around the average gradient.

Primal: ``max_d min_i <g_i, d>`` subject to ``||d - g_0|| <= c ||g_0||`` with ``g_0``
the average gradient of the present tasks. Its dual is a problem over the simplex,

  ``min_w  w^T G b + c ||g_0|| sqrt(w^T G w)``,   ``b`` = uniform weights,

solved on the Gram matrix with pairwise Frank-Wolfe and an exact line search (see
``simplex.py``). The update is ``d = g_0 + (c ||g_0|| / ||g_w||) g_w`` with
``g_w = sum_t w_t g_t`` (the paper's Algorithm 1, our default, and TorchJD 0.18.0's),
divided by ``1 + c^2`` when ``rescale=True`` (the authors' code and LibMTL 1.1.5, whose
default is ``rescale=1``; a global step-size factor). ``c = 0`` gives the plain average.

References:
  Liu et al. 2021, "Conflict-Averse Gradient Descent for Multi-task Learning", NeurIPS.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import optax

from modular.mtl import gram as gram_lib
from modular.mtl import simplex
from modular.mtl.method import Method, register
from modular.mtl.options import at_least, option


def cagrad_coefficients(gram: jax.Array, present: jax.Array, c: float, iters: int,
                        rescale: bool = True) -> tuple[jax.Array, jax.Array]:
  """Coefficients of the CAGrad update over the original gradients.

  Args:
    gram: ``[T, T]`` Gram matrix.
    present: ``[T]`` float 0/1.
    c: radius factor ``c >= 0``.
    iters: Frank-Wolfe iterations for the dual.
    rescale: divide the update by ``1 + c^2``.

  Returns:
    ``(coef [T], w [T])``: the update is ``sum_t coef_t g_t``; ``w`` the dual weights.
  """
  g = gram_lib.masked_gram(gram, present)
  b = simplex.uniform_weights(present)                       # [T]
  a = g @ b                                                  # <g_t, g_0>  [T]
  r = c * jnp.sqrt(jnp.maximum(b @ a, 0.0))                  # c ||g_0||
  line_search = simplex.linear_plus_norm_line_search(g, a, r)

  def grad_fn(w):
    gw = g @ w
    return a + r * gw / jnp.sqrt(jnp.maximum(w @ gw, 1e-30))

  w = simplex.pairwise_frank_wolfe(grad_fn, line_search, present, iters)
  gw_norm = jnp.sqrt(jnp.maximum(w @ g @ w, 0.0))
  lam = jnp.where(gw_norm > 0, r / jnp.where(gw_norm > 0, gw_norm, 1.0), 0.0)
  coef = b + lam * w
  if rescale:
    coef = coef / (1.0 + c * c)
  return coef, w


@register("cagrad")
@dataclasses.dataclass(eq=False)
class CAGrad(Method):
  """CAGrad on the Gram matrix.

  Args:
    c: radius factor (0.4 in the paper's multi-task experiments).
    iters: Frank-Wolfe iterations for the dual.
    rescale: divide the update by ``1 + c^2`` (authors' code; the paper: False).
    task_specific: path regexes of task-specific parameters.
  """

  c: float = option(0.4, at_least(0.0))
  iters: int = option(250, at_least(1))
  rescale: bool = option(False)

  def solve(self, gram, state, losses, present):
    del losses
    coef, w = cagrad_coefficients(gram, present, self.c, self.iters, self.rescale)
    return jnp.diag(coef), state, {"dual_weights": w}


def cagrad(c: float = 0.4, iters: int = 250, rescale: bool = False,
           task_specific: Sequence[str] = ()) -> optax.GradientTransformationExtraArgs:
  """CAGrad as an optax transform over per-task gradients ``[T, ...]``.

  Args:
    c: radius factor.
    iters: Frank-Wolfe iterations.
    rescale: divide by ``1 + c^2``.
    task_specific: path regexes of task-specific parameters.

  Returns:
    The transform.
  """
  return CAGrad(c, iters, rescale, task_specific=task_specific).as_optax()
