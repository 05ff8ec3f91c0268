"""Bottleneck adapters, one per task (a baseline for HyperFormer and Polytropon).

Inserted after attention and/or after the FFN (the ``adapter_attn`` / ``adapter_ffn``
slots), each adapter is a residual bottleneck MLP chosen by the example's task:

  y = x + U[t] act(D[t] x + c[t]) + e[t]

with D [d, r], U [r, d] and r = d / reduction_factor. U and e start at zero, so the
adapter starts as the identity. With ``per_task = False`` one adapter serves all tasks.

Config (``model.adapter_attn`` / ``model.adapter_ffn``, name "bottleneck"):
  reduction_factor (8), per_task (True).

References:
  Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from modular.models.context import Context
from modular.models.slots import ADAPTER, SlotArgs, activation_fn, param
from modular.modules.options import resolve, slot_key

DEFAULTS = {"reduction_factor": 8, "per_task": True}


class BottleneckAdapter(nnx.Module):
  """Per-task residual bottleneck: [B, L, d] -> [B, L, d].

  Args:
    args: slot sizes.
    cfg: reduction_factor, per_task.
    rngs: key source.
  """

  def __init__(self, args: SlotArgs, cfg: ml_collections.ConfigDict, rngs: nnx.Rngs):
    o = resolve(cfg, DEFAULTS, slot_key(args.position))
    d = args.d_model
    r = max(1, d // o.reduction_factor)
    n = args.num_tasks if o.per_task else 1
    self.per_task = o.per_task
    self.act = activation_fn(args.activation)
    self.down = param(rngs, (n, d, r), ("tasks", "embed", "rank"), scale=d**-0.5)
    self.down_b = param(rngs, (n, r), ("tasks", "rank"), init="zeros")
    self.up = param(rngs, (n, r, d), ("tasks", "rank", "embed"), init="zeros")
    self.up_b = param(rngs, (n, d), ("tasks", "embed"), init="zeros")

  def __call__(self, x: jax.Array, ctx: Context) -> jax.Array:  # [B, L, d] -> [B, L, d]
    idx = ctx.task_id if self.per_task else jnp.zeros_like(ctx.task_id)
    h = jnp.einsum("bld,bdr->blr", x, self.down[...][idx]) + self.down_b[...][idx][:, None]
    h = self.act(h)
    return x + jnp.einsum("blr,brd->bld", h, self.up[...][idx]) + self.up_b[...][idx][:, None]


@ADAPTER.register("bottleneck")
def _bottleneck(args: SlotArgs, cfg, rngs):
  return BottleneckAdapter(args, cfg, rngs)
