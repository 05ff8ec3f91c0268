"""RegMean: merge each linear layer in closed form so it maps every task's inputs as its model did.

For a linear layer ``y = x W`` fine-tuned to ``W_t`` on task ``t`` with inputs ``X_t``,
RegMean solves ``min_W sum_t w_t ||X_t W - X_t W_t||^2``:

  W* = (sum_t w_t G_t)^-1 sum_t w_t G_t W_t,    G_t = X_t^T X_t / n_t   [d_in, d_in],

in task-vector form ``W* = W_0 + (sum_t w_t G_t)^-1 sum_t w_t G_t tau_t``. The paper
shrinks the off-diagonal entries of each Gram, ``G_t <- alpha G_t + (1 - alpha)
diag(G_t)`` (``alpha = 0.9``; FusionBench's GPT-2 config uses 0.6), which regularizes
toward plain averaging (``alpha = 0`` with equal diagonals is the mean). Leaves without
a Gram (biases, LayerNorms, embeddings) are averaged, ``sum_t w_t tau_t / sum_t w_t``.
Input dimensions no task ever excites (a zero row of ``sum_t G_t``) have no effect on
the outputs; they get the average too (a pseudo-inverse elsewhere).

The Grams are computed outside the method (``statistics.gram_matrices``: the inputs of
every linear layer from the capture switch, on ``num_examples`` examples of each run's
training data, averaged over real tokens) and passed to ``merge`` as
``statistics=[{weight path: G_t [d_in, d_in]}, ...]``. A weight ``[*in, *out]`` is read
as ``[prod(in), prod(out)]`` with ``prod(in) = d_in`` (attention's ``wq [d, H, dh]`` as
``[d, H dh]``, ``wo [H, dh, d]`` as ``[H dh, d]``).

References:
  Jin et al. 2023, "Dataless Knowledge Fusion by Merging Weights of Language Models",
  ICLR, Sec. 3 (Eq. 2 and the off-diagonal scaling ``alpha``).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from modular.merging.method import MergeMethod, at_least, in_range, option, per_task, register


def input_rows(shape: tuple[int, ...], d_in: int, path: str) -> int:
  """How many leading axes of a weight ``shape`` make up ``d_in``; one line if none do."""
  size = 1
  for k, dim in enumerate(shape[:-1]):
    size *= dim
    if size == d_in:
      return k + 1
  raise ValueError(f"merging.statistics: the Gram of {path!r} is [{d_in}, {d_in}], which "
                   f"matches no input axes of its shape {tuple(shape)}")


def regmean_delta(tau: jax.Array, weights: jax.Array, grams: jax.Array,
                  alpha: float) -> jax.Array:
  """``(sum_t w_t G~_t)^+ sum_t w_t G~_t tau_t``.

  Args:
    tau: ``[T, n, m]`` task vectors of one linear layer (inputs first).
    weights: ``[T]``.
    grams: ``[T, n, n]`` input Grams.
    alpha: the off-diagonal factor.

  Returns:
    ``[n, m]`` float32.
  """
  diag = jnp.eye(grams.shape[-1], dtype=bool)
  g = jnp.where(diag, grams, alpha * grams) * per_task(weights, grams)  # [T, n, n]
  a = jnp.sum(g, axis=0)  # [n, n]
  b = jnp.einsum("tij,tjm->im", g, tau.astype(jnp.float32))  # [n, m]
  delta = jnp.linalg.pinv(a, hermitian=True) @ b
  total = jnp.sum(weights)
  mean = jnp.sum(tau * per_task(weights, tau), axis=0) / jnp.where(total == 0, 1.0, total)
  return jnp.where((jnp.diagonal(a) > 0)[:, None], delta, mean)


@register("regmean")
@dataclasses.dataclass(eq=False)
class RegMean(MergeMethod):
  """Regression mean of the linear layers; the other leaves averaged.

  Attributes:
    alpha: the factor on the Grams' off-diagonal entries.
    num_examples: examples of each run's training data for its Grams.
    scaling: lambda (1: the RegMean solution itself).
  """

  statistics = "gram"
  alpha: float = option(0.9, in_range(0.0, 1.0))
  num_examples: int = option(256, at_least(1))
  scaling: float = option(1.0, at_least(0.0))

  def statistics_options(self) -> dict:
    """The keyword arguments of ``statistics.for_run``."""
    return {"num_examples": self.num_examples}

  def combine(self, tau: jax.Array, weights: jax.Array, *, stats: jax.Array | None = None,
              path: str = "", **unused) -> jax.Array:
    """``[T, *shape], [T], Gram [T, n, n] or None -> [*shape]``."""
    if stats is None:
      total = jnp.sum(weights)
      w = weights / jnp.where(total == 0, 1.0, total)
      return jnp.sum(tau * per_task(w, tau), axis=0)
    if stats.ndim != 3 or stats.shape[1] != stats.shape[2]:
      raise ValueError(f"merging.statistics: the Gram of {path!r} has shape "
                       f"{tuple(stats.shape[1:])}, not [n, n]")
    shape = tau.shape[1:]
    k = input_rows(shape, stats.shape[1], path)
    flat = tau.reshape(tau.shape[0], stats.shape[1], math.prod(shape[k:]))  # [T, n, m]
    return regmean_delta(flat, weights, stats, self.alpha).reshape(shape).astype(tau.dtype)
