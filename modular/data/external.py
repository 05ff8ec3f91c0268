"""Any TFDS dataset as a task: config entries, preprocessing, text helper.

A data config's ``external`` list holds one dict per extra task::

  cfg.external = [{
      "name": "sst2",                           # task name (unique, not a built-in)
      "tfds_name": "glue/sst2",                 # anything `tfds.builder` accepts
      "preprocess": "modular.data.external:sentence_label",   # "module:function"
      # optional:
      "train_split": "train",                   # default "train"
      "eval_split": "validation",               # default "validation"
      "imports": "my_pkg.my_builders",          # module(s) that register a builder
      "kwargs": {"text_key": "sentence"},       # extra keyword args for preprocess
      "num_train": 0,                           # cap on train examples, 0 = all
  }]

External tasks come after the built-in ones in ``task_names(cfg)``. The dataset
is prepared once under ``cfg.data_dir`` with ``file_format="array_record"``
(downloading if needed) and read back with ``as_data_source()``, so no
TensorFlow is involved in reading. A dataset prepared earlier in another format
(tfrecord) under the same data_dir cannot be read this way: use a fresh data_dir.

The preprocessing function maps one raw example to symbol indices, like a
built-in task::

  def preprocess(example: dict, *, n_symbols: int, max_tokens: int, **kwargs)
      -> tuple[np.ndarray, np.ndarray]   # (prompt [P], answer [A]), in [0, n_symbols)

``max_tokens = seq_len - 1`` is the room for ``len(prompt) + len(answer)``;
the function should truncate to it (an example that does not fit raises a
ValueError naming the task when it is encoded). ``text_to_symbols`` is the
reusable text tokenizer: characters hashed into the symbol range.
"""

from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable, Mapping
import zlib

import numpy as np

REQUIRED_KEYS = ("name", "tfds_name", "preprocess")
OPTIONAL_KEYS = {"train_split": "train", "eval_split": "validation", "imports": (),
                 "kwargs": {}, "num_train": 0}


@dataclasses.dataclass(frozen=True)
class ExternalTask:
  """One parsed ``external`` entry (see module docstring for the fields)."""
  name: str
  tfds_name: str
  preprocess: str
  train_split: str = "train"
  eval_split: str = "validation"
  imports: tuple[str, ...] = ()
  kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
  num_train: int = 0


def _plain(value: Any) -> Any:
  """ConfigDict -> dict (ConfigDict is not a Mapping)."""
  return value.to_dict() if hasattr(value, "to_dict") else value


def parse_external(entry: Any, index: int) -> ExternalTask:
  """Checks one ``external`` entry and returns it parsed.

  Args:
    entry: a dict (or ConfigDict) with the keys of the module docstring.
    index: its position in the list, for error messages.

  Returns:
    The parsed ``ExternalTask``.

  Raises:
    ValueError: naming ``external[index]`` and the offending key.
  """
  entry = _plain(entry)
  where = f"config.data.external[{index}]"

  def where_key(key: str) -> str:
    return f"config.data.external[{index}].{key}"

  if not isinstance(entry, Mapping):
    raise ValueError(f"{where}: expected a dict, got {type(entry).__name__}")
  unknown = set(entry) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS)
  if unknown:
    raise ValueError(f"{where}: unknown keys {sorted(unknown)}; known: "
                     f"{list(REQUIRED_KEYS) + list(OPTIONAL_KEYS)}")
  for key in REQUIRED_KEYS:
    if not isinstance(entry.get(key), str) or not entry[key]:
      raise ValueError(f"{where_key(key)}: required non-empty string, got {entry.get(key)!r}")
  if entry["preprocess"].count(":") != 1:
    raise ValueError(f"{where_key('preprocess')}: expected 'module:function', "
                     f"got {entry['preprocess']!r}")
  fields = {**OPTIONAL_KEYS, **entry}
  imports = fields["imports"]
  imports = tuple(m for m in imports.split(",") if m) if isinstance(imports, str) else tuple(imports)
  num_train = fields["num_train"]
  if not isinstance(num_train, int) or num_train < 0:
    raise ValueError(f"{where_key('num_train')}: expected an int >= 0, got {num_train!r}")
  for key, module in [("imports", m) for m in imports] + [
      ("preprocess", fields["preprocess"].partition(":")[0])]:
    try:  # a bad module is named here, before any data is prepared
      importlib.import_module(module)
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f"{where_key(key)}: cannot import {module!r} "
                       f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                       ) from None
  try:
    resolve_function(fields["preprocess"])
  except ValueError as e:
    raise ValueError(f"{where_key('preprocess')}: {e}") from None
  return ExternalTask(
      name=fields["name"], tfds_name=fields["tfds_name"], preprocess=fields["preprocess"],
      train_split=fields["train_split"], eval_split=fields["eval_split"],
      imports=imports, kwargs=dict(_plain(fields["kwargs"])), num_train=num_train)


def resolve_function(path: str) -> Callable[..., Any]:
  """Imports ``"module:function"`` and returns the function."""
  module, _, name = path.partition(":")
  fn = getattr(importlib.import_module(module), name, None)
  if not callable(fn):
    raise ValueError(f"{path!r}: module {module!r} has no function {name!r}")
  return fn


def text_to_symbols(text: str | bytes, n_symbols: int, max_len: int | None = None,
                    lowercase: bool = True) -> np.ndarray:
  """Character-level tokenizer: each character hashed into the symbol range.

  The hash (CRC32 of the UTF-8 character) is stable across runs and machines.
  Collisions are expected when ``n_symbols`` is small; raise ``n_symbols`` for a
  less lossy text encoding.

  Args:
    text: a string, or UTF-8 bytes as TFDS data sources return text features.
    n_symbols: size of the symbol alphabet.
    max_len: keep at most this many characters (the first ones); None keeps all.
    lowercase: fold case before hashing.

  Returns:
    int32 symbol indices in ``[0, n_symbols)``, shape ``[min(len(text), max_len)]``.
  """
  if isinstance(text, bytes):
    text = text.decode("utf-8")
  if lowercase:
    text = text.lower()
  if max_len is not None:
    text = text[:max_len]
  return np.array([zlib.crc32(ch.encode("utf-8")) % n_symbols for ch in text], np.int32)


def sentence_label(example: Mapping[str, Any], *, n_symbols: int, max_tokens: int,
                   text_key: str = "sentence",
                   label_key: str = "label") -> tuple[np.ndarray, np.ndarray]:
  """Text classification preprocessor (GLUE SST-2 layout by default).

  Args:
    example: a raw example with a text feature and an integer label feature.
    n_symbols: size of the symbol alphabet (must exceed the largest label).
    max_tokens: room for prompt plus answer; the text is truncated to fit.
    text_key: name of the text feature.
    label_key: name of the label feature.

  Returns:
    ``(prompt, answer)``: hashed characters [<= max_tokens - 1], and [label].
  """
  label = int(example[label_key])
  if not 0 <= label < n_symbols:
    raise ValueError(f"label {label} is not a symbol index (n_symbols={n_symbols})")
  prompt = text_to_symbols(example[text_key], n_symbols, max_len=max_tokens - 1)
  return prompt, np.array([label], np.int32)


class PreprocessedSource:
  """A random-access source that applies a task's preprocessing on read.

  It has the grain ``RandomAccessDataSource`` interface and yields the same
  ``{"prompt", "answer", "task"}`` dicts as the built-in task sources.

  Args:
    source: the raw TFDS data source (``len`` and ``[i]``).
    task: the parsed external task.
    n_symbols: size of the symbol alphabet.
    max_tokens: room for prompt plus answer (``seq_len - 1``).
    limit: read at most this many examples (0 = all).
  """

  def __init__(self, source: Any, task: ExternalTask, n_symbols: int, max_tokens: int,
               limit: int = 0):
    self._source = source
    self._task = task
    self._fn = resolve_function(task.preprocess)
    self._kwargs = dict(task.kwargs, n_symbols=n_symbols, max_tokens=max_tokens)
    self._len = len(source) if not limit else min(limit, len(source))

  def __len__(self) -> int:
    return self._len

  def __getitem__(self, index: int) -> dict[str, Any]:
    if not 0 <= index < self._len:
      raise IndexError(f"index {index} outside [0, {self._len})")
    prompt, answer = self._fn(self._source[index], **self._kwargs)
    return {"prompt": np.asarray(prompt, np.int32), "answer": np.asarray(answer, np.int32),
            "task": self._task.name}

  def __repr__(self) -> str:
    return f"PreprocessedSource({self._task.tfds_name!r} -> {self._task.name!r}, n={self._len})"
