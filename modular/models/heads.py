"""Per-task classification heads (a HEAD filler): pooled hidden state -> class logits.

Each task t has its own linear classifier over its own C_t classes. The tasks'
classifiers are stored stacked and zero-padded to C = max_t C_t, and the logits of
classes a task does not have are set to -1e9, so the model's output is one array
[B, C] and a softmax over it puts no mass on another task's classes:

  z_b = pool(h_b) W[t_b] + c[t_b]        z_b[c] = -1e9 for c >= C_{t_b}

Pooling: "cls" takes the first token's hidden state (BERT's [CLS]), "mean" averages
the hidden states over the real tokens (``ctx.token_mask``; sentence-transformers'
pooling for all-MiniLM-L6-v2).

Config (``model.head``, name "classify"): num_classes (an int for every task, or a
list with one count per task), pooling ("cls" | "mean").

References:
  Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers"
    ([CLS] classification).
  Reimers & Gurevych 2019, "Sentence-BERT" (mean pooling).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from modular.models.context import Context
from modular.models.slots import HEAD, SlotArgs, param

POOLINGS = ("cls", "mean")
MISSING_CLASS = -1e9  # logit of a class the example's task does not have


def class_counts(cfg: ml_collections.ConfigDict, num_tasks: int) -> list[int]:
  """The number of classes of every task from ``model.head.num_classes``.

  Raises:
    ValueError: naming ``config.model.head.num_classes`` if it is missing, not one
      count per task, or holds a count < 2.
  """
  key = "config.model.head.num_classes"
  value = cfg.get("num_classes", None)
  if value is None:
    raise ValueError(f"{key}: missing; give the number of classes (one int or one per task)")
  counts = [value] * num_tasks if isinstance(value, int) else list(value)
  if len(counts) != num_tasks:
    raise ValueError(f"{key}: {len(counts)} counts for {num_tasks} tasks")
  if any(not isinstance(c, (int, np.integer)) or isinstance(c, bool) or c < 2 for c in counts):
    raise ValueError(f"{key}: every task needs an int >= 2 classes, got {counts}")
  return [int(c) for c in counts]


def pool(x: jax.Array, ctx: Context, pooling: str) -> jax.Array:
  """[B, L, d] hidden states -> [B, d] by [CLS] or by the mean over real tokens."""
  if pooling == "cls":
    return x[:, 0]
  if ctx.token_mask is None:
    return x.mean(1)
  w = ctx.token_mask.astype(x.dtype)[..., None]  # [B, L, 1]
  return (x * w).sum(1) / jnp.maximum(w.sum(1), 1.0)


class ClassificationHead(nnx.Module):
  """Per-task linear classifiers over a pooled hidden state: [B, L, d] -> [B, C].

  Args:
    args: slot sizes (d_model, num_tasks).
    cfg: num_classes, pooling.
    rngs: key source.
  """

  def __init__(self, args: SlotArgs, cfg: ml_collections.ConfigDict, rngs: nnx.Rngs):
    counts = class_counts(cfg, args.num_tasks)
    self.pooling = cfg.get("pooling", "cls")
    if self.pooling not in POOLINGS:
      raise ValueError(f"config.model.head.pooling: unknown {self.pooling!r}; known: {POOLINGS}")
    c = max(counts)
    self.num_classes = tuple(counts)
    self.per_task_kernel = param(rngs, (args.num_tasks, args.d_model, c),
                                 ("tasks", "embed", None), scale=0.02)
    self.per_task_bias = param(rngs, (args.num_tasks, c), ("tasks", None), init="zeros")

  def __call__(self, x: jax.Array, ctx: Context) -> jax.Array:  # [B, L, d] -> [B, C]
    pooled = pool(x, ctx, self.pooling)  # [B, d]
    ctx.capture_activation("pooled", pooled)
    kernel = self.per_task_kernel[...][ctx.task_id]  # [B, d, C]
    logits = jnp.einsum("bd,bdc->bc", pooled, kernel) + self.per_task_bias[...][ctx.task_id]
    counts = jnp.asarray(self.num_classes, jnp.int32)[ctx.task_id]  # [B]
    valid = jnp.arange(logits.shape[-1])[None, :] < counts[:, None]  # [B, C]
    return jnp.where(valid, logits, MISSING_CLASS)


@HEAD.register("classify")
def _classify(args: SlotArgs, cfg, rngs):
  return ClassificationHead(args, cfg, rngs)
