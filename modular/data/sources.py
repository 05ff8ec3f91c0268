"""Prepares every task's TFDS dataset and opens random-access sources.

``build_task_sources(cfg)`` is the one entry point: it prepares what is missing
under ``cfg.data_dir`` (array_record files; a built-in task of a few thousand
examples takes well under a second) and returns, per task, ``{"train": source,
"test": source}``. Built-in train sources are memoized in memory
(``MemoizedSource``). Every source has ``len`` and ``source[i]`` and yields
``{"prompt": int32 [P], "answer": int32 [A], "task": name}`` in symbol indices,
whether the task is built in or comes from an external TFDS dataset (whose
``eval_split`` is exposed as "test"); a WordNet task's source yields token ids,
``{"inputs", "token_type", "label", ...}`` (``modular.data.classification``).
Nothing here imports TensorFlow.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
from typing import Any, Iterator

import tensorflow_datasets as tfds

from modular import filelock
from modular.data import classification as classification_lib
from modular.data import config as config_lib
from modular.data import external as external_lib
from modular.data import splits as splits_lib
from modular.data.builders.algorithmic import AlgorithmicTasks
from modular.data.builders.algorithmic import make_config

Source = Any  # grain RandomAccessDataSource: __len__ and __getitem__


class _DropCustomConfigWarning(logging.Filter):
  """Drops TFDS's "Using custom data configuration" warning (one per task and call)."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "Using custom data configuration" not in record.getMessage()


@contextlib.contextmanager
def _quiet_tfds() -> Iterator[None]:
  """Hides TFDS progress bars and config warnings, then restores both."""
  from tensorflow_datasets.core.utils import tqdm_utils  # pylint: disable=g-import-not-at-top
  active = getattr(tqdm_utils, "_active", True)
  log_filter = _DropCustomConfigWarning()
  logger = logging.getLogger("absl")
  tfds.display_progress_bar(False)
  logger.addFilter(log_filter)
  try:
    yield
  finally:
    logger.removeFilter(log_filter)
    tfds.display_progress_bar(active)


class MemoizedSource:
  """Keeps every record read from ``source`` in memory, so later epochs skip decoding.

  Used for the built-in tasks, whose examples are a few dozen bytes each
  (TFDS decoding costs ~60-90 us per record; a dict lookup costs nothing).

  Args:
    source: a random-access source (``len`` and ``[i]``).
  """

  def __init__(self, source: Source):
    self._source = source
    self._records: list[Any] = [None] * len(source)

  def __len__(self) -> int:
    return len(self._records)

  def __getitem__(self, index: int) -> Any:
    record = self._records[index]
    if record is None:
      record = self._records[index] = self._source[index]
    return record

  def __repr__(self) -> str:
    return f"MemoizedSource({self._source!r})"


def builtin_builder(cfg: Any, task: str) -> AlgorithmicTasks:
  """The (possibly not yet prepared) TFDS builder of one built-in task.

  Args:
    cfg: the data config.
    task: a built-in task name.

  Returns:
    An ``AlgorithmicTasks`` builder whose config name encodes the parameters.
  """
  config = make_config(task, n_symbols=cfg.n_symbols, min_len=cfg.min_len,
                       max_len=cfg.max_len,
                       num_train=config_lib.builtin_num_train(cfg)[task],
                       num_test=cfg.num_eval, seed=cfg.data_seed)
  return AlgorithmicTasks(config=config, data_dir=config_lib.data_dir(cfg),
                          file_format="array_record")


def external_builder(cfg: Any, task: external_lib.ExternalTask) -> tfds.core.DatasetBuilder:
  """The TFDS builder of an external task (imports its registering modules)."""
  for module in task.imports:
    importlib.import_module(module)
  return tfds.builder(task.tfds_name, data_dir=config_lib.data_dir(cfg),
                      file_format="array_record")


def _prepare(make_builder: Any, cfg: Any, *args: Any) -> dict[str, Source]:
  """Creates a builder, prepares its data if missing, opens its splits.

  Preparation holds ``data_dir/.prepare.lock`` (``modular.filelock``): a second run on
  the same fresh data dir waits, then finds the data prepared and reads the same files
  (TFDS would otherwise race on renaming its ``incomplete`` folders). On object stores
  there is no lock: prepare the data dir once before starting concurrent runs.
  """
  root = config_lib.data_dir(cfg)
  lock = os.path.join(root, ".prepare.lock")
  with filelock.locked(lock, f"data dir {root}"), _quiet_tfds():
    builder = make_builder(cfg, *args)
    builder.download_and_prepare()
  return builder.as_data_source()


def build_task_sources(cfg: Any) -> dict[str, dict[str, Source]]:
  """Prepares missing datasets and returns random-access sources per task.

  Args:
    cfg: a data config (validated here).

  Returns:
    ``{task_name: {"train": source, "test": source}}`` in task-id order. A
    built-in task's "test" split has ``cfg.num_eval`` examples; an external
    task's "test" is its ``eval_split`` and its "train" is capped at its
    ``num_train`` (when > 0). With ``cfg.val_share > 0`` each task also has a
    "val" split carved from its train split (``modular.data.splits``), and "train"
    is what remains.
  """
  config_lib.validate_data_config(cfg)
  out: dict[str, dict[str, Source]] = {}
  for name in config_lib.builtin_task_names(cfg):
    splits = _prepare(builtin_builder, cfg, name)
    out[name] = {"train": MemoizedSource(splits["train"]), "test": splits["test"]}
  out.update(external_sources(cfg))
  for name in classification_lib.wordnet_task_names(cfg):
    splits = _prepare(classification_lib.builder, cfg, name, config_lib.data_dir(cfg))
    out[name] = {"train": MemoizedSource(splits["train"]), "test": splits["test"]}
  share = float(cfg.get("val_share", 0.0) or 0.0)
  if share > 0:
    wordnet = set(classification_lib.wordnet_task_names(cfg))
    for name, splits in out.items():
      splits.update(splits_lib.split_task(name, splits["train"], share, name in wordnet))
  return out


def external_sources(cfg: Any) -> dict[str, dict[str, Source]]:
  """Prepares the external tasks only; same return layout as ``build_task_sources``."""
  out: dict[str, dict[str, Source]] = {}
  max_tokens = cfg.seq_len - 1  # room for prompt + answer
  for task in config_lib.external_tasks(cfg):
    splits = _prepare(external_builder, cfg, task)
    for split in (task.train_split, task.eval_split):
      if split not in splits:
        raise ValueError(f"external task {task.name!r}: {task.tfds_name!r} has no split "
                         f"{split!r}; it has {sorted(splits)}")
    out[task.name] = {
        "train": external_lib.PreprocessedSource(
            splits[task.train_split], task, cfg.n_symbols, max_tokens, task.num_train),
        "test": external_lib.PreprocessedSource(
            splits[task.eval_split], task, cfg.n_symbols, max_tokens),
    }
  return out


def train_sizes(cfg: Any) -> list[int]:
  """Train examples per task, in task-id order, without preparing built-ins.

  Built-in sizes come from the config; external sizes need their sources.
  """
  sizes = list(config_lib.builtin_num_train(cfg).values())
  sizes += [len(splits["train"]) for splits in external_sources(cfg).values()]
  return sizes + classification_lib.train_sizes(cfg)
