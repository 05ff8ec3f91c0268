"""The residual stream's normalizations: LayerNorm and RMSNorm, chosen by ``model.norm``.

  LayerNorm (``"layer"``, the default; GPT-2, BERT):
    y = (x - mean(x)) / sqrt(var(x) + eps) * scale + bias
  RMSNorm (``"rms"``; Llama, Qwen2, Mistral):
    y = x / sqrt(mean(x^2) + eps) * scale

RMSNorm takes its statistics in float32 whatever the input dtype and casts back
before the scale, as ``transformers``' ``LlamaRMSNorm`` does. Both keep their gain
at ``scale`` (logical axis ``embed``), so the paths ``ln_*/scale`` are the same for
every decoder and the no-decay and unfreeze patterns (``ln_``) cover both.

References:
  Ba et al. 2016, "Layer Normalization".
  Zhang & Sennrich 2019, "Root Mean Square Layer Normalization".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from modular.models import precision
from modular.models.slots import param

NORMS = ("layer", "rms")


class LayerNorm(nnx.Module):
  """Layer norm over the last axis with a learned scale and bias."""

  def __init__(self, d: int, rngs: nnx.Rngs | None = None, eps: float = 1e-5):
    self.scale = param(rngs, (d,), ("embed",), init="ones")
    self.bias = param(rngs, (d,), ("embed",), init="zeros")
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:
    # [..., d], statistics in float32 whatever model.dtype (models/precision.py)
    return precision.norm_in_float32(x, self.scale[...], self.bias[...], self.eps)


class RMSNorm(nnx.Module):
  """Root-mean-square norm over the last axis with a learned scale, no bias or centring."""

  def __init__(self, d: int, rngs: nnx.Rngs | None = None, eps: float = 1e-6):
    self.scale = param(rngs, (d,), ("embed",), init="ones")
    self.eps = eps

  def __call__(self, x: jax.Array) -> jax.Array:  # [..., d] -> [..., d]
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt((x32 * x32).mean(-1, keepdims=True) + self.eps)
    return self.scale[...] * normed.astype(x.dtype)


def make_norm(cfg, d: int, rngs: nnx.Rngs) -> LayerNorm | RMSNorm:
  """The norm ``cfg.norm`` names ("layer" by default) with ``cfg.layer_norm_eps``.

  Raises:
    ValueError: naming ``config.model.norm`` when it is unknown.
  """
  kind = cfg.get("norm", "layer")
  eps = float(cfg.get("layer_norm_eps", 1e-5))
  if kind == "layer":
    return LayerNorm(d, rngs, eps=eps)
  if kind == "rms":
    return RMSNorm(d, rngs, eps=eps)
  raise ValueError(f"config.model.norm: unknown {kind!r}; known: {', '.join(NORMS)}")
