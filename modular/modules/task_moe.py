"""Task-level mixture-of-experts FFN: every example runs the experts of its task.

The route comes from ``TaskRouter`` (task embedding -> top-k experts), so all tokens
of an example share it and a task's sub-network can be extracted for inference
(``task_extract.py``). Each example gathers the weights of its k experts:

  y_b = sum_k w[b, k] * FFN_{expert[b, k]}(x_b)

which costs k dense FFNs per token plus a gather of k * (d * f) weights per example.
When every example of the batch has the same route (a batch from one task, or
inference) the gather is skipped at run time (``lax.cond``) and the k experts run as
plain dense FFNs. In the averaging stage (or with k = E) all experts run on all tokens.

Config (``model.ffn``, name "task_moe"): the ``TaskRouter`` options plus expert_d_ff
(0: d_ff // top_k, equal active parameters to the dense FFN).

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
from modular.models.slots import FFN, SlotArgs, activation_fn, param
from modular.modules.options import resolve, slot_key
from modular.modules.task_router import ROUTER_DEFAULTS, TaskRouter, check_router_options

DEFAULTS = dict(ROUTER_DEFAULTS, expert_d_ff=0)


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
    d, e = args.d_model, o.num_experts
    f = o.expert_d_ff or max(1, args.d_ff // o.top_k)
    self.router = TaskRouter(args.num_tasks, o, rngs)
    self.w_in = param(rngs, (e, d, f), ("expert", "embed", "mlp"), scale=d**-0.5)
    self.b_in = param(rngs, (e, f), ("expert", "mlp"), init="zeros")
    self.w_out = param(rngs, (e, f, d), ("expert", "mlp", "embed"), scale=f**-0.5)
    self.b_out = param(rngs, (e, d), ("expert", "embed"), init="zeros")

  def _all_experts(self, x: jax.Array, weights: jax.Array) -> jax.Array:
    """Every expert on every token; weights [B, E] dense."""
    h = self.act(jnp.einsum("bld,edf->blef", x, self.w_in[...]) + self.b_in[...])
    out = jnp.einsum("blef,efd->bled", h, self.w_out[...]) + self.b_out[...]
    return jnp.einsum("bled,be->bld", out, weights.astype(x.dtype))

  def _per_example(self, x: jax.Array, experts: jax.Array, weights: jax.Array) -> jax.Array:
    """Gathers each example's k experts: experts, weights [B, K]."""
    w_in, w_out = self.w_in[...][experts], self.w_out[...][experts]  # [B, K, d, f], [B, K, f, d]
    h = self.act(jnp.einsum("bld,bkdf->blkf", x, w_in) + self.b_in[...][experts][:, None])
    out = jnp.einsum("blkf,bkfd->blkd", h, w_out) + self.b_out[...][experts][:, None]
    return jnp.einsum("blkd,bk->bld", out, weights.astype(x.dtype))

  def _shared_route(self, x: jax.Array, experts: jax.Array, weights: jax.Array) -> jax.Array:
    """All examples share the experts of row 0: k dense FFNs, per-example weights."""
    idx = experts[0]  # [K]
    h = self.act(jnp.einsum("bld,kdf->blkf", x, self.w_in[...][idx]) + self.b_in[...][idx])
    out = jnp.einsum("blkf,kfd->blkd", h, self.w_out[...][idx]) + self.b_out[...][idx]
    return jnp.einsum("blkd,bk->bld", out, weights.astype(x.dtype))

  def __call__(self, x: jax.Array, ctx: Context) -> jax.Array:  # [B, L, d] -> [B, L, d]
    experts, weights = self.router(ctx)  # [B, K]
    e = self.w_in.shape[0]
    if experts.shape[-1] == e and self.router.fixed is None:
      dense = jnp.einsum("bk,bke->be", weights, jax.nn.one_hot(experts, e))
      return self._all_experts(x, dense)
    same = jnp.all(experts == experts[:1])
    return jax.lax.cond(same, self._shared_route, self._per_example, x, experts, weights)

  def restrict_to_task(self, task: int) -> None:
    """Keeps only the experts task ``task`` uses, with its route fixed (inference)."""
    experts = self.router.fix_to_task(task)
    for name in ("w_in", "b_in", "w_out", "b_out"):
      setattr(self, name, take_experts(getattr(self, name), experts))


@FFN.register("task_moe")
def _task_moe(args: SlotArgs, cfg, rngs):
  return TaskMoEFFN(args, cfg, rngs)
