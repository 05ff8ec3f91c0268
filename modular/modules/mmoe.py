"""Multi-gate mixtures of experts feeding task-specific towers (MMoE and PLE heads).

MMoE: E shared expert MLPs see the final hidden state; task t mixes them with its own
softmax gate and its tower maps the mixture to logits:

  logits_t = Tower_t( sum_e softmax(x G_t)_e * Expert_e(x) )

PLE (progressive layered extraction) adds task-specific experts: at every level task
t's gate mixes its own experts and the shared ones, and (below the last level) a
shared gate mixes all experts into the shared stream of the next level. One level of
PLE is CGC. Below the last level every task's stream is computed for every token
([B, L, T, h]); the last level and the tower run only the example's own task.

Config (``model.head``, name "mmoe" or "ple"): num_experts (shared experts, 4),
task_experts (per task: 0 for "mmoe", 1 for "ple"), levels (1), expert_dim (0:
d_model), tower_dim (0: d_model).

References:
  Ma et al. 2018, "Modeling Task Relationships in Multi-task Learning with
    Multi-gate Mixture-of-Experts" (MMoE).
  Tang et al. 2020, "Progressive Layered Extraction (PLE): A Novel Multi-Task Learning
    (MTL) Model for Personalized Recommendations".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from modular.models import precision
from modular.models.context import Context
from modular.models.slots import HEAD, SlotArgs, activation_fn, param
from modular.modules import routing
from modular.modules.options import resolve

DEFAULTS = {"num_experts": 4, "task_experts": 0, "levels": 1, "expert_dim": 0,
            "tower_dim": 0}


class _Level(nnx.Module):
  """One extraction level: shared experts, per-task experts, task and shared gates."""

  def __init__(self, num_tasks: int, d_in: int, d_out: int, shared: int, per_task: int,
               with_shared_gate: bool, in_axis: str | None, rngs: nnx.Rngs):
    self.shared_w = param(rngs, (shared, d_in, d_out), ("expert", in_axis, "mlp"),
                          scale=d_in**-0.5)
    self.shared_b = param(rngs, (shared, d_out), ("expert", "mlp"), init="zeros")
    if per_task:
      self.task_w = param(rngs, (num_tasks, per_task, d_in, d_out),
                          ("tasks", "expert", in_axis, "mlp"), scale=d_in**-0.5)
      self.task_b = param(rngs, (num_tasks, per_task, d_out), ("tasks", "expert", "mlp"),
                          init="zeros")
    self.gate = param(rngs, (num_tasks, d_in, per_task + shared), ("tasks", in_axis, None),
                      scale=d_in**-0.5)
    if with_shared_gate:
      self.shared_gate = param(rngs, (d_in, num_tasks * per_task + shared), (in_axis, None))
    self.per_task = per_task

  def all_tasks(self, streams, shared, act):
    """Every task's stream: [B, L, T, din], [B, L, din] -> [B, L, T, h], [B, L, h]."""
    out_s = act(jnp.einsum("bld,edh->bleh", shared, self.shared_w[...]) + self.shared_b[...])
    gates = precision.softmax(jnp.einsum("bltd,tde->blte", streams, self.gate[...]), -1)
    new = jnp.einsum("blte,bleh->blth", gates[..., self.per_task:], out_s)
    pool = out_s
    if self.per_task:
      out_t = act(jnp.einsum("bltd,tedh->blteh", streams, self.task_w[...]) + self.task_b[...])
      new = new + jnp.einsum("blte,blteh->blth", gates[..., :self.per_task], out_t)
      b, l, t, e, h = out_t.shape
      pool = jnp.concatenate([out_t.reshape(b, l, t * e, h), out_s], axis=2)
    shared_gate = precision.softmax(shared @ self.shared_gate[...], -1)  # [B, L, T*Et+Es]
    return new, jnp.einsum("blk,blkh->blh", shared_gate, pool)

  def own_task(self, stream, shared, task, act):
    """The example's own task: [B, L, din] x2, task [B] -> [B, L, h], gates [B, L, E]."""
    out_s = act(jnp.einsum("bld,edh->bleh", shared, self.shared_w[...]) + self.shared_b[...])
    gates = precision.softmax(jnp.einsum("bld,bde->ble", stream, self.gate[...][task]), -1)
    y = jnp.einsum("ble,bleh->blh", gates[..., self.per_task:], out_s)
    if self.per_task:
      w, b = self.task_w[...][task], self.task_b[...][task]  # [B, Et, din, h], [B, Et, h]
      out_t = act(jnp.einsum("bld,bedh->bleh", stream, w) + b[:, None])
      y = y + jnp.einsum("ble,bleh->blh", gates[..., :self.per_task], out_t)
    return y, gates


class MultiGateHead(nnx.Module):
  """MMoE / PLE experts, per-task gates and per-task towers: [B, L, d] -> [B, L, V].

  Args:
    args: slot sizes (d_model, num_tasks, vocab_size, activation).
    cfg: the head config (see the module docstring).
    rngs: key source.
    defaults: the option defaults of the registered name.
  """

  def __init__(self, args: SlotArgs, cfg: ml_collections.ConfigDict, rngs: nnx.Rngs,
               defaults: dict):
    o = resolve(cfg, defaults, "model.head")
    for key in ("num_experts", "levels"):
      if o[key] < 1:
        raise ValueError(f"config.model.head.{key}: must be >= 1, got {o[key]}")
    self.act = activation_fn(args.activation)
    h = o.expert_dim or args.d_model
    tw = o.tower_dim or args.d_model
    t = args.num_tasks
    self.levels = nnx.List([
        _Level(t, args.d_model if i == 0 else h, h, o.num_experts, o.task_experts,
               i < o.levels - 1, "embed" if i == 0 else None, rngs)
        for i in range(o.levels)])
    self.tower_w = param(rngs, (t, h, tw), ("tasks", "mlp", None), scale=h**-0.5)
    self.tower_b = param(rngs, (t, tw), ("tasks", None), init="zeros")
    self.out_w = param(rngs, (t, tw, args.vocab_size), ("tasks", None, "vocab"), scale=tw**-0.5)
    self.out_b = param(rngs, (t, args.vocab_size), ("tasks", "vocab"), init="zeros")

  def __call__(self, x: jax.Array, ctx: Context) -> jax.Array:  # [B, L, d] -> [B, L, V]
    task = ctx.task_id
    streams = jnp.broadcast_to(x[:, :, None], x.shape[:2] + (ctx.num_tasks, x.shape[-1]))
    shared = x
    for level in self.levels[:-1]:
      streams, shared = level.all_tasks(streams, shared, self.act)
    own = jnp.take_along_axis(streams, task[:, None, None, None], axis=2)[:, :, 0]
    y, gates = self.levels[-1].own_task(own, shared, task, self.act)  # [B, L, h]
    tower = self.act(jnp.einsum("blh,bhk->blk", y, self.tower_w[...][task])
                     + self.tower_b[...][task][:, None])
    logits = jnp.einsum("blk,bkv->blv", tower, self.out_w[...][task])
    ctx.record("task_expert_usage", routing.usage_by_task(gates.mean(1), task, ctx.num_tasks))
    ctx.record("routing_entropy", routing.entropy(gates).mean())
    return logits + self.out_b[...][task][:, None]


@HEAD.register("mmoe")
def _mmoe(args: SlotArgs, cfg, rngs):
  return MultiGateHead(args, cfg, rngs, DEFAULTS)


@HEAD.register("ple")
def _ple(args: SlotArgs, cfg, rngs):
  return MultiGateHead(args, cfg, rngs, dict(DEFAULTS, task_experts=1))
