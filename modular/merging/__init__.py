"""Model merging: task vectors of this framework's runs and the methods that merge them.

::

  from modular import merging
  taus = [merging.task_vector(base, ft, frozen=cfg.optim.frozen, exclude=("^heads/",))
          for ft in finetuned]
  merged = merging.merge(base, taus, "ties", options={"k": 0.2})

Every method is one file in ``methods/``, a dataclass whose fields are its options,
registered with ``@register(name)`` (``merging.METHODS.names()`` lists them). A method
merges one leaf at a time: ``combine(tau [T, *shape], weights [T]) -> delta [*shape]``.
Fisher merging and RegMean consume per-task statistics (``statistics.py`` computes
them from a run's model and data: ``merge(..., statistics=[...])``); TALL masks and
EMR-merging give one model per task (``merge_tasks``).

References:
  Ilharco et al. 2023 (Task Arithmetic); Yadav et al. 2023 (TIES-Merging); Yu et al.
  2024 (DARE); Davari & Belilovsky 2024 (Model Breadcrumbs); Wang et al. 2024 (LiNeS;
  TALL masks); Huang et al. 2024 (EMR-merging); Matena & Raffel 2022 (Fisher merging);
  Jin et al. 2023 (RegMean).
"""

from __future__ import annotations

from modular.merging import diagnostics, ops, statistics
from modular.merging.driver import merge, merge_deltas, merge_tasks
from modular.merging.method import METHODS, MergeMethod, build, register
from modular.merging.task_vectors import apply, check_compatible, task_vector

__all__ = ["METHODS", "MergeMethod", "apply", "build", "check_compatible", "diagnostics",
           "merge", "merge_deltas", "merge_tasks", "ops", "register", "statistics",
           "task_vector"]
