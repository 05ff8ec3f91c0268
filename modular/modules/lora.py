"""LoRA on the FFN, one low-rank update per task (a baseline for the routed modules).

The dense FFN (``base``) is kept and each of its two linears gets a low-rank update
chosen by the example's task:

  h = act(x W_in + b_in + (alpha / r) (x A_in[t]) B_in[t])
  y = h W_out + b_out + (alpha / r) (h A_out[t]) B_out[t]

On a gated (SwiGLU) FFN, ``model.ffn_gated``, the gate projection gets its own
pair (``lora_a_gate`` [n, d, r], ``lora_b_gate`` [n, r, d_ff]), as peft's LoRA on
Llama's gate/up/down projections:

  h = act(x W_gate + (alpha / r) (x A_gate[t]) B_gate[t]) * (x W_in + ... + up update)

A is random and B is zero at init, so the model starts as the dense one. With
``per_task = False`` one update is shared by all tasks. In the parameter-efficient mode
(``peft.frozen_backbone``) only the A and B matrices train: ``lora_a_in`` [n, d, r],
``lora_b_in`` [n, r, d_ff], ``lora_a_out`` [n, d_ff, r], ``lora_b_out`` [n, r, d], with
n = T per task or 1.

Config (``model.ffn``, name "lora"): rank (4), alpha (8.0), per_task (True).

References:
  Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from modular.models.context import Context
from modular.models.slots import FFN, DenseFFN, SlotArgs, param
from modular.modules.options import resolve, slot_key

DEFAULTS = {"rank": 4, "alpha": 8.0, "per_task": True}


def lora_pair(rngs: nnx.Rngs, n: int, d_in: int, d_out: int, rank: int,
              in_axis: str, out_axis: str) -> tuple[nnx.Param, nnx.Param]:
  """A [n, d_in, r] (normal, std 1/sqrt(d_in)) and B [n, r, d_out] (zeros)."""
  a = param(rngs, (n, d_in, rank), ("tasks", in_axis, "rank"), scale=d_in**-0.5)
  b = param(rngs, (n, rank, d_out), ("tasks", "rank", out_axis), init="zeros")
  return a, b


class LoRAFFN(nnx.Module):
  """The dense FFN plus per-task low-rank updates: [B, L, d] -> [B, L, d].

  Args:
    args: slot sizes.
    cfg: rank, alpha, per_task.
    rngs: key source.
  """

  def __init__(self, args: SlotArgs, cfg: ml_collections.ConfigDict, rngs: nnx.Rngs):
    o = resolve(cfg, DEFAULTS, slot_key(args.position))
    if o.rank < 1:
      raise ValueError(f"config.{slot_key(args.position)}.rank: must be >= 1, got {o.rank}")
    self.base = DenseFFN(args, cfg, rngs)
    n = args.num_tasks if o.per_task else 1
    self.per_task = o.per_task
    self.scale = o.alpha / o.rank
    # Named lora_*: the dense FFN's own leaves (base/b_in, ...) are the backbone
    # (modules/peft.py), and a factor must never match a backbone pattern.
    self.lora_a_in, self.lora_b_in = lora_pair(rngs, n, args.d_model, args.d_ff, o.rank,
                                               "embed", "mlp")
    self.lora_a_out, self.lora_b_out = lora_pair(rngs, n, args.d_ff, args.d_model, o.rank,
                                                 "mlp", "embed")
    if self.base.gated:
      self.lora_a_gate, self.lora_b_gate = lora_pair(rngs, n, args.d_model, args.d_ff,
                                                     o.rank, "embed", "mlp")

  def _delta(self, x: jax.Array, a: nnx.Param, b: nnx.Param, idx: jax.Array) -> jax.Array:
    """(alpha / r) (x A[idx]) B[idx] per example: [B, L, d_in] -> [B, L, d_out]."""
    low = jnp.einsum("bld,bdr->blr", x, a[...][idx])
    return self.scale * jnp.einsum("blr,brf->blf", low, b[...][idx])

  def __call__(self, x: jax.Array, ctx: Context) -> jax.Array:  # [B, L, d] -> [B, L, d]
    idx = ctx.task_id if self.per_task else jnp.zeros_like(ctx.task_id)
    up = self._delta(x, self.lora_a_in, self.lora_b_in, idx)
    gate = (self._delta(x, self.lora_a_gate, self.lora_b_gate, idx)
            if self.base.gated else None)
    h = self.base.hidden(x, up, gate)
    ctx.capture_activation("ffn_act", h)
    return self.base.output(h, self._delta(h, self.lora_a_out, self.lora_b_out, idx))


@FFN.register("lora")
def _lora(args: SlotArgs, cfg, rngs):
  return LoRAFFN(args, cfg, rngs)
