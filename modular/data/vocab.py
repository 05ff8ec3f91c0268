"""The token vocabulary shared by every task.

Layout (token ids):
  0                      PAD
  1                      SEP (between prompt and answer)
  2 .. 2+MAX_TASKS-1     task tokens, ``task_token(i) = 2 + i``
  2+MAX_TASKS ..         symbols, ``symbol(k) = 2 + MAX_TASKS + k`` for k < n_symbols

Tasks and external preprocessing functions work in *symbol indices*
``k in [0, n_symbols)``; only the pipeline turns them into token ids with
``symbols_to_tokens``. The vocabulary size depends on ``n_symbols`` alone, so
the model can be built from the data config before any data is read.
"""

from __future__ import annotations

import numpy as np

PAD_ID = 0
SEP_ID = 1
MAX_TASKS = 16
FIRST_TASK_ID = 2
FIRST_SYMBOL_ID = FIRST_TASK_ID + MAX_TASKS


def task_token(task_index: int) -> int:
  """Token id that announces task number ``task_index``.

  Args:
    task_index: position of the task in the config's task list, 0..MAX_TASKS-1.

  Returns:
    The token id ``2 + task_index``.
  """
  if not 0 <= task_index < MAX_TASKS:
    raise ValueError(f"task index {task_index} outside [0, {MAX_TASKS})")
  return FIRST_TASK_ID + task_index


def symbol(k: int) -> int:
  """Token id of symbol index ``k``.

  Args:
    k: symbol index, ``0 <= k < n_symbols``.

  Returns:
    The token id ``2 + MAX_TASKS + k``.
  """
  return FIRST_SYMBOL_ID + k


def symbols_to_tokens(symbols: np.ndarray, n_symbols: int) -> np.ndarray:
  """Maps an array of symbol indices to token ids, checking the range.

  Args:
    symbols: int array of symbol indices, any shape.
    n_symbols: size of the symbol alphabet.

  Returns:
    int32 array of token ids with the same shape.
  """
  symbols = np.asarray(symbols, dtype=np.int64)
  if symbols.size and (symbols.min() < 0 or symbols.max() >= n_symbols):
    raise ValueError(
        f"symbol indices must lie in [0, {n_symbols}); got range "
        f"[{symbols.min()}, {symbols.max()}]")
  return (symbols + FIRST_SYMBOL_ID).astype(np.int32)


def vocab_size(n_symbols: int) -> int:
  """Number of token ids: PAD, SEP, MAX_TASKS task tokens and the symbols.

  Args:
    n_symbols: size of the symbol alphabet.

  Returns:
    ``2 + MAX_TASKS + n_symbols``.
  """
  return FIRST_SYMBOL_ID + n_symbols
