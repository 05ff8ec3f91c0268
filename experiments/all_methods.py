"""Every multi-task method on the quickstart tasks, with single-task baselines for Δm.

  modular-sweep --experiment experiments/all_methods.py --workdir runs/all_methods

One run of the quickstart model per registered method (``mtl.METHODS``, aliases left
out: ``equal`` = ``mean``, ``random`` = ``rlw``, ``sum`` = ``constant``), each with its
default options, plus one single-task run per quickstart task (``get_baselines``) so
the sweep's results table can report Δm (Maninis et al. 2019) per method next to its
per-task accuracy. Every parameter is shared (the quickstart decoder has one output
head). ``configs/quickstart.py``'s 2000 steps take ~2 min a run on 2 cores
(34 + 8 runs); pass ``--config.train.steps=300`` for a quicker, rougher table.
Methods that need per-task gradients cost up to T backward passes a step.

References:
  Maninis et al. 2019, "Attentive Single-Tasking of Multiple Tasks" (Δm); the
  methods' papers are cited in their files under ``modular/mtl/``.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import quickstart  # noqa: E402  (configs/ is a folder of config files, not a package)

from modular import mtl  # noqa: E402
from modular.config import get_base_config  # noqa: E402
from modular.data import task_names  # noqa: E402

ALIASES = ("equal", "random", "sum")


def get_config(arg=None):
  c = quickstart.get_config(arg)
  c.name = "all_methods"
  c.train.progress = False
  return c


def methods() -> list[str]:
  return [n for n in mtl.METHODS.names() if n not in ALIASES]


def get_hyper(h):
  return h.sweep("config.mtl.method", methods())


def get_baselines(h):
  tasks = task_names(get_base_config().data)
  return h.sweep("config.data.tasks", [[t] for t in tasks])
