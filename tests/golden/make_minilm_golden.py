"""Writes tests/golden/minilm.npz: Hugging Face transformers' outputs of all-MiniLM-L6-v2.

  PYTHONPATH=. python tests/golden/make_minilm_golden.py

The reference is ``transformers.BertModel`` on PyTorch CPU (torch and transformers
from the bench extra), loaded from the installed checkpoint folder. It records, on
the fixed sentences of ``SENTENCES`` (tokenized with ``tokenizers``, padded to
``SEQ_LEN``):

  * the last hidden state on real tokens, stored as its first ``KEEP_DIMS``
    coordinates plus a seeded Gaussian projection of all 384 (to keep the file a few
    KB while every coordinate still counts);
  * the gradient head importance: dL/dxi [6, 12] of the mean cross-entropy of a
    seeded linear probe on the [CLS] state with fixed labels, each head xi gated by
    scaling its slice of the input of ``attention.output.dense`` with a forward
    pre-hook (transformers 5.x has no ``head_mask``; the hook equals 4.57's
    ``head_mask`` to 1e-6).

``reference(...)`` is also what the parity tests call when torch and transformers
are importable.
"""

from __future__ import annotations

import os

import numpy as np

SENTENCES = (
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog near the river bank.",
    "WordNet groups English words into sets of synonyms.",
    "Hello world",
)
SEQ_LEN = 20
KEEP_DIMS = 16
PROJ_DIMS = 8
NUM_CLASSES = 3
LABELS = np.array([0, 2, 1, 2], np.int64)
GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "minilm.npz")


def probe(d_model: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """The fixed linear probe on [CLS]: W [d, C] (std 0.5 / sqrt(d)), b [C]."""
  rng = np.random.default_rng(seed)
  w = rng.normal(0.0, 0.5 * d_model ** -0.5, (d_model, NUM_CLASSES)).astype(np.float32)
  b = rng.normal(0.0, 0.1, (NUM_CLASSES,)).astype(np.float32)
  return w, b


def projection(d_model: int, seed: int = 1) -> np.ndarray:
  """A seeded Gaussian map [d, PROJ_DIMS] (std 1/sqrt(d)) that summarizes all coordinates."""
  rng = np.random.default_rng(seed)
  return rng.normal(0.0, d_model ** -0.5, (d_model, PROJ_DIMS)).astype(np.float32)


def inputs() -> dict[str, np.ndarray]:
  """The tokenized sentences: inputs, token_type [N, L] int32, token_mask [N, L] bool."""
  from modular import checkpoints
  tok = checkpoints.load_tokenizer("all-MiniLM-L6-v2")
  return checkpoints.encode(tok, SENTENCES, SEQ_LEN)


def reference(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Runs transformers' BertModel: hidden states [N, L, d] and dL/dxi [NL, H]."""
  import torch
  from transformers import BertModel

  from modular.checkpoints import hf_bert
  folder = hf_bert.checkpoint_dir("all-MiniLM-L6-v2")
  model = BertModel.from_pretrained(folder, attn_implementation="eager").eval()
  cfg = model.config
  nl, h = cfg.num_hidden_layers, cfg.num_attention_heads
  gates = torch.ones(nl, h, requires_grad=True)

  def hook(i):
    def pre(module, args):
      x = args[0]  # [N, L, H * dh]
      shape = x.shape
      x = x.reshape(*shape[:-1], h, -1) * gates[i][:, None]
      return (x.reshape(shape),)
    return pre

  handles = [layer.attention.output.dense.register_forward_pre_hook(hook(i))
             for i, layer in enumerate(model.encoder.layer)]
  out = model(input_ids=torch.tensor(batch["inputs"], dtype=torch.long),
              token_type_ids=torch.tensor(batch["token_type"], dtype=torch.long),
              attention_mask=torch.tensor(batch["token_mask"], dtype=torch.long))
  hidden = out.last_hidden_state  # [N, L, d]
  w, b = probe(cfg.hidden_size)
  logits = hidden[:, 0] @ torch.tensor(w) + torch.tensor(b)
  loss = torch.nn.functional.cross_entropy(logits, torch.tensor(LABELS))
  loss.backward()
  for handle in handles:
    handle.remove()
  return {"hidden": hidden.detach().numpy(), "gate_grad": gates.grad.numpy(),
          "loss": np.float32(loss.item())}


def summarize(hidden: np.ndarray, mask: np.ndarray) -> dict[str, np.ndarray]:
  """Real-token rows of the hidden states: first KEEP_DIMS coordinates and the projection."""
  real = hidden[mask]  # [tokens, d]
  return {"hidden_head": real[:, :KEEP_DIMS].astype(np.float32),
          "hidden_proj": (real @ projection(hidden.shape[-1])).astype(np.float32)}


def main() -> None:
  batch = inputs()
  ref = reference(batch)
  np.savez_compressed(
      GOLDEN, inputs=batch["inputs"], token_mask=batch["token_mask"],
      gate_grad=ref["gate_grad"].astype(np.float32), loss=ref["loss"],
      **summarize(ref["hidden"], batch["token_mask"]))
  print(f"wrote {GOLDEN} ({os.path.getsize(GOLDEN)} bytes); loss {ref['loss']:.6f}")


if __name__ == "__main__":
  main()
