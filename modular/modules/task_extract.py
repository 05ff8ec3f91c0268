"""Extract one task's sub-network from a model with task-level routing.

With a task-level route every example of task t runs the same experts, so for
inference on t the other experts can be deleted: each ``TaskMoEFFN`` /
``TaskMoEBlock`` keeps only the k experts of t's evaluation route (deterministic:
no Gumbel noise) and its router is replaced by t's constant weights. The extracted
model gives the full model's outputs on task t's examples (tests check this) with
k instead of E experts per routed layer.

Example:
  sub = extract_task(model, task=2)
  fm, params, _ = FunctionalModel.split(sub)   # fewer parameters, same logits for task 2

References:
  Kudugunta et al. 2021, "Beyond Distillation: Task-level Mixture-of-Experts for
    Efficient Inference" (extracting a task's sub-network for serving).
  Ye et al. 2022, "Eliciting and Understanding Cross-Task Skills with Task-Level
    Mixture-of-Experts".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from modular.models.context import Context

from modular.modules.task_moe import TaskMoEFFN
from modular.modules.task_moe_block import TaskMoEBlock

ROUTED = (TaskMoEFFN, TaskMoEBlock)


def routed_layers(model: nnx.Module) -> list[tuple[tuple, nnx.Module]]:
  """(path, module) of every task-routed layer, outermost first."""
  return [(path, m) for path, m in nnx.iter_graph(model) if isinstance(m, ROUTED)]


def extract_task(model: nnx.Module, task: int) -> nnx.Module:
  """A copy of ``model`` that keeps only the experts task ``task`` uses.

  Args:
    model: a built model (e.g. ``Transformer``) with task-level MoE layers; it is not
      modified.
    task: the task index.

  Returns:
    The restricted copy. Run it on examples of ``task`` only: its routers ignore the
    task id.

  Raises:
    ValueError: when the model has no task-routed layer.
  """
  sub = nnx.clone(model)
  layers = routed_layers(sub)
  if not layers:
    raise ValueError("extract_task: the model has no task_moe / task_moe_block layer")
  # Innermost first, so that restricting an outer block does not skip its inner layers.
  for _, layer in sorted(layers, key=lambda item: -len(item[0])):
    if layer.router.fixed is None:
      layer.restrict_to_task(task)
  return sub


def count_params(model: nnx.Module) -> int:
  """The number of parameter scalars of ``model``."""
  state = nnx.state(model, nnx.Param)
  return int(sum(x.size for x in jax.tree.leaves(state)))


def experts_used(model: nnx.Module, task: int) -> dict[str, list[int]]:
  """For every routed layer, the experts task ``task`` runs at evaluation.

  Returns:
    {"blocks/0/ffn": [2], ...} keyed by the layer's path in the model graph.
  """
  out = {}
  for path, layer in routed_layers(model):
    if layer.router.fixed is not None:
      continue
    ctx = Context(task_id=jnp.zeros((1,), jnp.int32),
                  num_tasks=layer.router.task_embed.shape[0])
    experts, _ = layer.router.table(ctx)
    out["/".join(str(p) for p in path)] = [int(i) for i in jax.device_get(experts[task])]
  return out
