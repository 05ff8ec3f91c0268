"""A bidirectional BERT-family encoder with the decoder's slots.

Chosen by ``model.arch = "encoder"``. Each block is post-LayerNorm, as in BERT:

  x = LN_attn(x + adapter_attn(drop(attn(x))))
  x = LN_ffn(x + adapter_ffn(drop(ffn(x))))

so the adapters sit where Houlsby et al. and HyperFormer++ put them in a post-LN
block: on each sublayer's output, before the residual add and the LayerNorm (the
adapter fillers are residual maps y + f(y), so the sublayer output passes through at
initialization). The embeddings are word + absolute position + token type, followed
by a LayerNorm; attention is bidirectional with biases on q/k/v/o and an additive
padding mask from ``ctx.token_mask`` [B, L] (a padded key gets the dtype's minimum
added to its logit, as in ``transformers``). Head gates, mean ablation and the capture
switch work as in the decoder (``attention.gate_heads``), and so do the patching sites
(``resid_pre``, ``attn/out``, ``ffn/out``, ``attn/attn_heads``: ``Context.tap``). The
``ffn``, ``adapter_*`` and ``head`` slots are filled from the config by name, as in the decoder; with the
per-task classification head (``heads.py``) the model returns class logits [B, C].

Parameter paths mirror the decoder's (``embed``, ``pos_embed``,
``blocks/{i}/attn/wq``, ``blocks/{i}/ffn/w_in``, ``blocks/{i}/ln_attn/scale``, ...)
plus ``type_embed``, ``ln_embed`` and the attention biases, so
``modular.checkpoints.hf_bert`` maps a Hugging Face BERT checkpoint onto them.

References:
  Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers".
  Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP" (adapter place).
  Karimi Mahabadi et al. 2021, "Parameter-efficient Multi-task Fine-tuning for
    Transformers via Shared Hypernetworks" (HyperFormer++ adapters in a post-LN block).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from modular.models import precision, remat
from modular.models.attention import attend
from modular.models.context import Context
from modular.models.slots import build_slot, param
from modular.models.transformer import LayerNorm, dropout, slot_args

INIT_STD = 0.02  # BERT's initializer_range, for weights trained from scratch


class BidirectionalSelfAttention(nnx.Module):
  """Multi-head self-attention over all real tokens, with biases and per-head gates.

  Args:
    d_model: width d of the residual stream.
    num_heads: H; d must be divisible by H.
    rngs: key source.
  """

  def __init__(self, d_model: int, num_heads: int, rngs: nnx.Rngs):
    if d_model % num_heads:
      raise ValueError(f"model.d_model={d_model} is not divisible by model.num_heads={num_heads}")
    self.num_heads = num_heads
    self.head_dim = d_model // num_heads
    shape, axes = (d_model, num_heads, self.head_dim), ("embed", "heads", "head_dim")
    bias_shape, bias_axes = (num_heads, self.head_dim), ("heads", "head_dim")
    self.wq = param(rngs, shape, axes, scale=INIT_STD)
    self.bq = param(rngs, bias_shape, bias_axes, init="zeros")
    self.wk = param(rngs, shape, axes, scale=INIT_STD)
    self.bk = param(rngs, bias_shape, bias_axes, init="zeros")
    self.wv = param(rngs, shape, axes, scale=INIT_STD)
    self.bv = param(rngs, bias_shape, bias_axes, init="zeros")
    self.wo = param(rngs, (num_heads, self.head_dim, d_model), ("heads", "head_dim", "embed"),
                    scale=INIT_STD)
    self.bo = param(rngs, (d_model,), ("embed",), init="zeros")

  def __call__(self, x: jax.Array, ctx: Context) -> jax.Array:  # [B, L, d] -> [B, L, d]
    ctx.capture_activation("attn_in", x)  # the q/k/v projections' input (RegMean's Gram)
    q = jnp.einsum("bld,dhk->blhk", x, self.wq[...]) + self.bq[...]
    k = jnp.einsum("bld,dhk->blhk", x, self.wk[...]) + self.bk[...]
    v = jnp.einsum("bld,dhk->blhk", x, self.wv[...]) + self.bv[...]
    heads = attend(q, k, v, ctx, causal=False, key_mask=ctx.token_mask)  # [B, L, H, dh]
    return jnp.einsum("blhk,hkd->bld", heads, self.wo[...]) + self.bo[...]


class EncoderBlock(nnx.Module):
  """Post-LN encoder block: attention, FFN slot and the two adapter slots.

  Args:
    cfg: the model config (d_model, num_heads, dropout, layer_norm_eps, slots).
    layer: the block's index.
    shared: the model-level dict for modules shared across layers.
    rngs: key source.
  """

  def __init__(self, cfg: ml_collections.ConfigDict, layer: int, shared, rngs: nnx.Rngs):
    eps = float(cfg.layer_norm_eps)
    self.attn = BidirectionalSelfAttention(cfg.d_model, cfg.num_heads, rngs)
    self.adapter_attn = build_slot(
        "adapter_attn", slot_args(cfg, layer, "adapter_attn", shared), cfg.adapter_attn, rngs)
    self.ln_attn = LayerNorm(cfg.d_model, rngs, eps=eps)
    self.ffn = build_slot("ffn", slot_args(cfg, layer, "ffn", shared), cfg.ffn, rngs)
    self.adapter_ffn = build_slot(
        "adapter_ffn", slot_args(cfg, layer, "adapter_ffn", shared), cfg.adapter_ffn, rngs)
    self.ln_ffn = LayerNorm(cfg.d_model, rngs, eps=eps)
    self.dropout = float(cfg.dropout)

  def _drop(self, x: jax.Array, ctx: Context, name: str) -> jax.Array:
    return dropout(x, self.dropout, ctx, name)

  def __call__(self, x: jax.Array, ctx: Context) -> jax.Array:  # [B, L, d]
    actx, fctx = ctx.at(position="attn"), ctx.at(position="ffn")
    a = self._drop(actx.tap("out", self.attn(x, actx)), ctx, "drop_attn")
    a = self.adapter_attn(a, ctx.at(position="adapter_attn"))
    x = self.ln_attn(x + a)
    f = self._drop(fctx.tap("out", self.ffn(x, fctx)), ctx, "drop_ffn")
    f = self.adapter_ffn(f, ctx.at(position="adapter_ffn"))
    x = self.ln_ffn(x + f)
    ctx.capture_activation("residual", x)
    return x


class Encoder(nnx.Module):
  """The multi-task bidirectional encoder.

  Args:
    cfg: the model config (``config.model``) with vocab_size, seq_len and num_tasks
      filled in; ``max_positions`` (-1: seq_len), ``type_vocab_size`` and
      ``layer_norm_eps`` size the embeddings and LayerNorms.
    rngs: key source for the initialization.
  """

  def __init__(self, cfg: ml_collections.ConfigDict, rngs: nnx.Rngs):
    if cfg.block.name != "standard":
      raise ValueError(f"config.model.block.name: the encoder has its own post-LN block; "
                       f"got {cfg.block.name!r} (use the ffn slot for a task-level MoE)")
    self.num_tasks = cfg.num_tasks
    self.num_layers = cfg.num_layers
    self.num_heads = cfg.num_heads
    self.head_dim = cfg.d_model // cfg.num_heads
    self.remat = remat.check(cfg.get("remat", "none"))  # model.remat, per block
    self.compute_dtype = precision.check(cfg.get("dtype", "float32"))  # model.dtype
    positions = cfg.max_positions if cfg.max_positions > 0 else cfg.seq_len
    if positions < cfg.seq_len:
      raise ValueError(f"config.model.seq_len: {cfg.seq_len} exceeds the encoder's "
                       f"max_positions={positions}")
    eps = float(cfg.layer_norm_eps)
    d = cfg.d_model
    self.shared = nnx.Dict()
    self.embed = param(rngs, (cfg.vocab_size, d), ("vocab", "embed"), scale=INIT_STD)
    self.pos_embed = param(rngs, (positions, d), (None, "embed"), scale=INIT_STD)
    self.type_embed = param(rngs, (cfg.type_vocab_size, d), (None, "embed"), scale=INIT_STD)
    self.ln_embed = LayerNorm(d, rngs, eps=eps)
    self.blocks = nnx.List([EncoderBlock(cfg, i, self.shared, rngs)
                            for i in range(cfg.num_layers)])
    self.head = build_slot("head", slot_args(cfg, -1, "head", self.shared), cfg.head, rngs)

  def hidden_states(self, tokens: jax.Array, ctx: Context,
                    token_type: jax.Array | None = None) -> jax.Array:
    """The last block's output [B, L, d] (what ``transformers`` calls last_hidden_state).

    Args:
      tokens: [B, L] int32 token ids, [CLS] first (L <= max_positions).
      ctx: side inputs; ``ctx.token_mask`` [B, L] masks padded keys.
      token_type: [B, L] int32 segment ids (None: all 0).
    """
    seq = tokens.shape[1]
    types = jnp.zeros_like(tokens) if token_type is None else token_type
    x = (self.embed[...][tokens] + self.pos_embed[...][:seq][None]
         + self.type_embed[...][types])  # [B, L, d]
    x = self.ln_embed(x)
    ctx.capture_activation("embeddings", x)
    for i, block in enumerate(self.blocks):
      bctx = ctx.at(layer=i, position="")
      x = precision.residual(
          remat.call(block, bctx.tap("resid_pre", x), bctx, self.remat), x)
    ctx.capture_activation("final", x)
    return x

  def __call__(self, tokens: jax.Array, ctx: Context,
               token_type: jax.Array | None = None) -> jax.Array:
    """Runs the encoder and the head.

    Args:
      tokens: [B, L] int32 token ids.
      ctx: side inputs (task ids [B], token mask [B, L], rng, head gates, capture).
      token_type: [B, L] int32 segment ids (None: all 0).

    Returns:
      The head's output: class logits [B, C] with the classification head, or
      [B, L, V] with a token-level head.
    """
    x = self.hidden_states(tokens, ctx, token_type)
    return self.head(x, ctx.at(layer=-1, position="head"))
