"""Rotary position embeddings (RoPE) with the common frequency scalings.

Queries and keys of every head are rotated by an angle proportional to their
position p, pair by pair, in the "rotate half" layout of ``transformers``' Llama
(the pair of dimension i is i + dh/2, not 2i + 1, so that checkpoints converted to
it load unchanged):

  theta_i = 1 / base^(2i / dh)                         i = 0 .. dh/2 - 1
  x'      = x cos(p theta) + rotate_half(x) sin(p theta),  rotate_half([a, b]) = [-b, a]

with theta repeated over both halves. ``model.rope_scaling`` rescales the theta_i
(its ``rope_type``; empty or None is "default"):

  * "linear": theta_i / factor (position interpolation);
  * "llama3": Llama 3.1's band-wise rule: wavelengths above
    original_max_position_embeddings / low_freq_factor are divided by ``factor``,
    those below ... / high_freq_factor are kept, the ones between interpolated.

Any other type ("yarn", "dynamic", "longrope", ...) changes the math in a way not
implemented here and is refused with one line naming it.

References:
  Su et al. 2021, "RoFormer: Enhanced Transformer with Rotary Position Embedding".
  Chen et al. 2023, "Extending Context Window of Large Language Models via
    Positional Interpolation" (linear).
  Meta 2024, "The Llama 3 Herd of Models" (llama3 scaling).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import jax
import jax.numpy as jnp
import numpy as np

ROPE_TYPES = ("default", "linear", "llama3")
LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor",
               "original_max_position_embeddings")


def rope_type(scaling: Mapping[str, Any] | None, key: str = "config.model.rope_scaling") -> str:
  """The scaling's ``rope_type`` (or the older ``type``), checked.

  Raises:
    ValueError: one line naming an unknown type or a missing option.
  """
  scaling = dict(scaling or {})
  kind = scaling.get("rope_type", scaling.get("type", "default")) or "default"
  if kind not in ROPE_TYPES:
    raise ValueError(f"{key}: rope_type {kind!r} is not implemented; "
                     f"known: {', '.join(ROPE_TYPES)}")
  needs = {"default": (), "linear": ("factor",), "llama3": LLAMA3_KEYS}[kind]
  for k in needs:
    if scaling.get(k) is None:
      raise ValueError(f"{key}: rope_type {kind!r} needs {k!r}")
  return kind


def inv_frequencies(head_dim: int, theta: float,
                    scaling: Mapping[str, Any] | None = None) -> np.ndarray:
  """theta_i [head_dim / 2] float32, scaled as ``scaling`` says (float32 as transformers)."""
  if head_dim % 2:
    raise ValueError(f"config.model: rotary embeddings need an even head_dim, got {head_dim}")
  kind = rope_type(scaling)
  scaling = dict(scaling or {})
  f32 = np.float32
  inv = f32(1.0) / (f32(theta) ** (np.arange(0, head_dim, 2, dtype=f32) / f32(head_dim)))
  if kind == "linear":
    inv = inv / f32(scaling["factor"])
  elif kind == "llama3":
    factor, low, high = (f32(scaling[k]) for k in LLAMA3_KEYS[:3])
    old = f32(scaling["original_max_position_embeddings"])
    low_wavelen, high_wavelen = old / low, old / high
    wavelen = f32(2 * math.pi) / inv
    scaled = np.where(wavelen > low_wavelen, inv / factor, inv)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    inv = np.where(medium, smoothed, scaled)
  return inv.astype(f32)


@dataclasses.dataclass(frozen=True)
class Rope:
  """The rotation of one model (hashable: a static attribute of the attention module).

  Attributes:
    inv_freq: theta_i, head_dim / 2 floats.
  """

  inv_freq: tuple[float, ...]

  @staticmethod
  def from_config(cfg, head_dim: int) -> "Rope":
    """From ``model.rope_theta`` and ``model.rope_scaling``."""
    scaling = cfg.get("rope_scaling", None)
    scaling = scaling.to_dict() if hasattr(scaling, "to_dict") else scaling
    inv = inv_frequencies(head_dim, float(cfg.get("rope_theta", 10000.0)), scaling)
    return Rope(tuple(float(v) for v in inv))

  def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:
    """Rotates queries or keys.

    Args:
      x: [B, L, H, dh].
      positions: [B, L] or [L] int positions of the tokens.

    Returns:
      [B, L, H, dh], x rotated (computed in float32, returned in x's dtype).
    """
    inv = jnp.asarray(self.inv_freq, jnp.float32)  # [dh/2]
    freqs = positions.astype(jnp.float32)[..., None] * inv  # [(B,) L, dh/2]
    emb = jnp.concatenate([freqs, freqs], axis=-1)[..., None, :]  # [(B,) L, 1, dh]
    x32 = x.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x32[..., half:], x32[..., :half]], axis=-1)
    return (x32 * jnp.cos(emb) + rotated * jnp.sin(emb)).astype(x.dtype)
