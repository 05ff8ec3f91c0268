"""The multi-task transformer and its slots."""

from __future__ import annotations

import ml_collections
from flax import nnx

from modular.models.context import Context
from modular.models.slots import ADAPTER, BLOCK, FFN, HEAD, SlotArgs, build_slot, param
from modular.models.transformer import LayerNorm, StandardBlock, Transformer


def default_model_config() -> ml_collections.ConfigDict:
  """Model defaults; vocab_size, seq_len and num_tasks are filled from the data config.

  Each slot is a ConfigDict with a ``name`` (the registered filler) plus that
  filler's own options, e.g. ``ffn = {"name": "moe", "num_experts": 8, "top_k": 2}``.
  """
  c = ml_collections.ConfigDict()
  c.d_model = 128
  c.num_heads = 4
  c.num_layers = 2
  c.d_ff = 512
  c.activation = "relu"
  c.dropout = 0.0
  c.vocab_size = -1  # filled from the data
  c.seq_len = -1  # filled from the data
  c.num_tasks = -1  # filled from the data
  c.block = ml_collections.ConfigDict({"name": "standard"})
  c.ffn = ml_collections.ConfigDict({"name": "dense"})
  c.adapter_attn = ml_collections.ConfigDict({"name": "none"})
  c.adapter_ffn = ml_collections.ConfigDict({"name": "none"})
  c.head = ml_collections.ConfigDict({"name": "shared"})
  return c


def build_model(cfg: ml_collections.ConfigDict, seed: int = 0) -> Transformer:
  """Builds the transformer described by ``cfg`` (sizes must be filled in)."""
  for key in ("vocab_size", "seq_len", "num_tasks"):
    if cfg[key] <= 0:
      raise ValueError(f"model.{key} must be filled in from the data (got {cfg[key]})")
  return Transformer(cfg, nnx.Rngs(params=seed))


__all__ = [
    "ADAPTER", "BLOCK", "FFN", "HEAD", "Context", "LayerNorm", "SlotArgs", "StandardBlock",
    "Transformer", "build_model", "build_slot", "default_model_config", "param",
]
