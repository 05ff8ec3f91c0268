"""The patching view of the report: a run's clean/corrupted pairs, its [L, H] map, one
sentence (``modular-analyze --patching``).

From the run's data config, every task with a declared corruption rule
(``modular.data.tasks``) gets ``examples_per_task`` pairs (``data.pairs``); every head
of every layer is patched from the clean run into the corrupted one (denoising), and
the logit difference of the clean answer against the corrupted answer is measured
(``patching.activation_patching``), with attribution patching beside it. The report
draws the normalized [T, NL, H] map and states, in one sentence, the head that
restores the most of each task's logit difference and how well the attribution
estimate agrees with the exact map.

References:
  Wang et al. 2023, "Interpretability in the Wild"; Nanda 2023, "Attribution
  Patching".
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from modular.analysis import plots
from modular.analysis.patching import PatchingResult, activation_patching
from modular.objective import FunctionalModel, Params


def run_patching(cfg: Any, fm: FunctionalModel, params: Params, *,
                 examples_per_task: int = 32, batch_size: int = 64, seed: int = 0
                 ) -> tuple[PatchingResult, list[str]] | None:
  """Head patching of a run's model on pairs of its own tasks.

  Args:
    cfg: the run's config (``cfg.data`` builds the pairs).
    fm, params: the model.
    examples_per_task: pairs per task.
    batch_size: pairs per patching batch.
    seed: the pairs' seed.

  Returns:
    (result, names of the tasks paired), or None when no task has a corruption rule
    (text tasks, external datasets).
  """
  from modular import data as data_lib  # pylint: disable=g-import-not-at-top
  from modular.data import config as config_lib  # pylint: disable=g-import-not-at-top
  from modular.data import pairs as pairs_lib  # pylint: disable=g-import-not-at-top
  if data_lib.is_classification(cfg.data):
    return None
  names = data_lib.task_names(cfg.data)
  paired = [n for n in names if pairs_lib.has_rule(n)]
  if not paired:
    return None
  clean, corrupt = pairs_lib.corrupted_pairs(
      names, config_lib.task_spec(cfg.data), seq_len=cfg.data.seq_len,
      examples_per_task=examples_per_task, seed=seed,
      prompt_width=config_lib.prompt_width(cfg.data), tasks=paired)
  result = activation_patching(fm, params, clean, corrupt, site="heads",
                               metric="logit_diff", batch_size=batch_size)
  return result, paired


def sentence(result: PatchingResult, task_names: list[str], pairs: int) -> str:
  """The view's one sentence: the strongest head per task, the agreement."""
  parts = []
  for t, name in enumerate(task_names):
    if result.counts[t] == 0:
      continue
    m = result.task_map(t)  # [NL, H]
    if not np.isfinite(m).any():
      parts.append(f"{name}: no gap between clean and corrupted runs")
      continue
    l, h = np.unravel_index(np.nanargmax(m), m.shape)
    parts.append(f"{name} L{l}H{h} ({m[l, h]:.2f})")
  a = result.agreement
  agree = "" if a is None else (
      f"; attribution patching against exact: Pearson {a.pearson:.2f}, Spearman "
      f"{a.spearman:.2f}, max |diff| {a.max_abs_diff:.3g} (largest effect "
      f"{a.max_abs_exact:.3g})")
  return (f"head patching (clean into corrupted, {pairs} pairs per task; share of the "
          f"logit difference one head restores): strongest " + ", ".join(parts) + agree)


def write_patching(result: PatchingResult, task_names: list[str], pairs: int, out_dir: str
                   ) -> tuple[list[tuple[str, str, str]], str]:
  """Draws the [T, NL, H] map; returns (figures, sentence)."""
  scores = np.moveaxis(result.normalized, -1, 0)  # [T, NL, H]
  labels = [f"{n}{'' if result.counts[t] else ' (no pairs)'}"
            for t, n in enumerate(task_names)]
  path = plots.head_heatmap(np.nan_to_num(scores), labels,
                            "head patching: share of the logit difference restored",
                            os.path.join(out_dir, "patching_heads.png"), cmap="RdBu_r",
                            center=True)
  line = sentence(result, task_names, pairs)
  caption = ("Activation patching of each head (clean output into the corrupted run), "
             "normalized: (patched - corrupted) / (clean - corrupted) of the logit "
             "difference of the clean answer against the corrupted one")
  return [("Patching", caption, os.path.basename(path))], line
