"""The train step and the eval step: pure functions, jitted with shardings by the loop.

One step computes the vector of per-task losses [T] and reduces it through the
configured multi-task method (``modular.mtl``), never naming one:

  * methods with ``needs_task_grads`` (PCGrad, MGDA, CAGrad, ...) get the per-task
    gradients [T, ...] from one forward pass and T VJPs and combine them;
  * loss-weighting methods (mean, uncertainty, DWA) give weights w [T] and the step
    differentiates sum_t w_t L_t once.

With ``gram = "streaming"`` (``mtl.gram``) a surgery method gets the T x T Gram matrix
from inside the batched backward pass and the update from one more VJP, never holding
the [T, ...] gradients (``modular.mtl.streaming``); it is refused with ``microbatches > 1``
(the whole batch's Gram matrix needs the cross-micro-batch terms).

With ``microbatches = k > 1`` both paths scan over k micro-batches and accumulate what
the whole batch would give (per-task gradients, or the weighted gradient), then update
once (``modular.train.microbatch``).

Only the trainable parameters are differentiated (``partition``, from ``optim.frozen``):
the step splits the parameter dict into its trainable and frozen sub-dicts and the loss
takes the frozen one as a constant, so frozen parameters get no backward work (T
per-task VJPs included) and never reach the clip norm, ``grad_norm``, the surgery
Gram matrix, the optimizer state or weight decay (``modular.train.partition``).

The optax optimizer then applies the combined gradient. State is a dict pytree:
  params     the model's parameter dict (all of it, trainable and frozen)
  opt_state  the optax state (of the trainable sub-dict only)
  mtl_state  the multi-task method's state (PRNG key, loss history, learned weights)
  step       int32 []
  rng        PRNG key [2] uint32 (dropout, Gumbel noise)
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from modular import mtl as mtl_lib
from modular.objective import (FunctionalModel, example_losses, example_weights, is_classification,
                               per_task_metrics, task_loss_vector, tasks_present)
from modular.train import microbatch
from modular.train.partition import Partition

State = dict[str, Any]


def init_state(params: Any, tx: optax.GradientTransformation, method: Any, seed: int,
               partition: Partition | None = None) -> State:
  """The training state at step 0 (call under jit with output shardings).

  Args:
    params: the full parameter dict.
    tx: the optimizer, built on the trainable sub-dict.
    method: the multi-task method.
    seed: the step PRNG seed.
    partition: which parameters train (default: all).
  """
  trainable = (partition or Partition()).trainable(params)
  return {
      "params": params,
      "opt_state": tx.init(trainable),
      "mtl_state": method.init(trainable),
      "step": jnp.zeros((), jnp.int32),
      "rng": jax.random.PRNGKey(seed),
  }


def make_train_step(fm: FunctionalModel, tx: optax.GradientTransformation, method: Any,
                    schedule: optax.Schedule | None = None, param_shardings: Any = None,
                    partition: Partition | None = None, microbatches: int = 1,
                    gram: str = "materialize"
                    ) -> Callable[[State, dict], tuple[State, dict]]:
  """Builds ``train_step(state, batch) -> (state, metrics)``.

  Args:
    fm: the functional model.
    tx: the optax optimizer (applied to the combined gradient).
    method: a ``modular.mtl`` method (``needs_task_grads``, ``combine`` or
      ``loss_weights``/``observe``).
    schedule: learning-rate schedule, for logging.
    param_shardings: the parameters' NamedShardings; per-task gradients [T, ...] keep
      them on the trailing axes (the task axis unsharded).
    partition: which parameters train (default: all); gradients, the method and
      ``tx`` see the trainable sub-dict only.
    microbatches: k (``train.microbatches``): the step scans over k micro-batches of
      B / k rows and gives the whole batch's update (``modular.train.microbatch``).
    gram: ``"materialize"`` or ``"streaming"`` (``mtl.gram``; surgery methods only).

  Returns:
    The step function. Metrics hold [T] arrays under ``task/<name>``, the auxiliary
    losses under ``aux/<name>``, module statistics under ``stats/<name>`` and the
    method's telemetry under ``mtl/<name>``.
  """

  partition = partition or Partition()
  streaming = gram == "streaming" and method.needs_task_grads
  if gram not in mtl_lib.GRAM_MODES:
    raise ValueError(f"config.mtl.gram: unknown {gram!r}; known: {', '.join(mtl_lib.GRAM_MODES)}")
  if streaming:
    mtl_lib.check_streams(method)
    if microbatches > 1:
      raise ValueError(f"config.mtl.gram: 'streaming' with train.microbatches={microbatches} "
                       "is not supported: set train.microbatches=1 or mtl.gram='materialize'")
  grad_shardings = None if param_shardings is None else partition.trainable(param_shardings)

  def loss_vector(trainable, frozen, batch, rng):
    params = partition.merge(trainable, frozen)
    return task_loss_vector(fm, params, batch, rng=rng, deterministic=False)

  def train_step(state: State, batch: dict) -> tuple[State, dict]:
    rng, step_rng = jax.random.split(state["rng"])
    params, frozen = partition.split(state["params"])  # differentiate `params` only
    if microbatches > 1 and method.needs_task_grads:
      (losses, aux), task_grads = microbatch.task_grads(
          loss_vector, params, frozen, batch, step_rng, microbatches, grad_shardings)
      present = aux["metrics"]["present"]
      grads, mtl_state, mtl_stats = method.combine(
          task_grads, state["mtl_state"], params=params, losses=losses, present=present)
    elif microbatches > 1:
      present = _present(batch, fm.num_tasks)
      now = (microbatch.batch_losses(loss_vector, params, frozen, batch, step_rng, microbatches)
             if method.reads_current_losses else None)
      weights = method.current_weights(state["mtl_state"], now, present)
      grads, (losses, aux) = microbatch.weighted_grad(
          loss_vector, weights, params, frozen, batch, step_rng, microbatches)
      mtl_state, mtl_stats = method.observe(state["mtl_state"], losses, present)
    elif streaming:
      (losses, aux), gram_matrix, pullback = mtl_lib.streaming_value_and_gram(
          loss_vector, has_aux=True, task_specific=method.task_specific,
          shardings=grad_shardings)(params, frozen, batch, step_rng)
      present = aux["metrics"]["present"]
      grads, mtl_state, mtl_stats = mtl_lib.streaming_combine(
          method, gram_matrix, pullback, state["mtl_state"], losses=losses, present=present)
    elif method.needs_task_grads:
      (losses, aux), task_grads = mtl_lib.per_task_value_and_grad(
          loss_vector, has_aux=True, shardings=grad_shardings)(
          params, frozen, batch, step_rng)
      present = aux["metrics"]["present"]
      grads, mtl_state, mtl_stats = method.combine(
          task_grads, state["mtl_state"], params=params, losses=losses, present=present)
    else:
      present = _present(batch, fm.num_tasks)

      def objective(p):
        lv, aux = loss_vector(p, frozen, batch, step_rng)
        return method.scalarize(state["mtl_state"], lv, present), (lv, aux)

      grads, (losses, aux) = jax.grad(objective, has_aux=True)(params)
      mtl_state, mtl_stats = method.observe(state["mtl_state"], losses, present)
    updates, opt_state = tx.update(grads, state["opt_state"], params)
    new_state = {
        "params": partition.merge(optax.apply_updates(params, updates), frozen),
        "opt_state": opt_state,
        "mtl_state": mtl_state,
        "step": state["step"] + 1,
        "rng": rng,
    }
    metrics = {f"task/{k}": v for k, v in aux["metrics"].items()}
    metrics.update({f"aux/{k}": v for k, v in aux["aux_losses"].items()})
    metrics.update({f"stats/{k}": v for k, v in aux["stats"].items()})
    metrics.update({f"mtl/{k}": v for k, v in mtl_stats.items()})
    metrics["objective"] = jnp.sum(losses * present) / jnp.maximum(present.sum(), 1.0)
    metrics["grad_norm"] = optax.global_norm(grads)
    if schedule is not None:
      metrics["learning_rate"] = schedule(state["step"])
    return new_state, metrics

  return train_step


def make_eval_step(fm: FunctionalModel) -> Callable[[Any, dict], dict]:
  """Builds ``eval_step(params, batch) -> per-task sums`` (deterministic forward).

  Returns sums (loss x tokens, correct tokens, right sequences, counts) so that the
  loop can add them over batches and divide once.
  """

  def eval_step(params, batch):
    logits, _ = fm.apply(params, batch, deterministic=True)
    return _sums(per_task_metrics(logits, batch, fm.num_tasks))

  return eval_step


def _sums(m: dict) -> dict:
  """Per-task sums [T] of ``per_task_metrics`` (added over batches, divided once)."""
  return {
      "loss_sum": m["loss"] * m["tokens"],
      "correct": m["accuracy"] * m["tokens"],
      "seq_right": m["seq_accuracy"] * m["examples"],
      "tokens": m["tokens"],
      "examples": m["examples"],
  }


def make_predict_step(fm: FunctionalModel) -> Callable[[Any, dict], dict]:
  """Builds ``predict_step(params, batch) -> per-example outputs`` (deterministic).

  Returns ``correct`` float32 [B] (the class, or every answer token, right), ``loss``
  float32 [B] (``objective.example_losses``), ``pred`` int32 [B] (the argmax class;
  -1 for next-token tasks) and ``valid`` float32 [B] (0 on padding rows): what a paired
  test between two runs on the same test examples needs; and ``sums``, the eval step's
  per-task sums of the same forward pass.
  """

  def predict_step(params, batch):
    logits, _ = fm.apply(params, batch, deterministic=True)
    valid = example_weights(batch)
    if is_classification(batch):
      pred = jnp.argmax(logits, -1).astype(jnp.int32)  # [B]
      correct = (pred == batch["label"]).astype(jnp.float32)
    else:
      mask = batch["mask"].astype(jnp.float32)  # [B, L]
      right = (jnp.argmax(logits, -1) == batch["targets"]).astype(jnp.float32) * mask
      correct = (right.sum(-1) == mask.sum(-1)).astype(jnp.float32)
      pred = jnp.full(correct.shape, -1, jnp.int32)
    return {"correct": correct * valid, "loss": example_losses(logits, batch), "pred": pred,
            "valid": valid, "sums": _sums(per_task_metrics(logits, batch, fm.num_tasks))}

  return predict_step


def _present(batch: dict, num_tasks: int) -> jax.Array:
  """[T] 1.0 for tasks with answer tokens (or labelled examples) in the batch."""
  return tasks_present(batch, num_tasks)


def all_finite(tree: Any) -> jax.Array:
  """bool []: every floating-point leaf of ``tree`` is finite (no NaN, no inf)."""
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(jnp.asarray(x).dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def with_nonfinite_guard(train_step: Callable[[State, dict], tuple[State, dict]], skip: bool
                         ) -> Callable[[State, dict], tuple[State, dict]]:
  """Adds ``metrics["nonfinite"]`` (int32 [], 1 if the step went non-finite) to a step.

  A step is non-finite when its objective, its per-task losses, its gradient norm or any
  new parameter is NaN or inf. The flag travels with the metrics (the loop reads it when it
  fetches a logging window or before a checkpoint or evaluation: no extra host round-trip).

  Args:
    train_step: ``(state, batch) -> (state, metrics)`` from ``make_train_step``.
    skip: True (``train.on_nonfinite="skip"``): a non-finite step's update is dropped
      inside the compiled step: params, opt_state and mtl_state stay as they were, while
      ``step`` and ``rng`` advance (the batch is consumed). False ("halt"): the new state
      is returned as is and the loop stops before saving it.

  Returns:
    The guarded step, same signature.
  """

  def guarded(state: State, batch: dict) -> tuple[State, dict]:
    new_state, metrics = train_step(state, batch)
    finite = all_finite((metrics["objective"], metrics["grad_norm"], metrics["task/loss"],
                         new_state["params"]))
    if skip:
      keep = {k: v for k, v in new_state.items() if k not in ("step", "rng")}
      old = {k: state[k] for k in keep}
      kept = jax.tree.map(lambda n, o: jnp.where(finite, n, o), keep, old)
      new_state = {**new_state, **kept}
    metrics = {**metrics, "nonfinite": jnp.logical_not(finite).astype(jnp.int32)}
    return new_state, metrics

  return guarded
