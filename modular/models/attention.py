"""Causal multi-head self-attention with a gate on every head's output.

Options for pretrained decoders (all off by default): grouped-query attention
(``num_kv_heads`` < H key/value heads, head h reading kv head h // (H / num_kv_heads)),
rotary position embeddings on q and k (``rope.py``), q/k/v biases without an output
bias (Qwen2), and masking of padded keys with ``ctx.token_mask`` (left padding).

Every head's output o_h [B, L, dh] is multiplied by a gate xi_h (1 by default) before
the output projection, so head importance (Michel et al. 2019) is dL/dxi_h and
ablation is xi_h = 0 (or a mean replacement). With capture on, the input [B, L, d], the
per-head outputs [B, L, H, dh] and attention weights [B, H, L, L] are recorded; the per-head
outputs are also a patching site (``Context.tap``, ``attn_heads``). Without gates
and capture (training) attention is ``jax.nn.dot_product_attention``, which never
materializes the weights where the backend has a fused kernel (``attend``).

References:
  Vaswani et al. 2017, "Attention Is All You Need".
  Michel et al. 2019, "Are Sixteen Heads Really Better than One?" (head gates).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from modular.models import precision
from modular.models.context import Context
from modular.models.rope import Rope
from modular.models.slots import param


class CausalSelfAttention(nnx.Module):
  """Multi-head causal self-attention with per-head gates.

  Args:
    d_model: width of the residual stream.
    num_heads: H; d_model must be divisible by H.
    rngs: key source.
    bias: biases on q/k/v [H, dh] and on the output [d] (``model.attn_bias``; GPT-2
      has them). Off by default: the parameters and the math are then as without.
    num_kv_heads: key/value heads (``model.num_kv_heads``; None or H: plain
      multi-head attention); wk and wv are then [d, num_kv_heads, dh].
    qkv_bias: biases on q/k/v only (``model.attn_qkv_bias``; Qwen2).
    rope: rotate q and k by their positions (``ctx.positions``, else 0..L-1).
    mask_padding: mask padded keys (``ctx.token_mask``; ``model.padding_mask``).
  """

  def __init__(self, d_model: int, num_heads: int, rngs: nnx.Rngs, bias: bool = False, *,
               num_kv_heads: int | None = None, qkv_bias: bool = False,
               rope: Rope | None = None, mask_padding: bool = False):
    if d_model % num_heads:
      raise ValueError(f"model.d_model={d_model} is not divisible by model.num_heads={num_heads}")
    kv = num_kv_heads or num_heads
    if kv < 1 or num_heads % kv:
      raise ValueError(f"config.model.num_kv_heads: {kv} does not divide "
                       f"model.num_heads={num_heads}")
    self.num_heads = num_heads
    self.num_kv_heads = kv
    self.head_dim = d_model // num_heads
    qkv_axes = ("embed", "heads", "head_dim")
    kv_axes = ("embed", "kv_heads", "head_dim") if kv != num_heads else qkv_axes
    shape = (d_model, num_heads, self.head_dim)
    kv_shape = (d_model, kv, self.head_dim)
    self.wq = param(rngs, shape, qkv_axes)
    self.wk = param(rngs, kv_shape, kv_axes)
    self.wv = param(rngs, kv_shape, kv_axes)
    self.wo = param(rngs, (num_heads, self.head_dim, d_model), ("heads", "head_dim", "embed"),
                    scale=d_model ** -0.5)
    self.use_bias = bias
    self.qkv_bias = bias or qkv_bias
    if self.qkv_bias:  # zeros: drawing no key, so the other parameters' init is unchanged
      self.bq = param(rngs, shape[1:], qkv_axes[1:], init="zeros")
      self.bk, self.bv = (param(rngs, kv_shape[1:], kv_axes[1:], init="zeros")
                          for _ in range(2))
    if bias:
      self.bo = param(rngs, (d_model,), ("embed",), init="zeros")
    self.rope = rope
    self.mask_padding = mask_padding

  def __call__(self, x: jax.Array, ctx: Context) -> jax.Array:  # [B, L, d] -> [B, L, d]
    ctx.capture_activation("attn_in", x)  # the q/k/v projections' input (RegMean's Gram)
    q = jnp.einsum("bld,dhk->blhk", x, self.wq[...])
    k = jnp.einsum("bld,dhk->blhk", x, self.wk[...])  # [B, L, Hkv, dh]
    v = jnp.einsum("bld,dhk->blhk", x, self.wv[...])
    if self.qkv_bias:
      q, k, v = q + self.bq[...], k + self.bk[...], v + self.bv[...]
    if self.rope is not None:
      positions = ctx.positions if ctx.positions is not None else jnp.arange(x.shape[1])
      q, k = self.rope(q, positions), self.rope(k, positions)
    key_mask = ctx.token_mask if self.mask_padding else None
    heads = attend(q, k, v, ctx, causal=True, key_mask=key_mask)  # [B, L, H, dh]
    out = jnp.einsum("blhk,hkd->bld", heads, self.wo[...])
    return out + self.bo[...] if self.use_bias else out


def attend(q: jax.Array, k: jax.Array, v: jax.Array, ctx: Context, *, causal: bool,
           key_mask: jax.Array | None = None) -> jax.Array:
  """Per-head attention outputs [B, L, H, dh] from q, k, v [B, L, H, dh].

  Without head gates and capture, ``jax.nn.dot_product_attention`` (XLA's fused
  attention, cuDNN's on GPU where it applies). With either, the exact path: explicit
  probabilities [B, H, L, L] (recorded as ``attn_probs``), then the gates
  (``gate_heads``) and the recorded ``attn_heads``. Both paths compute
  softmax(q k^T / sqrt(dh) + mask) v; a patch written for ``attn_heads``
  (``ctx.patches``) replaces the heads' outputs on either path.

  Args:
    q, k, v: queries [B, L, H, dh], keys and values [B, L, Hkv, dh] (Hkv divides H:
      grouped-query attention, query head h reading kv head h // (H / Hkv)).
    ctx: the block's context (gates, capture).
    causal: mask keys after the query.
    key_mask: [B, L] bool, False on padded keys (None: every key is real).
  """
  if ctx.head_gates is None and not ctx.capture:
    mask = None if key_mask is None else key_mask[:, None, None, :]  # [B, 1, 1, L]
    heads = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal)
    return ctx.intervene("attn_heads", heads)
  seq = q.shape[1]
  if k.shape[2] != q.shape[2]:  # grouped-query attention: repeat each kv head
    k, v = (jnp.repeat(t, q.shape[2] // k.shape[2], axis=2) for t in (k, v))
  logits = jnp.einsum("bqhk,bshk->bhqs", q, k) * q.shape[-1] ** -0.5  # [B, H, L, L]
  if causal and key_mask is not None:  # one mask: a padded query row stays finite
    keep = jnp.tril(jnp.ones((seq, seq), bool)) & key_mask[:, None, None, :]
    logits = jnp.where(keep, logits, jnp.finfo(logits.dtype).min)
    key_mask = None
  elif causal:
    logits = jnp.where(jnp.tril(jnp.ones((seq, seq), bool)), logits,
                       jnp.finfo(logits.dtype).min)
  if key_mask is not None:  # additive mask on padded keys
    keep = key_mask[:, None, None, :]  # [B, 1, 1, L]
    logits = logits + jnp.where(keep, 0.0, jnp.finfo(logits.dtype).min).astype(logits.dtype)
  probs = precision.softmax(logits, axis=-1)  # float32 softmax, in the compute dtype
  heads = gate_heads(jnp.einsum("bhqs,bshk->bqhk", probs, v), ctx)  # [B, L, H, dh]
  ctx.capture_activation("attn_probs", probs)
  return ctx.tap("attn_heads", heads)


def gate_heads(heads: jax.Array, ctx: Context) -> jax.Array:
  """o_h <- xi_h o_h + (1 - xi_h) m_h, with m_h the mean-ablation value (or 0).

  Args:
    heads: per-head outputs [B, L, H, dh] of the block at ``ctx.layer``.
    ctx: carries the gates [NL, H] or [B, NL, H] and the means [NL, H, dh] (or None).

  Returns:
    The gated heads [B, L, H, dh].
  """
  gate = ctx.gate_for_layer(ctx.layer)  # [H] or [B, H] or None
  if gate is None:
    return heads
  gate = gate.astype(heads.dtype)
  gate = gate[..., None, :, None]  # [H] -> [1, H, 1]; [B, H] -> [B, 1, H, 1]
  out = gate * heads
  if ctx.head_means is not None:
    mean = ctx.head_means[ctx.layer].astype(heads.dtype)  # [H, dh] or [L, H, dh]
    out = out + (1.0 - gate) * mean
  return out
