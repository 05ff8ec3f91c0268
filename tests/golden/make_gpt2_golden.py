"""Writes the tiny GPT-2 checkpoint folder and its golden logits (issue 21 §4).

  /work/refvenv/bin/python tests/golden/make_gpt2_golden.py

Needs torch, transformers, tokenizers and safetensors (the reference venv; the suite
itself has no torch). It writes

  * ``tests/golden/tiny_gpt2/``: a random ``GPT2LMHeadModel`` (``GPT2Config`` with
    vocab 128, n_embd 32, 2 layers, 4 heads, 64 positions) saved with
    ``save_pretrained`` (``config.json`` + ``model.safetensors``), every bias and
    LayerNorm parameter perturbed away from its zero/one init so that a tensor
    mapped to the wrong place shows in the logits, and a byte-level BPE
    ``tokenizer.json`` trained offline with ``tokenizers`` on the shipped WordNet
    definitions (vocabulary 128: a 127-symbol alphabet-and-merges plus
    ``<|endoftext|>`` = 0, which is BOS, EOS and PAD);
  * ``tests/golden/gpt2.npz``: the token ids of ``SENTENCES`` as transformers'
    ``PreTrainedTokenizerFast`` encodes them, and ``GPT2LMHeadModel``'s float32
    logits [N, L, V] on each sequence run alone (no padding; zeros past its length),
    and the gradient head importance dL/dxi [n_layer, n_head] of the mean next-token
    cross-entropy over all real tokens, each head xi gated by scaling its slice of the
    input of ``attn.c_proj`` with a forward pre-hook (as for MiniLM).

Nothing here imports ``modular``: the folder is what a user's own folder looks like.
"""

from __future__ import annotations

import gzip
import json
import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
FOLDER = os.path.join(HERE, "tiny_gpt2")
GOLDEN = os.path.join(HERE, "gpt2.npz")
WORDNET = os.path.join(HERE, "..", "..", "modular", "data", "builders", "wordnet", "data",
                       "wordnet_tasks.jsonl.gz")
VOCAB = 128
SIZES = {"n_embd": 32, "n_layer": 2, "n_head": 4, "n_positions": 64}
EOS = "<|endoftext|>"
SENTENCES = (
    "a small domesticated carnivorous mammal",
    "the act of moving from one place to another",
    "definition: a building where people live supersense:",
    "someone who has committed a crime",
)
TRAIN_TEXTS = 1500  # WordNet definitions the tokenizer is trained on (~80 KB of text)
SEED = 0


def training_text() -> list[str]:
  """The first ``TRAIN_TEXTS`` distinct train-split definitions of the shipped WordNet data."""
  out, seen = [], set()
  with gzip.open(WORDNET, "rt", encoding="utf-8") as f:
    for line in f:
      row = json.loads(line)
      if row["split"] == "train" and row["text"] not in seen:
        seen.add(row["text"])
        out.append(row["text"])
      if len(out) == TRAIN_TEXTS:
        break
  return out


def train_tokenizer(texts: list[str]):
  """A GPT-2-style byte-level BPE ``tokenizers.Tokenizer`` with ``VOCAB`` entries."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=[EOS], limit_alphabet=60,
                                initial_alphabet=[], show_progress=False)
  tok.train_from_iterator(texts, trainer)
  assert tok.get_vocab_size() == VOCAB and tok.token_to_id(EOS) == 0, tok.get_vocab_size()
  return tok


def build_model():
  """The random GPT2LMHeadModel, biases and LayerNorms perturbed (seeded)."""
  import torch
  from transformers import GPT2Config, GPT2LMHeadModel
  torch.manual_seed(SEED)
  cfg = GPT2Config(vocab_size=VOCAB, bos_token_id=0, eos_token_id=0, initializer_range=0.2,
                   resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **SIZES)
  model = GPT2LMHeadModel(cfg).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias") or ".ln_" in name:
        p.add_(0.1 * torch.randn_like(p))
  return model


def reference(folder: str, ids: list[list[int]]) -> np.ndarray:
  """transformers' logits [N, Lmax, V] of each id sequence run alone (zeros past its end)."""
  import torch
  from transformers import GPT2LMHeadModel
  model = GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval()
  out = np.zeros((len(ids), max(map(len, ids)), model.config.vocab_size), np.float32)
  with torch.no_grad():
    for r, seq in enumerate(ids):
      logits = model(input_ids=torch.tensor([seq], dtype=torch.long)).logits[0]
      out[r, :len(seq)] = logits.numpy()
  return out


def head_importance(folder: str, ids: list[list[int]]) -> tuple[np.ndarray, float]:
  """dL/dxi [NL, H] of the token-mean next-token CE over ``ids``, and L."""
  import torch
  from transformers import GPT2LMHeadModel
  model = GPT2LMHeadModel.from_pretrained(folder, attn_implementation="eager").eval()
  cfg = model.config
  gates = torch.ones(cfg.n_layer, cfg.n_head, requires_grad=True)

  def hook(i):
    def pre(module, args):
      x = args[0]  # [N, L, H * dh]
      shape = x.shape
      return ((x.reshape(*shape[:-1], cfg.n_head, -1) * gates[i][:, None]).reshape(shape),)
    return pre

  handles = [block.attn.c_proj.register_forward_pre_hook(hook(i))
             for i, block in enumerate(model.transformer.h)]
  total, count = 0.0, 0
  for seq in ids:
    x = torch.tensor([seq], dtype=torch.long)
    logits = model(input_ids=x).logits[0, :-1]
    total = total + torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum")
    count += len(seq) - 1
  loss = total / count
  loss.backward()
  for h in handles:
    h.remove()
  return gates.grad.numpy().astype(np.float32), float(loss.item())


def main() -> None:
  from transformers import PreTrainedTokenizerFast
  os.makedirs(FOLDER, exist_ok=True)
  tok = train_tokenizer(training_text())
  tok.save(os.path.join(FOLDER, "tokenizer.json"))
  build_model().save_pretrained(FOLDER, safe_serialization=True)
  for extra in ("generation_config.json",):  # not part of the checkpoint we read
    if os.path.exists(os.path.join(FOLDER, extra)):
      os.remove(os.path.join(FOLDER, extra))
  hf_tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(FOLDER, "tokenizer.json"))
  ids = [hf_tok(s)["input_ids"] for s in SENTENCES]
  logits = reference(FOLDER, ids)
  lengths = np.array([len(s) for s in ids], np.int32)
  padded = np.zeros((len(ids), lengths.max()), np.int32)
  for r, seq in enumerate(ids):
    padded[r, :len(seq)] = seq
  gate_grad, loss = head_importance(FOLDER, ids)
  np.savez_compressed(GOLDEN, ids=padded, lengths=lengths, logits=logits,
                      gate_grad=gate_grad, loss=np.float32(loss))
  size = sum(os.path.getsize(os.path.join(FOLDER, f)) for f in os.listdir(FOLDER))
  print(f"wrote {FOLDER} ({size} bytes: {sorted(os.listdir(FOLDER))}) and {GOLDEN} "
        f"({os.path.getsize(GOLDEN)} bytes); lengths {lengths.tolist()}, "
        f"logit std {logits[logits != 0].std():.3f}")


if __name__ == "__main__":
  main()
