"""Routing primitives shared by the mixture-of-experts and skill modules.

Top-k token routing with an expert capacity (GShard's position-by-cumsum trick, in
causal order: earlier tokens first, padding never takes a slot), the two equivalent ways to move tokens to experts and back (a one-hot dispatch tensor
and an index scatter/gather), the load-balance and router z losses, the Gumbel
relaxations used by task-level routers and skill allocations, and the statistics the
analysis reads (usage per task, entropy).

Shapes: G groups, S tokens per group, E experts, K choices per token, C capacity,
T tasks, d width. ``valid`` [G, S] bool marks real (non-padding) tokens; routing,
losses and statistics count only those (None: every token is real).

References:
  Lepikhin et al. 2021, "GShard: Scaling Giant Models with Conditional Computation
    and Automatic Sharding" (top-2 gating, capacity, position by cumsum).
  Fedus et al. 2022, "Switch Transformers" (load-balance loss).
  Zoph et al. 2022, "ST-MoE: Designing Stable and Transferable Sparse Expert Models"
    (router z-loss).
  Jang et al. 2017, "Categorical Reparameterization with Gumbel-Softmax"; Maddison et
    al. 2017, "The Concrete Distribution" (relaxed Bernoulli / Gumbel-sigmoid).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

_EPS = 1e-9


def expert_capacity(tokens_per_group: int, num_experts: int, top_k: int,
                    capacity_factor: float) -> int:
  """C = ceil(capacity_factor * S * k / E), clipped to [1, S].

  An expert never receives more than S tokens of a group (a token's k choices are
  distinct experts), so a larger buffer would only hold padding.
  """
  cap = math.ceil(capacity_factor * tokens_per_group * top_k / num_experts)
  return max(1, min(cap, tokens_per_group))


@dataclasses.dataclass(frozen=True)
class Route:
  """The result of top-k routing with capacity.

  Attributes:
    expert: [G, S, K] int32 chosen experts, best first.
    gate: [G, S, K] float combine weight of each choice (0 where dropped).
    position: [G, S, K] int32 slot of the choice in its expert's buffer.
    kept: [G, S, K] bool, position < capacity.
    capacity: C.
  """

  expert: jax.Array
  gate: jax.Array
  position: jax.Array
  kept: jax.Array
  capacity: int


def top_k_route(probs: jax.Array, top_k: int, capacity: int,
                normalize: bool = True, valid: jax.Array | None = None) -> Route:
  """Chooses k experts per token and a slot in each expert's buffer.

  Priority is by position (causal): token s gets its slots after every token before
  it in the group has placed all of its K choices, so whether a token is kept depends
  only on the tokens at positions <= s of its group, never on later tokens. (GShard
  places all first choices before any second choice instead; then a later token's
  first choice can evict an earlier token's second choice, and a causal decoder's
  output at a position would depend on the future.) Padding tokens (``valid``
  False) take no slot and are never routed. A choice whose slot is at or beyond the
  capacity is dropped (its gate becomes 0), so the token passes through the block's
  residual connection unchanged for that expert.

  Args:
    probs: [G, S, E] router probabilities.
    top_k: K.
    capacity: C, slots per expert and group.
    normalize: renormalize the K gates of a token to sum to 1 (before dropping).
    valid: [G, S] bool, real tokens (None: all).

  Returns:
    The ``Route``.
  """
  g, s, e = probs.shape
  gate, expert = jax.lax.top_k(probs, top_k)  # [G, S, K]
  if normalize and top_k > 1:
    gate = gate / jnp.maximum(gate.sum(-1, keepdims=True), _EPS)
  onehot = jax.nn.one_hot(expert, e, dtype=jnp.int32)  # [G, S, K, E]
  if valid is not None:
    onehot = onehot * valid[:, :, None, None].astype(jnp.int32)  # padding: no slot
  # Token-major order: token 0's K choices, then token 1's, ... (causal priority).
  flat = onehot.reshape(g, s * top_k, e)  # [G, S*K, E]
  before = jnp.cumsum(flat, axis=1) - flat  # choices ahead in the same expert
  position = (before * flat).sum(-1).reshape(g, s, top_k)  # [G, S, K]
  kept = position < capacity
  if valid is not None:
    kept = kept & valid[:, :, None]
  gate = jnp.where(kept, gate, 0.0)
  return Route(expert=expert, gate=gate, position=position, kept=kept, capacity=capacity)


def dispatch_combine_masks(route: Route, num_experts: int,
                           dtype=jnp.float32) -> tuple[jax.Array, jax.Array]:
  """The dense GShard tensors: dispatch (0/1) and combine (gate) [G, S, E, C].

  ``expert_in = einsum("gsec,gsd->egcd", dispatch, x)`` moves tokens to their slots;
  ``y = einsum("gsec,egcd->gsd", combine, expert_out)`` brings them back weighted.
  """
  e_hot = jax.nn.one_hot(route.expert, num_experts, dtype=dtype)  # [G, S, K, E]
  # one_hot of an out-of-range position is all zeros: dropped choices vanish here.
  c_hot = jax.nn.one_hot(jnp.where(route.kept, route.position, route.capacity),
                         route.capacity, dtype=dtype)  # [G, S, K, C]
  dispatch = jnp.einsum("gske,gskc->gsec", e_hot, c_hot)
  combine = jnp.einsum("gske,gskc,gsk->gsec", e_hot, c_hot, route.gate.astype(dtype))
  return dispatch, combine


def _slots(route: Route, num_experts: int) -> jax.Array:
  """[G, S, K] row of every choice in its group's buffer [E * C] (dropped: E * C)."""
  c = route.capacity
  return jnp.where(route.kept, route.expert * c + route.position, num_experts * c)


def scatter_to_experts(x: jax.Array, route: Route, num_experts: int) -> jax.Array:
  """Index-based dispatch: [G, S, d] -> expert buffers [E, G, C, d].

  Same result as the one-hot einsum, without the [G, S, E, C] tensor: each group
  scatters its S*K choices into its own buffer (dropped choices fall outside and
  vanish). The group axis stays a batch axis, so a batch-sharded G and an
  expert-sharded E meet in an all-to-all.
  """
  g, s, d = x.shape
  k, c = route.expert.shape[-1], route.capacity
  slot = _slots(route, num_experts).reshape(g, s * k)
  src = jnp.broadcast_to(x[:, :, None, :], (g, s, k, d)).reshape(g, s * k, d)

  def one_group(src_g, slot_g):  # [S*K, d], [S*K] -> [E*C, d]
    return jnp.zeros((num_experts * c, d), x.dtype).at[slot_g].set(src_g, mode="drop")

  buf = jax.vmap(one_group)(src, slot)  # [G, E*C, d]
  return buf.reshape(g, num_experts, c, d).transpose(1, 0, 2, 3)


def gather_from_experts(y: jax.Array, route: Route) -> jax.Array:
  """Index-based combine: expert outputs [E, G, C, d] -> [G, S, d] weighted by gates."""
  e, g, c, d = y.shape
  flat = y.transpose(1, 0, 2, 3).reshape(g, e * c, d)  # [G, E*C, d]
  slot = _slots(route, e)  # [G, S, K]
  picked = jax.vmap(lambda f, i: f.at[i].get(mode="fill", fill_value=0))(flat, slot)
  return jnp.einsum("gskd,gsk->gsd", picked, route.gate.astype(y.dtype))


def token_mean(x: jax.Array, valid: jax.Array | None) -> jax.Array:
  """Mean over the real tokens: [G, S, ...], [G, S] -> [...] (0 if there are none)."""
  x = x.astype(jnp.float32)
  if valid is None:
    return x.mean((0, 1))
  w = valid.astype(jnp.float32).reshape(valid.shape + (1,) * (x.ndim - 2))
  return (x * w).sum((0, 1)) / jnp.maximum(valid.sum(), 1).astype(jnp.float32)


def load_balance_loss(probs: jax.Array, expert: jax.Array,
                      valid: jax.Array | None = None) -> jax.Array:
  """E * sum_e f_e * P_e over the real tokens (Switch Transformers, all K choices).

  Args:
    probs: [G, S, E] router probabilities.
    expert: [G, S, K] chosen experts (before capacity dropping).
    valid: [G, S] bool, real tokens (None: all).

  Returns:
    Scalar; 1.0 under perfectly uniform routing.
  """
  e = probs.shape[-1]
  f = token_mean(jax.nn.one_hot(expert, e, dtype=jnp.float32).sum(-2), valid) / expert.shape[-1]
  p = token_mean(probs, valid)
  return e * jnp.sum(f * p)


def router_z_loss(logits: jax.Array, valid: jax.Array | None = None) -> jax.Array:
  """mean(logsumexp(logits)^2) over the real tokens (ST-MoE): [G, S, E] -> []."""
  return token_mean(jax.nn.logsumexp(logits.astype(jnp.float32), axis=-1) ** 2, valid)


def entropy(p: jax.Array, axis: int = -1) -> jax.Array:
  """Shannon entropy (nats) of distributions along ``axis``."""
  p = p.astype(jnp.float32)
  return -jnp.sum(p * jnp.log(p + _EPS), axis=axis)


def bernoulli_entropy(p: jax.Array) -> jax.Array:
  """Elementwise entropy (nats) of Bernoulli(p)."""
  p = p.astype(jnp.float32)
  return -(p * jnp.log(p + _EPS) + (1 - p) * jnp.log(1 - p + _EPS))


def gumbel(key: jax.Array, shape: tuple[int, ...]) -> jax.Array:
  """Standard Gumbel noise."""
  u = jax.random.uniform(key, shape, jnp.float32, minval=_EPS, maxval=1.0 - 1e-7)
  return -jnp.log(-jnp.log(u))


def gumbel_sigmoid(logits: jax.Array, key: jax.Array, temperature: float) -> jax.Array:
  """A relaxed Bernoulli sample: sigmoid((logits + log u - log(1 - u)) / tau)."""
  u = jax.random.uniform(key, logits.shape, jnp.float32, minval=_EPS, maxval=1.0 - 1e-7)
  return jax.nn.sigmoid((logits + jnp.log(u) - jnp.log1p(-u)) / temperature)


def straight_through(hard: jax.Array, soft: jax.Array) -> jax.Array:
  """``hard`` in the forward pass, the gradient of ``soft`` in the backward pass."""
  return hard + soft - jax.lax.stop_gradient(soft)


def usage_by_task(assign: jax.Array, task_id: jax.Array, num_tasks: int,
                  valid: jax.Array | None = None) -> jax.Array:
  """Mean assignment of each task's rows: [N, E], [N] -> [T, E] (absent tasks: 0).

  Args:
    assign: [N, E] per-row weights over experts or skills (one-hot or soft).
    task_id: [N] task of each row.
    num_tasks: T.
    valid: [N] bool, rows to count (None: all).
  """
  onehot = jax.nn.one_hot(task_id, num_tasks, dtype=jnp.float32)  # [N, T]
  if valid is not None:
    onehot = onehot * valid[:, None].astype(jnp.float32)
  total = onehot.T @ assign.astype(jnp.float32)  # [T, E]
  return total / jnp.maximum(onehot.sum(0)[:, None], 1.0)
