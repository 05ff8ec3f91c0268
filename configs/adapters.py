"""Per-task bottleneck adapters after attention and after the FFN (Houlsby adapters).

  modular-train --config configs/adapters.py --workdir runs/adapters
  modular-train --config configs/adapters.py:peft --workdir runs/adapters_peft

Arguments (comma-separated): tiny, peft (freeze the backbone: only the adapters train).

References: Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP".
"""

import os

from modular.modules.peft import frozen_backbone
from modular.overrides import load_config_file

ARGS = ("tiny", "peft")


def get_config(arg=None):
  args = [a for a in (arg or "").split(",") if a]
  for a in args:
    if a not in ARGS:
      raise ValueError(f"configs/adapters.py: unknown argument {a!r}; known: {ARGS}")
  here = os.path.dirname(os.path.abspath(__file__))
  c = load_config_file(os.path.join(here, "quickstart.py"), "tiny" if "tiny" in args else None)
  c.name = "adapters"
  c.model.adapter_attn = {"name": "bottleneck", "reduction_factor": 8, "per_task": True}
  c.model.adapter_ffn = {"name": "bottleneck", "reduction_factor": 8, "per_task": True}
  if "peft" in args:
    c.optim.frozen = frozen_backbone()
  return c
