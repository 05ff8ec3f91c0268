"""Token-level top-k mixture-of-experts FFN (GShard / Switch), optionally task-aware.

Each token picks its k best experts from a linear router; every expert has a buffer of
C = ceil(capacity_factor * S * k / E) slots per group of S tokens, and choices beyond
it are dropped: the FFN returns 0 for them, so the block's residual connection carries
the token through. The load-balance and router z losses enter the objective through
``ctx.add_loss`` with their config weights. With ``task_gate`` the router also sees
the task (Gupta et al. 2022): a task embedding added to the token ("add"), a task
embedding concatenated to it ("concat"), or one router per task ("per_task").

Real tokens only, and causal: ``ctx.token_mask`` [B, L] (from ``inputs != PAD``)
marks the real tokens. Padding is never routed and never takes a slot, and the
load-balance loss, z-loss and statistics (``expert_load``, ``task_expert_usage``,
``routing_entropy``, ``dropped_fraction``) are means over real tokens. Slots are
given by position (``routing.top_k_route``): a token's K choices are placed after
all choices of the earlier tokens of its group, so whether a token is kept depends
only on the tokens before it. Groups never span sequences (a group is one sequence,
or ``group_size`` consecutive tokens of one, ``group_size`` dividing L), so another
example of the batch cannot take a token's slot either: every position's output
depends only on its own sequence up to that position, as the causal decoder needs.
C is fixed by the configured group (``group_size``, else the model's ``seq_len``),
not by the batch's length or its count of real tokens: the count of real tokens
depends on later tokens, and a fixed C makes outputs independent of padding
appended at the end.

Expert parallelism: expert weights carry a leading ``expert`` logical axis (the mesh
rules map it to the ``expert`` mesh axis) and the expert buffers [E, G, C, d] are
constrained to that axis when a mesh with an ``expert`` axis is active, so XLA
exchanges tokens with all-to-alls between the batch-sharded groups and the
expert-sharded buffers. Groups lie inside sequences, so a data shard holds whole
groups and the causal priority needs no communication beyond that all-to-all.

Config (``model.ffn``, name "moe"):
  num_experts (8), top_k (2), expert_d_ff (0: d_ff // top_k, equal active parameters
  to the dense FFN), capacity_factor (1.25), eval_capacity_factor (0: same),
  group_size (0: one group per sequence; else it must divide the sequence length),
  dispatch ("scatter": index scatter/gather, the faster on CPU in bench/modules.py;
  "einsum": GShard's one-hot masks), normalize_gates (True), load_balance_weight (0.01),
  z_loss_weight (0.001), task_gate ("none" | "add" | "concat" | "per_task"),
  task_embed_dim (16, for "concat").

References:
  Lepikhin et al. 2021, "GShard"; Fedus et al. 2022, "Switch Transformers";
  Zoph et al. 2022, "ST-MoE"; Gupta et al. 2022, "Sparsely Activated
  Mixture-of-Experts are Robust Multi-Task Learners".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx
from jax.sharding import PartitionSpec as P

from modular.models.context import Context
from modular.models.slots import FFN, SlotArgs, activation_fn, param, refuse_gated
from modular.modules import routing
from modular.modules.options import check_choice, resolve, slot_key

DEFAULTS = {
    "num_experts": 8, "top_k": 2, "expert_d_ff": 0, "capacity_factor": 1.25,
    "eval_capacity_factor": 0.0, "group_size": 0, "dispatch": "scatter",
    "normalize_gates": True, "load_balance_weight": 0.01, "z_loss_weight": 0.001,
    "task_gate": "none", "task_embed_dim": 16,
}
TASK_GATES = ("none", "add", "concat", "per_task")


def constrain_expert_axis(x: jax.Array, axis: int = 0) -> jax.Array:
  """Shards dimension ``axis`` over the ``expert`` mesh axis when one is active.

  Outside a mesh context (``jax.set_mesh``) or with an expert axis of size 1 this is
  the identity; the other dimensions are left to the partitioner.
  """
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or "expert" not in mesh.axis_names or mesh.shape["expert"] == 1:
    return x
  spec = [P.UNCONSTRAINED] * x.ndim
  spec[axis] = "expert"
  return jax.lax.with_sharding_constraint(x, P(*spec))


class MoEFFN(nnx.Module):
  """Top-k routed experts in place of the dense FFN: [B, L, d] -> [B, L, d].

  Args:
    args: slot sizes (d_model, d_ff, num_tasks, activation).
    cfg: the slot config (see the module docstring for the options).
    rngs: key source.
  """

  def __init__(self, args: SlotArgs, cfg: ml_collections.ConfigDict, rngs: nnx.Rngs):
    where = slot_key(args.position)
    o = resolve(cfg, DEFAULTS, where)
    check_choice(o.task_gate, TASK_GATES, f"{where}.task_gate")
    check_choice(o.dispatch, ("einsum", "scatter"), f"{where}.dispatch")
    if not 1 <= o.top_k <= o.num_experts:
      raise ValueError(f"config.{where}.top_k: must be in [1, num_experts={o.num_experts}],"
                       f" got {o.top_k}")
    self.opts = o
    refuse_gated(args, 'moe')
    self.act = activation_fn(args.activation)
    d, e = args.d_model, o.num_experts
    f = o.expert_d_ff or max(1, args.d_ff // o.top_k)
    self.expert_d_ff = f
    if o.group_size < 0 or (o.group_size and args.seq_len % o.group_size):
      raise ValueError(f"config.{where}.group_size: must divide the sequence length "
                       f"seq_len={args.seq_len} (groups may not span sequences), "
                       f"got {o.group_size}")
    self.capacity_group = o.group_size or args.seq_len  # S that fixes C
    if o.task_gate == "per_task":
      self.router = param(rngs, (args.num_tasks, d, e), ("tasks", "embed", None), scale=d**-0.5)
    else:
      self.router = param(rngs, (d, e), ("embed", None))
    if o.task_gate == "add":
      self.task_embed = param(rngs, (args.num_tasks, d), ("tasks", "embed"), scale=1.0)
    elif o.task_gate == "concat":
      self.task_embed = param(rngs, (args.num_tasks, o.task_embed_dim), ("tasks", None),
                              scale=1.0)
      self.task_router = param(rngs, (o.task_embed_dim, e), (None, None))
    self.w_in = param(rngs, (e, d, f), ("expert", "embed", "mlp"), scale=d**-0.5)
    self.b_in = param(rngs, (e, f), ("expert", "mlp"), init="zeros")
    self.w_out = param(rngs, (e, f, d), ("expert", "mlp", "embed"), scale=f**-0.5)
    self.b_out = param(rngs, (e, d), ("expert", "embed"), init="zeros")

  def router_logits(self, x: jax.Array, task: jax.Array) -> jax.Array:
    """[G, S, d], task ids [G, S] -> router logits [G, S, E] (float32).

    The router runs in float32 whatever ``model.dtype`` (its inputs and weights are
    upcast), as Switch Transformer's selective precision does.
    """
    o = self.opts
    f32 = lambda v: v[...].astype(jnp.float32)  # noqa: E731
    x = x.astype(jnp.float32)
    if o.task_gate == "add":
      x = x + f32(self.task_embed)[task]
    if o.task_gate == "per_task":
      all_tasks = jnp.einsum("gsd,tde->gste", x, f32(self.router))  # [G, S, T, E]
      return jnp.take_along_axis(all_tasks, task[..., None, None], axis=2)[:, :, 0]
    logits = x @ f32(self.router)
    if o.task_gate == "concat":  # [x; e_t] W = x W_x + e_t W_t
      logits = logits + (f32(self.task_embed) @ f32(self.task_router))[task]
    return logits

  def experts(self, xe: jax.Array) -> jax.Array:
    """Runs every expert on its buffer: [E, G, C, d] -> [E, G, C, d]."""
    xe = constrain_expert_axis(xe)
    h = jnp.einsum("egcd,edf->egcf", xe, self.w_in[...]) + self.b_in[...][:, None, None]
    h = self.act(h)
    out = jnp.einsum("egcf,efd->egcd", h, self.w_out[...]) + self.b_out[...][:, None, None]
    return constrain_expert_axis(out)

  def _groups(self, b: int, length: int) -> tuple[int, int]:
    size = self.opts.group_size or length
    if length % size:
      raise ValueError(f"config.model.ffn.group_size: {size} does not divide the "
                       f"batch's sequence length {length} (groups may not span sequences)")
    return b * length // size, size

  def __call__(self, x: jax.Array, ctx: Context) -> jax.Array:  # [B, L, d] -> [B, L, d]
    o = self.opts
    b, length, d = x.shape
    g, s = self._groups(b, length)
    e = o.num_experts
    xg = x.reshape(g, s, d)  # [G, S, d]
    task = jnp.broadcast_to(ctx.task_id[:, None], (b, length)).reshape(g, s)
    valid = None if ctx.token_mask is None else ctx.token_mask.astype(bool).reshape(g, s)
    logits = self.router_logits(xg, task)  # [G, S, E]
    ctx.capture_activation("router_logits", logits.reshape(b, length, e))
    probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)  # float32 router
    factor = o.capacity_factor
    if ctx.deterministic and o.eval_capacity_factor > 0:
      factor = o.eval_capacity_factor
    # C from the configured group, clipped to this group's length (an expert never
    # receives more than S tokens, so the clip changes no outcome).
    capacity = min(routing.expert_capacity(self.capacity_group, e, o.top_k, factor), s)
    route = routing.top_k_route(probs, o.top_k, capacity, o.normalize_gates, valid)
    if o.dispatch == "einsum":
      dispatch, combine = routing.dispatch_combine_masks(route, e, x.dtype)  # [G, S, E, C]
      expert_out = self.experts(jnp.einsum("gsec,gsd->egcd", dispatch, xg))
      y = jnp.einsum("gsec,egcd->gsd", combine, expert_out)
    else:
      expert_out = self.experts(routing.scatter_to_experts(xg, route, e))
      y = routing.gather_from_experts(expert_out, route)
    self._losses_and_stats(logits, probs, route, task, valid, ctx)
    return y.reshape(b, length, d)

  def _losses_and_stats(self, logits, probs, route: routing.Route, task, valid,
                        ctx: Context):
    """Losses and statistics over the real tokens (``valid`` [G, S]; None: all)."""
    o = self.opts
    e = o.num_experts
    if o.load_balance_weight > 0:
      ctx.add_loss("load_balance", o.load_balance_weight
                   * routing.load_balance_loss(probs, route.expert, valid))
    if o.z_loss_weight > 0:
      ctx.add_loss("router_z", o.z_loss_weight * routing.router_z_loss(logits, valid))
    chosen = jax.nn.one_hot(route.expert, e, dtype=jnp.float32).sum(-2) / o.top_k  # [G,S,E]
    flat_valid = None if valid is None else valid.reshape(-1)
    ctx.record("task_expert_usage", routing.usage_by_task(
        chosen.reshape(-1, e), task.reshape(-1), ctx.num_tasks, flat_valid))  # [T, E]
    ctx.record("expert_load", routing.token_mean(chosen, valid))  # [E]
    ctx.record("routing_entropy", routing.token_mean(routing.entropy(probs), valid))
    dropped = 1.0 - route.kept.astype(jnp.float32).mean(-1)  # [G, S]
    ctx.record("dropped_fraction", routing.token_mean(dropped, valid))  # of real choices


@FFN.register("moe")
def _moe(args: SlotArgs, cfg, rngs):
  return MoEFFN(args, cfg, rngs)
