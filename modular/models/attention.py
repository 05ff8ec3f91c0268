"""Causal multi-head self-attention with a gate on every head's output.

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
from modular.models.slots import param


class CausalSelfAttention(nnx.Module):
  """Multi-head causal self-attention with per-head gates.

  Args:
    d_model: width of the residual stream.
    num_heads: H; d_model must be divisible by H.
    rngs: key source.
    bias: biases on q/k/v [H, dh] and on the output [d] (``model.attn_bias``; GPT-2
      has them). Off by default: the parameters and the math are then as without.
  """

  def __init__(self, d_model: int, num_heads: int, rngs: nnx.Rngs, bias: bool = False):
    if d_model % num_heads:
      raise ValueError(f"model.d_model={d_model} is not divisible by model.num_heads={num_heads}")
    self.num_heads = num_heads
    self.head_dim = d_model // num_heads
    qkv_axes = ("embed", "heads", "head_dim")
    shape = (d_model, num_heads, self.head_dim)
    self.wq = param(rngs, shape, qkv_axes)
    self.wk = param(rngs, shape, qkv_axes)
    self.wv = param(rngs, shape, qkv_axes)
    self.wo = param(rngs, (num_heads, self.head_dim, d_model), ("heads", "head_dim", "embed"),
                    scale=d_model ** -0.5)
    self.use_bias = bias
    if bias:  # zeros: drawing no key, so the other parameters' init is unchanged
      self.bq, self.bk, self.bv = (param(rngs, shape[1:], qkv_axes[1:], init="zeros")
                                   for _ in range(3))
      self.bo = param(rngs, (d_model,), ("embed",), init="zeros")

  def __call__(self, x: jax.Array, ctx: Context) -> jax.Array:  # [B, L, d] -> [B, L, d]
    ctx.capture_activation("attn_in", x)  # the q/k/v projections' input (RegMean's Gram)
    q = jnp.einsum("bld,dhk->blhk", x, self.wq[...])
    k = jnp.einsum("bld,dhk->blhk", x, self.wk[...])
    v = jnp.einsum("bld,dhk->blhk", x, self.wv[...])
    if self.use_bias:
      q, k, v = q + self.bq[...], k + self.bk[...], v + self.bv[...]
    heads = attend(q, k, v, ctx, causal=True)  # [B, L, H, dh]
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
    q, k, v: queries, keys and values [B, L, H, dh].
    ctx: the block's context (gates, capture).
    causal: mask keys after the query.
    key_mask: [B, L] bool, False on padded keys (None: every key is real).
  """
  if ctx.head_gates is None and not ctx.capture:
    mask = None if key_mask is None else key_mask[:, None, None, :]  # [B, 1, 1, L]
    heads = jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=causal)
    return ctx.intervene("attn_heads", heads)
  seq = q.shape[1]
  logits = jnp.einsum("bqhk,bshk->bhqs", q, k) * q.shape[-1] ** -0.5  # [B, H, L, L]
  if causal:
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
