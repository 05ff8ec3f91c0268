"""GradVac: raise each pair's gradient cosine towards its running target, in Gram space.

For each task ``i`` and every other task ``j`` in a random order: with
``phi = cos(g_i^PC, g_j)`` and the target ``phi_hat_ij`` (an EMA of past cosines),
if ``phi < phi_hat`` add
``||g_i|| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2)) / (||g_j|| sqrt(1 - phi_hat^2)) g_j``
to ``g_i`` so that the cosine reaches the target; then
``phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi`` (Algorithm 2). As for PCGrad, every
``g_i`` stays a combination of the original gradients, so the loop runs on the
``T x T`` coefficients and the Gram matrix. Targets start at 0 (GradVac then acts like
PCGrad's projection at the first step). The targets and the PRNG key of the orders are
the state: checkpoints and resumes bit for bit.

Defaults: ``beta = 0.5`` is LibMTL's and TorchJD's default; the paper's NMT runs use
``beta = 1e-2`` (set ``options.beta``). TorchJD 0.18.0's ``GradVac`` (same update, with
``eps = 1e-8`` in the denominators) is the reference.

References:
  Wang et al. 2021, "Gradient Vaccine: Investigating and Improving Multi-task
  Optimization in Massively Multilingual Models", ICLR, Algorithm 2.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from modular.mtl.method import Method, register
from modular.mtl.options import at_least, in_range, option
from modular.mtl.pcgrad import _key_data, random_orders


class GradVacState(NamedTuple):
  """EMA targets ``phi_hat`` ``[T, T]`` and the raw PRNG key of the orders."""
  targets: jax.Array
  key: jax.Array


def gradvac_coefficients(gram, targets, orders, present, beta: float, eps: float):
  """One GradVac step on the Gram matrix.

  Args:
    gram: ``[T, T]``.
    targets: ``[T, T]`` EMA targets ``phi_hat``.
    orders: int ``[T, T - 1]`` visiting orders.
    present: ``[T]`` float 0/1.
    beta: EMA rate.
    eps: added to the denominators.

  Returns:
    ``(C [T, T], new_targets [T, T])`` with ``g_i' = sum_k C[i, k] g_k``.
  """
  t = gram.shape[0]
  if t == 1:
    return jnp.ones((1, 1), gram.dtype), targets
  norm = jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0))
  p = present > 0

  def row(i, order, coef_row, target_row):
    def visit(s, carry):
      c, tr = carry
      j = order[s]
      cg = c @ gram                                                   # <g_i', g_k>  [T]
      norm_i = jnp.sqrt(jnp.maximum(cg @ c, 0.0))
      phi = cg[j] / (norm_i * norm[j] + eps)
      hat = tr[j]
      act = (phi < hat) & p[j] & p[i]
      w = norm_i * (hat * jnp.sqrt(jnp.maximum(1 - phi * phi, 0.0))
                    - phi * jnp.sqrt(jnp.maximum(1 - hat * hat, 0.0))) / (
                        norm[j] * jnp.sqrt(jnp.maximum(1 - hat * hat, 0.0)) + eps)
      c = c.at[j].add(jnp.where(act, w, 0.0))
      tr = tr.at[j].set(jnp.where(p[j] & p[i], (1 - beta) * hat + beta * phi, hat))
      return c, tr

    return jax.lax.fori_loop(0, t - 1, visit, (coef_row, target_row))

  coef, new_targets = jax.vmap(row)(jnp.arange(t), orders, jnp.eye(t, dtype=gram.dtype),
                                    targets)
  return coef, new_targets


@register("gradvac")
@dataclasses.dataclass(eq=False)
class GradVac(Method):
  """GradVac on the Gram matrix (state: targets and a PRNG key).

  Args:
    num_tasks: T.
    beta: EMA rate of the cosine targets.
    eps: added to denominators (TorchJD's 1e-8).
    seed: int seed or PRNG key of the visiting orders.
  """

  num_tasks: int = 0
  beta: float = option(0.5, in_range(0.0, 1.0))
  eps: float = option(1e-8, at_least(0.0))
  seed: Any = 0

  def init(self, params):
    del params
    t = self._require_num_tasks()
    return GradVacState(jnp.zeros((t, t), jnp.float32), _key_data(self.seed))

  def solve(self, gram, state, losses, present):
    del losses
    key, sub = jax.random.split(jax.random.wrap_key_data(state.key))
    orders = random_orders(sub, gram.shape[0])
    coef, targets = gradvac_coefficients(gram, state.targets, orders, present, self.beta,
                                         self.eps)
    return coef, GradVacState(targets, jax.random.key_data(key)), {}
