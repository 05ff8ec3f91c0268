"""Evaluation data in the shape the analysis wants: equal-size mixed batches.

``modular.data.make_eval_batches`` gives each task its own list of batches; the
analysis instead runs every computation over all tasks at once (one forward pass
covers every task, per-task numbers are read off with the task ids). This file
flattens whatever evaluation data it is given into one pool of examples and cuts it
into batches of one size, so that every jit-compiled analysis function compiles once.

Rows without answer tokens (``make_eval_batches`` pads each task's last batch with
them) are dropped, and the pool is shuffled with a fixed seed so that every batch
mixes the tasks (routers with a capacity see realistic batches, and per-batch
routing statistics cover every task). Padding rows added to fill the last batch have
``mask`` 0 everywhere: they count as no example of any task and change no metric.

Batch contract (``modular.objective``): inputs [B, L] int32, targets [B, L] int32,
mask [B, L] float32 (1 on answer tokens), task_id [B] int32; or, for classification,
inputs, label [B] int32 (-1: padding row) and task_id, with optional token_mask [B, L]
bool and token_type [B, L] int32.

References:
  Michel et al. 2019, "Are Sixteen Heads Really Better than One?" (importance is
  an expectation over the evaluation data, per task).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping

import numpy as np

KEYS = ("inputs", "targets", "mask", "task_id")
CLASSIFICATION_KEYS = ("inputs", "label", "task_id")
OPTIONAL_KEYS = ("token_mask", "token_type")
DTYPES = {"inputs": np.int32, "targets": np.int32, "mask": np.float32, "task_id": np.int32,
          "label": np.int32, "token_mask": bool, "token_type": np.int32}
PAD_ID = 0  # modular.data.vocab.PAD_ID

Batch = dict[str, np.ndarray]


def _as_list(eval_data: Any, max_batches_per_task: int | None) -> list[Mapping[str, Any]]:
  """Flattens a batch, a list of batches or a dict task -> list of batches."""
  if isinstance(eval_data, Mapping) and "inputs" in eval_data:
    return [eval_data]
  if isinstance(eval_data, Mapping):
    out = []
    for batches in eval_data.values():
      batches = [batches] if isinstance(batches, Mapping) else list(batches)
      out.extend(batches[:max_batches_per_task] if max_batches_per_task else batches)
    return out
  return list(eval_data)


def concat_batches(eval_data: Any, max_batches_per_task: int | None = None) -> Batch:
  """Concatenates evaluation batches into one pool of examples.

  Args:
    eval_data: one batch, a list of batches, or ``{task_name: [batch, ...]}`` as
      returned by ``modular.data.make_eval_batches``.
    max_batches_per_task: keep at most this many batches of each task (dict input).

  Returns:
    One batch dict of NumPy arrays with the N examples that have answer tokens;
    sequences shorter than the longest are right-padded with PAD (mask 0).
  """
  batches = _as_list(eval_data, max_batches_per_task)
  if not batches:
    raise ValueError("no evaluation batches were given")
  seq = max(np.asarray(b["inputs"]).shape[1] for b in batches)
  first = batches[0]
  keys = CLASSIFICATION_KEYS if "label" in first and "targets" not in first else KEYS
  keys = keys + tuple(k for k in OPTIONAL_KEYS if k in first)
  out = {k: [] for k in keys}
  for b in batches:
    for k in keys:
      if k not in b:
        raise ValueError(f"evaluation batch has no {k!r} (keys: {sorted(b)})")
      v = np.asarray(b[k])
      if v.ndim == 2 and v.shape[1] < seq:
        v = np.pad(v, ((0, 0), (0, seq - v.shape[1])), constant_values=PAD_ID)
      out[k].append(v)
  pool = {k: np.concatenate(v).astype(DTYPES[k]) for k, v in out.items()}
  keep = example_valid(pool) > 0
  return {k: v[keep] for k, v in pool.items()}


def split_batches(pool: Batch, batch_size: int) -> list[Batch]:
  """Cuts a pool of N examples into ceil(N / batch_size) batches of one size.

  Args:
    pool: a batch dict with N examples.
    batch_size: B of every returned batch (the last one is padded).

  Returns:
    A list of batch dicts, each with B examples.
  """
  n = pool["inputs"].shape[0]
  batch_size = min(batch_size, n)
  num = -(-n // batch_size)
  pad = num * batch_size - n
  if pad:
    pool = {k: np.concatenate([v, np.full((pad,) + v.shape[1:], -1 if k == "label" else 0,
                                          v.dtype)])
            for k, v in pool.items()}
  return [{k: v[i * batch_size:(i + 1) * batch_size] for k, v in pool.items()}
          for i in range(num)]


def prepare_batches(eval_data: Any, batch_size: int = 256,
                    max_batches_per_task: int | None = None,
                    seed: int | None = 0) -> list[Batch]:
  """Evaluation data -> equal-size, shuffled mixed batches (every analysis's input).

  Args:
    eval_data: see ``concat_batches``.
    batch_size: examples per batch.
    max_batches_per_task: cap on each task's batches (dict input only).
    seed: shuffling seed (None keeps the given order).

  Returns:
    A list of batch dicts of equal batch size.
  """
  pool = concat_batches(eval_data, max_batches_per_task)
  if seed is not None:
    perm = np.random.default_rng(seed).permutation(pool["inputs"].shape[0])
    pool = {k: v[perm] for k, v in pool.items()}
  return split_batches(pool, batch_size)


def example_valid(batch: Mapping[str, Any], xp=np):
  """[B] 1.0 for examples that have answer tokens or a label (padding rows are 0)."""
  if "label" in batch and "targets" not in batch:
    return (xp.asarray(batch["label"]) >= 0).astype(xp.float32)
  return (xp.asarray(batch["mask"]).sum(-1) > 0).astype(xp.float32)


def token_valid(batch: Mapping[str, Any], pad_id: int | None = PAD_ID, xp=np):
  """[B, L] 1.0 on the non-PAD tokens of valid examples.

  Args:
    batch: a batch dict.
    pad_id: the padding token; None counts every position.
    xp: ``numpy`` or ``jax.numpy``.

  Returns:
    [B, L] float32 weights.
  """
  inputs = xp.asarray(batch["inputs"])
  tok = xp.ones(inputs.shape, xp.float32) if pad_id is None else (
      inputs != pad_id).astype(xp.float32)
  return tok * example_valid(batch, xp)[:, None]


def task_counts(batches: Iterable[Mapping[str, Any]], num_tasks: int) -> np.ndarray:
  """[T] number of valid examples of each task over the batches."""
  counts = np.zeros(num_tasks)
  for b in batches:
    np.add.at(counts, np.asarray(b["task_id"]), example_valid(b))
  return counts


def synthetic_batches(num_tasks: int, vocab_size: int, seq_len: int, examples_per_task: int,
                      answer_len: int = 4, seed: int = 0) -> dict[str, list[Batch]]:
  """Random per-task evaluation data in the ``make_eval_batches`` layout.

  Each example is ``[task_token, random symbols..., answer...]`` with the task token
  ``2 + t`` and the last ``answer_len`` positions as answer tokens (random targets):
  for tests, benchmarks and notebooks that need data without the data pipeline.

  Args:
    num_tasks: T.
    vocab_size: V; symbols are drawn from ``[2 + num_tasks, V)``.
    seq_len: L.
    examples_per_task: examples of each task (one batch per task).
    answer_len: answer tokens per example.
    seed: NumPy seed.

  Returns:
    ``{f"task{t}": [batch]}``.
  """
  rng = np.random.default_rng(seed)
  first = 2 + num_tasks
  out = {}
  for t in range(num_tasks):
    n = examples_per_task
    inputs = rng.integers(first, vocab_size, size=(n, seq_len)).astype(np.int32)
    inputs[:, 0] = 2 + t
    targets = np.roll(inputs, -1, axis=1)
    targets[:, -answer_len:] = rng.integers(first, vocab_size, size=(n, answer_len))
    mask = np.zeros((n, seq_len), np.float32)
    mask[:, -answer_len:] = 1.0
    out[f"task{t}"] = [{"inputs": inputs, "targets": targets.astype(np.int32), "mask": mask,
                        "task_id": np.full((n,), t, np.int32)}]
  return out
