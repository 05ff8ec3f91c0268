"""From task sources to model batches: encoding, train iterator, eval batches.

Batch format (the contract the model and the training loop rely on), with
``L = cfg.seq_len`` and one sequence per example of length L + 1::

  seq     = [task_token(t), *prompt, SEP, *answer, PAD, ...]      # [L + 1]
  inputs  = seq[:-1]      int32   [B, L]
  targets = seq[1:]       int32   [B, L]   next token
  mask    = float32 [B, L], 1.0 exactly where targets is an answer token
  task_id = int32 [B], the task's index in ``task_names(cfg)``

so that ``inputs[:, 0] == task_token(task_id)``; loss and accuracy are taken
on ``mask``. All prompt and answer symbols become token ids here
(``modular.data.vocab``). Classification tasks (WordNet) give classification
batches instead: ``inputs``, ``token_type`` [B, L], ``label``, ``task_id`` [B]
(``modular.data.classification``).
"""

from __future__ import annotations

import functools
import sys
from typing import Any

import grain
import numpy as np

from modular.data import classification as classification_lib
from modular.data import config as config_lib
from modular.data import mixture
from modular.data import sources as sources_lib
from modular.data import vocab


def encode_example(prompt: np.ndarray, answer: np.ndarray, task_index: int, *,
                   seq_len: int, n_symbols: int, task_name: str = "",
                   prompt_width: int = 0) -> dict[str, np.ndarray]:
  """Encodes one example into model arrays (see module docstring).

  Args:
    prompt: symbol indices [P].
    answer: symbol indices [A].
    task_index: the task's index in the config's task list.
    seq_len: model sequence length L.
    n_symbols: alphabet size (symbols are range-checked).
    task_name: for error messages.
    prompt_width: if > 0, the prompt is left-padded with PAD to this width, so
      SEP sits at position 1 + prompt_width in every example.

  Returns:
    ``{"inputs": int32 [L], "targets": int32 [L], "mask": float32 [L],
    "task_id": int32 []}``.

  Raises:
    ValueError: if ``2 + P + A > L + 1``, naming the task and the lengths.
  """
  prompt_len, answer_len = len(prompt), len(answer)
  body = vocab.symbols_to_tokens(np.concatenate([prompt, answer]), n_symbols)  # [P + A]
  if prompt_width:
    if prompt_len > prompt_width:
      raise ValueError(f"task {task_name or task_index!r}: prompt of {prompt_len} symbols is "
                       f"longer than config.data.prompt_width = {prompt_width}")
    pad = np.full(prompt_width - prompt_len, vocab.PAD_ID, body.dtype)
    body = np.concatenate([pad, body])
    prompt_len = prompt_width
  n = 2 + prompt_len + answer_len
  if n > seq_len + 1:
    raise ValueError(
        f"task {task_name or task_index!r}: example with prompt {prompt_len} + answer "
        f"{answer_len} symbols needs {n} tokens, more than seq_len + 1 = {seq_len + 1}; "
        f"raise config.data.seq_len to >= {n - 1} or shorten the example")
  seq = np.full(seq_len + 1, vocab.PAD_ID, np.int32)  # [L + 1]
  seq[0] = vocab.task_token(task_index)
  seq[1:1 + prompt_len] = body[:prompt_len]
  seq[1 + prompt_len] = vocab.SEP_ID
  seq[2 + prompt_len:n] = body[prompt_len:]
  mask = np.zeros(seq_len, np.float32)  # [L]; target position p predicts seq[p + 1]
  mask[1 + prompt_len:1 + prompt_len + answer_len] = 1.0
  return {"inputs": seq[:-1], "targets": seq[1:], "mask": mask,
          "task_id": np.int32(task_index)}


def padding_example(task_index: int, seq_len: int) -> dict[str, np.ndarray]:
  """A row that carries no loss: task token then PAD, mask all zero."""
  inputs = np.full(seq_len, vocab.PAD_ID, np.int32)
  inputs[0] = vocab.task_token(task_index)
  return {"inputs": inputs, "targets": np.full(seq_len, vocab.PAD_ID, np.int32),
          "mask": np.zeros(seq_len, np.float32), "task_id": np.int32(task_index)}


def _encode_record(record: dict[str, Any], task_index: int, task_name: str,
                   seq_len: int, n_symbols: int, prompt_width: int = 0,
                   classification: bool = False) -> dict[str, np.ndarray]:
  if classification:
    return classification_lib.encode_example(record, task_index, seq_len=seq_len)
  return encode_example(record["prompt"], record["answer"], task_index, seq_len=seq_len,
                        n_symbols=n_symbols, task_name=task_name, prompt_width=prompt_width)


class EpochShuffleMapDataset(grain.MapDataset):
  """Repeats its parent forever, in a fresh seeded permutation each epoch.

  Element ``i`` is ``parent[perm_e[i mod n]]`` with ``e = i // n`` and
  ``perm_e = default_rng([*seed, e]).permutation(n)``: a pure function of
  ``i``, so any position can be read without replaying the stream. It does
  what ``shuffle(seed).repeat()`` does, but keeps the current epoch's
  permutation in memory instead of calling grain's per-index Feistel shuffle
  (~100 us per element on CPU).

  Args:
    parent: a finite ``MapDataset`` of n >= 1 elements.
    seed: non-negative ints that seed the permutations.
  """

  def __init__(self, parent: grain.MapDataset, *, seed: tuple[int, ...]):
    super().__init__(parent)
    self._n = len(parent)
    if self._n < 1:
      raise ValueError("cannot shuffle-repeat an empty dataset")
    self._seed = tuple(int(x) for x in seed)
    self._epoch, self._perm = -1, np.zeros(0, np.int64)

  def __len__(self) -> int:
    return sys.maxsize

  def permutation(self, epoch: int) -> np.ndarray:
    """The order of epoch ``epoch`` [n] (cached for the current epoch)."""
    if epoch != self._epoch:
      self._perm = np.random.default_rng([*self._seed, epoch]).permutation(self._n)
      self._epoch = epoch
    return self._perm

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    epoch, i = divmod(index, self._n)
    return self._parent[int(self.permutation(epoch)[i])]

  def __str__(self) -> str:
    return f"EpochShuffleMapDataset(n={self._n}, seed={self._seed})"


def task_train_dataset(source: Any, task_index: int, task_name: str, cfg: Any, *,
                       shard_index: int = 0, shard_count: int = 1) -> grain.MapDataset:
  """One task's infinite stream of encoded train examples.

  Args:
    source: the task's random-access train source.
    task_index: the task's index in ``task_names(cfg)``.
    task_name: the task's name.
    cfg: the data config.
    shard_index: this process's shard, reading ``source[shard_index::shard_count]``.
    shard_count: number of processes.

  Returns:
    An infinite ``grain.MapDataset`` (reshuffled every epoch) of encoded examples.
  """
  ds = grain.MapDataset.source(source)[shard_index::shard_count]
  if len(ds) == 0:
    raise ValueError(f"task {task_name!r}: {len(source)} train examples leave shard "
                     f"{shard_index} of {shard_count} empty")
  encode = functools.partial(_encode_record, task_index=task_index, task_name=task_name,
                             seq_len=cfg.seq_len, n_symbols=cfg.n_symbols,
                             prompt_width=config_lib.prompt_width(cfg),
                             classification=classification_lib.is_classification(cfg))
  return EpochShuffleMapDataset(ds, seed=(cfg.seed, task_index)).map(encode)


def make_train_iterator(cfg: Any, batch_size: int, *, shard_index: int = 0,
                        shard_count: int = 1, prefetch: int = 0) -> grain.DatasetIterator:
  """The infinite, deterministic, checkpointable train iterator.

  Args:
    cfg: the data config (datasets are prepared if missing).
    batch_size: examples per batch on this process.
    shard_index: this process's index (``jax.process_index()``).
    shard_count: number of processes (``jax.process_count()``); each reads a
      disjoint slice of every task's train split.
    prefetch: batches to prepare ahead in a background thread (0 = none).

  Returns:
    A grain ``DatasetIterator`` of batches (module docstring). ``get_state()``
    returns a JSON-serializable dict; ``set_state(state)`` resumes exactly.
  """
  if not 0 <= shard_index < shard_count:
    raise ValueError(f"need 0 <= shard_index < shard_count, got {shard_index}, {shard_count}")
  all_sources = sources_lib.build_task_sources(cfg)
  names = config_lib.task_names(cfg)
  datasets = [
      task_train_dataset(all_sources[name]["train"], t, name, cfg,
                         shard_index=shard_index, shard_count=shard_count)
      for t, name in enumerate(names)
  ]
  sizes = [len(all_sources[name]["train"]) for name in names]
  weights = config_lib.parse_weights(cfg) if cfg.sampling == "explicit" else None
  rates = mixture.rates_from_sizes(sizes, cfg.sampling, cfg.temperature, weights)
  ds: grain.IterDataset = mixture.MixtureIterDataset(
      datasets, rates, batch_size=batch_size, batching=cfg.batching, seed=cfg.seed,
      shard_index=shard_index)
  if prefetch:
    ds = grain.experimental.ThreadPrefetchIterDataset(ds, prefetch_buffer_size=prefetch)
  return iter(ds)


def make_eval_batches(cfg: Any, batch_size: int, split: str = "test",
                      limit: int | None = -1) -> dict[str, list[dict[str, np.ndarray]]]:
  """Held-out batches per task from one split, in a fixed order.

  Each task contributes the first ``limit`` examples of ``split`` (fewer if the
  split is smaller). The last batch of a task is padded to ``batch_size`` with
  rows whose mask is all zero (``padding_example``), so every batch has the
  same shape and mask-weighted metrics are exact; a row with ``mask.sum() == 0``
  (classification: ``label == -1``) is padding. Evaluation is not sharded: every
  process gets all batches.

  Args:
    cfg: the data config.
    batch_size: rows per batch.
    split: "test", or "val" (needs ``cfg.val_share > 0``).
    limit: examples per task: -1 (default) ``cfg.num_eval``; None: the whole split.

  Returns:
    ``{task_name: [batch, ...]}`` in task-id order.

  Raises:
    ValueError: ``split`` is "val" but the config carves no validation split.
  """
  if split == "val" and not cfg.val_share > 0:
    raise ValueError(f"config.data.val_share: {cfg.val_share} carves no 'val' split; "
                     "set it > 0 to evaluate on validation")
  all_sources = sources_lib.build_task_sources(cfg)
  classification = classification_lib.is_classification(cfg)
  pad = classification_lib.padding_example if classification else padding_example
  out: dict[str, list[dict[str, np.ndarray]]] = {}
  for t, name in enumerate(config_lib.task_names(cfg)):
    source = all_sources[name][split]
    n = len(source) if limit is None else min(cfg.num_eval if limit == -1 else limit,
                                              len(source))
    rows = [_encode_record(source[i], t, name, cfg.seq_len, cfg.n_symbols,
                           config_lib.prompt_width(cfg), classification) for i in range(n)]
    batches = []
    for start in range(0, n, batch_size):
      chunk = rows[start:start + batch_size]
      chunk += [pad(t, cfg.seq_len)] * (batch_size - len(chunk))
      batches.append(mixture.collate(chunk))
    out[name] = batches
  return out
