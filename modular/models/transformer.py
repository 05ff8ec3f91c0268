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

Pretrained decoders set the rest (each off by default, so a model without them is
unchanged): ``norm = "rms"`` (RMSNorm, ``norms.py``), ``positions = "rope"`` (rotary
embeddings with ``rope_theta`` / ``rope_scaling``, ``rope.py``, instead of the learned
table), ``num_kv_heads`` (grouped-query attention), ``attn_qkv_bias`` (Qwen2),
``ffn_gated`` / ``ffn_bias`` (SwiGLU without biases, ``slots.DenseFFN``) and
``padding_mask``: padded keys masked and positions counted over the real tokens
(``ctx.token_mask``), so a left-padded row gives the logits of the unpadded one.

Why decoder-only: every built-in task is a sequence-to-sequence map over one
vocabulary, so one next-token objective covers them all, per-task heads remain an
option (``head.name = "per_task"``), and the task token gives the routers a task
signal inside the sequence as well as through ``ctx.task_id``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from modular.models.attention import CausalSelfAttention
from modular.models import precision, remat
from modular.models.context import Context
from modular.models.norms import LayerNorm, make_norm  # LayerNorm: re-exported
from modular.models.rope import Rope
from modular.models.slots import BLOCK, SlotArgs, build_slot, param


def dropout(x: jax.Array, rate: float, ctx: Context, name: str) -> jax.Array:
  """Inverted dropout of a sublayer output at ``rate``; the identity when deterministic."""
  if rate == 0.0 or ctx.deterministic:
    return x
  keep = jax.random.bernoulli(ctx.key(name), 1.0 - rate, x.shape)
  return jnp.where(keep, x / (1.0 - rate), 0.0)


POSITIONS = ("learned", "rope")


def positions_kind(cfg: ml_collections.ConfigDict) -> str:
  """``model.positions``: "learned" (a position table, the default) or "rope"."""
  kind = cfg.get("positions", "learned")
  if kind not in POSITIONS:
    raise ValueError(f"config.model.positions: unknown {kind!r}; known: {', '.join(POSITIONS)}")
  return kind


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
    self.ln_attn = make_norm(cfg, cfg.d_model, rngs)
    rope = (Rope.from_config(cfg, cfg.d_model // cfg.num_heads)
            if positions_kind(cfg) == "rope" else None)
    self.attn = CausalSelfAttention(
        cfg.d_model, cfg.num_heads, rngs, bias=bool(cfg.get("attn_bias", False)),
        num_kv_heads=cfg.get("num_kv_heads", -1) if cfg.get("num_kv_heads", -1) > 0 else None,
        qkv_bias=bool(cfg.get("attn_qkv_bias", False)), rope=rope,
        mask_padding=bool(cfg.get("padding_mask", False)))
    self.adapter_attn = build_slot(
        "adapter_attn", slot_args(cfg, layer, "adapter_attn", shared), cfg.adapter_attn, rngs)
    self.ln_ffn = make_norm(cfg, cfg.d_model, rngs)
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
      table (none with ``positions = "rope"``), ``layer_norm_eps`` the norms,
      ``attn_bias`` adds attention biases, and ``tie_embeddings`` (implied by the
      "tied" head) publishes ``embed`` to the head (logits x embed^T, one shared
      parameter: GPT-2's LM head); the Llama-family options are in the module
      docstring.
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
    self.learned_positions = positions_kind(cfg) == "learned"
    if self.learned_positions:
      self.pos_embed = param(rngs, (positions, cfg.d_model), (None, "embed"), scale=1.0)
    self.padding_mask = bool(cfg.get("padding_mask", False))
    if cfg.get("tie_embeddings", False) or cfg.head.get("name") == "tied":
      self.shared["embed"] = self.embed  # the same Param: its path stays "embed"
    self.blocks = nnx.List([
        build_slot("block", slot_args(cfg, i, "block", self.shared), cfg.block, rngs)
        for i in range(cfg.num_layers)])
    self.ln_final = make_norm(cfg, cfg.d_model, rngs)
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
    x = self.embed[...][tokens]  # [B, L, d]
    if self.padding_mask and ctx.token_mask is not None:
      # Positions over the real tokens (transformers' position_ids = cumsum(mask) - 1).
      pos = jnp.maximum(jnp.cumsum(ctx.token_mask.astype(jnp.int32), axis=1) - 1, 0)
      ctx = dataclasses.replace(ctx, positions=pos)  # the collectors stay shared
    if self.learned_positions:
      pos_table = self.pos_embed[...]
      x = x + (pos_table[:seq] if ctx.positions is None else pos_table[ctx.positions])
    for i, block in enumerate(self.blocks):
      bctx = ctx.at(layer=i, position="")
      x = precision.residual(
          remat.call(block, bctx.tap("resid_pre", x), bctx, self.remat), x)
    x = self.ln_final(x)
    ctx.capture_activation("final", x)
    return self.head(x, ctx.at(layer=-1, position="head"))
