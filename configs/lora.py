"""Per-task LoRA (rank 8) on both FFN linears: a baseline for the routed modules.

  modular-train --config configs/lora.py --workdir runs/lora
  modular-train --config configs/lora.py:peft --workdir runs/lora_peft

Arguments (comma-separated): tiny, peft (freeze the backbone: only A and B train).

References: Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models".
"""

import os

from modular.modules.peft import frozen_backbone
from modular.overrides import load_config_file

ARGS = ("tiny", "peft")


def get_config(arg=None):
  args = [a for a in (arg or "").split(",") if a]
  for a in args:
    if a not in ARGS:
      raise ValueError(f"configs/lora.py: unknown argument {a!r}; known: {ARGS}")
  here = os.path.dirname(os.path.abspath(__file__))
  c = load_config_file(os.path.join(here, "quickstart.py"), "tiny" if "tiny" in args else None)
  c.name = "lora"
  c.model.ffn = {"name": "lora", "rank": 8, "alpha": 16.0, "per_task": True}
  if "peft" in args:
    c.optim.frozen = frozen_backbone()
  return c
