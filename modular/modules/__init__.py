"""Pluggable slot fillers: each file registers itself into a slot registry.

Importing this package runs every ``@FFN.register`` / ``@ADAPTER.register`` /
``@HEAD.register`` / ``@BLOCK.register`` decorator below.
"""
from modular.modules import moe  # noqa: F401  token-level top-k MoE FFN
from modular.modules import task_moe  # noqa: F401  task-level MoE FFN
from modular.modules import task_moe_block  # noqa: F401  task-level MoE over whole blocks
from modular.modules import mmoe  # noqa: F401  MMoE / PLE heads
from modular.modules import hyperformer  # noqa: F401  HyperFormer++ hypernetwork adapters
from modular.modules import lora  # noqa: F401  per-task LoRA on the FFN
from modular.modules import adapters  # noqa: F401  per-task bottleneck adapters
from modular.modules import polytropon  # noqa: F401  Polytropon skill allocation (LoRA skills)
