"""The checkpoint's WordPiece tokenizer: text -> encoder inputs.

``load_tokenizer`` (from ``locate``) reads ``tokenizer.json`` with the ``tokenizers``
library (the [pretrained] extra); ``encode`` produces the encoder's batch fields:
``[CLS] a [SEP]`` or ``[CLS] a [SEP] b [SEP]``, truncated and right-padded with [PAD]
(id 0) to a fixed length.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from modular.checkpoints.locate import load_tokenizer  # noqa: F401  (re-exported)


def encode(tokenizer, texts: Sequence[str], seq_len: int,
           pairs: Sequence[str] | None = None) -> dict[str, np.ndarray]:
  """Tokenizes sentences (or sentence pairs) to fixed-length encoder inputs.

  Args:
    tokenizer: from ``load_tokenizer``.
    texts: N sentences.
    seq_len: L; longer encodings are truncated (the longest sequence first).
    pairs: N second sentences, or None.

  Returns:
    ``inputs`` int32 [N, L] (PAD = 0), ``token_type`` int32 [N, L] (0 for the first
    segment, 1 for the second), ``token_mask`` bool [N, L] (True on real tokens).
  """
  tokenizer.enable_truncation(max_length=seq_len)
  try:
    if pairs is None:
      encodings = tokenizer.encode_batch(list(texts))
    else:
      encodings = tokenizer.encode_batch(list(zip(texts, pairs)))
  finally:
    tokenizer.no_truncation()
  n = len(encodings)
  inputs = np.zeros((n, seq_len), np.int32)
  types = np.zeros((n, seq_len), np.int32)
  for r, e in enumerate(encodings):
    inputs[r, :len(e.ids)] = e.ids
    types[r, :len(e.type_ids)] = e.type_ids
  return {"inputs": inputs, "token_type": types, "token_mask": inputs != 0}
