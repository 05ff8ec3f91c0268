"""HyperFormer++: adapters after attention and after the FFN, generated per task, layer
and position by one shared hypernetwork.

  modular-train --config configs/hyperformer.py --workdir runs/hyperformer
  modular-train --config configs/hyperformer.py:peft --workdir runs/hyperformer_peft

The hypernetwork learns at 0.1x the backbone's rate. Arguments (comma-separated):
tiny, peft (freeze the backbone: only the hypernetwork
trains). Parameters added per task: ``modular.modules.peft.parameter_report``.

References: Karimi Mahabadi et al. 2021, "Parameter-efficient Multi-task Fine-tuning
for Transformers via Shared Hypernetworks".
"""

import os

from modular.modules.peft import frozen_backbone
from modular.overrides import load_config_file

ARGS = ("tiny", "peft")


def get_config(arg=None):
  args = [a for a in (arg or "").split(",") if a]
  for a in args:
    if a not in ARGS:
      raise ValueError(f"configs/hyperformer.py: unknown argument {a!r}; known: {ARGS}")
  here = os.path.dirname(os.path.abspath(__file__))
  c = load_config_file(os.path.join(here, "quickstart.py"), "tiny" if "tiny" in args else None)
  c.name = "hyperformer"
  adapter = {"name": "hyperformer", "task_embed_dim": 32, "hidden_dim": 64, "proj_dim": 16,
             "reduction_factor": 8}
  c.model.adapter_attn = adapter
  c.model.adapter_ffn = {"name": "hyperformer"}  # the first adapter's options apply
  # The generators' many fan-in weights move the generated adapters fast under Adam:
  # a slower hypernetwork keeps the injected signal small while the backbone learns.
  c.optim.lr_multipliers = [["/hyper/", 0.1]]
  if "peft" in args:
    c.optim.frozen = frozen_backbone()
  return c
