"""Polytropon: an inventory of LoRA skills and a learned task-skill allocation.

Each adapted linear W (the FFN's two: on a gated SwiGLU FFN the up and down
projections W_in, W_out; the gate W_gate keeps its base weights) has S skills,
low-rank pairs (A_s, B_s). Task t combines them with its row of the allocation
logits Z [T, S]:

  z_t = sigmoid((Z_t + log u - log(1 - u)) / tau)      training (relaxed Bernoulli)
  z_t = sigmoid(Z_t)                                   evaluation
  w_t = z_t / sum_s z_t,s                              (weights normalized over skills)
  W x + (alpha / r) (x sum_s w_t,s A_s)(sum_s w_t,s B_s)

``straight_through`` uses the hard sample (z > 1/2) forward and the relaxed one
backward (a task whose hard sample has no active skill gets no update, and no
gradient, for that step). Multi-head routing (``heads`` = h > 1) splits the rank into h blocks, each
with its own allocation row: Z is [T, h, S]. One sample per task and step is drawn. A
sparsity prior adds ``sparsity_weight * mean(sigmoid(Z))`` to the objective. The
allocation is one matrix for the whole model (``share_allocation``, as in the paper)
or one per layer. Train Z faster than the skills ("two-speed") with
``optim.lr_multipliers = [["allocation/logits$", 10.0]]``.

Telemetry (``ctx.record``): task_skill [T, S] (sigmoid(Z), mean over heads),
discreteness (mean Bernoulli entropy of sigmoid(Z), nats: 0 is fully discrete),
sparsity (fraction of sigmoid(Z) < 1/2), skill_entropy (entropy of the skills' share
of the total allocation), under ``polytropon/`` when shared.

Config (``model.ffn``, name "polytropon"): num_skills (8), rank (4), alpha (8.0),
heads (1), temperature (1.0), straight_through (False), share_allocation (True),
sparsity_weight (0.0).

References:
  Ponti et al. 2022, "Combining Modular Skills in Multitask Learning" (Polytropon).
  Caccia et al. 2022, "Multi-Head Adapter Routing for Cross-Task Generalization".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from modular.models.context import Context
from modular.models.slots import FFN, DenseFFN, SlotArgs, param
from modular.modules import routing
from modular.modules.options import resolve, slot_key

DEFAULTS = {"num_skills": 8, "rank": 4, "alpha": 8.0, "heads": 1, "temperature": 1.0,
            "straight_through": False, "share_allocation": True, "sparsity_weight": 0.0}
SHARED_KEY = "polytropon_allocation"


class Allocation(nnx.Module):
  """Task-skill allocation logits [T, h, S] and their sampling.

  Args:
    num_tasks: T.
    opts: the options.
    rngs: key source.
  """

  def __init__(self, num_tasks: int, opts, rngs: nnx.Rngs):
    self.opts = opts
    self.logits = param(rngs, (num_tasks, opts.heads, opts.num_skills),
                        ("tasks", None, "skills"), scale=1e-3)

  def __call__(self, ctx: Context) -> jax.Array:
    """Skill weights of every task: [T, h, S], each row normalized over skills.

    Computed in float32 and returned in the logits' (the compute) dtype.
    """
    o = self.opts
    dtype = self.logits[...].dtype
    z = self.logits[...].astype(jnp.float32)
    if ctx.deterministic:
      alloc = jax.nn.sigmoid(z)
    else:
      alloc = routing.gumbel_sigmoid(z, ctx.key("allocation"), o.temperature)
      if o.straight_through:
        alloc = routing.straight_through((alloc > 0.5).astype(alloc.dtype), alloc)
    self._telemetry(ctx)
    return (alloc / (alloc.sum(-1, keepdims=True) + 1e-6)).astype(dtype)

  def _telemetry(self, ctx: Context) -> None:
    p = jax.nn.sigmoid(self.logits[...])  # [T, h, S]
    if self.opts.sparsity_weight > 0:
      ctx.add_loss("sparsity", self.opts.sparsity_weight * p.mean())
    usage = p.sum((0, 1))
    ctx.record("task_skill", p.mean(1))
    ctx.record("discreteness", routing.bernoulli_entropy(p).mean())
    ctx.record("sparsity", (p < 0.5).astype(jnp.float32).mean())
    ctx.record("skill_entropy", routing.entropy(usage / usage.sum()))


class SkillLoRA(nnx.Module):
  """S low-rank skills of one linear map, split into h heads of rank r / h."""

  def __init__(self, d_in: int, d_out: int, in_axis: str, out_axis: str, opts,
               rngs: nnx.Rngs):
    h, s = opts.heads, opts.num_skills
    rh = opts.rank // h
    self.a = param(rngs, (s, d_in, h, rh), ("skills", in_axis, None, "rank"), scale=d_in**-0.5)
    self.b = param(rngs, (s, h, rh, d_out), ("skills", None, "rank", out_axis), init="zeros")
    self.scale = opts.alpha / opts.rank

  def __call__(self, x: jax.Array, weights: jax.Array, task: jax.Array) -> jax.Array:
    """The update of every example: x [B, L, d_in], weights [T, h, S], task [B]."""
    a = jnp.einsum("ths,sdhr->tdhr", weights, self.a[...])[task]  # [B, d_in, h, r/h]
    b = jnp.einsum("ths,shrf->thrf", weights, self.b[...])[task]  # [B, h, r/h, d_out]
    low = jnp.einsum("bld,bdhr->blhr", x, a)
    return self.scale * jnp.einsum("blhr,bhrf->blf", low, b)


class PolytroponFFN(nnx.Module):
  """The dense FFN with skill-LoRA updates on both linears: [B, L, d] -> [B, L, d].

  Args:
    args: slot sizes; ``args.shared`` holds the shared allocation.
    cfg: the options (see the module docstring).
    rngs: key source.
  """

  def __init__(self, args: SlotArgs, cfg: ml_collections.ConfigDict, rngs: nnx.Rngs):
    where = slot_key(args.position)
    o = resolve(cfg, DEFAULTS, where)
    if o.heads < 1 or o.rank % o.heads:
      raise ValueError(f"config.{where}.heads: must divide rank={o.rank}, got {o.heads}")
    if o.temperature <= 0:
      raise ValueError(f"config.{where}.temperature: must be > 0, got {o.temperature}")
    self.base = DenseFFN(args, cfg, rngs)
    self.shared = o.share_allocation
    if o.share_allocation:
      if SHARED_KEY not in args.shared:
        args.shared[SHARED_KEY] = Allocation(args.num_tasks, o, rngs)
      self.allocation = args.shared[SHARED_KEY]
    else:
      self.allocation = Allocation(args.num_tasks, o, rngs)
    self.skills_in = SkillLoRA(args.d_model, args.d_ff, "embed", "mlp", o, rngs)
    self.skills_out = SkillLoRA(args.d_ff, args.d_model, "mlp", "embed", o, rngs)

  def __call__(self, x: jax.Array, ctx: Context) -> jax.Array:  # [B, L, d] -> [B, L, d]
    # A shared allocation draws one sample per step for all layers (a model-level key).
    actx = ctx.at(layer=-1, position="polytropon") if self.shared else ctx
    weights = self.allocation(actx)  # [T, h, S]
    task = ctx.task_id
    h = self.base.hidden(x, self.skills_in(x, weights, task))  # a gated FFN's W_gate stays
    ctx.capture_activation("ffn_act", h)
    return self.base.output(h, self.skills_out(h, weights, task))


@FFN.register("polytropon")
def _polytropon(args: SlotArgs, cfg, rngs):
  return PolytroponFFN(args, cfg, rngs)
