"""The validation split: carved from each task's train split, by meaning for WordNet.

``config.data.val_share`` (0: no validation split) moves that share of every task's
train examples into a "val" split, deterministically and independently of every
seed, so all runs of a sweep (every arm and seed) select their checkpoints on the
same examples:

  WordNet     by synset, as the shipped test split is carved (``derive.py``): a
              synset goes to validation when a salted CRC-32 of its key falls in the
              first ``val_share`` of the hash range, once for all tasks; an example
              goes where all of its synsets go (``source``: one key, or two joined by
              ``>``, ``!`` or ``~`` for a relation pair), and a pair whose synsets
              straddle the two is dropped from both, so no synset is in both splits.
  other tasks by example: the same hash of ``"<task>:<index>"``.

The split is a pure function of the shipped data and ``val_share``: the seeds of a
sweep (``data.seed``, ``train.seed``) never move an example between the splits.
"""

from __future__ import annotations

import re
import zlib
from typing import Any, Callable, Sequence

import numpy as np

SALT = "val"  # differs from derive.py's test salt (the seed), so the carve is a new draw
_BUCKETS = 10_000
_PAIR = re.compile(r"[>!~]")


def in_validation(key: str, share: float) -> bool:
  """Whether ``key`` (a synset key or "<task>:<index>") falls in the validation share."""
  return zlib.crc32(f"{SALT}:{key}".encode()) % _BUCKETS < share * _BUCKETS


def synsets(record: dict[str, Any]) -> list[str]:
  """The synset keys of a WordNet example (its ``source``: "n:0123" or "n:01>n:02")."""
  source = record["source"]
  source = source.decode() if isinstance(source, bytes) else str(source)
  return [k for k in _PAIR.split(source) if k]


class SubsetSource:
  """The records ``indices`` of ``source``, in that order (a random-access source).

  Args:
    source: a random-access source (``len`` and ``[i]``).
    indices: int [n], positions in ``source``.
  """

  def __init__(self, source: Any, indices: Sequence[int]):
    self._source = source
    self.indices = np.asarray(indices, np.int64)

  def __len__(self) -> int:
    return len(self.indices)

  def __getitem__(self, index: int) -> Any:
    return self._source[int(self.indices[index])]

  def __repr__(self) -> str:
    return f"SubsetSource({len(self)} of {self._source!r})"


def carve(source: Any, share: float, keys: Callable[[int], list[str]]
          ) -> tuple[SubsetSource, SubsetSource, int]:
  """Splits ``source`` into (train, val) by the keys of each record.

  Args:
    source: a task's train source.
    share: the share of keys that go to validation, in (0, 1).
    keys: ``keys(i)`` -> the keys of record ``i`` (its synsets, or one per-example key).

  Returns:
    ``(train, val, dropped)``: the records all of whose keys stay in train, those all
    of whose keys go to validation, and how many straddled the two (in neither).
  """
  train, val, dropped = [], [], 0
  for i in range(len(source)):
    flags = {in_validation(k, share) for k in keys(i)}
    if flags == {True}:
      val.append(i)
    elif flags == {False}:
      train.append(i)
    else:
      dropped += 1
  return SubsetSource(source, train), SubsetSource(source, val), dropped


def split_task(name: str, source: Any, share: float, by_synset: bool
               ) -> dict[str, SubsetSource]:
  """``{"train", "val"}`` of one task's train source (module docstring).

  Raises:
    ValueError: one line naming ``config.data.val_share`` when either split is empty.
  """
  if by_synset:
    train, val, _ = carve(source, share, lambda i: synsets(source[i]))
  else:
    train, val, _ = carve(source, share, lambda i: [f"{name}:{i}"])
  if not len(train) or not len(val):
    raise ValueError(f"config.data.val_share: {share} leaves task {name!r} with "
                     f"{len(train)} train and {len(val)} validation examples; both must "
                     "be non-empty")
  return {"train": train, "val": val}
