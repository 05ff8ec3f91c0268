"""Gram-space primitives: every surgery method reads the big gradients through these.

A per-task gradient is a pytree whose leaves carry a leading task axis ``[T, ...]``.
Methods never flatten the model into one vector: they read the gradients once to
form the ``T x T`` Gram matrix (a sum over leaves of ``einsum('t...,s...->ts')``,
which keeps each leaf's sharding and ends in one small all-reduce), solve their
problem on that matrix, and read the gradients once more to form the combination
``sum_t c_t g_t``. Everything in between costs ``O(T^2)`` to ``O(T^3)``.

Task-specific parameters (per-task heads or adapters) are chosen by regexes over
parameter paths (``"/".join`` of the pytree keys, e.g. ``"head/kernel"`` or
``"blocks/0/adapter_ffn/down"``). They are left out of the Gram matrix and receive
the plain sum of the task gradients, which is each task's own gradient when only
that task's loss reaches the slice.

References:
  Yu et al. 2020, "Gradient Surgery for Multi-Task Learning" (Gram-space form of
  PCGrad follows from its Algorithm 1 being linear in the task gradients).
"""

from __future__ import annotations

import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp

from modular.paths import path_str

PyTree = Any


def task_specific_mask(tree: PyTree, patterns: Sequence[str]) -> PyTree:
  """Marks the leaves whose path matches one of ``patterns`` (``re.search``).

  Args:
    tree: parameters, or per-task gradients of the same structure.
    patterns: regexes over ``path_str`` of each leaf.

  Returns:
    A pytree of python bools with the structure of ``tree``: True for
    task-specific leaves, False for shared ones.
  """
  compiled = [re.compile(p) for p in patterns]
  return jax.tree_util.tree_map_with_path(
      lambda path, _: any(c.search(path_str(path)) for c in compiled), tree)


def unmatched_patterns(tree: PyTree, patterns: Sequence[str]) -> list[str]:
  """Returns the patterns that match no leaf path of ``tree`` (config typos)."""
  paths = [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
  return [p for p in patterns if not any(re.search(p, s) for s in paths)]


def _leaves(task_grads: PyTree, mask: PyTree | None) -> tuple[list, list[bool]]:
  leaves, treedef = jax.tree_util.tree_flatten(task_grads)
  if mask is None:
    return leaves, [False] * len(leaves)
  return leaves, treedef.flatten_up_to(mask)


def gram_matrix(task_grads: PyTree, mask: PyTree | None = None) -> jax.Array:
  """The ``T x T`` Gram matrix of the shared part of per-task gradients.

  One read of every shared leaf; no leaf is reshaped or concatenated, so a sharded
  leaf contributes partial sums that XLA reduces into a replicated ``[T, T]``.

  Args:
    task_grads: pytree of ``[T, ...]`` leaves.
    mask: optional pytree of bools (True = task-specific, left out).

  Returns:
    ``G`` with ``G[i, j] = <g_i, g_j>`` over the shared leaves, float32 ``[T, T]``.
  """
  leaves, specific = _leaves(task_grads, mask)
  num_tasks = leaves[0].shape[0]
  gram = jnp.zeros((num_tasks, num_tasks), jnp.float32)
  for g, is_specific in zip(leaves, specific):
    if is_specific:
      continue
    axes = tuple(range(1, g.ndim))
    # [T, ...] x [T, ...] -> [T, T], contracting every parameter axis in place.
    gram = gram + jax.lax.dot_general(
        g, g, ((axes, axes), ((), ())), preferred_element_type=jnp.float32)
  return gram


def weighted_sum(task_grads: PyTree, coef: jax.Array, mask: PyTree | None = None,
                 specific_coef: jax.Array | None = None) -> PyTree:
  """Forms ``sum_t c_t g_t`` leaf by leaf (the second and last read of the gradients).

  Args:
    task_grads: pytree of ``[T, ...]`` leaves.
    coef: ``[T]`` coefficients for the shared leaves.
    mask: optional pytree of bools (True = task-specific).
    specific_coef: ``[T]`` coefficients for task-specific leaves (default ones:
      each task-specific slice keeps its own task's gradient).

  Returns:
    A pytree with the task axis removed, leaves in their original dtype.
  """
  leaves, specific = _leaves(task_grads, mask)
  treedef = jax.tree_util.tree_structure(task_grads)
  if specific_coef is None:
    specific_coef = jnp.ones_like(coef)
  out = []
  for g, is_specific in zip(leaves, specific):
    c = (specific_coef if is_specific else coef).astype(g.dtype)
    out.append(jnp.tensordot(c, g, axes=(0, 0)))  # [T] . [T, ...] -> [...]
  return jax.tree_util.tree_unflatten(treedef, out)


def present_or_ones(present: jax.Array | None, num_tasks: int) -> jax.Array:
  """Returns ``present`` as float32 ``[T]`` (all ones when None)."""
  if present is None:
    return jnp.ones((num_tasks,), jnp.float32)
  return jnp.asarray(present, jnp.float32).reshape((num_tasks,))


def masked_gram(gram: jax.Array, present: jax.Array) -> jax.Array:
  """Zeroes the rows and columns of absent tasks and puts 1 on their diagonal.

  The result is positive definite on the absent block, so solvers that invert or
  factor ``G`` stay finite; every method then zeroes absent tasks' weights.

  Args:
    gram: ``[T, T]``.
    present: ``[T]`` float 0/1.

  Returns:
    ``[T, T]`` Gram matrix with absent tasks decoupled.
  """
  p = present > 0
  both = p[:, None] & p[None, :]
  return jnp.where(both, gram, 0.0) + jnp.diag(jnp.where(p, 0.0, 1.0))


def cosine_matrix(gram: jax.Array, eps: float = 1e-20) -> jax.Array:
  """Pairwise cosine of task gradients ``[T, T]``; 0 where a norm is zero."""
  sq = jnp.diag(gram)
  denom = jnp.sqrt(jnp.maximum(sq[:, None] * sq[None, :], 0.0))
  return jnp.where(denom > eps, gram / jnp.maximum(denom, eps), 0.0)


def telemetry(gram: jax.Array, contrib: jax.Array, present: jax.Array) -> dict[str, jax.Array]:
  """Logging statistics of one combine step, all from the Gram matrix.

  Args:
    gram: ``[T, T]`` Gram matrix of the task gradients (before surgery).
    contrib: ``[T, T]`` row ``i`` = coefficients of task ``i``'s contribution
      after surgery over the original gradients (identity for no surgery,
      ``diag(w)`` for a weighting).
    present: ``[T]`` float 0/1.

  Returns:
    dict with ``cosine`` [T, T], ``conflict_fraction`` [] (share of present pairs
    ``i < j`` with negative cosine), ``norms_before`` [T], ``norms_after`` [T],
    ``update_norm`` [] and ``weights`` [T] (``sum_i contrib[i]``, the coefficient
    of each original gradient in the update).
  """
  num_tasks = gram.shape[0]
  cos = cosine_matrix(gram)
  p = present > 0
  upper = jnp.triu(jnp.ones((num_tasks, num_tasks), bool), k=1) & p[:, None] & p[None, :]
  n_pairs = jnp.sum(upper)
  conflicts = jnp.sum(upper & (cos < 0))
  after_sq = jnp.einsum("ik,kl,il->i", contrib, gram, contrib)
  weights = jnp.sum(contrib, axis=0)
  return {
      "cosine": cos,
      "conflict_fraction": jnp.where(n_pairs > 0, conflicts / jnp.maximum(n_pairs, 1), 0.0),
      "norms_before": jnp.sqrt(jnp.maximum(jnp.diag(gram), 0.0)),
      "norms_after": jnp.sqrt(jnp.maximum(after_sq, 0.0)),
      "update_norm": jnp.sqrt(jnp.maximum(weights @ gram @ weights, 0.0)),
      "weights": weights,
  }
