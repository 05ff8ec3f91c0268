"""The checkpoint-family protocol, its registry and the import every family shares.

A family (BERT, GPT-2, ...) is one file ``modular/checkpoints/hf_<name>.py`` that
subclasses ``Family`` and registers itself with ``@register``. It says:

  * which ``config.json`` ``model_type`` values it reads (``model_types``) and which
    ``config.model.arch`` builds it (``arch``);
  * ``check_config``: a config field that changes the math and is not implemented
    stops the load with one line naming it (with ``known_keys`` set, a field the
    family does not know at all stops it too: never silently ignored);
  * ``model_sizes``: the ``config.model`` entries the checkpoint fixes;
  * ``mapping``: the one table (checkpoint tensor name, parameter path, reshape) with
    ``{i}`` for the layer index; several rows may read one tensor (a fused q/k/v);
    ``ignored`` names the tensors deliberately not imported, and why;
  * ``frozen``: the parameter-efficient mode's default frozen set (every imported
    parameter, unless the family says otherwise);
  * ``special_tokens``: the tokenizer's BOS/EOS/PAD conventions;
  * ``default_head``: the head slot that reproduces the checkpoint's own outputs.

The folder and the tokenizer are found by ``locate`` (no family needed). Every file
``hf_*.py`` of this package is imported on the first lookup, so adding a family is
one new file plus its test. The shared steps (``convert``, ``import_params``,
``frozen_patterns``) stop with one error naming the tensor when a checkpoint tensor
is missing, unexpected or mis-shaped, or when the model lacks the mapped path.
"""

from __future__ import annotations

import os
import pkgutil
import re
from typing import Any, Callable, Mapping

import numpy as np

from modular.checkpoints.locate import CheckpointError, checkpoint_dir, read_config_json
from modular.paths import flat_paths, path_str
from modular.registry import Registry

Row = tuple[str, str, Callable[[np.ndarray, int], np.ndarray]]

# transformers' ACT2FN names -> ours ("gelu" there is the exact erf form).
HF_ACTIVATIONS = {"gelu": "gelu_exact", "gelu_new": "gelu", "gelu_pytorch_tanh": "gelu",
                  "relu": "relu", "silu": "silu"}

# PretrainedConfig fields that never change a forward pass (names, token ids,
# generation defaults, serialization); a strict family accepts them as well as its own.
GENERIC_KEYS = frozenset((
    "_name_or_path", "architectures", "model_type", "transformers_version", "torch_dtype",
    "dtype", "use_cache", "bos_token_id", "eos_token_id", "pad_token_id", "sep_token_id",
    "decoder_start_token_id", "id2label", "label2id", "_num_labels", "num_labels",
    "problem_type", "finetuning_task", "tokenizer_class", "prefix", "task_specific_params",
    "return_dict", "output_hidden_states", "output_attentions", "torchscript",
    "use_bfloat16", "tf_legacy_loss", "chunk_size_feed_forward", "is_decoder",
    "gradient_checkpointing", "output_past", "initializer_range", "max_length",
    "min_length", "do_sample", "early_stopping", "num_beams", "num_beam_groups",
    "diversity_penalty", "temperature", "top_k", "top_p", "typical_p",
    "repetition_penalty", "length_penalty", "no_repeat_ngram_size",
    "encoder_no_repeat_ngram_size", "bad_words_ids", "num_return_sequences",
    "output_scores", "return_dict_in_generate", "forced_bos_token_id",
    "forced_eos_token_id", "remove_invalid_values", "exponential_decay_length_penalty",
    "suppress_tokens", "begin_suppress_tokens", "_attn_implementation"))


class Family:
  """One checkpoint family: how its folders map onto one of our models.

  Subclasses set the class attributes and override ``model_sizes`` and ``mapping``
  (and ``check_config`` for the fields they refuse).
  """

  name: str = ""
  model_types: tuple[str, ...] = ()
  arch: str = "decoder"
  prefixes: tuple[str, ...] = ()  # stripped from tensor names ("bert.", "transformer.")
  ignored: Mapping[str, str] = {}
  known_keys: frozenset[str] | None = None  # None: accept any other config field

  def check_config(self, hf: dict[str, Any], where: str) -> None:
    """Raises ``CheckpointError`` naming a field of ``hf`` the import cannot honour."""
    if self.known_keys is None:
      return
    unknown = sorted(k for k in hf if k not in self.known_keys and k not in GENERIC_KEYS)
    if unknown:
      raise CheckpointError(f"{where}: field {unknown[0]!r} is not known to the "
                            f"{self.name} import (it may change the math); "
                            f"{len(unknown)} unknown in all")

  def model_sizes(self, hf: dict[str, Any]) -> dict[str, Any]:
    """The ``config.model`` entries the checkpoint fixes (they replace the config's)."""
    raise NotImplementedError

  def mapping(self, hf: dict[str, Any]) -> tuple[Row, ...]:
    """The table (checkpoint name, parameter path, reshape(w, num_heads))."""
    raise NotImplementedError

  def frozen(self, params: Any, hf: dict[str, Any], num_layers: int,
             unfreeze: tuple[str, ...] | list[str] = ()) -> list[str]:
    """The default frozen set: every parameter the table imports, minus ``unfreeze``."""
    flat = flat_paths(params)
    out = []
    for _, path, _ in rows(self.mapping(hf), num_layers):
      target = resolve(path, flat)
      if target is None:
        raise CheckpointError(f"the model has no parameter {path!r} of the mapping table")
      pattern = f"^{re.escape(target)}$"
      if not any(re.search(u, target) for u in unfreeze) and pattern not in out:
        out.append(pattern)
    return out

  def is_ignored(self, name: str) -> bool:
    """Whether checkpoint tensor ``name`` (prefix stripped) is deliberately not imported."""
    return name in self.ignored

  def default_head(self, hf: dict[str, Any]) -> dict[str, Any]:
    """``config.model.head`` of a model built from the checkpoint when none is given."""
    return {"name": "shared"}

  def special_tokens(self, hf: dict[str, Any]) -> dict[str, int | None]:
    """``bos``, ``eos`` and ``pad`` token ids (None where the checkpoint has none)."""
    return {k: hf.get(f"{k}_token_id") for k in ("bos", "eos", "pad")}

  def strip(self, name: str) -> str:
    for p in self.prefixes:
      if name.startswith(p):
        return name[len(p):]
    return name


FAMILIES: Registry = Registry("checkpoint model_type")
_FAMILY_NAMES: dict[str, Family] = {}
_HERE = os.path.dirname(os.path.abspath(__file__))
for _m in sorted(m.name for m in pkgutil.iter_modules([_HERE]) if m.name.startswith("hf_")):
  FAMILIES.add_lazy_module(f"modular.checkpoints.{_m}")


def register(cls: type[Family]) -> type[Family]:
  """Class decorator: registers a family under its name and each of its model_types."""
  family = cls()
  _FAMILY_NAMES[family.name] = family
  for model_type in family.model_types:
    FAMILIES.register(model_type)(lambda family=family: family)
  return cls


def family_named(name: str) -> Family:
  """The registered family called ``name`` ("bert", "gpt2")."""
  FAMILIES.names()  # imports every family file
  if name not in _FAMILY_NAMES:
    raise CheckpointError(f"unknown checkpoint family {name!r}; known: "
                          f"{', '.join(sorted(_FAMILY_NAMES))}")
  return _FAMILY_NAMES[name]


def read_config(folder: str) -> tuple[Family, dict[str, Any]]:
  """The family of a checkpoint folder and its ``config.json``, checked.

  Raises:
    CheckpointError: naming ``model_type`` when no family reads it, or the field the
      family refuses.
  """
  hf = read_config_json(folder)
  where = os.path.join(folder, "config.json")
  model_type = hf.get("model_type")
  if model_type not in FAMILIES:
    raise CheckpointError(f"{where}: model_type {model_type!r} has no checkpoint family; "
                          f"known: {', '.join(FAMILIES.names())}")
  family = FAMILIES.get(model_type)()
  family.check_config(hf, where)
  return family, hf


def rows(table: tuple[Row, ...], num_layers: int) -> list[Row]:
  """A mapping table expanded over the layers: (checkpoint name, path, reshape)."""
  out = []
  for name, path, fn in table:
    for i in (range(num_layers) if "{i}" in name else [None]):
      out.append((name.format(i=i), path.format(i=i), fn))
  return out


def resolve(path: str, flat: dict[str, Any]) -> str | None:
  """The model's path for a table path: under a wrapping FFN's ``base/`` if the model
  has one (LoRA's own ``ffn/b_in`` is its B matrix, not the dense bias), else as is."""
  wrapped = path.replace("/ffn/", "/ffn/base/")
  if wrapped != path and wrapped in flat:
    return wrapped
  return path if path in flat else None


def convert(family: Family, hf: dict[str, Any], tensors: dict[str, np.ndarray],
            num_layers: int, num_heads: int) -> dict[str, np.ndarray]:
  """Checkpoint tensors -> {table path: float32 array in our layout}.

  Raises:
    CheckpointError: naming a missing or unexpected checkpoint tensor.
  """
  tensors = {family.strip(k): v for k, v in tensors.items()}
  table = rows(family.mapping(hf), num_layers)
  names = {name for name, _, _ in table}
  missing = [n for n in names if n not in tensors]
  if missing:
    raise CheckpointError(f"checkpoint tensor {sorted(missing)[0]!r} is missing "
                          f"({len(missing)} missing in all)")
  unexpected = [k for k in tensors if k not in names and not family.is_ignored(k)]
  if unexpected:
    raise CheckpointError(f"checkpoint tensor {sorted(unexpected)[0]!r} is unexpected: "
                          f"not in the mapping table ({len(unexpected)} in all)")
  out = {}
  for name, path, fn in table:
    try:
      out[path] = np.asarray(fn(tensors[name], num_heads), np.float32)
    except ValueError as e:  # a reshape that does not fit the config's sizes
      raise CheckpointError(f"checkpoint tensor {name!r} of shape {tensors[name].shape} "
                            f"does not fit the config's sizes ({e})") from None
  return out


def load_tensors(folder: str) -> dict[str, np.ndarray]:
  """All tensors of ``model.safetensors`` as NumPy arrays.

  Raises:
    CheckpointError: naming the file when it is truncated or not a safetensors file.
  """
  from safetensors import SafetensorError  # the [pretrained] extra
  from safetensors.numpy import load_file
  path = os.path.join(folder, "model.safetensors")
  try:
    return load_file(path)
  except (SafetensorError, OSError) as e:
    raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None


def place(params: Any, converted: dict[str, np.ndarray], where: str, arch: str) -> Any:
  """``params`` with every converted array at its (resolved) path.

  Raises:
    CheckpointError: naming the path the model lacks or whose shape differs.
  """
  import jax  # pylint: disable=g-import-not-at-top
  flat = flat_paths(params)
  placed: dict[str, np.ndarray] = {}
  for path, value in converted.items():
    target = resolve(path, flat)
    if target is None:
      raise CheckpointError(f"{where}: the model has no parameter {path!r} for the "
                            f"checkpoint's tensor (is model.arch {arch!r}?)")
    shape = tuple(flat[target].shape)
    if "/ffn/" in target and len(shape) == value.ndim + 1 and shape[1:] == value.shape:
      # Sparse upcycling (Komatsuzaki et al. 2023): every expert [E, ...] of a
      # task-level MoE FFN starts as a copy of the dense FFN.
      value = np.broadcast_to(value, shape).copy()
    if shape != value.shape:
      raise CheckpointError(f"{where}: tensor for {target!r} has shape {value.shape}, the "
                            f"model's is {tuple(flat[target].shape)}")
    placed[target] = value
  return jax.tree_util.tree_map_with_path(lambda p, v: placed.get(path_str(p), v), params)


def import_params(params: Any, name: str, num_layers: int, num_heads: int) -> Any:
  """Returns ``params`` with every tensor of checkpoint ``name`` in its place.

  Args:
    params: the model's parameter dict (nested; leaves are arrays).
    name: ``model.pretrained`` (a known name or a folder).
    num_layers, num_heads: the model's sizes.

  Returns:
    A parameter dict of the same structure with the imported tensors (float32
    NumPy arrays) replacing the initial values; parameters the checkpoint does not
    have (heads, adapters, LoRA) keep theirs.

  Raises:
    CheckpointError: naming the tensor or path that does not fit.
  """
  folder = checkpoint_dir(name)
  family, hf = read_config(folder)
  converted = convert(family, hf, load_tensors(folder), num_layers, num_heads)
  return place(params, converted, folder, family.arch)


def frozen_patterns(params: Any, num_layers: int,
                    unfreeze: tuple[str, ...] | list[str] = (), *,
                    pretrained: str = "") -> list[str]:
  """``optim.frozen`` regexes of the family's default frozen set, minus ``unfreeze``.

  Args:
    params: the model's parameter dict (where a wrapped FFN keeps its dense weights).
    num_layers: the model's layers.
    unfreeze: regexes of imported paths to leave trainable (e.g. ``r"ln_"`` for the
      LayerNorms, as HyperFormer++ does).
    pretrained: the checkpoint (``model.pretrained``); "" means the BERT table.

  Raises:
    CheckpointError: if the model lacks a path of the table.
  """
  if not pretrained:
    return family_named("bert").frozen(params, {}, num_layers, unfreeze)
  family, hf = read_config(checkpoint_dir(pretrained))
  return family.frozen(params, hf, num_layers, unfreeze)
