"""Every analysis of a model in memory, from its parameters and evaluation data.

``analyze_model(fm, params, eval_data)`` runs, with one compiled call each:

  1. the capturing pass (head means, FFN neuron counts, routing statistics);
  2. gradient head importance of every head for every task (one forward and one
     backward pass per batch);
  3. the zero- and mean-ablation matrices of every head for every task;

and derives head reuse (from gradient importance and from mean-ablation loss
increase, among heads above the model's noise floor: ``noise.py``), neuron
specialization, routing summaries, and which tasks were learned at all
(``competence.py``). ``report.write_report``
does the same from a run folder and draws the figures.

References:
  Michel et al. 2019 (head importance and ablation); Merullo et al. 2023 (head
  reuse); Tan et al. 2024 (neuron specialization); Ye et al. 2022 and Ponti et al.
  2022 (routing analysis).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Sequence

import numpy as np

from modular.analysis.ablation import MODES, AblationResult, ablation_matrices
from modular.analysis.activations import ActivationStats, collect_activations
from modular.analysis.batches import PAD_ID, prepare_batches
from modular.analysis.competence import (DEFAULT_MARGIN, Competence, chance_accuracy, gate,
                                         task_accuracy)
from modular.analysis.head_importance import HeadImportance, gradient_head_importance
from modular.analysis.head_reuse import HeadReuse, default_top_k, head_reuse
from modular.analysis.noise import RELATIVE_FLOOR, noise_floor
from modular.analysis.neurons import NeuronSpecialization, neuron_specialization
from modular.analysis.routing import RoutingSummary, routing_analysis
from modular.objective import FunctionalModel, Params


@dataclasses.dataclass
class Analysis:
  """All analyses of one model on one evaluation set.

  Attributes:
    task_names: T names.
    importance: gradient head importance.
    ablation: zero/mean ablation matrices.
    reuse: {"gradient": HeadReuse, "ablation": HeadReuse} important-head sets from
      normalized gradient importance and from the mean-ablation loss increase.
    neurons: neuron specialization (None when no FFN records activations).
    routing: {stat name: RoutingSummary} from the routers' statistics on the data.
    activations: the capturing pass's raw sums.
    timings: seconds per stage (including compilation).
    competence: accuracy against chance per task (which tasks were learned).
  """

  task_names: list[str]
  importance: HeadImportance
  ablation: AblationResult | None
  reuse: dict[str, HeadReuse]
  neurons: NeuronSpecialization | None
  routing: dict[str, RoutingSummary]
  activations: ActivationStats
  timings: dict[str, float]
  competence: Competence | None = None


def analyze_model(fm: FunctionalModel, params: Params, eval_data: Any,
                  task_names: Sequence[str] | None = None, *, batch_size: int = 64,
                  max_batches_per_task: int | None = None, top_k: int | None = None,
                  threshold: float | None = None, neuron_k: float = 0.9,
                  modes: Sequence[str] = MODES, pad_id: int | None = PAD_ID,
                  ablation_chunk: int | None | str = "auto",
                  relative_floor: float = RELATIVE_FLOOR,
                  margin: float = DEFAULT_MARGIN) -> Analysis:
  """Head importance, ablation, head reuse, neuron specialization and routing.

  Args:
    fm: the functional model (``FunctionalModel.split``).
    params: its parameters (sharded or not).
    eval_data: a batch, a list of batches, or ``{task: [batch, ...]}``.
    task_names: T names (default: the dict's keys, or "task0"...).
    batch_size: examples per analysis batch (64 keeps a 2-core CPU in cache; larger
      batches suit accelerators).
    max_batches_per_task: cap on each task's evaluation batches.
    top_k: at most this many important heads per task (default a quarter of the
      heads); ignored when ``threshold`` is given.
    threshold: important heads are those whose score reaches this share of the
      model's largest score (raw gradient importance, or the mean-ablation loss
      increase), in (0, 1].
    relative_floor: noise floor as a share of the model's largest score (heads at
      or below it are in no set, whatever k or the threshold).
    margin: accuracy points above chance a task needs to count as learned.
    neuron_k: cumulative threshold of neuron specialization.
    modes: ablation modes to run (empty: skip ablation).
    pad_id: padding token excluded from means and neuron counts.
    ablation_chunk: patterns per vmapped step ("auto": ``ablation.default_chunk``).

  Returns:
    An ``Analysis``.

  Raises:
    ValueError: for a threshold outside (0, 1] or a wrong number of task names.
  """
  if threshold is not None and not 0.0 < threshold <= 1.0:
    raise ValueError(f"threshold: {threshold} is not a share of the largest score in (0, 1]")
  if task_names is None:
    if isinstance(eval_data, dict) and "inputs" not in eval_data:
      task_names = list(eval_data)
    else:
      task_names = [f"task{t}" for t in range(fm.num_tasks)]
  task_names = list(task_names)
  if len(task_names) != fm.num_tasks:
    raise ValueError(f"{len(task_names)} task names for a model with {fm.num_tasks} tasks")
  batches = prepare_batches(eval_data, batch_size, max_batches_per_task)
  timings = {}

  t0 = time.perf_counter()
  acts = collect_activations(fm, params, batches, pad_id)
  timings["activations"] = time.perf_counter() - t0

  t0 = time.perf_counter()
  importance = gradient_head_importance(fm, params, batches, relative_floor)
  timings["gradient_importance"] = time.perf_counter() - t0

  ablation = None
  if modes:
    t0 = time.perf_counter()
    ablation = ablation_matrices(fm, params, batches, acts.head_means, modes,
                                 chunk=ablation_chunk)
    timings["ablation"] = time.perf_counter() - t0

  k = None if threshold is not None else (top_k or default_top_k(fm.num_layers, fm.num_heads))
  scores = {"gradient": (importance.raw, importance.floor)}
  if ablation is not None:
    mode = "mean" if "mean" in ablation.delta_loss else next(iter(ablation.delta_loss))
    delta = np.transpose(ablation.delta_loss[mode], (2, 0, 1))  # [T, NL, H]
    scale = float(np.max(np.abs(ablation.base_loss))) if ablation.base_loss.size else None
    scores["ablation"] = (delta, noise_floor(delta, relative_floor, scale=scale))
  reuse = {}
  for source, (s, floor) in scores.items():
    thr = None if threshold is None else threshold * max(float(np.max(s)), 0.0)
    reuse[source] = head_reuse(s, top_k=k, threshold=thr, floor=floor)

  if ablation is not None:
    accuracy = ablation.base_accuracy
  else:
    accuracy = task_accuracy(fm, params, batches)
  effects = {f"{src} score": np.max(np.abs(s), axis=(1, 2)) for src, (s, _) in scores.items()}
  competence = gate(accuracy, chance_accuracy(batches, fm.num_tasks), margin, effects)

  neurons = neuron_specialization(acts, neuron_k) if acts.neuron_counts else None
  routing = routing_analysis(acts.stats, fm.num_tasks)
  return Analysis(task_names=task_names, importance=importance, ablation=ablation,
                  reuse=reuse, neurons=neurons, routing=routing, activations=acts,
                  timings=timings, competence=competence)
