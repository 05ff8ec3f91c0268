"""Checks a host batch against the data contract, then places it on the mesh.

The check runs on the host, on NumPy arrays, before anything is transferred, so a
bad batch (a task id out of range, a wrong shape or dtype, a missing key) fails
with a message that names the field instead of an XLA error inside the step.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.sharding import NamedSharding

FIELDS = {"inputs": np.integer, "targets": np.integer, "mask": np.floating,
          "task_id": np.integer}
# A classification batch (the encoder's): label [B] instead of targets/mask, and the
# optional per-token fields below (``modular.objective``).
CLASSIFICATION_FIELDS = {"inputs": np.integer, "label": np.integer, "task_id": np.integer}
OPTIONAL_FIELDS = {"token_mask": np.bool_, "token_type": np.integer}


class BatchError(ValueError):
  """A batch does not match the data contract."""


def validate_batch(batch: dict[str, Any], *, batch_size: int, seq_len: int,
                   num_tasks: int, vocab_size: int | None = None) -> None:
  """Raises BatchError naming the field if ``batch`` breaks the contract.

  Contract: inputs/targets int [B, L], mask float [B, L], task_id int [B] with
  values in [0, num_tasks); L <= seq_len; B == batch_size (the process-local size).
  A classification batch has label int [B] instead of targets and mask; either kind
  may carry token_mask bool [B, L] and token_type int [B, L].
  """
  fields = CLASSIFICATION_FIELDS if "label" in batch and "targets" not in batch else FIELDS
  missing = [k for k in fields if k not in batch]
  if missing:
    raise BatchError(f"batch is missing {missing}; expected fields {sorted(fields)}")
  fields = {**fields, **{k: v for k, v in OPTIONAL_FIELDS.items() if k in batch}}
  for key, kind in fields.items():
    arr = np.asarray(batch[key])
    if not np.issubdtype(arr.dtype, kind):
      raise BatchError(f"batch['{key}'] has dtype {arr.dtype}, expected {kind.__name__}")
  b, seq = np.shape(batch["inputs"])[:2] if np.ndim(batch["inputs"]) == 2 else (None, None)
  if b is None:
    raise BatchError(f"batch['inputs'] must be [batch, seq], got shape {np.shape(batch['inputs'])}")
  if b != batch_size:
    raise BatchError(f"batch['inputs'] has {b} rows, expected the batch size {batch_size}")
  if seq > seq_len:
    raise BatchError(f"batch['inputs'] has length {seq} > model seq_len {seq_len}")
  for key in ("targets", "mask", "token_mask", "token_type"):
    if key in batch and np.shape(batch[key]) != (b, seq):
      raise BatchError(f"batch['{key}'] has shape {np.shape(batch[key])}, expected {(b, seq)}")
  for key in ("task_id", "label"):
    if key in batch and np.shape(batch[key]) != (b,):
      raise BatchError(f"batch['{key}'] has shape {np.shape(batch[key])}, expected {(b,)}")
  tid = np.asarray(batch["task_id"])
  if tid.size and (tid.min() < 0 or tid.max() >= num_tasks):
    bad = tid[(tid < 0) | (tid >= num_tasks)][0]
    raise BatchError(f"batch['task_id'] holds {bad}, out of range [0, {num_tasks})")
  if vocab_size is not None:
    for key in ("inputs", "targets"):
      if key not in batch:
        continue
      arr = np.asarray(batch[key])
      if arr.size and (arr.min() < 0 or arr.max() >= vocab_size):
        raise BatchError(f"batch['{key}'] holds token ids outside [0, {vocab_size})")


def to_global(local: dict[str, Any], sharding: NamedSharding) -> dict[str, jax.Array]:
  """Assembles process-local batches into one global batch sharded on the mesh."""
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in local.items()
          if k in FIELDS or k in CLASSIFICATION_FIELDS or k in OPTIONAL_FIELDS}
