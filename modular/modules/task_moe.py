"""Task-level mixture-of-experts FFN: every example runs the experts of its task.

The route comes from ``TaskRouter`` (task embedding -> top-k experts), so all tokens
of an example share it and a task's sub-network can be extracted for inference
(``task_extract.py``). Each example runs its k experts:

  y_b = sum_k w[b, k] * FFN_{expert[b, k]}(x_b)

The (example, choice) rows are sorted by expert into chunks of ``chunk`` examples
that start on chunk boundaries, and every chunk runs as one matmul with its expert's
weights: k dense FFNs per token plus the padding of at most E * (chunk - 1) rows
(chunk = 1 is a per-example weight gather). At evaluation, when every example of the
batch has the same route (one task), the sort is skipped at run time (``lax.cond``)
and the k experts run side by side as one dense FFN. In the averaging stage (or with
k = E) all experts run on all tokens.

On a gated model (``model.ffn_gated``: Llama's SwiGLU, ``model.ffn_bias = False``)
every expert is gated as the dense FFN, act(x W_gate[e]) * (x W_in[e]) W_out[e], so
with expert_d_ff = d_ff the experts upcycle from a Llama-family checkpoint's FFN.

Config (``model.ffn``, name "task_moe"): the ``TaskRouter`` options plus expert_d_ff
(0: d_ff // top_k, equal active parameters to the dense FFN) and chunk (4).

References:
  Kudugunta et al. 2021, "Beyond Distillation: Task-level Mixture-of-Experts for
    Efficient Inference".
  Ye et al. 2022, "Eliciting and Understanding Cross-Task Skills with Task-Level
    Mixture-of-Experts".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from modular.models.context import Context
from modular.models.slots import FFN, SlotArgs, activation_fn, ffn_options, param
from modular.modules.options import resolve, slot_key
from modular.modules.task_router import ROUTER_DEFAULTS, TaskRouter, check_router_options

DEFAULTS = dict(ROUTER_DEFAULTS, expert_d_ff=0, chunk=4)


def take_experts(var: nnx.Param, experts: jax.Array) -> nnx.Param:
  """A parameter holding only the rows ``experts`` of its leading expert axis."""
  return nnx.Param(var[...][experts], logical_axes=var.get_metadata().get("logical_axes"))


class TaskMoEFFN(nnx.Module):
  """E expert FFNs mixed by a task-level route: [B, L, d] -> [B, L, d].

  Args:
    args: slot sizes.
    cfg: the slot config (router options and expert_d_ff).
    rngs: key source.
  """

  def __init__(self, args: SlotArgs, cfg: ml_collections.ConfigDict, rngs: nnx.Rngs):
    where = slot_key(args.position)
    o = resolve(cfg, DEFAULTS, where)
    check_router_options(o, where)
    self.act = activation_fn(args.activation)
    self.gated, self.use_bias = ffn_options(args)
    d, e = args.d_model, o.num_experts
    f = o.expert_d_ff or max(1, args.d_ff // o.top_k)
    if o.chunk < 1:
      raise ValueError(f"config.{where}.chunk: must be >= 1, got {o.chunk}")
    self.chunk = o.chunk
    self.router = TaskRouter(args.num_tasks, o, rngs)
    self.w_in = param(rngs, (e, d, f), ("expert", "embed", "mlp"), scale=d**-0.5)
    if self.use_bias:
      self.b_in = param(rngs, (e, f), ("expert", "mlp"), init="zeros")
    self.w_out = param(rngs, (e, f, d), ("expert", "mlp", "embed"), scale=f**-0.5)
    if self.use_bias:
      self.b_out = param(rngs, (e, d), ("expert", "embed"), init="zeros")
    if self.gated:  # drawn last: an ungated model initializes as before
      self.w_gate = param(rngs, (e, d, f), ("expert", "embed", "mlp"), scale=d**-0.5)

  def _hidden(self, up: jax.Array, gate: jax.Array | None) -> jax.Array:
    """act(up), or act(gate) * up on a gated FFN."""
    return self.act(up) if gate is None else self.act(gate) * up

  def _all_experts(self, x: jax.Array, weights: jax.Array) -> jax.Array:
    """Every expert on every token; weights [B, E] dense."""
    up = jnp.einsum("bld,edf->blef", x, self.w_in[...])
    if self.use_bias:
      up = up + self.b_in[...]
    gate = jnp.einsum("bld,edf->blef", x, self.w_gate[...]) if self.gated else None
    out = jnp.einsum("blef,efd->bled", self._hidden(up, gate), self.w_out[...])
    if self.use_bias:
      out = out + self.b_out[...]
    return jnp.einsum("bled,be->bld", out, weights.astype(x.dtype))

  def _per_example(self, x: jax.Array, experts: jax.Array, weights: jax.Array) -> jax.Array:
    """Mixed routes: rows sorted by expert into chunks of ``chunk`` examples.

    Each (example, choice) row goes to a slot of a buffer in which every expert's rows
    start on a chunk boundary, so a chunk has one expert: each chunk gathers one
    expert's weights and runs as one [chunk * L, d] matmul. The buffer holds the
    worst case, B * K + E * (chunk - 1) rows; chunk = 1 is a per-example gather.
    """
    b, length, d = x.shape
    k, e, c = experts.shape[1], self.w_in.shape[0], self.chunk
    rows = b * k
    row_expert = experts.reshape(rows)  # [R]
    n_chunks = -(-(rows + e * (c - 1)) // c)
    counts = jnp.bincount(row_expert, length=e)  # [E]
    padded = (counts + c - 1) // c * c
    ends = jnp.cumsum(padded)
    order = jnp.argsort(row_expert, stable=True)
    sorted_expert = row_expert[order]
    rank = jnp.arange(rows) - (jnp.cumsum(counts) - counts)[sorted_expert]
    slot = jnp.zeros((rows,), jnp.int32).at[order].set((ends - padded)[sorted_expert] + rank)
    src = jnp.repeat(x, k, axis=0) if k > 1 else x  # [R, L, d], row r = example r // K
    buf = jnp.zeros((n_chunks * c, length, d), x.dtype).at[slot].set(src)
    buf = buf.reshape(n_chunks, c * length, d)
    chunk_expert = jnp.minimum(jnp.searchsorted(ends, jnp.arange(n_chunks) * c, side="right"),
                               e - 1)  # [N]
    up = jnp.einsum("nmd,ndf->nmf", buf, self.w_in[...][chunk_expert])
    if self.use_bias:
      up = up + self.b_in[...][chunk_expert][:, None]
    gate = (jnp.einsum("nmd,ndf->nmf", buf, self.w_gate[...][chunk_expert])
            if self.gated else None)
    out = jnp.einsum("nmf,nfd->nmd", self._hidden(up, gate), self.w_out[...][chunk_expert])
    if self.use_bias:
      out = out + self.b_out[...][chunk_expert][:, None]
    out = out.reshape(n_chunks * c, length, d)
    y = out[slot].reshape(b, k, length, d)
    return jnp.einsum("bkld,bk->bld", y, weights.astype(x.dtype))

  def _shared_route(self, x: jax.Array, experts: jax.Array, weights: jax.Array) -> jax.Array:
    """All examples share the experts of row 0: the k experts side by side form one
    dense FFN of width k * f (two matmuls), with per-example weights on its hidden units.
    """
    idx = experts[0]  # [K]
    k, d, f = idx.shape[0], x.shape[-1], self.w_in.shape[-1]

    def side(w: nnx.Param) -> jax.Array:  # the K experts side by side: [d, K*f]
      return w[...][idx].transpose(1, 0, 2).reshape(d, k * f)

    up = x @ side(self.w_in)
    if self.use_bias:
      up = up + self.b_in[...][idx].reshape(k * f)
    h = self._hidden(up, x @ side(self.w_gate) if self.gated else None)  # [B, L, K*f]
    scale = jnp.repeat(weights.astype(x.dtype), f, axis=-1)[:, None]  # [B, 1, K*f]
    out = (h * scale) @ self.w_out[...][idx].reshape(k * f, d)
    if not self.use_bias:
      return out
    return out + (weights.astype(x.dtype) @ self.b_out[...][idx])[:, None]

  def __call__(self, x: jax.Array, ctx: Context) -> jax.Array:  # [B, L, d] -> [B, L, d]
    experts, weights = self.router(ctx)  # [B, K]
    e = self.w_in.shape[0]
    if experts.shape[-1] == e and self.router.fixed is None:
      dense = jnp.einsum("bk,bke->be", weights, jax.nn.one_hot(experts, e))
      return self._all_experts(x, dense)
    if not ctx.deterministic:
      # No lax.cond when differentiating: its backward pass materializes the residuals
      # of both branches; the chunked path costs about the same on one route.
      return self._per_example(x, experts, weights)
    same = jnp.all(experts == experts[:1])
    return jax.lax.cond(same, self._shared_route, self._per_example, x, experts, weights)

  def restrict_to_task(self, task: int) -> None:
    """Keeps only the experts task ``task`` uses, with its route fixed (inference)."""
    experts = self.router.fix_to_task(task)
    for name in ("w_in", "b_in", "w_out", "b_out", "w_gate"):
      if hasattr(self, name):
        setattr(self, name, take_experts(getattr(self, name), experts))


@FFN.register("task_moe")
def _task_moe(args: SlotArgs, cfg, rngs):
  return TaskMoEFFN(args, cfg, rngs)
