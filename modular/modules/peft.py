"""Parameter-efficient mode: the one map of what is backbone, for freezing and loading.

The backbone is every parameter of the plain (dense) transformer: embeddings, attention,
layer norms, the dense FFN and, optionally, the shared output head. Modules keep it in
three ways, and this file is the only place that knows them:

  * unchanged, at its own path (adapters, HyperFormer, per-task heads);
  * wrapped: LoRA and Polytropon keep the dense FFN as ``ffn/base/...``;
  * replicated: a token- or task-level MoE whose experts have the dense width holds
    it once per expert (``ffn/w_in`` [E, d, f] from the dense [d, f]), and a
    block-level task MoE holds whole blocks as ``blocks/i/experts/e/...``
    ("sparse upcycling", Komatsuzaki et al. 2022).

``frozen_backbone()`` (the ``optim.frozen`` regexes of the parameter-efficient mode)
freezes the unchanged and wrapped copies; replicated experts are the modules that train.
``dense_path`` maps a model path to the dense path that feeds it, which is how
``modular.train.warm_start`` loads a dense run into a wrapped model. The patterns are
anchored on exact leaf names, so no module parameter matches them by accident: LoRA's
factors are ``lora_a_in`` / ``lora_b_in``, never ``b_in``.

Parameter paths are "/"-joined keys of the parameter dict ("blocks/0/ffn/base/w_in");
``re.search``, ``re.match`` and ``re.fullmatch`` agree on anchored patterns.

The mode is meant for modules added to a trained backbone (``train.init_from``); from
scratch it trains the modules on a random backbone, which is a much weaker model.

References:
  Houlsby et al. 2019, "Parameter-Efficient Transfer Learning for NLP".
  Karimi Mahabadi et al. 2021, "Parameter-efficient Multi-task Fine-tuning for
    Transformers via Shared Hypernetworks" (parameters added per task).
  Komatsuzaki et al. 2023, "Sparse Upcycling: Training Mixture-of-Experts from Dense
    Checkpoints" (ICLR; arXiv 2022).
"""

from __future__ import annotations

import re
from typing import Any

from modular import paths

_BLOCK = r"blocks/\d+"
_FFN_LEAVES = r"(w_in|b_in|w_out|b_out|w_gate)"  # w_gate: a SwiGLU FFN
# The dense model's parameters, exact leaf names (what a dense checkpoint holds).
BACKBONE = (
    r"^embed$",
    r"^pos_embed$",
    r"^ln_final/(scale|bias)$",
    rf"^{_BLOCK}/(ln_attn|ln_ffn)/(scale|bias)$",
    rf"^{_BLOCK}/attn/(wq|wk|wv|wo)$",
    rf"^{_BLOCK}/ffn/{_FFN_LEAVES}$",
)
HEAD = r"^head/(kernel|bias)$"  # the shared head (per-task heads are task modules)
# A wrapped FFN (LoRA, Polytropon) keeps the dense FFN as its ``base`` sub-module.
WRAPPED_FFN = rf"^{_BLOCK}/ffn/base/{_FFN_LEAVES}$"
# Where a module stores a dense parameter: (model-path pattern, dense-path template).
_TO_DENSE = (
    (rf"^({_BLOCK}/ffn)/base/({_FFN_LEAVES})$", r"\1/\2"),       # LoRA, Polytropon
    (rf"^({_BLOCK})/experts/\d+/(.*)$", r"\1/\2"),                 # block-level task MoE
)


def frozen_backbone(freeze_head: bool = True) -> list[str]:
  """The ``optim.frozen`` regexes of the parameter-efficient mode.

  Freezes the dense parameters at their own paths and inside a wrapped FFN
  (``ffn/base``). Stacked MoE experts ``ffn/w_in`` [E, d, f] share the dense leaf
  names, so a MoE model in this mode would freeze its experts: MoE configs do not take
  ``peft`` (their experts are what trains after upcycling).

  Args:
    freeze_head: also freeze the shared output head.

  Returns:
    A list of anchored path regexes.
  """
  return list(BACKBONE) + [WRAPPED_FFN] + ([HEAD] if freeze_head else [])


def is_backbone(path: str, include_head: bool = True) -> bool:
  """Whether ``path`` names a dense-model parameter (a dense checkpoint's path).

  Args:
    path: a parameter path of the dense model.
    include_head: count the shared head ``head/kernel``, ``head/bias`` as backbone.

  Returns:
    True for the embeddings, attention, layer norms, dense FFN (and head).
  """
  pats = BACKBONE + ((HEAD,) if include_head else ())
  return any(re.search(p, path) for p in pats)


def dense_path(path: str) -> str:
  """The dense-model path whose value a model path holds (itself when unwrapped).

  Args:
    path: a parameter path of any model, e.g. ``"blocks/0/ffn/base/w_in"``.

  Returns:
    e.g. ``"blocks/0/ffn/w_in"``; ``"blocks/1/experts/2/attn/wq"`` ->
    ``"blocks/1/attn/wq"``; any other path unchanged.
  """
  for pattern, template in _TO_DENSE:
    if re.search(pattern, path):
      return re.sub(pattern, template, path)
  return path


def flat_paths(params: Any) -> dict[str, Any]:
  """{"blocks/0/ffn/w_in": array, ...} of a nested parameter dict."""
  return paths.flat_paths(params)


def is_frozen(path: str, patterns: list[str] | tuple[str, ...]) -> bool:
  """Whether ``path`` matches one of ``patterns``."""
  return any(re.search(p, path) for p in patterns)


def parameter_report(params: Any, num_tasks: int,
                     backbone: tuple[str, ...] | list[str] = tuple(frozen_backbone())
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
