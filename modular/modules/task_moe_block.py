"""Task-level mixture of whole transformer layers (a BLOCK filler).

The block holds E standard blocks (attention, FFN slot and adapters, as the model
config describes them) and mixes their outputs with the task-level route:

  y_b = sum_k w[b, k] * Block_{expert[b, k]}(x_b)

Every expert block runs on the whole batch and the unused outputs get weight 0, so
training costs E blocks per layer; the point of the layer-level route is inference,
where ``task_extract.extract_task`` keeps only the k blocks of one task (k blocks per
layer, with the same outputs). Auxiliary losses and statistics of the inner blocks are
recorded under ``block{i}/expert{e}/...``.

Config (``model.block``, name "task_moe_block"): the ``TaskRouter`` options.

References:
  Kudugunta et al. 2021, "Beyond Distillation: Task-level Mixture-of-Experts for
    Efficient Inference" (task-level routing of whole layers).
  Ye et al. 2022, "Eliciting and Understanding Cross-Task Skills with Task-Level
    Mixture-of-Experts".
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from modular.models.context import Context
from modular.models.slots import BLOCK, SlotArgs
from modular.models.transformer import StandardBlock
from modular.modules.options import resolve, slot_key
from modular.modules.task_router import ROUTER_DEFAULTS, TaskRouter, check_router_options


class TaskMoEBlock(nnx.Module):
  """E standard blocks mixed by a task-level route: [B, L, d] -> [B, L, d].

  Args:
    args: slot sizes; ``args.model_cfg`` describes the expert blocks.
    cfg: the router options.
    rngs: key source.
  """

  def __init__(self, args: SlotArgs, cfg: ml_collections.ConfigDict, rngs: nnx.Rngs):
    where = slot_key(args.position)
    o = resolve(cfg, ROUTER_DEFAULTS, where)
    check_router_options(o, where)
    if args.model_cfg is None:
      raise ValueError(f"config.{where}: task_moe_block needs the model config")
    self.router = TaskRouter(args.num_tasks, o, rngs)
    self.experts = nnx.List([StandardBlock(args.model_cfg, args.layer, args.shared, rngs)
                             for _ in range(o.num_experts)])

  def __call__(self, x: jax.Array, ctx: Context) -> jax.Array:  # [B, L, d] -> [B, L, d]
    experts, weights = self.router(ctx)  # [B, K]
    e = len(self.experts)
    dense = jnp.einsum("bk,bke->be", weights, jax.nn.one_hot(experts, e))  # [B, E]
    y = jnp.zeros_like(x)
    for i, block in enumerate(self.experts):
      y = y + dense[:, i, None, None].astype(x.dtype) * _run_expert(block, x, ctx, f"expert{i}")
    return y

  def restrict_to_task(self, task: int) -> None:
    """Keeps only the blocks task ``task`` uses, with its route fixed (inference)."""
    experts = [int(i) for i in jax.device_get(self.router.fix_to_task(task))]
    self.experts = nnx.List([self.experts[i] for i in experts])


def _run_expert(block: nnx.Module, x: jax.Array, ctx: Context, tag: str) -> jax.Array:
  """Runs one expert block with private collectors, then files its losses, statistics
  and captures in ``ctx`` under ``block{i}/{tag}/``."""
  inner = dataclasses.replace(ctx, losses={}, stats={}, intermediates={})
  y = block(x, inner)
  prefix = ctx.prefix
  for src, dst in ((inner.losses, ctx.losses), (inner.stats, ctx.stats),
                   (inner.intermediates, ctx.intermediates)):
    for key, value in src.items():
      rest = key[len(prefix):] if key.startswith(prefix) else key
      dst[f"{prefix}{tag}/{rest}"] = value
  return y


@BLOCK.register("task_moe_block")
def _task_moe_block(args: SlotArgs, cfg, rngs):
  return TaskMoEBlock(args, cfg, rngs)
