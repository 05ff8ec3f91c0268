"""A router whose choice depends on the task alone (task-level mixture of experts).

A learned task embedding e_t [T, dt] is mapped to expert logits e_t W [T, E]. The
route of task t keeps its top-k experts:

  gate "softmax":  p = softmax(logits / tau)
  gate "gumbel":   p = softmax((logits + g) / tau), g ~ Gumbel, in training only
                   (one sample per task and step); softmax(logits / tau) at evaluation
  straight_through: the forward weights are the hard top-k mask / k, the gradient
                   is that of p (straight-through Gumbel when gate = "gumbel")

otherwise the weights are the top-k probabilities (renormalized over the k when k > 1;
for k = 1 the raw probability, as in Switch, so the router still gets a gradient).

Two-stage training (Ye et al. 2022): ``route_mode = "average"`` mixes all experts with
weight 1/E (stage 1); ``route_mode = "learned"`` uses the router (stage 2). Run stage 1,
then resume from the same workdir with ``--config.model.ffn.route_mode=learned``: the
parameter tree is the same in both modes, so the checkpoint restores unchanged.

Options (in the slot config): num_experts (4), top_k (1), gate ("softmax"), temperature
(1.0), straight_through (False), route_mode ("learned"), task_embed_dim (16).

References:
  Kudugunta et al. 2021, "Beyond Distillation: Task-level Mixture-of-Experts for
    Efficient Inference".
  Ye et al. 2022, "Eliciting and Understanding Cross-Task Skills with Task-Level
    Mixture-of-Experts".
  Jang et al. 2017, "Categorical Reparameterization with Gumbel-Softmax".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from modular.models.context import Context
from modular.models.slots import param
from modular.modules import routing
from modular.modules.options import check_choice

ROUTER_DEFAULTS = {
    "num_experts": 4, "top_k": 1, "gate": "softmax", "temperature": 1.0,
    "straight_through": False, "route_mode": "learned", "task_embed_dim": 16,
}


def check_router_options(o, where: str) -> None:
  """Validates the router options; errors name ``where.key``."""
  check_choice(o.gate, ("softmax", "gumbel"), f"{where}.gate")
  check_choice(o.route_mode, ("learned", "average"), f"{where}.route_mode")
  if not 1 <= o.top_k <= o.num_experts:
    raise ValueError(f"config.{where}.top_k: must be in [1, num_experts={o.num_experts}], "
                     f"got {o.top_k}")
  if o.temperature <= 0:
    raise ValueError(f"config.{where}.temperature: must be > 0, got {o.temperature}")


class TaskRouter(nnx.Module):
  """Task embedding -> top-k experts and their weights.

  Args:
    num_tasks: T.
    opts: the router options (see the module docstring).
    rngs: key source.
  """

  def __init__(self, num_tasks: int, opts, rngs: nnx.Rngs):
    self.opts = opts
    self.task_embed = param(rngs, (num_tasks, opts.task_embed_dim), ("tasks", None), scale=1.0)
    self.kernel = param(rngs, (opts.task_embed_dim, opts.num_experts), (None, None))
    # Set by sub-network extraction: [K] weights of the kept experts (a parameter, so
    # the sub-networks of all tasks share one graph and one compilation).
    self.fixed: nnx.Param | None = nnx.data(None)

  @property
  def num_choices(self) -> int:
    """K, the experts each example runs (all E in the average stage)."""
    if self.fixed is not None:
      return self.fixed.shape[0]
    return self.opts.num_experts if self.opts.route_mode == "average" else self.opts.top_k

  def logits(self) -> jax.Array:
    """[T, E] router logits."""
    return self.task_embed[...] @ self.kernel[...]

  def table(self, ctx: Context) -> tuple[jax.Array, jax.Array]:
    """The route of every task: (experts [T, K] int32, weights [T, K] float32)."""
    o = self.opts
    t, e, k = self.task_embed.shape[0], o.num_experts, self.num_choices
    if self.fixed is not None:
      experts = jnp.broadcast_to(jnp.arange(k, dtype=jnp.int32), (t, k))
      return experts, jnp.broadcast_to(self.fixed[...], (t, k))
    if o.route_mode == "average":
      return (jnp.broadcast_to(jnp.arange(e, dtype=jnp.int32), (t, e)),
              jnp.full((t, e), 1.0 / e, jnp.float32))
    z = self.logits()
    if o.gate == "gumbel" and not ctx.deterministic:
      z = z + routing.gumbel(ctx.key("task_route"), z.shape)
    probs = jax.nn.softmax(z.astype(jnp.float32) / o.temperature, axis=-1)  # [T, E]
    top, experts = jax.lax.top_k(probs, k)  # [T, K]
    if o.straight_through:
      weights = routing.straight_through(jnp.full_like(top, 1.0 / k), top)
    elif k > 1:
      weights = top / top.sum(-1, keepdims=True)
    else:
      weights = top
    return experts.astype(jnp.int32), weights

  def __call__(self, ctx: Context) -> tuple[jax.Array, jax.Array]:
    """Routes each example by its task: (experts [B, K], weights [B, K]).

    Records ``task_expert_usage`` [T, E] (the route table), ``expert_load`` [E] (the
    batch's mean weight per expert) and ``routing_entropy`` (mean over tasks of the
    entropy of softmax(logits / tau)).
    """
    experts, weights = self.table(ctx)
    e = self.opts.num_experts if self.fixed is None else self.fixed.shape[0]
    dense = jnp.einsum("tk,tke->te", weights, jax.nn.one_hot(experts, e))  # [T, E]
    ctx.record("task_expert_usage", dense)
    ctx.record("expert_load", dense[ctx.task_id].mean(0))
    if self.fixed is None:
      ctx.record("routing_entropy", routing.entropy(
          jax.nn.softmax(self.logits() / self.opts.temperature, -1)).mean())
    return experts[ctx.task_id], weights[ctx.task_id]

  def fix_to_task(self, task: int) -> jax.Array:
    """Freezes this router to task ``task``'s evaluation route.

    Returns:
      [K] the experts the task uses, best first; the caller keeps only these and
      they become experts 0..K-1 of the restricted module.
    """
    ctx = Context(task_id=jnp.zeros((1,), jnp.int32), num_tasks=self.task_embed.shape[0])
    experts, weights = self.table(ctx)
    self.fixed = nnx.Param(jax.lax.stop_gradient(weights[task]), logical_axes=(None,))
    return experts[task]
