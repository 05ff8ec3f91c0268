"""Writes the tiny Llama, Qwen2 and Mistral checkpoint folders and their golden logits.

  /work/refvenv/bin/python tests/golden/make_llama_golden.py

Needs torch, transformers, tokenizers and safetensors (the reference venv; the suite
itself has no torch). It writes, for each of ``FOLDERS``,

  * ``tests/golden/tiny_<name>/``: a random ``<Config>ForCausalLM`` (vocab 128,
    hidden 32, 2 layers, 4 heads, d_ff 64) saved with ``save_pretrained``
    (``config.json`` + ``model.safetensors``), every norm weight and bias perturbed
    away from its one/zero init so that a tensor mapped to the wrong place shows in
    the logits, and a byte-level BPE ``tokenizer.json`` trained offline with
    ``tokenizers`` on the shipped WordNet definitions (the GPT-2 script's text):
      - llama:   ``LlamaConfig``, GQA (2 kv heads), untied lm_head, llama3 rope
                 scaling over a short original context (so every band of it acts),
                 specials <pad> 0, <s> 1 (BOS, prepended), </s> 2;
      - qwen2:   ``Qwen2Config``, q/k/v biases, GQA (2 kv heads), tied lm_head,
                 rope_theta 1e6, <|endoftext|> 0 (EOS and PAD, no BOS);
      - mistral: ``MistralConfig``, one kv head (multi-query), untied, linear rope
                 scaling (factor 2), ``sliding_window`` null, specials as llama;
  * ``tests/golden/llama.npz``: per folder the token ids of ``SENTENCES`` as
    transformers' ``PreTrainedTokenizerFast`` encodes them (``<name>_ids`` [N, L]
    right-padded with PAD, ``<name>_lengths`` [N]) and the float32 logits of each
    sequence run alone (``<name>_logits`` [N, L, V], zeros past its length).
    The script also runs transformers on the right- and on the left-padded batch
    (``attention_mask``, ``position_ids`` = cumsum(mask) - 1 as ``generate`` does)
    and checks those logits on real tokens equal the unpadded ones.

Nothing here imports ``modular``: the folders are what a user's own folders look like.
"""

from __future__ import annotations

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from make_gpt2_golden import training_text  # noqa: E402  (the shared WordNet text)

GOLDEN = os.path.join(HERE, "llama.npz")
VOCAB = 128
SIZES = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, max_position_embeddings=64, rms_norm_eps=1e-6,
             initializer_range=0.2, attention_dropout=0.0)
SENTENCES = (
    "a small domesticated carnivorous mammal",
    "the act of moving from one place to another",
    "definition: a building where people live supersense:",
    "someone who has committed a crime",
)
LLAMA_SPECIALS = ("<pad>", "<s>", "</s>")
FOLDERS = {
    "llama": ("LlamaConfig", "LlamaForCausalLM", LLAMA_SPECIALS, dict(
        num_key_value_heads=2, tie_word_embeddings=False, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, rope_theta=10000.0,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 16})),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", ("<|endoftext|>",), dict(
        num_key_value_heads=2, tie_word_embeddings=True, bos_token_id=None, eos_token_id=0,
        rope_theta=1e6, use_sliding_window=False, sliding_window=None)),
    "mistral": ("MistralConfig", "MistralForCausalLM", LLAMA_SPECIALS, dict(
        num_key_value_heads=1, tie_word_embeddings=False, pad_token_id=0, bos_token_id=1,
        eos_token_id=2, sliding_window=None, rope_theta=10000.0,
        rope_scaling={"rope_type": "linear", "factor": 2.0})),
}
SEED = 0


def train_tokenizer(texts: list[str], specials: tuple[str, ...], bos: str | None):
  """A byte-level BPE ``tokenizers.Tokenizer`` with ``VOCAB`` entries (specials first)."""
  from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
  tok = Tokenizer(models.BPE())
  tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tok.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=list(specials),
                                limit_alphabet=60, initial_alphabet=[], show_progress=False)
  tok.train_from_iterator(texts, trainer)
  if bos is not None:  # Llama's tokenizer prepends BOS
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", special_tokens=[(bos, tok.token_to_id(bos))])
  assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
  assert [tok.token_to_id(s) for s in specials] == list(range(len(specials)))
  return tok


def build_model(config_cls: str, model_cls: str, extra: dict):
  """The random model, norm weights and biases perturbed (seeded)."""
  import torch
  import transformers
  torch.manual_seed(SEED)
  cfg = getattr(transformers, config_cls)(**SIZES, **extra)
  model = getattr(transformers, model_cls)(cfg).eval()
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith("bias") or "norm" in name:
        p.add_(0.1 * torch.randn_like(p))
  return model


def run(model, ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
  """Logits [N, L, V] of a padded batch with transformers' attention_mask/position_ids."""
  import torch
  mask_t = torch.tensor(mask, dtype=torch.long)
  pos = (mask_t.cumsum(-1) - 1).clamp(min=0)
  with torch.no_grad():
    out = model(input_ids=torch.tensor(ids, dtype=torch.long), attention_mask=mask_t,
                position_ids=pos).logits
  return out.numpy()


def make(name: str) -> dict[str, np.ndarray]:
  import transformers
  from transformers import PreTrainedTokenizerFast
  config_cls, model_cls, specials, extra = FOLDERS[name]
  folder = os.path.join(HERE, f"tiny_{name}")
  os.makedirs(folder, exist_ok=True)
  bos = specials[1] if len(specials) > 1 else None
  tok = train_tokenizer(training_text(), specials, bos)
  tok.save(os.path.join(folder, "tokenizer.json"))
  build_model(config_cls, model_cls, extra).save_pretrained(folder, safe_serialization=True)
  for f in ("generation_config.json",):  # not part of the checkpoint we read
    if os.path.exists(os.path.join(folder, f)):
      os.remove(os.path.join(folder, f))
  model = getattr(transformers, model_cls).from_pretrained(
      folder, attn_implementation="eager").eval()
  hf_tok = PreTrainedTokenizerFast(tokenizer_file=os.path.join(folder, "tokenizer.json"))
  seqs = [hf_tok(s)["input_ids"] for s in SENTENCES]
  lengths = np.array([len(s) for s in seqs], np.int32)
  n, width = len(seqs), int(lengths.max())
  right = np.zeros((n, width), np.int32)  # PAD is id 0 in every folder
  left = np.zeros((n, width), np.int32)
  for r, seq in enumerate(seqs):
    right[r, :len(seq)] = seq
    left[r, width - len(seq):] = seq
  real_r = np.arange(width)[None] < lengths[:, None]
  real_l = real_r[:, ::-1].copy()
  alone = np.zeros((n, width, VOCAB), np.float32)
  for r, seq in enumerate(seqs):
    alone[r, :len(seq)] = run(model, np.array([seq]), np.ones((1, len(seq)), np.int64))[0]
  err_r = np.abs(run(model, right, real_r) - alone)[real_r].max()
  left_logits = run(model, left, real_l)
  err_l = max(np.abs(left_logits[r, width - k:] - alone[r, :k]).max()
              for r, k in enumerate(lengths))
  assert err_r < 1e-5 and err_l < 1e-5, (err_r, err_l)
  size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))
  print(f"{folder}: {size} bytes {sorted(os.listdir(folder))}; lengths {lengths.tolist()}; "
        f"logit std {alone[real_r].std():.3f}; transformers padded vs alone: right "
        f"{err_r:.1e}, left {err_l:.1e}")
  return {f"{name}_ids": right, f"{name}_lengths": lengths, f"{name}_logits": alone}


def main() -> None:
  arrays = {}
  for name in FOLDERS:
    arrays.update(make(name))
  np.savez_compressed(GOLDEN, **arrays)
  print(f"wrote {GOLDEN} ({os.path.getsize(GOLDEN)} bytes)")


if __name__ == "__main__":
  main()
