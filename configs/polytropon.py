"""Polytropon: 8 LoRA skills on each FFN, a learned 8-task x 8-skill allocation.

  modular-train --config configs/polytropon.py --workdir runs/polytropon
  modular-train --config configs/polytropon.py:mhr --workdir runs/polytropon_mhr

The allocation logits learn 10x faster than the skills (two-speed learning rate),
with a small sparsity prior. Arguments (comma-separated): tiny, mhr (multi-head
routing, 4 heads), per_layer (one allocation per layer), peft (freeze the backbone).

References: Ponti et al. 2022, "Combining Modular Skills in Multitask Learning";
Caccia et al. 2022, "Multi-Head Adapter Routing for Cross-Task Generalization".
"""

import os

from modular.modules.peft import frozen_backbone
from modular.overrides import load_config_file

ARGS = ("tiny", "mhr", "per_layer", "peft")


def get_config(arg=None):
  args = [a for a in (arg or "").split(",") if a]
  for a in args:
    if a not in ARGS:
      raise ValueError(f"configs/polytropon.py: unknown argument {a!r}; known: {ARGS}")
  here = os.path.dirname(os.path.abspath(__file__))
  c = load_config_file(os.path.join(here, "quickstart.py"), "tiny" if "tiny" in args else None)
  c.name = "polytropon"
  c.model.ffn = {"name": "polytropon", "num_skills": 8, "rank": 8, "alpha": 8.0,
                 "heads": 4 if "mhr" in args else 1, "temperature": 1.0,
                 "straight_through": False, "share_allocation": "per_layer" not in args,
                 "sparsity_weight": 0.001}
  c.optim.lr_multipliers = [["allocation/logits$", 10.0]]
  if "peft" in args:
    c.optim.frozen = frozen_backbone()
  return c
