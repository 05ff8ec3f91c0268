"""Ablation matrices: the change in each task's loss and accuracy when a head is off.

Zero ablation sets a head's gate xi_h to 0; mean ablation replaces the head's output
by its mean over the data (``o = xi o + (1 - xi) m`` with m from
``activations.collect_activations``). All NL x H heads, both modes and the
unablated baseline are one jit-compiled call per batch: for each layer l, the
patterns that change layer l's gates and means are vmapped (in chunks with
``lax.map``: on CPU one pattern per step by default, which keeps the working set in
cache), and each pattern's forward pass reports every task's loss and accuracy at
once, since one batch holds every task.

Only layer l's gates are batched in layer l's vmap (``PerLayer``), so the layers
below l, and layer l's attention weights, are computed once and shared by its
patterns: the call costs less than the NL x H forward passes it replaces.

Per-batch sums (loss x tokens, correct tokens) are accumulated over the batches, so
the result is each task's token-mean loss / accuracy over all its evaluation data.

References:
  Michel et al. 2019, "Are Sixteen Heads Really Better than One?" (head ablation).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from modular.analysis.batches import Batch
from modular.objective import FunctionalModel, Params, per_task_metrics, task_counts

MODES = ("zero", "mean")


@dataclasses.dataclass
class AblationResult:
  """Per-task effect of ablating each head.

  Attributes:
    delta_loss: {mode: [NL, H, T]} ablated minus baseline token-mean loss.
    delta_accuracy: {mode: [NL, H, T]} ablated minus baseline token accuracy.
    base_loss: [T] baseline loss.
    base_accuracy: [T] baseline token accuracy.
    tokens: [T] answer tokens behind each task's numbers.
  """

  delta_loss: dict[str, np.ndarray]
  delta_accuracy: dict[str, np.ndarray]
  base_loss: np.ndarray
  base_accuracy: np.ndarray
  tokens: np.ndarray


class PerLayer:
  """Head gates or head means held as one array per layer.

  ``Context.gate_for_layer`` reads ``head_gates[..., layer, :]`` and attention reads
  ``head_means[layer]``; this object answers both with the layer's own array. Held
  this way, a vmap over patterns that change layer l batches only layer l's array,
  so every computation below layer l (and layer l's queries, keys, values and
  attention weights) stays unbatched and runs once for all of that layer's patterns.

  Args:
    arrays: one array per layer: gates [H] (or batched [P, H]), means [H, dh].
  """

  def __init__(self, arrays: Sequence[jax.Array]):
    self.arrays = list(arrays)

  def __getitem__(self, index):
    layer = index[-2] if isinstance(index, tuple) else index
    return self.arrays[layer]


def layer_patterns(num_layers: int, num_heads: int, head_dim: int, means: np.ndarray | None,
                   modes: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
  """Each layer's ablation patterns for that layer's gates and means.

  Pattern q = i * H + h of layer l turns head (l, h) off in mode ``modes[i]``.

  Returns:
    (gates [NL, Q, H], means [NL, Q, H, dh]) with Q = len(modes) * H.
  """
  off = 1.0 - np.eye(num_heads, dtype=np.float32)  # [H, H]
  gates, fill = [], []
  for mode in modes:
    if mode not in MODES:
      raise ValueError(f"unknown ablation mode {mode!r}; known: {MODES}")
    if mode == "mean" and means is None:
      raise ValueError("mean ablation needs head means [NL, H, dh]")
    m = (np.zeros((num_layers, num_heads, head_dim), np.float32) if mode == "zero"
         else np.asarray(means, np.float32))
    gates.append(np.broadcast_to(off, (num_layers, num_heads, num_heads)))
    fill.append(np.broadcast_to(m[:, None], (num_layers, num_heads, num_heads, head_dim)))
  return np.concatenate(gates, 1), np.concatenate(fill, 1)


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def ablation_sums(fm: FunctionalModel, params: Params, batch: dict, patterns: tuple,
                  chunk: int | None = None, share_prefix: bool = True
                  ) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Baseline and every pattern's per-task loss and correct-token sums on one batch.

  Args:
    fm: the functional model.
    params: its parameters.
    batch: a batch dict.
    patterns: (gates [NL, Q, H], means [NL, Q, H, dh]) from ``layer_patterns``.
    chunk: patterns per vmapped step of ``lax.map`` (None: one vmap per layer).
    share_prefix: batch only the ablated layer's gates (computations below it run
      once); False vmaps full [NL, H] gate patterns (every pattern runs the whole
      model), kept as the plain reference.

  Returns:
    (base_loss [T], base_correct [T], loss_sum [NL, Q, T], correct_sum [NL, Q, T],
    tokens [T]).
  """
  nl = fm.num_layers
  ones = jnp.ones((nl, fm.num_heads), jnp.float32)
  zeros = jnp.zeros((nl, fm.num_heads, fm.head_dim), jnp.float32)

  def run(gates, means):
    if share_prefix:
      gates, means = PerLayer(gates), PerLayer(means)
    else:
      gates, means = jnp.stack(gates), jnp.stack(means)
    logits, _ = fm.apply(params, batch, head_gates=gates, head_means=means)
    m = per_task_metrics(logits, batch, fm.num_tasks)
    return m["loss"] * m["tokens"], m["accuracy"] * m["tokens"]

  base_loss, base_correct = run(list(ones), list(zeros))
  losses, corrects = [], []
  for layer in range(nl):

    def one(pattern, layer=layer):
      g, m = pattern  # [H], [H, dh]
      gates = [g if i == layer else ones[i] for i in range(nl)]
      means = [m if i == layer else zeros[i] for i in range(nl)]
      return run(gates, means)

    xs = (patterns[0][layer], patterns[1][layer])
    if chunk is None:
      loss, correct = jax.vmap(one)(xs)
    else:
      loss, correct = jax.lax.map(one, xs, batch_size=chunk)
    losses.append(loss)
    corrects.append(correct)
  tokens = task_counts(batch, fm.num_tasks)
  return base_loss, base_correct, jnp.stack(losses), jnp.stack(corrects), tokens


def default_chunk(batch_size: int) -> int | None:
  """Patterns per vmapped step: about 64 examples' worth on CPU, all on accelerators.

  On CPU a vmap over every pattern multiplies the working set by the number of
  patterns and falls out of cache; mapping over small groups of patterns is faster
  (measured on 2 cores with the default model: one pattern per step at batch 64).
  """
  if jax.default_backend() != "cpu":
    return None
  return max(1, 64 // max(batch_size, 1))


def ablation_matrices(fm: FunctionalModel, params: Params, batches: Sequence[Batch],
                      means: np.ndarray | None = None,
                      modes: Sequence[str] = MODES,
                      chunk: int | None | str = "auto",
                      share_prefix: bool = True) -> AblationResult:
  """Zero- and/or mean-ablation effect of every head on every task.

  Args:
    fm: the functional model.
    params: its parameters.
    batches: equal-size mixed batches.
    means: [NL, H, dh] head means (needed for mode "mean").
    modes: subset of ("zero", "mean").
    chunk: patterns per vmapped step (bounds memory; None: one vmap per layer;
      "auto": ``default_chunk``).
    share_prefix: run the layers below the ablated one once per layer (see
      ``ablation_sums``); the numbers are the same either way.

  Returns:
    An ``AblationResult`` with [NL, H, T] deltas per mode.
  """
  nl, nh = fm.num_layers, fm.num_heads
  if chunk == "auto":
    chunk = default_chunk(batches[0]["inputs"].shape[0]) if batches else None
  gates, fill = layer_patterns(nl, nh, fm.head_dim, means, modes)
  patterns = (jnp.asarray(gates), jnp.asarray(fill))
  base = np.zeros((2, fm.num_tasks))
  loss = np.zeros(gates.shape[:2] + (fm.num_tasks,))  # [NL, Q, T]
  correct = np.zeros_like(loss)
  tokens = np.zeros(fm.num_tasks)
  for batch in batches:
    bl, bc, l, c, n = jax.device_get(
        ablation_sums(fm, params, batch, patterns, chunk, share_prefix))
    base += np.stack([bl, bc])
    loss += l
    correct += c
    tokens += n
  denom = np.maximum(tokens, 1.0)
  base_loss, base_acc = base / denom
  loss, acc = loss / denom, correct / denom  # [NL, Q, T]
  delta_loss, delta_acc = {}, {}
  for i, mode in enumerate(modes):
    sl = slice(i * nh, (i + 1) * nh)
    delta_loss[mode] = loss[:, sl] - base_loss
    delta_acc[mode] = acc[:, sl] - base_acc
  return AblationResult(delta_loss=delta_loss, delta_accuracy=delta_acc,
                        base_loss=base_loss, base_accuracy=base_acc, tokens=tokens)
