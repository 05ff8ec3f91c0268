"""The model as a pure function of its parameters, and the per-task objective.

Training, gradient surgery and the analysis all see the model the same way:
``apply(params, batch, ...) -> (logits, ctx)`` over a pure parameter pytree (a nested
dict of arrays, what optax and orbax hold), and ``per_task_metrics`` turns logits
into the vector of per-task losses [T] that gradient surgery differentiates.

Batch contract (see ``modular.data``), one of two kinds:
  next-token: inputs [B, L] int32, targets [B, L] int32, mask [B, L] float32 (1 on
    answer tokens), task_id [B] int32 in [0, T);
  classification (the encoder): inputs [B, L] int32, label [B] int32 (the class in
    [0, C_t), -1 on padding rows that carry no loss), task_id [B] int32, and
    optionally token_mask [B, L] bool (default inputs != PAD) and token_type [B, L]
    int32 (segment ids of sentence pairs); no targets/mask.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from modular.data.vocab import PAD_ID
from modular.models import Context, Transformer, precision

Params = Any  # a nested dict of arrays


@dataclasses.dataclass(frozen=True)
class FunctionalModel:
  """A built model split into its static graph and a pure parameter dict.

  Attributes:
    graphdef: the NNX graph definition (static under jit).
    num_tasks: T.
    num_layers, num_heads, head_dim: attention sizes (for head gates).
    compute_dtype: ``model.dtype``; ``apply`` casts the float32 parameters to it
      (``models.precision``), so gradients with respect to them stay float32.
  """

  graphdef: Any
  num_tasks: int
  num_layers: int
  num_heads: int
  head_dim: int
  compute_dtype: str = "float32"

  @staticmethod
  def split(model: Transformer) -> tuple["FunctionalModel", Params, Any]:
    """Splits a model into (FunctionalModel, params pure dict, logical-axes tree)."""
    graphdef, state = nnx.split(model, nnx.Param)
    params = nnx.to_pure_dict(state)
    axes = jax.tree.map(
        lambda v: v.get_metadata().get("logical_axes"), state,
        is_leaf=lambda x: isinstance(x, nnx.Variable))
    axes = nnx.to_pure_dict(axes) if isinstance(axes, nnx.State) else axes
    fm = FunctionalModel(graphdef, model.num_tasks, model.num_layers, model.num_heads,
                         model.head_dim, getattr(model, "compute_dtype", "float32"))
    return fm, params, axes

  def apply(self, params: Params, batch: dict, *, rng: jax.Array | None = None,
            deterministic: bool = True, capture: bool = False,
            head_gates: jax.Array | None = None,
            head_means: jax.Array | None = None,
            patches: dict | None = None) -> tuple[jax.Array, Context]:
    """Runs the model on a batch.

    Args:
      params: the parameter pytree.
      batch: dict with ``inputs`` [B, L] and ``task_id`` [B].
      rng: PRNG key for dropout / stochastic routing (training).
      deterministic: no noise (evaluation).
      capture: record intermediates into ``ctx.intermediates``.
      head_gates: [NL, H] or [B, NL, H] head gates (default all ones).
      head_means: [NL, H, dh] mean-ablation values for gated-off heads.
      patches: {site name: (weight, source)} writes into the forward pass
        (``Context.patches``; activation patching), None: none.

    Returns:
      (logits [B, L, V], ctx) with ctx.losses / ctx.stats / ctx.intermediates filled.
    """
    model = nnx.merge(self.graphdef, precision.cast_params(params, self.compute_dtype))
    ctx = Context(task_id=batch["task_id"], num_tasks=self.num_tasks,
                  deterministic=deterministic, rng=rng, capture=capture,
                  head_gates=head_gates, head_means=head_means,
                  token_mask=token_mask(batch), patches=patches)
    extra = {"token_type": batch["token_type"]} if "token_type" in batch else {}
    return model(batch["inputs"], ctx, **extra), ctx


def is_classification(batch: dict) -> bool:
  """Whether ``batch`` is a classification batch (has ``label`` [B], no targets)."""
  return "label" in batch and "targets" not in batch


def token_mask(batch: dict) -> jax.Array:
  """[B, L] bool, True on real tokens: ``batch["token_mask"]`` if given, else inputs != PAD.

  PAD is token id 0 in the built-in vocabulary and in BERT-family vocabularies.
  """
  if "token_mask" in batch:
    return batch["token_mask"].astype(bool)
  return batch["inputs"] != PAD_ID


def token_losses(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Cross-entropy per token: [B, L, V], [B, L] -> [B, L] (float32)."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]


def classification_metrics(logits: jax.Array, batch: dict,
                           num_tasks: int) -> dict[str, jax.Array]:
  """Per-task cross-entropy and accuracy of class logits.

  Args:
    logits: [B, C] (classes a task lacks hold -1e9, see ``models.heads``).
    batch: with ``label`` [B] (-1: padding row) and ``task_id`` [B].
    num_tasks: T.

  Returns:
    dict of [T] arrays with the keys of ``per_task_metrics``: ``loss`` (mean CE over
    the task's examples), ``accuracy`` and ``seq_accuracy`` (both the fraction of
    examples classified right), ``tokens`` and ``examples`` (the example count, so
    that count-weighted sums over batches are exact), ``present``.
  """
  label = batch["label"].astype(jnp.int32)  # [B]
  valid = (label >= 0).astype(jnp.float32)  # [B]
  safe = jnp.maximum(label, 0)
  onehot = jax.nn.one_hot(batch["task_id"], num_tasks, dtype=jnp.float32)  # [B, T]
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [B, C]
  ce = -jnp.take_along_axis(logp, safe[:, None], axis=-1)[:, 0] * valid  # [B]
  right = (jnp.argmax(logits, -1) == label).astype(jnp.float32) * valid  # [B]
  examples = onehot.T @ valid  # [T]
  denom = jnp.maximum(examples, 1.0)
  accuracy = (onehot.T @ right) / denom
  return {"loss": (onehot.T @ ce) / denom, "accuracy": accuracy, "seq_accuracy": accuracy,
          "tokens": examples, "examples": examples,
          "present": (examples > 0).astype(jnp.float32)}


def example_losses(logits: jax.Array, batch: dict) -> jax.Array:
  """Each example's loss [B]: mean CE over its answer tokens, or its class CE.

  Rows without a loss (no answer tokens, label -1) get 0.
  """
  if is_classification(batch):
    label = batch["label"].astype(jnp.int32)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [B, C]
    ce = -jnp.take_along_axis(logp, jnp.maximum(label, 0)[:, None], axis=-1)[:, 0]
    return ce * (label >= 0)
  mask = batch["mask"].astype(jnp.float32)  # [B, L]
  tok = token_losses(logits, batch["targets"]) * mask  # [B, L]
  return tok.sum(-1) / jnp.maximum(mask.sum(-1), 1.0)


def example_weights(batch: dict, xp=jnp):
  """[B] 1.0 on examples that carry a loss (padding rows 0); ``xp``: numpy or jax.numpy."""
  if is_classification(batch):
    return (xp.asarray(batch["label"]) >= 0).astype(xp.float32)
  return (xp.asarray(batch["mask"]).sum(-1) > 0).astype(xp.float32)


def task_counts(batch: dict, num_tasks: int) -> jax.Array:
  """[T] answer tokens (next-token) or labelled examples (classification) of each task."""
  onehot = jax.nn.one_hot(batch["task_id"], num_tasks, dtype=jnp.float32)  # [B, T]
  if is_classification(batch):
    return onehot.T @ example_weights(batch)
  return onehot.T @ batch["mask"].astype(jnp.float32).sum(-1)


def tasks_present(batch: dict, num_tasks: int) -> jax.Array:
  """[T] 1.0 for the tasks with at least one example carrying a loss in ``batch``."""
  onehot = jax.nn.one_hot(batch["task_id"], num_tasks, dtype=jnp.float32)  # [B, T]
  return (onehot.T @ example_weights(batch) > 0).astype(jnp.float32)


def per_task_metrics(logits: jax.Array, batch: dict, num_tasks: int) -> dict[str, jax.Array]:
  """Per-task masked loss and accuracy.

  A classification batch (``label`` [B], logits [B, C]) goes to
  ``classification_metrics``, which returns the same keys.

  Each task's loss is the mean cross-entropy over its answer tokens in the batch; a
  task absent from the batch gets loss 0 and ``present`` 0.

  Args:
    logits: [B, L, V].
    batch: with ``targets`` [B, L], ``mask`` [B, L], ``task_id`` [B].
    num_tasks: T.

  Returns:
    dict of [T] arrays: ``loss``, ``accuracy`` (token accuracy on answer tokens),
    ``seq_accuracy`` (all answer tokens right), ``tokens`` (answer-token count),
    ``examples``, ``present`` (1.0 where the task has answer tokens).
  """
  if is_classification(batch):
    return classification_metrics(logits, batch, num_tasks)
  mask = batch["mask"].astype(jnp.float32)  # [B, L]
  onehot = jax.nn.one_hot(batch["task_id"], num_tasks, dtype=jnp.float32)  # [B, T]
  tok_loss = token_losses(logits, batch["targets"]) * mask  # [B, L]
  correct = (jnp.argmax(logits, -1) == batch["targets"]).astype(jnp.float32) * mask
  tokens = onehot.T @ mask.sum(-1)  # [T]
  denom = jnp.maximum(tokens, 1.0)
  has_answer = (mask.sum(-1) > 0).astype(jnp.float32)  # [B]
  seq_right = (correct.sum(-1) == mask.sum(-1)).astype(jnp.float32) * has_answer  # [B]
  examples = onehot.T @ has_answer
  return {
      "loss": (onehot.T @ tok_loss.sum(-1)) / denom,
      "accuracy": (onehot.T @ correct.sum(-1)) / denom,
      "seq_accuracy": (onehot.T @ seq_right) / jnp.maximum(examples, 1.0),
      "tokens": tokens,
      "examples": examples,
      "present": (tokens > 0).astype(jnp.float32),
  }


def task_loss_vector(fm: FunctionalModel, params: Params, batch: dict, *,
                     rng: jax.Array | None = None, deterministic: bool = True
                     ) -> tuple[jax.Array, dict]:
  """The per-task objective [T]: each task's loss plus the auxiliary losses.

  Auxiliary losses (load balance, z-loss, priors; already weighted by their modules)
  are added to every task's entry, so the mean over present tasks equals
  mean_t L_t + sum(aux) and per-task gradients include the auxiliary terms.

  Returns:
    (loss_vector [T], aux) with aux = {"metrics": per_task_metrics, "aux_losses":
    dict, "stats": dict}.
  """
  logits, ctx = fm.apply(params, batch, rng=rng, deterministic=deterministic)
  metrics = per_task_metrics(logits, batch, fm.num_tasks)
  aux_total = sum(ctx.losses.values()) if ctx.losses else jnp.float32(0.0)
  loss_vec = metrics["loss"] + aux_total * metrics["present"]
  return loss_vec, {"metrics": metrics, "aux_losses": dict(ctx.losses), "stats": dict(ctx.stats)}
