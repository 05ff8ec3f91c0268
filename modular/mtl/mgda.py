"""MGDA: the min-norm point of the convex hull of the task gradients.

Solve ``min_w w^T G w`` over the simplex (pairwise Frank-Wolfe on the Gram matrix, see
``simplex.py``); the update is ``d = sum_t w_t g_t``. Every task decreases along
``-d`` unless ``d = 0`` (a Pareto-stationary point). With ``rep_value_and_grad`` the
same solver on gradients with respect to the shared representation gives MGDA-UB.

Optional gradient normalisation (as in the authors' code): ``"l2"`` divides
``g_t`` by its norm, ``"loss"`` by its loss, ``"loss+"`` by both; the solver then
works on ``G[i, j] / (n_i n_j)`` and the update is ``sum_t (w_t / n_t) g_t``.
Absent tasks get weight 0.

References:
  Sener & Koltun 2018, "Multi-Task Learning as Multi-Objective Optimization",
  NeurIPS (MGDA-UB, Frank-Wolfe solver); Desideri 2012 (MGDA).
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
from modular.mtl.options import at_least, one_of, option

NORMALIZATIONS = ("none", "l2", "loss", "loss+")


def min_norm_weights(gram: jax.Array, present: jax.Array, iters: int) -> jax.Array:
  """Weights ``w`` ``[T]`` of the min-norm point of the convex hull (absent: 0).

  Args:
    gram: ``[T, T]`` Gram matrix.
    present: ``[T]`` float 0/1.
    iters: pairwise Frank-Wolfe iterations.

  Returns:
    ``[T]`` on the simplex of present tasks.
  """
  g = gram_lib.masked_gram(gram, present)
  return simplex.pairwise_frank_wolfe(lambda w: g @ w, simplex.quadratic_line_search(g),
                                      present, iters)


def gradient_normalizers(gram: jax.Array, losses: jax.Array | None, kind: str) -> jax.Array:
  """The per-task normalisers ``n_t`` ``[T]`` of Sener & Koltun's code."""
  norms = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
  if kind == "none":
    return jnp.ones_like(norms)
  if kind == "l2":
    return norms
  if losses is None:
    raise ValueError(f"mgda normalization {kind!r} needs losses=")
  if kind == "loss":
    return jnp.asarray(losses, jnp.float32)
  return jnp.asarray(losses, jnp.float32) * norms


@register("mgda")
@dataclasses.dataclass(eq=False)
class MGDA(Method):
  """MGDA on the Gram matrix.

  Args:
    iters: pairwise Frank-Wolfe iterations (250 reaches float32 precision for T <= 16).
    normalization: one of ``"none"``, ``"l2"``, ``"loss"``, ``"loss+"``.
    task_specific: path regexes of task-specific parameters.
  """

  iters: int = option(250, at_least(1))
  normalization: str = option("none", one_of(*NORMALIZATIONS))

  def solve(self, gram, state, losses, present):
    n = gradient_normalizers(gram, losses, self.normalization)
    n = jnp.where((present > 0) & (n > 0), n, 1.0)
    w = min_norm_weights(gram / (n[:, None] * n[None, :]), present, self.iters)
    coef = w / n
    return jnp.diag(coef), state, {"min_norm": jnp.sqrt(jnp.maximum(coef @ gram @ coef, 0.0))}


def mgda(iters: int = 250, normalization: str = "none",
         task_specific: Sequence[str] = ()) -> optax.GradientTransformationExtraArgs:
  """MGDA as an optax transform over per-task gradients ``[T, ...]``.

  Args:
    iters: Frank-Wolfe iterations.
    normalization: gradient normalisation (``"none"``, ``"l2"``, ``"loss"``, ``"loss+"``).
    task_specific: path regexes of task-specific parameters.

  Returns:
    A transform whose update is the min-norm element ``sum_t w_t g_t``.
  """
  return MGDA(iters, normalization, task_specific=task_specific).as_optax()
