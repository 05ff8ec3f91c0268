"""Task-level MoE FFN: 4 expert FFNs, each task routed to one by a learned task embedding.

  modular-train --config configs/task_moe.py --workdir runs/task_moe
  # Two stages (Ye et al. 2022): average routing first, then resume with learned routing.
  modular-train --config configs/task_moe.py:average --workdir runs/tmoe2 \
      --config.train.steps=300
  modular-train --config configs/task_moe.py --workdir runs/tmoe2

Top-1 straight-through routing (the forward pass takes the task's best expert, the
backward pass the softmax's gradient); the router learns 10x faster than the experts.
Each expert is as wide as the dense FFN, so a task's active parameters equal the dense
quickstart's. A task's sub-network: ``modular.modules.task_extract.extract_task``.
Arguments (comma-separated): tiny, average (stage 1), gumbel (straight-through
Gumbel-softmax: noisy routes while training), softmax (temperature softmax over the
top 2), block (experts are whole transformer layers).

References: Ye et al. 2022, "Eliciting and Understanding Cross-Task Skills with
Task-Level Mixture-of-Experts"; Kudugunta et al. 2021, "Beyond Distillation".
"""

import os

from modular.overrides import load_config_file

ARGS = ("tiny", "average", "gumbel", "softmax", "block")


def get_config(arg=None):
  args = [a for a in (arg or "").split(",") if a]
  for a in args:
    if a not in ARGS:
      raise ValueError(f"configs/task_moe.py: unknown argument {a!r}; known: {ARGS}")
  here = os.path.dirname(os.path.abspath(__file__))
  c = load_config_file(os.path.join(here, "quickstart.py"), "tiny" if "tiny" in args else None)
  c.name = "task_moe"
  route = {"num_experts": 4, "top_k": 1, "gate": "softmax", "straight_through": True,
           "temperature": 1.0, "route_mode": "average" if "average" in args else "learned"}
  c.optim.lr_multipliers = [["router/(task_embed|kernel)$", 10.0]]
  if "gumbel" in args:
    route.update(gate="gumbel")
  if "softmax" in args:
    route.update(gate="softmax", straight_through=False, top_k=2, temperature=0.5)
  if "block" in args:
    c.model.block = dict(route, name="task_moe_block")
  else:
    c.model.ffn = dict(route, name="task_moe")
  return c
