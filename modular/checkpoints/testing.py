"""A tiny random BERT checkpoint in Hugging Face's layout, for tests of the import.

``write_tiny_bert(folder)`` writes ``config.json`` and ``model.safetensors`` with the
tensor names and [out, in] layouts of ``transformers.BertModel`` (pooler included),
so the whole import path (mapping table, reshapes, errors, frozen set) runs on a model
that compiles in a second.
"""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np


def write_tiny_bert(folder: str, *, vocab_size: int = 13, d_model: int = 8, d_ff: int = 16,
                    num_heads: int = 2, num_layers: int = 2, max_positions: int = 16,
                    drop: Sequence[str] = (), extra: Sequence[str] = (),
                    reshape: Sequence[tuple[str, tuple[int, ...]]] = (),
                    seed: int = 0) -> dict[str, np.ndarray]:
  """Writes a random BERT checkpoint into ``folder``; returns its tensors.

  Args:
    folder: an existing folder.
    vocab_size, d_model, d_ff, num_heads, num_layers, max_positions: sizes.
    drop: tensor names to leave out (a "missing tensor" checkpoint).
    extra: names of extra [3] tensors (an "unexpected tensor" checkpoint).
    reshape: (name, shape) pairs that override a tensor's shape.
    seed: NumPy seed of the values (standard normal).

  Returns:
    {name: float32 array} as written.
  """
  from safetensors.numpy import save_file  # the [pretrained] extra
  d, f = d_model, d_ff
  shapes = {"embeddings.word_embeddings.weight": (vocab_size, d),
            "embeddings.position_embeddings.weight": (max_positions, d),
            "embeddings.token_type_embeddings.weight": (2, d),
            "embeddings.LayerNorm.weight": (d,), "embeddings.LayerNorm.bias": (d,),
            "pooler.dense.weight": (d, d), "pooler.dense.bias": (d,)}
  for i in range(num_layers):
    p = f"encoder.layer.{i}."
    for m in ("query", "key", "value"):
      shapes[p + f"attention.self.{m}.weight"] = (d, d)
      shapes[p + f"attention.self.{m}.bias"] = (d,)
    shapes.update({p + "attention.output.dense.weight": (d, d),
                   p + "attention.output.dense.bias": (d,),
                   p + "attention.output.LayerNorm.weight": (d,),
                   p + "attention.output.LayerNorm.bias": (d,),
                   p + "intermediate.dense.weight": (f, d), p + "intermediate.dense.bias": (f,),
                   p + "output.dense.weight": (d, f), p + "output.dense.bias": (d,),
                   p + "output.LayerNorm.weight": (d,), p + "output.LayerNorm.bias": (d,)})
  shapes.update({name: (3,) for name in extra})
  shapes.update(dict(reshape))
  rng = np.random.default_rng(seed)
  tensors = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()
             if k not in drop}
  save_file(tensors, os.path.join(folder, "model.safetensors"))
  config = {"model_type": "bert", "hidden_size": d, "num_attention_heads": num_heads,
            "num_hidden_layers": num_layers, "intermediate_size": f,
            "vocab_size": vocab_size, "max_position_embeddings": max_positions,
            "type_vocab_size": 2, "layer_norm_eps": 1e-12, "hidden_act": "gelu",
            "position_embedding_type": "absolute"}
  with open(os.path.join(folder, "config.json"), "w") as fh:
    json.dump(config, fh)
  return tensors
