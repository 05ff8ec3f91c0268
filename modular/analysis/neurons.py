"""Neuron specialization: which FFN neurons each task uses, and how tasks share them.

For task t and FFN layer l, count on how many of the task's tokens each neuron's
activation is > 0 (``activations.collect_activations``). Sort the neurons by that
count and take the smallest set whose cumulative count reaches a fraction k of the
total: the task's specialized neurons in that layer. Tasks are compared by the IoU of
these sets, per layer; Tan et al. find the overlap changes with depth (shared early,
specific late in their translation models), so the mean pairwise IoU is reported
against the layer index.

Ties at the cut are broken by the lower neuron index (a stable sort), so the set is
a deterministic function of the counts.

References:
  Tan et al. 2024, "Neuron Specialization: Leveraging intrinsic task modularity for
  multilingual machine translation" (EMNLP).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from modular.analysis.activations import ActivationStats
from modular.analysis.sets import iou_matrix, mean_off_diagonal


@dataclasses.dataclass
class NeuronSpecialization:
  """Specialized neuron sets of every task in every FFN layer.

  Attributes:
    layers: FFN slot names in depth order ("block0/ffn", ...).
    frequency: [T, NL, N] fraction of each task's tokens on which a neuron fires.
    sets: [T, NL, N] bool specialized sets at the cumulative threshold k.
    set_sizes: [T, NL] number of specialized neurons.
    iou: [NL, T, T] IoU of the tasks' sets in each layer.
    mean_iou: [NL] mean off-diagonal IoU per layer (overlap against depth).
    k: the cumulative threshold used.
  """

  layers: list[str]
  frequency: np.ndarray
  sets: np.ndarray
  set_sizes: np.ndarray
  iou: np.ndarray
  mean_iou: np.ndarray
  k: float


def specialized_mask(counts: np.ndarray, k: float = 0.9) -> np.ndarray:
  """Smallest set of neurons whose activation counts reach a fraction k of the total.

  Args:
    counts: [..., N] activation counts (non-negative).
    k: cumulative fraction in (0, 1].

  Returns:
    [..., N] bool mask; all False where the total count is 0.
  """
  if not 0.0 < k <= 1.0:
    raise ValueError(f"k must be in (0, 1], got {k}")
  counts = np.asarray(counts, np.float64)
  order = np.argsort(-counts, axis=-1, kind="stable")  # [..., N] most active first
  ranked = np.take_along_axis(counts, order, -1)
  csum = np.cumsum(ranked, -1)
  total = csum[..., -1:]
  # number kept = 1 + first rank whose cumulative count reaches k * total
  # (a relative tolerance guards k = 1 against rounding in the cumulative sum)
  reached = csum >= k * total * (1.0 - 1e-12)
  keep_n = np.where(total[..., 0] > 0, np.argmax(reached, -1) + 1, 0)  # [...]
  keep_sorted = np.arange(counts.shape[-1]) < keep_n[..., None]
  mask = np.zeros(counts.shape, bool)
  np.put_along_axis(mask, order, keep_sorted, -1)
  return mask


def neuron_specialization(acts: ActivationStats, k: float = 0.9) -> NeuronSpecialization:
  """Specialized neuron sets per task and layer, and their IoU across tasks.

  Args:
    acts: the capturing pass's result (needs at least one dense FFN layer).
    k: cumulative threshold (Tan et al. use 0.9 to 0.95).

  Returns:
    A ``NeuronSpecialization``.

  Raises:
    ValueError: when no FFN recorded its activations.
  """
  if not acts.neuron_counts:
    raise ValueError("no FFN activations were captured (neuron specialization needs a "
                     "dense FFN that records ffn_act)")
  layers = sorted(acts.neuron_counts, key=lambda n: acts.neuron_layers[n])
  widths = {acts.neuron_counts[n].shape[-1] for n in layers}
  if len(widths) != 1:
    raise ValueError(f"FFN layers differ in width: {sorted(widths)}")
  counts = np.stack([acts.neuron_counts[n] for n in layers], 1)  # [T, NL, N]
  frequency = counts / np.maximum(acts.task_tokens, 1.0)[:, None, None]
  sets = specialized_mask(counts, k)
  iou = iou_matrix(np.transpose(sets, (1, 0, 2)))  # [NL, T, T]
  return NeuronSpecialization(
      layers=layers, frequency=frequency, sets=sets, set_sizes=sets.sum(-1), iou=iou,
      mean_iou=mean_off_diagonal(iou), k=k)
