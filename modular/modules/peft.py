"""Parameter-efficient mode: which parameters are the backbone, and what modules add.

The backbone is every parameter of the plain transformer: embeddings, attention,
layer norms, the dense FFN (also when a LoRA / Polytropon filler wraps it as
``ffn/base``) and, optionally, the shared output head. In the parameter-efficient mode
the config freezes these paths (``optim.frozen = frozen_backbone()``) so that only the
modules train: adapters, LoRA updates, the hypernetwork, skills and allocations.

Parameter paths are "/"-joined keys of the parameter dict ("blocks/0/ffn/base/w_in");
the patterns are anchored at both ends, so ``re.search``, ``re.match`` and
``re.fullmatch`` agree on them.

The mode is meant for modules added to a trained backbone (the loop's warm start);
from scratch it trains the modules on a random backbone, which is a much weaker model.
Token- and task-level MoE replace the FFN itself and have no frozen counterpart.

References:
  Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP".
  Karimi Mahabadi et al. 2021, "Parameter-efficient Multi-task Fine-tuning for
    Transformers via Shared Hypernetworks" (parameters added per task).
"""

from __future__ import annotations

import re
from typing import Any

from modular import paths

BACKBONE = (
    r"^embed$",
    r"^pos_embed$",
    r"^ln_final/.*$",
    r"^blocks/\d+/(attn|ln_attn|ln_ffn)/.*$",
    r"^blocks/\d+/ffn/(base/)?(w_in|b_in|w_out|b_out)$",
)
HEAD = r"^head/(kernel|bias)$"  # the shared head (per-task heads are task modules)


def frozen_backbone(freeze_head: bool = True) -> list[str]:
  """The ``optim.frozen`` regexes of the parameter-efficient mode.

  Args:
    freeze_head: also freeze the shared output head.

  Returns:
    A list of path regexes.
  """
  return list(BACKBONE) + ([HEAD] if freeze_head else [])


def flat_paths(params: Any) -> dict[str, Any]:
  """{"blocks/0/ffn/w_in": array, ...} of a nested parameter dict."""
  return paths.flat_paths(params)


def is_frozen(path: str, patterns: list[str] | tuple[str, ...]) -> bool:
  """Whether ``path`` matches one of ``patterns``."""
  return any(re.search(p, path) for p in patterns)


def parameter_report(params: Any, num_tasks: int,
                     backbone: tuple[str, ...] | list[str] = tuple(BACKBONE) + (HEAD,)
                     ) -> dict[str, float]:
  """Parameters the modules add to the backbone, in total and per task.

  Args:
    params: the model's parameter dict.
    num_tasks: T.
    backbone: regexes of the backbone paths.

  Returns:
    dict with ``total``, ``backbone``, ``added`` (everything else), ``added_per_task``
    (added / T: the share of the modules one task costs), ``added_pct`` and
    ``added_per_task_pct`` (percent of the backbone).
  """
  sizes = {p: int(v.size) for p, v in flat_paths(params).items()}
  base = sum(n for p, n in sizes.items() if is_frozen(p, backbone))
  total = sum(sizes.values())
  added = total - base
  return {
      "total": total, "backbone": base, "added": added,
      "added_per_task": added / num_tasks,
      "added_pct": 100.0 * added / max(base, 1),
      "added_per_task_pct": 100.0 * added / num_tasks / max(base, 1),
  }
