"""The Gram matrix of the per-task gradients without holding them: ``mtl.gram="streaming"``.

A Gram-space method's update is ``sum_t c_t g_t`` with ``c`` a function of the ``T x T``
Gram matrix ``G`` alone (and of its state: PCGrad's key, GradVac's targets). The
materialized path (``task_grads.per_task_value_and_grad`` then ``Method.combine``) holds
every ``[T, ...]`` gradient leaf from the backward pass until the weighted sum: ``T`` times
the shared parameters. Here each trainable leaf enters the loss through a *tap*, an
identity whose VJP, under the vmap over the ``T`` one-hot cotangents, turns the leaf's
``[T, ...]`` cotangent into its ``[T, T]`` Gram block the moment the backward pass makes
it, and passes the block out as the cotangent of one shared ``[T]`` zero input ``z``.
JAX adds the blocks of all leaves (every tap reads the same ``z``), so the ``z``
cotangent of the batched backward pass is ``G``; the leaves' ``[T, ...]`` cotangents are
dead after their block and are never outputs. The method then solves for ``c``
(``Method.solve_gram``, the same code and state as ``combine``: PCGrad draws its order
with the same key), and one more VJP of the same forward pass with cotangent ``c`` gives
``sum_t c_t g_t``.

Memory: parameters, optimizer state and forward residuals as in the summed step, plus one
gradient (the final VJP), ``O(T^2)`` for ``G`` and, transiently, leaves' ``[T, ...]`` blocks
and the batched backward pass's ``T`` activation cotangents (the materialized path has
those too). How many blocks are alive at once is XLA's schedule: on CPU (jax 0.10.1) the
temporaries still grow by about a third of a gradient per task (``bench/streaming_gram.py``
and the README's figures), against a whole gradient per task materialized. Time: the
materialized step's forward and batched backward pass, plus one more backward pass, minus
the weighted-sum read of ``[T, P]``.
Task-specific leaves (``mtl.task_specific``) are not tapped; they get their cotangent
(ones, or the weights for ``weight_task_specific`` methods) from a second VJP whose
unused part XLA drops (cheap for heads at the top of the model).

The embedding table is a trainable leaf like any other: its gradient is in the Gram
matrix, as on the materialized path (its ``[T, vocab, d]`` block is the largest transient
for a big vocabulary). Only ``mtl.task_specific`` leaves are left out, on both paths.

``train.microbatches > 1`` with ``"streaming"`` is refused (one config line): the Gram of
the whole batch's gradients needs the cross terms between micro-batches, which only the
accumulated ``[T, P]`` gradients (the materialized path) give.

Methods declare ``streams_gram`` (``Method``: True; the leaf-wise methods, which read the
gradients coordinate by coordinate, False); ``check_streams`` refuses the others.

Example::

  (losses, aux), gram, pullback = streaming_value_and_gram(
      loss_fn, has_aux=True, task_specific=method.task_specific)(params, batch)
  grads, state, stats = streaming_combine(method, gram, pullback, state,
                                          losses=losses, present=present)

References:
  Quinton & Rey 2024, "Jacobian Descent for Multi-Objective Optimization" (TorchJD's
  autogram engine: the Gramian accumulated inside the backward pass, then one weighted
  backward pass); Yu et al. 2020, "Gradient Surgery for Multi-Task Learning".
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
from jax import custom_batching

from modular.mtl import gram as gram_lib

PyTree = Any
GRAM_MODES = ("materialize", "streaming")


def check_streams(method: Any) -> None:
  """Raises one ``config.mtl.gram`` line when ``method`` cannot stream its Gram matrix."""
  if not getattr(method, "streams_gram", False):
    raise ValueError(
        f"config.mtl.gram: 'streaming' needs a method whose update is sum_t c_t g_t with c "
        f"from the Gram matrix alone; {method.name!r} reads the per-task gradients leaf by "
        "leaf: use mtl.gram='materialize'")


def _gram_sink(num_tasks: int) -> Callable[[jax.Array], jax.Array]:
  """``ct -> [T]``: under a vmap over tasks, the row ``G_leaf[t, :]`` for batch entry t.

  Unbatched (the final weighted VJP) it returns zeros: that cotangent is discarded.
  """

  @custom_batching.custom_vmap
  def sink(ct):
    del ct
    return jnp.zeros((num_tasks,), jnp.float32)

  @sink.def_vmap
  def _rule(axis_size, in_batched, ct):              # ct [T, ...] when batched
    if not in_batched[0]:
      return jnp.zeros((num_tasks,), jnp.float32), False
    if axis_size != num_tasks:
      raise ValueError(f"streaming Gram: vmap over {axis_size} cotangents, expected {num_tasks}")
    return gram_lib.gram_matrix([ct]), True          # [T, T]

  return sink


def _tap(sink: Callable, sharding: Any = None) -> Callable[[jax.Array, jax.Array], jax.Array]:
  """Identity in ``p``; its VJP sends ``p``'s cotangent on and its Gram block to ``z``."""

  @jax.custom_vjp
  def tap(p, z):
    del z
    return p

  def fwd(p, z):
    del z
    return p, None

  def bwd(_, ct):
    if sharding is not None:  # under the task vmap: P(None, *param_spec)
      ct = jax.lax.with_sharding_constraint(ct, sharding)
    return ct, sink(ct)

  tap.defvjp(fwd, bwd)
  return tap


def streaming_value_and_gram(fun: Callable[..., Any], *, has_aux: bool = False,
                             task_specific: Sequence[str] = (),
                             shardings: PyTree | None = None) -> Callable[..., tuple]:
  """Per-task losses, their gradients' Gram matrix and a weighted pull-back.

  Args:
    fun: ``fun(params, *args) -> losses [T]`` (or ``(losses, aux)`` with ``has_aux``),
      differentiated with respect to ``params`` only.
    has_aux: whether ``fun`` returns ``(losses, aux)``.
    task_specific: path regexes of leaves left out of the Gram matrix.
    shardings: optional ``NamedSharding`` pytree of ``params``: each leaf's cotangent is
      pinned to it (the task axis unsharded), as ``per_task_value_and_grad`` does.

  Returns:
    ``wrapped(params, *args) -> (losses [, aux]), gram [T, T], pullback`` where
    ``pullback(coef [T], specific_coef [T] | None) -> grads`` (structure of ``params``)
    gives ``sum_t coef_t g_t`` on the shared leaves and ``sum_t specific_coef_t g_t``
    (default ones) on the task-specific ones.
  """

  def wrapped(params, *args):
    leaves, treedef = jax.tree_util.tree_flatten(params)
    specific = treedef.flatten_up_to(gram_lib.task_specific_mask(params, task_specific))
    shard = ([None] * len(leaves) if shardings is None
             else treedef.flatten_up_to(shardings))
    any_specific = any(specific)

    def f(p, z):
      sink = _gram_sink(z.shape[0])
      flat = [x if s else _tap(sink, sh)(x, z)
              for x, s, sh in zip(treedef.flatten_up_to(p), specific, shard)]
      return fun(jax.tree_util.tree_unflatten(treedef, flat), *args)

    # The task count is the loss vector's length: one shape-only trace finds it.
    out = jax.eval_shape(lambda p: fun(p, *args), params)
    num_tasks = (out[0] if has_aux else out).shape[0]
    z = jnp.zeros((num_tasks,), jnp.float32)
    if has_aux:
      losses, vjp_fn, aux = jax.vjp(f, params, z, has_aux=True)
    else:
      losses, vjp_fn = jax.vjp(f, params, z)
    if losses.ndim != 1:
      raise ValueError(f"streaming_value_and_gram needs a [T] loss vector, got {losses.shape}")
    eye = jnp.eye(num_tasks, dtype=losses.dtype)
    _, gram = jax.vmap(vjp_fn)(eye)                   # [T, T]; the [T, ...] leaves die inside

    def pullback(coef: jax.Array, specific_coef: jax.Array | None = None) -> PyTree:
      grads, _ = vjp_fn(coef.astype(losses.dtype))
      if not any_specific:
        return grads
      if specific_coef is None:
        specific_coef = jnp.ones_like(coef)
      own, _ = vjp_fn(specific_coef.astype(losses.dtype))  # XLA keeps its specific part only
      picked = [o if s else g for g, o, s in zip(treedef.flatten_up_to(grads),
                                                  treedef.flatten_up_to(own), specific)]
      return jax.tree_util.tree_unflatten(treedef, picked)

    return ((losses, aux) if has_aux else losses), gram, pullback

  return wrapped


def streaming_combine(method: Any, gram: jax.Array, pullback: Callable, state: PyTree, *,
                      losses: jax.Array | None = None, present: jax.Array | None = None
                      ) -> tuple[PyTree, PyTree, dict]:
  """``Method.combine``'s result from the streamed Gram matrix.

  Args:
    method: a method with ``streams_gram`` (``check_streams``).
    gram: ``[T, T]`` from ``streaming_value_and_gram``.
    pullback: its weighted pull-back.
    state: the method state.
    losses: ``[T]`` per-task losses.
    present: ``[T]`` float 0/1 (default all).

  Returns:
    ``(grads, new_state, stats)`` as ``method.combine`` returns them on the materialized
    per-task gradients.
  """
  check_streams(method)
  present = gram_lib.present_or_ones(present, gram.shape[0])
  stats, state = method.solve_gram(gram, state, losses, present)
  specific = stats["weights"] if method.weight_task_specific else None
  return pullback(stats["weights"], specific), state, stats
