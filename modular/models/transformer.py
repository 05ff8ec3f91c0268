"""A decoder-only multi-task transformer with pluggable slots.

Input: ``[task_token, prompt..., SEP, answer...]`` over one shared vocabulary; the task
id also travels as a side input to every slot. Each block is

  x = adapter_attn(x + attn(LN(x)))
  x = adapter_ffn(x + ffn(LN(x)))

and the output head maps LN(x) to logits. Patching sites (``Context.tap``): each
block's input ``block{i}/resid_pre`` [B, L, d], its attention and FFN outputs
``block{i}/attn/out`` and ``block{i}/ffn/out`` [B, L, d] (before dropout), and the
per-head outputs ``block{i}/attn/attn_heads`` [B, L, H, dh] (``attention.py``).
``block``, ``ffn``, ``adapter_attn``, ``adapter_ffn`` and ``head`` are chosen by name
in the config (``slots.py``).

Why decoder-only: every built-in task is a sequence-to-sequence map over one
vocabulary, so one next-token objective covers them all, per-task heads remain an
option (``head.name = "per_task"``), and the task token gives the routers a task
signal inside the sequence as well as through ``ctx.task_id``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from modular.models.attention import CausalSelfAttention
from modular.models import precision, remat
from modular.models.context import Context
from modular.models.slots import BLOCK, SlotArgs, build_slot, param


class LayerNorm(nnx.Module):
  """Layer norm over the last axis with a learned scale and bias."""

  def __init__(self, d: int, rngs: nnx.Rngs | None = None, eps: float = 1e-5):
    self.scale = param(rngs, (d,), ("embed",), init="ones")
    self.bias = param(rngs, (d,), ("embed",), init="zeros")
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:  # [..., d], statistics in float32
    return precision.norm_in_float32(x, self.scale[...], self.bias[...], self.eps)


def dropout(x: jax.Array, rate: float, ctx: Context, name: str) -> jax.Array:
  """Inverted dropout of a sublayer output at ``rate``; the identity when deterministic."""
  if rate == 0.0 or ctx.deterministic:
    return x
  keep = jax.random.bernoulli(ctx.key(name), 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0)


def slot_args(cfg: ml_collections.ConfigDict, layer: int, position: str, shared) -> SlotArgs:
  """The sizes a slot builder sees, from the model config."""
  return SlotArgs(
      d_model=cfg.d_model, d_ff=cfg.d_ff, num_heads=cfg.num_heads,
      num_layers=cfg.num_layers, num_tasks=cfg.num_tasks, vocab_size=cfg.vocab_size,
      seq_len=cfg.seq_len, activation=cfg.activation, layer=layer, position=position,
      shared=shared, model_cfg=cfg)


class StandardBlock(nnx.Module):
  """Pre-LN block: attention, FFN slot and the two adapter slots."""

  def __init__(self, cfg: ml_collections.ConfigDict, layer: int, shared, rngs: nnx.Rngs):
    eps = float(cfg.get("layer_norm_eps", 1e-5))
    self.ln_attn = LayerNorm(cfg.d_model, rngs, eps=eps)
    self.attn = CausalSelfAttention(cfg.d_model, cfg.num_heads, rngs,
                                    bias=bool(cfg.get("attn_bias", False)))
    self.adapter_attn = build_slot(
        "adapter_attn", slot_args(cfg, layer, "adapter_attn", shared), cfg.adapter_attn, rngs)
    self.ln_ffn = LayerNorm(cfg.d_model, rngs, eps=eps)
    self.ffn = build_slot("ffn", slot_args(cfg, layer, "ffn", shared), cfg.ffn, rngs)
    self.adapter_ffn = build_slot(
        "adapter_ffn", slot_args(cfg, layer, "adapter_ffn", shared), cfg.adapter_ffn, rngs)
    self.dropout = float(cfg.dropout)

  def _drop(self, x: jax.Array, ctx: Context, name: str) -> jax.Array:
    return dropout(x, self.dropout, ctx, name)

  def __call__(self, x: jax.Array, ctx: Context) -> jax.Array:  # [B, L, d]
    actx, fctx = ctx.at(position="attn"), ctx.at(position="ffn")
    x = x + self._drop(actx.tap("out", self.attn(self.ln_attn(x), actx)), ctx, "drop_attn")
    x = self.adapter_attn(x, ctx.at(position="adapter_attn"))
    x = x + self._drop(fctx.tap("out", self.ffn(self.ln_ffn(x), fctx)), ctx, "drop_ffn")
    x = self.adapter_ffn(x, ctx.at(position="adapter_ffn"))
    ctx.capture_activation("residual", x)
    return x


@BLOCK.register("standard")
def _standard(args: SlotArgs, cfg, rngs):
  return StandardBlock(args.model_cfg, args.layer, args.shared, rngs)


class Transformer(nnx.Module):
  """The multi-task decoder.

  Args:
    cfg: the model config (``config.model``) with vocab_size, seq_len and num_tasks
      filled in from the data; ``max_positions`` (-1: seq_len) sizes the position
      table, ``layer_norm_eps`` the LayerNorms, ``attn_bias`` adds attention biases,
      and ``tie_embeddings`` (implied by the "tied" head) publishes ``embed`` to
      the head (logits x embed^T, one shared parameter: GPT-2's LM head).
    rngs: key source for the initialization.
  """

  def __init__(self, cfg: ml_collections.ConfigDict, rngs: nnx.Rngs):
    positions = cfg.get("max_positions", -1)
    positions = positions if positions > 0 else cfg.seq_len
    if positions < cfg.seq_len:
      raise ValueError(f"config.model.seq_len: {cfg.seq_len} exceeds the decoder's "
                       f"max_positions={positions}")
    self.num_tasks = cfg.num_tasks
    self.num_layers = cfg.num_layers
    self.num_heads = cfg.num_heads
    self.head_dim = cfg.d_model // cfg.num_heads
    self.remat = remat.check(cfg.get("remat", "none"))  # model.remat, per block
    self.compute_dtype = precision.check(cfg.get("dtype", "float32"))  # model.dtype
    self.shared = nnx.Dict()
    self.embed = param(rngs, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"), scale=1.0)
    self.pos_embed = param(rngs, (positions, cfg.d_model), (None, "embed"), scale=1.0)
    if cfg.get("tie_embeddings", False) or cfg.head.get("name") == "tied":
      self.shared["embed"] = self.embed  # the same Param: its path stays "embed"
    self.blocks = nnx.List([
        build_slot("block", slot_args(cfg, i, "block", self.shared), cfg.block, rngs)
        for i in range(cfg.num_layers)])
    self.ln_final = LayerNorm(cfg.d_model, rngs, eps=float(cfg.get("layer_norm_eps", 1e-5)))
    self.head = build_slot("head", slot_args(cfg, -1, "head", self.shared), cfg.head, rngs)

  def __call__(self, tokens: jax.Array, ctx: Context) -> jax.Array:
    """Runs the model.

    Args:
      tokens: [B, L] int32 token ids (L <= cfg.seq_len).
      ctx: side inputs (task ids [B], rng, head gates, capture) and collectors.

    Returns:
      logits [B, L, V]. Auxiliary losses, statistics and intermediates are left in
      ``ctx.losses``, ``ctx.stats`` and ``ctx.intermediates``.
    """
    seq = tokens.shape[1]
    x = self.embed[...][tokens] + self.pos_embed[...][:seq]  # [B, L, d]
    for i, block in enumerate(self.blocks):
      bctx = ctx.at(layer=i, position="")
      x = precision.residual(
          remat.call(block, bctx.tap("resid_pre", x), bctx, self.remat), x)
    x = self.ln_final(x)
    ctx.capture_activation("final", x)
    return self.head(x, ctx.at(layer=-1, position="head"))
