"""``WordnetTasks``: the shipped WordNet classification tasks as a TFDS builder.

One config per (task, tokenizer, length): the builder reads the dataset shipped
in ``data/`` (derived from WordNet 3.0 by ``derive.py``; no system package is
needed), tokenizes every example with the checkpoint's ``tokenizer.json``
(``[CLS] text [SEP]`` or ``[CLS] text [SEP] text_pair [SEP]``, truncated to
``seq_len`` tokens longest-first, as Hugging Face does) and stores the ids, so
that reading needs neither the tokenizer nor TensorFlow. The config name
encodes the task, the length and a hash of the tokenizer file:

  <data_dir>/wordnet_tasks/def_pos-len32-tok1a2b3c4d5e/1.0.0/

Features: ``inputs`` and ``token_type`` (int32 ``[n]``, n <= seq_len, unpadded),
``label`` (ClassLabel with the task's label names), ``text``, ``text_pair``,
``source`` (the WordNet synset key(s) the example comes from).

Example:
  config = make_config("def_pos", tokenizer="all-MiniLM-L6-v2", seq_len=32)
  builder = WordnetTasks(config=config, data_dir="/tmp/tfds", file_format="array_record")
  builder.download_and_prepare()
  train = builder.as_data_source()["train"]   # train[i] -> {"inputs", "token_type", "label", ...}
"""

from __future__ import annotations

import dataclasses
import functools
import gzip
import hashlib
import json
import os
from typing import Any, Iterator

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

DATA_DIR = os.path.join(os.path.dirname(__file__), "data")
DATA_FILE = "wordnet_tasks.jsonl.gz"
META_FILE = "tasks.json"
DEFAULT_TOKENIZER = "all-MiniLM-L6-v2"


@functools.lru_cache(maxsize=4)
def read_meta(data_dir: str = DATA_DIR) -> dict[str, Any]:
  """The shipped ``tasks.json``: per-task ``labels``, ``pair``, ``description``; sizes, seed."""
  with open(os.path.join(data_dir, META_FILE)) as f:
    return json.load(f)


def task_names(data_dir: str = DATA_DIR) -> list[str]:
  """The shipped WordNet task names, in alphabetical order (``tasks.json``)."""
  return list(read_meta(data_dir)["tasks"])


def read_rows(task: str, split: str, data_dir: str = DATA_DIR) -> list[dict[str, Any]]:
  """The shipped examples of one task and split, in file order.

  Args:
    task: a WordNet task name (``task_names()``).
    split: "train" or "test".
    data_dir: the folder holding ``wordnet_tasks.jsonl.gz``.

  Returns:
    Rows with ``text``, ``text_pair``, ``label`` (int), ``source``.

  Raises:
    KeyError: unknown task, listing the known ones.
  """
  if task not in read_meta(data_dir)["tasks"]:
    raise KeyError(f"unknown WordNet task {task!r}; known: {', '.join(task_names(data_dir))}")
  return [r for r in _all_rows(data_dir) if r["task"] == task and r["split"] == split]


@functools.lru_cache(maxsize=2)
def _all_rows(data_dir: str) -> tuple[dict[str, Any], ...]:
  with gzip.open(os.path.join(data_dir, DATA_FILE), "rt", encoding="utf-8") as f:
    return tuple(json.loads(line) for line in f)


def tokenizer_file(tokenizer: str) -> str:
  """The ``tokenizer.json`` of a checkpoint name or folder, or a path to the file itself.

  Raises:
    FileNotFoundError: naming the folder that lacks ``tokenizer.json``.
  """
  if tokenizer.endswith(".json") and os.path.isfile(tokenizer):
    return tokenizer
  if os.path.isdir(tokenizer):
    folder = tokenizer
  else:
    from modular.checkpoints.locate import checkpoint_dir  # pylint: disable=g-import-not-at-top
    folder = checkpoint_dir(tokenizer)
  path = os.path.join(folder, "tokenizer.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"config.data.tokenizer: {folder} has no tokenizer.json")
  return path


@functools.lru_cache(maxsize=8)
def tokenizer_hash(path: str) -> str:
  """The first 10 hex digits of the SHA-256 of a tokenizer file."""
  with open(path, "rb") as f:
    return hashlib.sha256(f.read()).hexdigest()[:10]


def load_tokenizer(path: str, seq_len: int):
  """A ``tokenizers.Tokenizer`` from ``tokenizer.json`` truncating to ``seq_len``, no padding."""
  from tokenizers import Tokenizer  # pylint: disable=g-import-not-at-top
  tok = Tokenizer.from_file(path)
  tok.no_padding()
  tok.enable_truncation(max_length=seq_len, strategy="longest_first")
  return tok


def tokenize(rows: list[dict[str, Any]], path: str, seq_len: int
             ) -> list[tuple[np.ndarray, np.ndarray]]:
  """``(ids, token types)`` int32 [n <= seq_len] of every row (pairs where text_pair != "")."""
  tok = load_tokenizer(path, seq_len)
  out = []
  for r in rows:
    enc = tok.encode(r["text"], r["text_pair"]) if r["text_pair"] else tok.encode(r["text"])
    out.append((np.asarray(enc.ids, np.int32), np.asarray(enc.type_ids, np.int32)))
  return out


@dataclasses.dataclass(eq=False, kw_only=True)
class WordnetConfig(tfds.core.BuilderConfig):
  """One task tokenized by one tokenizer at one length.

  Attributes:
    task: a shipped task name.
    tokenizer: a checkpoint name (``model.pretrained``), a checkpoint folder, or a
      ``tokenizer.json`` path.
    seq_len: the longest tokenized example, special tokens included.
  """
  task: str = "def_supersense"
  tokenizer: str = DEFAULT_TOKENIZER
  seq_len: int = 32


def make_config(task: str, *, tokenizer: str = DEFAULT_TOKENIZER,
                seq_len: int = 32) -> WordnetConfig:
  """The config of one task; its name encodes the length and the tokenizer's hash.

  Raises:
    KeyError: unknown task. FileNotFoundError: no tokenizer file.
  """
  if task not in read_meta()["tasks"]:
    raise KeyError(f"unknown WordNet task {task!r}; known: {', '.join(task_names())}")
  name = f"{task}-len{seq_len}-tok{tokenizer_hash(tokenizer_file(tokenizer))}"
  return WordnetConfig(name=name, description=read_meta()["tasks"][task]["description"],
                       task=task, tokenizer=tokenizer, seq_len=seq_len)


class WordnetTasks(tfds.core.GeneratorBasedBuilder):
  """The WordNet classification tasks; one ``WordnetConfig`` per task and tokenizer."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Four tasks derived from WordNet 3.0 (derive.py, seed 0)."}
  # `tfds.builder("wordnet_tasks/def_pos")`: the default checkpoint's tokenizer, length 32.
  BUILDER_CONFIGS = [WordnetConfig(name=t, description=d["description"], task=t)
                     for t, d in read_meta()["tasks"].items()]
  code_path = epath.Path(__file__)  # see algorithmic_tasks.py

  def _info(self) -> tfds.core.DatasetInfo:
    labels = read_meta()["tasks"][self.builder_config.task]["labels"]
    return self.dataset_info_from_configs(
        description="Classification tasks derived from WordNet 3.0 (see derive.py).",
        features=tfds.features.FeaturesDict({
            "inputs": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "token_type": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "label": tfds.features.ClassLabel(names=labels),
            "text": tfds.features.Text(),
            "text_pair": tfds.features.Text(),
            "source": tfds.features.Text(),
        }),
        supervised_keys=("inputs", "label"),
        homepage="https://wordnet.princeton.edu/",
        license="WordNet 3.0 license (data/LICENSE.WordNet)",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # The data ships with the package.
    return {"train": self._generate_examples("train"),
            "test": self._generate_examples("test")}

  def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
    config = self.builder_config
    rows = read_rows(config.task, split)
    encoded = tokenize(rows, tokenizer_file(config.tokenizer), config.seq_len)
    for i, (row, (ids, types)) in enumerate(zip(rows, encoded)):
      yield i, {"inputs": ids, "token_type": types, "label": row["label"],
                "text": row["text"], "text_pair": row["text_pair"], "source": row["source"]}
