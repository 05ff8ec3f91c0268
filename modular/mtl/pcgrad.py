"""PCGrad: project each task gradient off the tasks it conflicts with, in Gram space.

Algorithm 1 of the paper: for each task ``i``, start from ``g_i^PC = g_i``; for every
other task ``j`` in a random order, if ``<g_i^PC, g_j> < 0`` subtract
``<g_i^PC, g_j> / ||g_j||^2 * g_j``. Projections are onto the original ``g_j``.
The update is ``sum_i g_i^PC``.

Every ``g_i^PC`` stays a linear combination ``sum_k C[i, k] g_k`` of the original
gradients, so the loop runs on the ``T x T`` coefficient matrix ``C`` and the Gram
matrix: ``<g_i^PC, g_j> = (C G)[i, j]``. All ``T`` tasks advance in parallel, one
other task each per iteration, ``T - 1`` iterations of ``O(T^2)`` work. The big
gradients are read twice: for the Gram matrix and for the final sum.

The order is drawn per step and per task ``i`` (an independent uniform permutation
of the other tasks, as in the paper's inner loop) from a PRNG key kept in the state.
Absent tasks are skipped as projection targets and contribute nothing.

References:
  Yu et al. 2020, "Gradient Surgery for Multi-Task Learning", NeurIPS, Algorithm 1.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from modular.mtl.method import Method, register


class PCGradState(NamedTuple):
  """State of PCGrad: the raw PRNG key data (uint32[2]; checkpoints as an array)."""
  key: jax.Array


def _key_data(seed_or_key: int | jax.Array) -> jax.Array:
  """Raw uint32 key data from an int seed, a typed key or raw key data."""
  if jnp.issubdtype(jnp.result_type(seed_or_key), jax.dtypes.prng_key):
    return jax.random.key_data(seed_or_key)
  if jnp.ndim(seed_or_key) == 0:
    return jax.random.key_data(jax.random.key(int(seed_or_key)))
  return jnp.asarray(seed_or_key, jnp.uint32)


def random_orders(key: jax.Array, num_tasks: int) -> jax.Array:
  """Draws, for every task ``i``, a uniform random order of the other tasks.

  Args:
    key: a typed PRNG key.
    num_tasks: T.

  Returns:
    int32 ``[T, T - 1]``; row ``i`` lists the tasks ``j != i`` in visiting order.
  """
  u = jax.random.uniform(key, (num_tasks, num_tasks))
  u = jnp.where(jnp.eye(num_tasks, dtype=bool), jnp.inf, u)  # task i sorts last
  return jnp.argsort(u, axis=1)[:, :num_tasks - 1].astype(jnp.int32)


def pcgrad_coefficients(gram: jax.Array, present: jax.Array,
                        orders: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Runs Algorithm 1 on the Gram matrix.

  Args:
    gram: ``[T, T]`` Gram matrix of the task gradients.
    present: ``[T]`` float 0/1; absent tasks are never projected onto.
    orders: int ``[T, T - 1]`` visiting orders (``random_orders``).

  Returns:
    ``(C, num_projections)``: ``C`` ``[T, T]`` with ``g_i^PC = sum_k C[i, k] g_k``,
    and the number of projections made (int32 scalar). With one task there is
    nothing to project onto: ``C = [[1]]``, the plain gradient.
  """
  num_tasks = gram.shape[0]
  if num_tasks < 2:  # orders is [1, 0]: the loop below would index an empty axis
    return jnp.eye(num_tasks, dtype=gram.dtype), jnp.zeros((), jnp.int32)
  rows = jnp.arange(num_tasks)

  def visit(s, carry):
    coef, count = carry                                       # [T, T], []
    j = orders[:, s]                                          # [T]: task i visits j[i]
    dot = jnp.einsum("ik,ki->i", coef, gram[:, j])            # <g_i^PC, g_{j_i}>  [T]
    sq = gram[j, j]                                           # ||g_{j_i}||^2      [T]
    conflict = (dot < 0) & (present[j] > 0) & (sq > 0)
    step = jnp.where(conflict, dot / jnp.where(sq > 0, sq, 1.0), 0.0)
    return coef.at[rows, j].add(-step), count + jnp.sum(conflict).astype(jnp.int32)

  return jax.lax.fori_loop(0, num_tasks - 1, visit,
                           (jnp.eye(num_tasks, dtype=gram.dtype), jnp.zeros((), jnp.int32)))


@register("pcgrad")
@dataclasses.dataclass(eq=False)
class PCGrad(Method):
  """PCGrad as a Gram-space method (see the module docstring).

  The PRNG key is part of the state: a resumed run draws the same orders (bit for bit).

  Args:
    seed: an int seed, or a PRNG key (typed or raw), for the projection orders.
    task_specific: regexes over parameter paths kept out of the surgery.
  """

  seed: Any = 0

  def init(self, params):
    del params
    return PCGradState(key=_key_data(self.seed))

  def solve(self, gram, state, losses, present):
    del losses
    key, sub = jax.random.split(jax.random.wrap_key_data(state.key))
    coef, count = pcgrad_coefficients(gram, present, random_orders(sub, gram.shape[0]))
    return coef, PCGradState(key=jax.random.key_data(key)), {"num_projections": count}


def pcgrad(seed: int | jax.Array = 0,
           task_specific: Sequence[str] = ()) -> optax.GradientTransformationExtraArgs:
  """PCGrad as an optax transform over per-task gradients ``[T, ...]``.

  Args:
    seed: int seed or PRNG key for the random projection orders.
    task_specific: path regexes of task-specific parameters.

  Returns:
    A transform whose update returns ``sum_i g_i^PC`` (task axis removed).
  """
  return PCGrad(seed, task_specific=task_specific).as_optax()
