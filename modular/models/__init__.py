"""The multi-task transformer and its slots."""

from __future__ import annotations

import ml_collections
from flax import nnx

from modular.models import heads  # registers the "classify" head
from modular.models import precision, remat
from modular.models.context import Context
from modular.models.encoder import Encoder, EncoderBlock
from modular.models.norms import RMSNorm
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
  # jax.checkpoint on each block: "none", "block", "nothing_saveable", "dots_saveable",
  # "dots_with_no_batch_dims_saveable" (modular/models/remat.py).
  c.remat = "none"
  # Compute dtype: "float32" or "bfloat16" (parameters and optimizer state stay
  # float32; norms, softmax, losses and the multi-task solve run in float32:
  # modular/models/precision.py).
  c.dtype = "float32"
  c.vocab_size = -1  # filled from the data
  c.seq_len = -1  # filled from the data
  c.num_tasks = -1  # filled from the data
  c.block = ml_collections.ConfigDict({"name": "standard"})
  c.ffn = ml_collections.ConfigDict({"name": "dense"})
  c.adapter_attn = ml_collections.ConfigDict({"name": "none"})
  c.adapter_ffn = ml_collections.ConfigDict({"name": "none"})
  c.head = ml_collections.ConfigDict({"name": "shared"})
  # "decoder" (causal, pre-LN) or "encoder" (bidirectional BERT family, post-LN).
  c.arch = "decoder"
  c.layer_norm_eps = 1e-5  # the LayerNorms' epsilon (BERT: 1e-12)
  c.max_positions = -1  # rows of the position table; -1: seq_len
  c.attn_bias = False  # the decoder's q/k/v/o biases (GPT-2)
  c.tie_embeddings = False  # the decoder publishes embed to the "tied" head (GPT-2)
  # Llama-family decoders (all off by default; models/transformer.py):
  c.norm = "layer"  # "layer" (LayerNorm) or "rms" (RMSNorm, float32 statistics)
  c.positions = "learned"  # "learned" (a position table) or "rope" (rotary)
  c.rope_theta = 10000.0  # RoPE base
  # RoPE frequency scaling as transformers writes it: {} / rope_type "default",
  # "linear" (factor) or "llama3" (factor, low_freq_factor, high_freq_factor,
  # original_max_position_embeddings); any other type is refused (models/rope.py).
  c.rope_scaling = ml_collections.ConfigDict()
  c.num_kv_heads = -1  # key/value heads of grouped-query attention; -1: num_heads
  c.attn_qkv_bias = False  # biases on q/k/v only (Qwen2)
  c.ffn_gated = False  # SwiGLU: act(x W_gate) * (x W_in), then W_out
  c.ffn_bias = True  # the FFN's b_in / b_out
  # Mask padded keys and count positions over real tokens (ctx.token_mask): a
  # left-padded row gives its unpadded logits. Needs a batch token_mask where token
  # id 0 is a real token (the default mask is inputs != 0).
  c.padding_mask = False
  c.type_vocab_size = 2  # the encoder's token-type (segment) embeddings
  # A pretrained checkpoint ("all-MiniLM-L6-v2" or a Hugging Face BERT / GPT-2 /
  # Llama / Qwen2 / Mistral folder):
  # its sizes replace the ones above and its weights are imported (modular.checkpoints).
  c.pretrained = ""
  return c


ARCHS = {"decoder": Transformer, "encoder": Encoder}


def build_model(cfg: ml_collections.ConfigDict, seed: int = 0) -> Transformer | Encoder:
  """Builds the model ``cfg.arch`` describes (sizes must be filled in)."""
  for key in ("vocab_size", "seq_len", "num_tasks"):
    if cfg[key] <= 0:
      raise ValueError(f"model.{key} must be filled in from the data (got {cfg[key]})")
  arch = cfg.get("arch", "decoder")
  if arch not in ARCHS:
    raise ValueError(f"config.model.arch: unknown {arch!r}; known: {', '.join(ARCHS)}")
  return ARCHS[arch](cfg, nnx.Rngs(params=seed))


__all__ = [
    "ADAPTER", "ARCHS", "BLOCK", "FFN", "HEAD", "Context", "Encoder", "EncoderBlock", "LayerNorm",
    "RMSNorm", "SlotArgs", "StandardBlock",
    "Transformer", "build_model", "build_slot", "default_model_config", "param",
]
