"""Text classification tasks (WordNet) in the data layer: config, sources, encoding.

A data config names WordNet tasks in ``wordnet`` and the checkpoint whose
tokenizer encodes them in ``tokenizer``::

  c.data.tasks = []                    # no next-token tasks in the same run
  c.data.wordnet = ["def_supersense", "def_pos", "example_supersense", "relation"]
  c.data.tokenizer = ""                # "": config.model.pretrained's (fill_derived),
                                       # else all-MiniLM-L6-v2's
  c.data.seq_len = 32                  # tokens per example, [CLS] and [SEP]s included

Classification batch (the encoder's contract, ``modular.objective``), L = seq_len::

  inputs     int32 [B, L]   [CLS] text [SEP] (text_pair [SEP]) then PAD (id 0)
  token_type int32 [B, L]   0 on the first segment, 1 on the second, 0 on PAD
  label      int32 [B]      the class in [0, C_t); -1 on padding rows (no loss)
  task_id    int32 [B]      the task's index in ``task_names(cfg)``

The token mask is ``inputs != PAD`` (``objective.token_mask``). The tasks come
from the TFDS builder ``modular.data.builders.wordnet`` and are mixed by the
same ``mixture`` code as the next-token tasks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modular.data.builders import wordnet as wordnet_builders
from modular.data.builders.wordnet import wordnet_tasks

PAD_ID = 0  # [PAD] in BERT-family vocabularies


def _error(key: str, message: str) -> ValueError:
  return ValueError(f"config.data.{key}: {message}")


def wordnet_task_names(cfg: Any) -> list[str]:
  """The WordNet task names of ``cfg.wordnet`` (list, tuple or comma string; [] if absent)."""
  names = cfg.get("wordnet", None) if hasattr(cfg, "get") else getattr(cfg, "wordnet", None)
  if not names:
    return []
  if isinstance(names, str):
    return [t.strip() for t in names.split(",") if t.strip()]
  if isinstance(names, (list, tuple)) and all(isinstance(t, str) for t in names):
    return list(names)
  raise _error("wordnet", f"expected a list of names or a comma-separated string, got {names!r}")


def is_classification(cfg: Any) -> bool:
  """Whether the data config describes classification tasks (WordNet)."""
  return bool(wordnet_task_names(cfg))


def validate(cfg: Any, other_tasks: list[str]) -> None:
  """Checks the classification keys of a data config.

  Args:
    cfg: the data config.
    other_tasks: the next-token task names (built-in and external) of the config.

  Raises:
    ValueError: unknown WordNet task, a mix with next-token tasks, no tokenizer.
  """
  names = wordnet_task_names(cfg)
  if not names:
    return
  known = wordnet_builders.task_names()
  for name in names:
    if name not in known:
      raise _error("wordnet", f"unknown task {name!r}; known: {', '.join(known)}")
  if other_tasks:
    raise _error("wordnet", f"classification tasks cannot share a run with next-token tasks "
                 f"{other_tasks}; set config.data.tasks=[] and config.data.external=[]")
  if not isinstance(cfg.tokenizer, str):
    raise _error("tokenizer", f"expected a checkpoint name or folder, got {cfg.tokenizer!r}")
  if cfg.seq_len < 4:
    raise _error("seq_len", f"needs >= 4 tokens for [CLS] a [SEP] b [SEP], got {cfg.seq_len}")


def tokenizer(cfg: Any) -> str:
  """The checkpoint name or folder whose tokenizer encodes the text tasks."""
  return cfg.tokenizer or wordnet_tasks.DEFAULT_TOKENIZER


def vocab_size(cfg: Any) -> int:
  """The tokenizer's vocabulary size (special tokens included)."""
  from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top
  path = wordnet_tasks.tokenizer_file(tokenizer(cfg))
  return Tokenizer.from_file(path).get_vocab_size(with_added_tokens=True)


def num_classes(cfg: Any) -> list[int]:
  """The number of classes C_t of every WordNet task of ``cfg`` [T]."""
  tasks = wordnet_tasks.read_meta()["tasks"]
  return [len(tasks[name]["labels"]) for name in wordnet_task_names(cfg)]


def label_names(cfg: Any) -> dict[str, list[str]]:
  """``{task: [label name, ...]}`` for the WordNet tasks of ``cfg``."""
  tasks = wordnet_tasks.read_meta()["tasks"]
  return {name: list(tasks[name]["labels"]) for name in wordnet_task_names(cfg)}


def builder(cfg: Any, task: str, data_dir: str) -> wordnet_builders.WordnetTasks:
  """The (possibly not yet prepared) TFDS builder of one WordNet task of ``cfg``."""
  config = wordnet_builders.make_config(task, tokenizer=tokenizer(cfg), seq_len=cfg.seq_len)
  return wordnet_builders.WordnetTasks(config=config, data_dir=data_dir,
                                       file_format="array_record")


def train_sizes(cfg: Any) -> list[int]:
  """Train examples per WordNet task, from the shipped metadata (nothing is built)."""
  n = wordnet_tasks.read_meta()["sizes"]["train"]
  return [n] * len(wordnet_task_names(cfg))


def encode_example(record: dict[str, Any], task_index: int, *,
                   seq_len: int) -> dict[str, np.ndarray]:
  """One stored example -> fixed-length classification arrays (module docstring).

  Args:
    record: ``{"inputs": int32 [n], "token_type": int32 [n], "label": int}`` from
      the builder, n <= seq_len.
    task_index: the task's index in ``task_names(cfg)``.
    seq_len: L.

  Returns:
    ``{"inputs": int32 [L], "token_type": int32 [L], "label": int32 [],
    "task_id": int32 []}``.

  Raises:
    ValueError: if the stored example is longer than ``seq_len``.
  """
  ids = np.asarray(record["inputs"], np.int32)
  n = len(ids)
  if n > seq_len:
    raise ValueError(f"task {task_index}: a stored example has {n} tokens, more than "
                     f"config.data.seq_len = {seq_len}")
  inputs = np.full(seq_len, PAD_ID, np.int32)
  types = np.zeros(seq_len, np.int32)
  inputs[:n] = ids
  types[:n] = record["token_type"]
  return {"inputs": inputs, "token_type": types, "label": np.int32(record["label"]),
          "task_id": np.int32(task_index)}


def padding_example(task_index: int, seq_len: int) -> dict[str, np.ndarray]:
  """A row that carries no loss: all PAD, label -1."""
  return {"inputs": np.full(seq_len, PAD_ID, np.int32), "token_type": np.zeros(seq_len, np.int32),
          "label": np.int32(-1), "task_id": np.int32(task_index)}
