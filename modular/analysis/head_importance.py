"""Gradient-based head importance per task: I_h(t) = E_{x in t} |dL(x)/d xi_h|.

Every head's output is multiplied by a gate xi (``ctx.head_gates``). With one gate
per example, ``xi`` of shape [B, NL, H], the gradient of the *sum* of per-example
losses with respect to ``xi[b]`` is example b's own gradient dL(x_b)/dxi: a gate of
example b touches only example b's forward pass, so the other examples' losses do
not depend on it. One forward and one backward pass therefore give the gradient of
every example for every head, and grouping the absolute values by task id gives
every task's importance: no loop over heads, no loop over tasks, and no T backward
passes either (the differentiation is with respect to the gates only, so no weight
gradients are formed).

L(x) is the example's mean cross-entropy over its answer tokens. Importance is
normalized per layer by the L2 norm over that layer's heads (Michel et al. §4.1),
after importances at or below the model's noise floor (``noise.noise_floor``) are set
to 0: a layer where no head matters stays 0 instead of becoming a sharp pattern.

Caveat: a module that couples examples within a batch (a capacity-limited
token router) makes other examples' losses depend on xi[b] too; the sum's gradient
then includes those cross terms.

References:
  Michel et al. 2019, "Are Sixteen Heads Really Better than One?" (NeurIPS).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from modular.analysis.batches import Batch, example_valid
from modular import objective
from modular.analysis.noise import RELATIVE_FLOOR, floored, noise_floor
from modular.objective import FunctionalModel, Params


@dataclasses.dataclass
class HeadImportance:
  """Per-task gradient importance of every head.

  Attributes:
    raw: [T, NL, H] E_x |dL(x)/dxi_h| over each task's examples.
    normalized: [T, NL, H] ``raw`` above the noise floor, divided by its L2 norm over
      each layer's heads (0 in layers where every head is at noise level).
    examples: [T] number of examples behind each task's expectation.
    floor: the noise floor applied to ``raw`` before normalizing.
  """

  raw: np.ndarray
  normalized: np.ndarray
  examples: np.ndarray
  floor: float = 0.0


def example_losses(logits: jax.Array, batch: dict) -> jax.Array:
  """Per-example loss [B]: mean cross-entropy over answer tokens ([B, L, V] logits), or
  the class cross-entropy of a classification batch ([B, C] logits).

  Examples without answer tokens (or with label -1) get 0.
  """
  return objective.example_losses(logits, batch)


def ones_gates(fm: FunctionalModel, batch_size: int | None = None) -> jax.Array:
  """All-ones head gates: [NL, H], or per-example [B, NL, H]."""
  shape = (fm.num_layers, fm.num_heads)
  return jnp.ones(shape if batch_size is None else (batch_size,) + shape, jnp.float32)


@functools.partial(jax.jit, static_argnums=0)
def per_example_gate_grads(fm: FunctionalModel, params: Params, batch: dict) -> jax.Array:
  """dL(x_b)/dxi for every example and head in one forward and one backward pass.

  Args:
    fm: the functional model.
    params: its parameters.
    batch: a batch dict (B examples).

  Returns:
    [B, NL, H] per-example gate gradients (0 for examples without answer tokens).
  """
  batch_size = batch["inputs"].shape[0]

  def total_loss(gates):  # [B, NL, H] -> scalar
    logits, _ = fm.apply(params, batch, head_gates=gates)
    return example_losses(logits, batch).sum()

  return jax.grad(total_loss)(ones_gates(fm, batch_size))


@functools.partial(jax.jit, static_argnums=0)
def importance_sums(fm: FunctionalModel, params: Params, batch: dict
                    ) -> tuple[jax.Array, jax.Array]:
  """Per-task sums of |dL(x)/dxi| over one batch.

  Returns:
    (abs_sum [T, NL, H], examples [T]): sums over each task's valid examples.
  """
  grads = per_example_gate_grads(fm, params, batch)  # [B, NL, H]
  valid = example_valid(batch, jnp)  # [B]
  onehot = jax.nn.one_hot(batch["task_id"], fm.num_tasks) * valid[:, None]  # [B, T]
  abs_sum = jnp.einsum("bt,blh->tlh", onehot, jnp.abs(grads))
  return abs_sum, onehot.sum(0)


def normalize_per_layer(importance: np.ndarray, floor: float = 0.0) -> np.ndarray:
  """Divides each layer's head importances by their L2 norm: [..., NL, H] -> same.

  Args:
    importance: [..., NL, H] non-negative importances.
    floor: importances at or below it are noise and set to 0 first
      (``noise.noise_floor``), so noise is never scaled up to look like a pattern.

  Returns:
    [..., NL, H]; a layer whose heads are all at or below the floor stays 0.
  """
  importance = floored(importance, floor)
  norm = np.linalg.norm(importance, axis=-1, keepdims=True)
  return np.where(norm > 0, importance / np.where(norm > 0, norm, 1.0), 0.0)


def gradient_head_importance(fm: FunctionalModel, params: Params,
                             batches: Sequence[Batch],
                             relative_floor: float = RELATIVE_FLOOR) -> HeadImportance:
  """Gradient importance of every head for every task over evaluation batches.

  Args:
    fm: the functional model.
    params: its parameters (sharded or not).
    batches: equal-size mixed batches (``batches.prepare_batches``).
    relative_floor: the noise floor's share of the largest importance
      (``noise.noise_floor``).

  Returns:
    A ``HeadImportance`` with raw [T, NL, H], per-layer normalized [T, NL, H] and
    example counts [T]. Tasks with no examples get importance 0.
  """
  abs_sum = np.zeros((fm.num_tasks, fm.num_layers, fm.num_heads))
  examples = np.zeros(fm.num_tasks)
  for batch in batches:
    s, n = importance_sums(fm, params, batch)
    abs_sum += np.asarray(s, np.float64)
    examples += np.asarray(n, np.float64)
  raw = abs_sum / np.maximum(examples, 1.0)[:, None, None]
  floor = noise_floor(raw, relative_floor)
  return HeadImportance(raw=raw, normalized=normalize_per_layer(raw, floor),
                        examples=examples, floor=floor)


@functools.partial(jax.jit, static_argnums=0)
def task_vector_gate_grads(fm: FunctionalModel, params: Params, batch: dict) -> jax.Array:
  """The textbook route: one forward, then T backward passes of the task losses.

  Differentiates each entry of the per-task loss vector (``per_task_metrics``) with
  respect to per-example gates, one backward per task (vmapped over one-hot
  cotangents). Used by the benchmark as the "forward + T backward" yardstick and by
  the tests as a second route to the same numbers.

  Returns:
    [T, B, NL, H] d loss_t / d xi[b].
  """
  from modular.objective import per_task_metrics  # pylint: disable=g-import-not-at-top
  batch_size = batch["inputs"].shape[0]

  def loss_vector(gates):
    logits, _ = fm.apply(params, batch, head_gates=gates)
    return per_task_metrics(logits, batch, fm.num_tasks)["loss"]  # [T]

  _, vjp = jax.vjp(loss_vector, ones_gates(fm, batch_size))
  cotangents = jnp.eye(fm.num_tasks, dtype=jnp.float32)  # [T, T]
  return jax.vmap(lambda c: vjp(c)[0])(cotangents)
