"""Token-level top-2 MoE FFN (8 experts) on the quickstart tasks.

  modular-train --config configs/moe.py --workdir runs/moe
  modular-train --config configs/moe.py:task_aware --workdir runs/moe_task   # task in the gate
  XLA_FLAGS=--xla_force_host_platform_device_count=8 \
    modular-train --config configs/moe.py:expert_parallel --workdir runs/moe_ep

Each expert has d_ff / top_k hidden units, so the active parameters per token equal
the dense quickstart's. Arguments (comma-separated): tiny, task_aware, expert_parallel
(experts sharded over an 8-way ``expert`` mesh axis; the batch is split over it too),
upcycle (experts as wide as the dense FFN, so that ``--config.train.init_from=<dense run>``
copies the dense FFN into every expert: sparse upcycling, Komatsuzaki et al. 2022).

References: Fedus et al. 2022, "Switch Transformers"; Gupta et al. 2022,
"Sparsely Activated Mixture-of-Experts are Robust Multi-Task Learners".
"""

import os

from modular.overrides import load_config_file

ARGS = ("tiny", "task_aware", "expert_parallel", "upcycle")


def get_config(arg=None):
  args = [a for a in (arg or "").split(",") if a]
  for a in args:
    if a not in ARGS:
      raise ValueError(f"configs/moe.py: unknown argument {a!r}; known: {ARGS}")
  here = os.path.dirname(os.path.abspath(__file__))
  c = load_config_file(os.path.join(here, "quickstart.py"), "tiny" if "tiny" in args else None)
  c.name = "moe"
  c.model.ffn = {"name": "moe", "num_experts": 8, "top_k": 2, "capacity_factor": 1.25,
                 "load_balance_weight": 0.01, "z_loss_weight": 0.001,
                 "task_gate": "add" if "task_aware" in args else "none"}
  if "upcycle" in args:
    c.model.ffn.expert_d_ff = c.model.d_ff
  if "expert_parallel" in args:
    c.mesh.shape.data = 1
    c.mesh.shape.expert = -1
  return c
