"""MMoE head: 4 shared experts, one softmax gate and one tower per task.

  modular-train --config configs/mmoe.py --workdir runs/mmoe
  modular-train --config configs/mmoe.py:ple --workdir runs/ple   # PLE, 2 levels

Arguments (comma-separated): tiny, ple (per-task experts and two extraction levels).

References: Ma et al. 2018, "Modeling Task Relationships in Multi-task Learning with
Multi-gate Mixture-of-Experts"; Tang et al. 2020, "Progressive Layered Extraction".
"""

import os

from modular.overrides import load_config_file

ARGS = ("tiny", "ple")


def get_config(arg=None):
  args = [a for a in (arg or "").split(",") if a]
  for a in args:
    if a not in ARGS:
      raise ValueError(f"configs/mmoe.py: unknown argument {a!r}; known: {ARGS}")
  here = os.path.dirname(os.path.abspath(__file__))
  c = load_config_file(os.path.join(here, "quickstart.py"), "tiny" if "tiny" in args else None)
  c.name = "mmoe"
  if "ple" in args:
    c.name = "ple"
    c.model.head = {"name": "ple", "num_experts": 2, "task_experts": 1, "levels": 2}
  else:
    c.model.head = {"name": "mmoe", "num_experts": 4}
  return c
