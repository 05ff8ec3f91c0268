"""Fine-tune all-MiniLM-L6-v2 (imported from its wheel) on WordNet classification tasks.

  modular-train --config configs/minilm.py --workdir runs/minilm              # full
  modular-train --config configs/minilm.py:lora --workdir runs/minilm_lora
  modular-train --config configs/minilm.py:adapters,tiny --workdir /tmp/minilm

The encoder (``model.arch = "encoder"``) takes its sizes and weights from the
checkpoint (``model.pretrained``), tokenizes the tasks with its tokenizer, and gives
each task its own [CLS] classification head. Two WordNet tasks (definition -> part of
speech, word pair -> relation; ``modular.data.builders.wordnet``), length 32, batch 16.

The argument picks how the backbone adapts (comma-separated with "tiny"):
  full         every parameter trains (default)
  lora         per-task LoRA (rank 8) on both FFN linears; every imported tensor frozen
  adapters     per-task bottleneck adapters after attention and after the FFN
               (Houlsby placement in the post-LN block); every imported tensor frozen
  hyperformer  HyperFormer++ adapters; imported tensors frozen except the LayerNorms
  tiny         4 steps on length 16 (tests)

Measured on the shared 2-core CPU: see the README's encoder section.
"""

from modular.config import get_base_config

MODES = ("full", "lora", "adapters", "hyperformer")


def get_config(arg=None):
  parts = [p for p in (arg or "").split(",") if p]
  unknown = [p for p in parts if p not in MODES + ("tiny",)]
  if unknown:
    raise ValueError(f"configs/minilm.py: unknown argument {unknown[0]!r}; "
                     f"known: {', '.join(MODES + ('tiny',))}")
  mode = next((p for p in parts if p in MODES), "full")
  c = get_base_config()
  c.name = f"minilm_{mode}"
  c.data.tasks = []
  c.data.wordnet = ["def_pos", "relation"]
  c.data.seq_len = 32
  c.data.num_eval = 128
  c.data.sampling = "uniform"
  c.model.arch = "encoder"
  c.model.pretrained = "all-MiniLM-L6-v2"  # sizes, weights and tokenizer
  c.model.head = {"name": "classify", "pooling": "cls"}  # num_classes: from the data
  c.optim.learning_rate = 1e-3 if mode != "full" else 1e-4
  c.optim.warmup_steps = 10
  c.train.steps = 100
  c.train.batch_size = 16
  c.train.log_every = 10
  c.train.eval_every = 50
  c.train.checkpoint_every = 100
  c.train.keep_checkpoints = 1
  if mode == "lora":
    c.model.ffn = {"name": "lora", "rank": 8, "alpha": 16.0, "per_task": True}
  elif mode in ("adapters", "hyperformer"):
    name = "bottleneck" if mode == "adapters" else "hyperformer"
    c.model.adapter_attn = {"name": name}
    c.model.adapter_ffn = {"name": name}
  if mode != "full":
    c.optim.freeze_pretrained = True
    c.optim.unfreeze_pretrained = ["ln_"] if mode == "hyperformer" else []
  if "tiny" in parts:
    c.data.seq_len = 16
    c.data.num_eval = 32
    c.optim.warmup_steps = 1
    c.train.steps = 4
    c.train.log_every = 2
    c.train.eval_every = 4
    c.train.checkpoint_every = 4
  return c
