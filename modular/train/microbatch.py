"""Gradient accumulation over micro-batches that keeps the per-task gradients.

``train.microbatches = k`` splits the global batch [B, ...] into k micro-batches of
B / k rows and runs them through one ``jax.lax.scan`` inside the compiled step (no host
round-trip, one compilation). Micro-batch ``m`` takes rows ``m, m + k, m + 2k, ...``: a
batch sharded over its leading axis keeps every micro-batch spread over all devices.

A task's loss is a mean over its answer tokens (or labelled examples), so over the
whole batch ``L_t = sum_m (n_t^m / N_t) L_t^m`` with ``n_t^m`` the task's count in
micro-batch ``m`` and ``N_t = sum_m n_t^m``; the same weights give its gradient
``g_t = sum_m (n_t^m / N_t) g_t^m``. Hence:

  * surgery methods (``needs_task_grads``): the scan accumulates ``n_t^m g_t^m``
    ([T, ...], the size of the per-task gradients, plus one micro-batch's) and
    ``n_t^m L_t^m``, divides by ``N_t`` once, and the method combines the accumulated
    per-task gradients: the result is surgery on the whole batch, not the mean of
    per-micro-batch surgeries;
  * loss weightings: the scan accumulates the gradient of the scalarized objective
    ``sum_t w_t (n_t^m / N_t) L_t^m``, whose sum over ``m`` is ``sum_t w_t g_t`` (one
    gradient's memory). Weights read at the whole batch's losses (GLS, STCH, FAMO
    override ``current_weights``) first need those losses: a forward-only scan
    computes them.

Random methods draw from their state's key once per step, as with the big batch.
Counts come from the batch (``objective.task_counts``), so a task absent from some
micro-batches contributes nothing there. Auxiliary losses (load balance, z-loss) and
module statistics are per micro-batch: losses enter every task's entry weighted as
above, statistics are averaged; both equal the big batch's where they do not depend on
the batch (parameter priors), not in general. Dropout draws a key per micro-batch
(``fold_in(step_key, m)``).

The accumulated per-task gradients are the materialized [T, ...] tensor: ``mtl.gram =
"streaming"`` (``modular.mtl.streaming``) is refused with k > 1, since the whole batch's
Gram matrix ``sum_{m, m'} <g_s^m, g_t^m'>`` needs the cross-micro-batch terms.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from modular import mtl as mtl_lib
from modular.objective import task_counts

PyTree = Any
LossVector = Callable[..., tuple[jax.Array, dict]]  # (params, frozen, batch, rng) -> (lv, aux)


def split(batch: dict, k: int) -> dict:
  """[B, ...] leaves -> [k, B / k, ...]; micro-batch ``m`` holds rows ``m::k``."""

  def one(x):
    b = x.shape[0]
    if b % k:
      raise ValueError(f"config.train.microbatches: batch size {b} is not divisible by "
                       f"microbatches {k}")
    return jnp.swapaxes(x.reshape(b // k, k, *x.shape[1:]), 0, 1)

  return jax.tree.map(one, batch)


def _scale_tasks(tree: PyTree, w: jax.Array) -> PyTree:
  """Multiplies every [T, ...] leaf by ``w`` [T] along its task axis."""
  return jax.tree.map(lambda g: g * w.reshape((-1,) + (1,) * (g.ndim - 1)).astype(g.dtype),
                      tree)


def _aux_sums(lv: jax.Array, aux: dict) -> dict:
  """One micro-batch's contribution to the batch's sums (weights: its counts)."""
  m = aux["metrics"]
  tokens, examples = m["tokens"], m["examples"]
  return {
      "loss": lv * tokens,
      "metrics": {"loss": m["loss"] * tokens, "accuracy": m["accuracy"] * tokens,
                  "seq_accuracy": m["seq_accuracy"] * examples,
                  "tokens": tokens, "examples": examples},
      "aux_losses": aux["aux_losses"], "stats": aux["stats"],
  }


def _finish(sums: dict, k: int) -> tuple[jax.Array, dict, jax.Array]:
  """Batch objective [T], aux (as ``task_loss_vector`` returns it) and counts N [T]."""
  m = sums["metrics"]
  tokens, examples = m["tokens"], m["examples"]
  denom = jnp.maximum(tokens, 1.0)
  losses = sums["loss"] / denom
  metrics = {"loss": m["loss"] / denom, "accuracy": m["accuracy"] / denom,
             "seq_accuracy": m["seq_accuracy"] / jnp.maximum(examples, 1.0),
             "tokens": tokens, "examples": examples,
             "present": (tokens > 0).astype(jnp.float32)}
  mean = lambda t: jax.tree.map(lambda x: x / k, t)
  aux = {"metrics": metrics, "aux_losses": mean(sums["aux_losses"]), "stats": mean(sums["stats"])}
  return losses, aux, tokens


def _scan(body: Callable, init: PyTree, batch: dict, rng: jax.Array, k: int) -> PyTree:
  """Sums ``body(micro_batch, key)`` over the k micro-batches, starting from ``init``."""
  xs = (split(batch, k), jax.vmap(lambda m: jax.random.fold_in(rng, m))(jnp.arange(k)))

  def step(carry, x):
    return jax.tree.map(jnp.add, carry, body(*x)), None

  return jax.lax.scan(step, init, xs)[0]


def _zeros_like_out(body: Callable, batch: dict, rng: jax.Array, k: int) -> PyTree:
  first = jax.tree.map(lambda x: x[0], split(batch, k))
  shapes = jax.eval_shape(body, first, rng)
  return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)


def task_grads(loss_vector: LossVector, params: PyTree, frozen: PyTree, batch: dict,
               rng: jax.Array, k: int, shardings: PyTree | None = None
               ) -> tuple[tuple[jax.Array, dict], PyTree]:
  """Per-task losses and gradients of the whole batch, accumulated over k micro-batches.

  Args:
    loss_vector: ``(params, frozen, batch, rng) -> (losses [T], aux)``.
    params: the differentiated (trainable) parameters.
    frozen: the constant parameters.
    batch: the global batch, leading axis B (k divides it).
    rng: the step's PRNG key.
    k: number of micro-batches.
    shardings: parameter shardings for the [T, ...] gradients (as
      ``mtl.per_task_value_and_grad``).

  Returns:
    ``((losses [T], aux), task_grads)`` as ``per_task_value_and_grad`` returns them on
    the whole batch: ``task_grads`` has a leading task axis, ``aux["metrics"]`` the
    whole batch's metrics.
  """
  vg = mtl_lib.per_task_value_and_grad(loss_vector, has_aux=True, shardings=shardings)

  def body(mb, key):
    (lv, aux), grads = vg(params, frozen, mb, key)
    return {"grads": _scale_tasks(grads, aux["metrics"]["tokens"]), **_aux_sums(lv, aux)}

  sums = _scan(body, _zeros_like_out(body, batch, rng, k), batch, rng, k)
  losses, aux, counts = _finish(sums, k)
  grads = _scale_tasks(sums["grads"], 1.0 / jnp.maximum(counts, 1.0))
  return (losses, aux), grads


def batch_losses(loss_vector: LossVector, params: PyTree, frozen: PyTree, batch: dict,
                 rng: jax.Array, k: int) -> jax.Array:
  """The whole batch's per-task losses [T] from a forward-only scan over k micro-batches."""

  def body(mb, key):
    lv, aux = loss_vector(params, frozen, mb, key)
    return lv * aux["metrics"]["tokens"], aux["metrics"]["tokens"]

  total, counts = _scan(body, _zeros_like_out(body, batch, rng, k), batch, rng, k)
  return total / jnp.maximum(counts, 1.0)


def weighted_grad(loss_vector: LossVector, weights: jax.Array, params: PyTree,
                  frozen: PyTree, batch: dict, rng: jax.Array, k: int
                  ) -> tuple[PyTree, tuple[jax.Array, dict]]:
  """The gradient of ``sum_t weights_t L_t`` over the whole batch, accumulated.

  Args:
    loss_vector: ``(params, frozen, batch, rng) -> (losses [T], aux)``.
    weights: [T] task weights (constant).
    params, frozen, batch, rng, k: as in ``task_grads``.

  Returns:
    ``(grads, (losses [T], aux))``: the gradient with the structure of ``params``, the
    whole batch's losses and aux.
  """
  counts = task_counts(batch, weights.shape[0])  # N_t [T]
  share = jax.lax.stop_gradient(weights) / jnp.maximum(counts, 1.0)  # w_t / N_t

  def body(mb, key):
    def objective(p):
      lv, aux = loss_vector(p, frozen, mb, key)
      return jnp.sum(share * aux["metrics"]["tokens"] * lv), (lv, aux)

    grads, (lv, aux) = jax.grad(objective, has_aux=True)(params)
    return {"grads": grads, **_aux_sums(lv, aux)}

  sums = _scan(body, _zeros_like_out(body, batch, rng, k), batch, rng, k)
  losses, aux, _ = _finish(sums, k)
  return sums["grads"], (losses, aux)
