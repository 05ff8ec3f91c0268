"""Task-level MoE FFN: 4 expert FFNs, each task mixing its top 2 by a learned task embedding.

  modular-train --config configs/task_moe.py --workdir runs/task_moe
  # Two stages (Ye et al. 2022): average routing first, then resume with learned routing.
  modular-train --config configs/task_moe.py:average --workdir runs/tmoe2 \
      --config.train.steps=300
  modular-train --config configs/task_moe.py --workdir runs/tmoe2

The route is softmax(task logits / 0.5) over the top 2 experts, renormalized; each
expert has d_ff / 2 hidden units, so a task's active parameters equal the dense
quickstart's; the router learns 10x faster than the experts. A task's sub-network:
``modular.modules.task_extract.extract_task``. Arguments (comma-separated): tiny,
average (stage 1), top1 (straight-through top-1, experts as wide as the dense FFN),
gumbel (straight-through Gumbel-softmax top-1), block (experts are whole layers), upcycle
(experts as wide as the dense FFN, for ``train.init_from`` a dense run: sparse upcycling).
"""

import os

from modular.overrides import load_config_file

ARGS = ("tiny", "average", "top1", "gumbel", "block", "upcycle")


def get_config(arg=None):
  args = [a for a in (arg or "").split(",") if a]
  for a in args:
    if a not in ARGS:
      raise ValueError(f"configs/task_moe.py: unknown argument {a!r}; known: {ARGS}")
  here = os.path.dirname(os.path.abspath(__file__))
  c = load_config_file(os.path.join(here, "quickstart.py"), "tiny" if "tiny" in args else None)
  c.name = "task_moe"
  route = {"num_experts": 4, "top_k": 2, "gate": "softmax", "straight_through": False,
           "temperature": 0.5, "route_mode": "average" if "average" in args else "learned"}
  c.optim.lr_multipliers = [["router/(task_embed|kernel)$", 10.0]]
  if "top1" in args or "gumbel" in args:
    route.update(top_k=1, straight_through=True, temperature=1.0,
                 gate="gumbel" if "gumbel" in args else "softmax")
  if "upcycle" in args:
    route["expert_d_ff"] = c.model.d_ff
  if "block" in args:
    c.model.block = dict(route, name="task_moe_block")
  else:
    c.model.ffn = dict(route, name="task_moe")
  return c
