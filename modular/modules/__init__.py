"""Pluggable slot fillers: each file registers itself into a slot registry.

Importing this package runs every ``@FFN.register`` / ``@ADAPTER.register`` /
``@HEAD.register`` / ``@BLOCK.register`` decorator below.
"""
from modular.modules import moe  # noqa: F401  token-level top-k MoE FFN
from modular.modules import task_moe  # noqa: F401  task-level MoE FFN
from modular.modules import task_moe_block  # noqa: F401  task-level MoE over whole blocks
from modular.modules import mmoe  # noqa: F401  MMoE / PLE heads
