"""One capturing pass over the evaluation data: head means, neuron counts, routes.

Mean ablation needs every head's mean output over the data, neuron specialization
needs how often each FFN neuron fires on each task's tokens, and routing analysis
needs the routers' statistics on the same data. All three come from one jit-compiled
forward pass with capture on, accumulated over the batches as sums (so that the
result does not depend on how the data was cut into batches).

Captured names (``modular.models``): ``block{i}/attn/attn_heads`` [B, L, H, dh],
``block{i}/ffn/ffn_act`` [B, L, d_ff] (dense FFN, post-activation); routing modules
record their statistics in ``ctx.stats`` (``block{i}/ffn/usage`` [T, E], ...).

References:
  Michel et al. 2019, "Are Sixteen Heads Really Better than One?" (mean ablation
  values); Tan et al. 2024, "Neuron Specialization: Leveraging intrinsic task
  modularity for multilingual machine translation" (activation counts).
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from modular.analysis.batches import PAD_ID, Batch, example_valid, token_valid
from modular.objective import FunctionalModel, Params

_FFN_ACT = re.compile(r"^block(\d+)/(.+)/ffn_act$")


@dataclasses.dataclass
class ActivationStats:
  """What the capturing pass collects.

  Attributes:
    head_means: [NL, H, dh] mean of every head's output over the non-PAD tokens.
    neuron_counts: {slot name ("block0/ffn"): [T, N]} number of each task's tokens
      on which each neuron's activation is > 0.
    neuron_layers: {slot name: layer index}.
    task_tokens: [T] number of each task's (non-PAD) tokens.
    stats: {stat name: array} routing statistics averaged over the batches;
      statistics with one row per task ([T, ...]) average each row over the
      batches weighted by that task's examples in each batch.
  """

  head_means: np.ndarray
  neuron_counts: dict[str, np.ndarray]
  neuron_layers: dict[str, int]
  task_tokens: np.ndarray
  stats: dict[str, np.ndarray]


@functools.partial(jax.jit, static_argnums=(0, 3))
def _batch_sums(fm: FunctionalModel, params: Params, batch: dict, pad_id: int | None):
  """Sums over one batch: head outputs, neuron firing counts, routing stats."""
  _, ctx = fm.apply(params, batch, capture=True)
  tok = token_valid(batch, pad_id, jnp)  # [B, L]
  onehot = jax.nn.one_hot(batch["task_id"], fm.num_tasks)  # [B, T]
  task_tok = onehot * tok.sum(-1)[:, None]  # [B, T]
  head_sum = jnp.stack([
      jnp.einsum("bl,blhk->hk", tok, ctx.intermediates[f"block{i}/attn/attn_heads"])
      for i in range(fm.num_layers)])  # [NL, H, dh]
  counts = {}
  for name, act in ctx.intermediates.items():
    m = _FFN_ACT.match(name)
    if m and act.ndim == 3:
      fired = (act > 0).astype(jnp.float32)  # [B, L, N]
      counts[name[:-len("/ffn_act")]] = jnp.einsum("bt,bl,bln->tn", onehot, tok, fired)
  stats = {k: jnp.asarray(v, jnp.float32) for k, v in ctx.stats.items()}
  examples = onehot.T @ example_valid(batch, jnp)  # [T]
  return head_sum, tok.sum(), counts, task_tok.sum(0), stats, examples


def collect_activations(fm: FunctionalModel, params: Params, batches: Sequence[Batch],
                        pad_id: int | None = PAD_ID) -> ActivationStats:
  """Runs the capturing pass over all batches.

  Args:
    fm: the functional model.
    params: its parameters.
    batches: equal-size mixed batches.
    pad_id: padding token excluded from means and counts (None: count all).

  Returns:
    An ``ActivationStats``.
  """
  head_sum, tokens, task_tokens = 0.0, 0.0, 0.0
  counts: dict[str, np.ndarray] = {}
  stats: dict[str, np.ndarray] = {}
  weights: dict[str, np.ndarray] = {}
  nonempty = 0
  for batch in batches:
    if not float(example_valid(batch).sum()):
      continue
    nonempty += 1
    h, n, c, tt, s, ex = jax.device_get(_batch_sums(fm, params, batch, pad_id))
    head_sum = head_sum + np.asarray(h, np.float64)
    tokens += float(n)
    task_tokens = task_tokens + np.asarray(tt, np.float64)
    for k, v in c.items():
      counts[k] = counts.get(k, 0.0) + np.asarray(v, np.float64)
    for k, v in s.items():
      v = np.asarray(v, np.float64)
      w = np.asarray(ex, np.float64) if v.ndim and v.shape[0] == fm.num_tasks else np.ones(())
      w = w.reshape(w.shape + (1,) * (v.ndim - w.ndim))
      stats[k] = stats.get(k, 0.0) + v * w
      weights[k] = weights.get(k, 0.0) + w
  if not nonempty:
    raise ValueError("no evaluation example has answer tokens")
  layers = {k: int(_FFN_ACT.match(k + "/ffn_act").group(1)) for k in counts}
  return ActivationStats(
      head_means=np.asarray(head_sum / max(tokens, 1.0), np.float32),
      neuron_counts=counts,
      neuron_layers=layers,
      task_tokens=np.asarray(task_tokens),
      stats={k: v / np.maximum(weights[k], 1e-12) for k, v in stats.items()})
