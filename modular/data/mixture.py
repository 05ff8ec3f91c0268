"""Task sampling rates and a checkpointable, seeded mixture of task streams.

Rates (``sampling_rates``), with n_t the number of train examples of task t:
  proportional   p_t ∝ n_t
  uniform        p_t = 1 / T
  temperature    p_t ∝ n_t ** (1 / temperature)     (temperature 1 = proportional,
                                                      large temperature -> uniform)
  explicit       p_t ∝ cfg.weights[t]

References: temperature sampling as in Arivazhagan et al., 2019, "Massively
Multilingual Neural Machine Translation in the Wild" (and T5, Raffel et al., 2020).

``MixtureIterDataset`` draws, at batch step s, the tasks of that batch from a
generator keyed on ``(seed, s)``: B independent draws (``mixed``) or one draw
for the whole batch (``homogeneous``). Each task is an infinite grain
``MapDataset`` (shuffled anew every epoch), read at a per-task position. The
iterator state is therefore just ``{"step", "positions"}``: plain ints that
JSON round-trips, and restoring it reproduces the following batches exactly.
Homogeneous task draws do not depend on the shard, so every process of a
multi-host job picks the same task for the same step and the global batch
stays homogeneous; mixed draws are independent per shard.
"""

from __future__ import annotations

from typing import Any, Sequence

import grain
import numpy as np

from modular.data import config as config_lib
from modular.data import sources as sources_lib

_MIXED_STREAM, _HOMOGENEOUS_STREAM = 1, 2


def rates_from_sizes(sizes: Sequence[int], sampling: str, temperature: float = 2.0,
                     weights: Sequence[float] | None = None) -> np.ndarray:
  """Task sampling rates from train sizes (see module docstring).

  Args:
    sizes: train examples per task [T].
    sampling: "proportional", "uniform", "temperature" or "explicit".
    temperature: exponent 1/temperature for sampling="temperature".
    weights: unnormalized weights [T] for sampling="explicit".

  Returns:
    float64 rates [T] summing to 1.
  """
  sizes = np.asarray(sizes, dtype=np.float64)  # [T]
  if sampling == "proportional":
    raw = sizes
  elif sampling == "uniform":
    raw = np.ones_like(sizes)
  elif sampling == "temperature":
    raw = sizes ** (1.0 / temperature)
  elif sampling == "explicit":
    raw = np.asarray(weights, dtype=np.float64)
  else:
    raise ValueError(f"unknown sampling {sampling!r}; known: {config_lib.SAMPLINGS}")
  return raw / raw.sum()


def sampling_rates(cfg: Any) -> np.ndarray:
  """Sampling rate of each task, in ``task_names(cfg)`` order.

  Args:
    cfg: the data config (external tasks are prepared to learn their sizes).

  Returns:
    float64 rates [T] summing to 1.
  """
  config_lib.validate_data_config(cfg)
  weights = config_lib.parse_weights(cfg) if cfg.sampling == "explicit" else None
  if cfg.sampling in ("proportional", "temperature"):
    sizes = sources_lib.train_sizes(cfg)
  else:
    sizes = [1] * len(config_lib.task_names(cfg))
  return rates_from_sizes(sizes, cfg.sampling, cfg.temperature, weights)


def collate(examples: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
  """Stacks per-example dicts of arrays into one batch dict (leading axis B)."""
  return {key: np.stack([ex[key] for ex in examples]) for key in examples[0]}


class MixtureIterDataset(grain.IterDataset):
  """Batches drawn from several infinite task datasets by sampling rates.

  Args:
    datasets: one infinite ``grain.MapDataset`` of encoded examples per task.
    rates: sampling rate per task [T], summing to 1.
    batch_size: examples per batch B.
    batching: "mixed" or "homogeneous".
    seed: seeds the task draws.
    shard_index: this process's shard; decorrelates mixed draws across shards.
  """

  def __init__(self, datasets: Sequence[grain.MapDataset], rates: np.ndarray, *,
               batch_size: int, batching: str, seed: int, shard_index: int = 0):
    super().__init__(list(datasets))
    rates = np.asarray(rates, dtype=np.float64)
    if len(rates) != len(datasets) or not np.isclose(rates.sum(), 1.0):
      raise ValueError(f"need one rate per dataset summing to 1, got {rates}")
    if batching not in config_lib.BATCHINGS:
      raise ValueError(f"unknown batching {batching!r}; known: {config_lib.BATCHINGS}")
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    self.datasets = list(datasets)
    self.rates = rates
    self.batch_size = batch_size
    self.batching = batching
    self.seed = seed
    self.shard_index = shard_index

  def __iter__(self) -> "MixtureIterator":
    return MixtureIterator(self)

  def __str__(self) -> str:
    return (f"MixtureIterDataset(tasks={len(self.datasets)}, batching={self.batching!r}, "
            f"batch_size={self.batch_size})")


class MixtureIterator(grain.DatasetIterator):
  """Iterator of ``MixtureIterDataset``; state = step and per-task positions."""

  def __init__(self, ds: MixtureIterDataset):
    super().__init__()
    self._ds = ds
    self._step = 0
    self._positions = [0] * len(ds.datasets)  # next index into each task stream

  def draw_tasks(self, step: int) -> np.ndarray:
    """The task index of every row of batch ``step`` [B] (pure in ``step``)."""
    ds = self._ds
    if ds.batching == "homogeneous":
      rng = np.random.default_rng([ds.seed, _HOMOGENEOUS_STREAM, step])
      return np.full(ds.batch_size, rng.choice(len(ds.rates), p=ds.rates))
    rng = np.random.default_rng([ds.seed, _MIXED_STREAM, ds.shard_index, step])
    return rng.choice(len(ds.rates), size=ds.batch_size, p=ds.rates)

  def __next__(self) -> dict[str, np.ndarray]:
    examples = []
    for t in self.draw_tasks(self._step):
      examples.append(self._ds.datasets[t][self._positions[t]])
      self._positions[t] += 1
    self._step += 1
    return collate(examples)

  def get_state(self) -> dict[str, Any]:
    return {"step": self._step, "positions": list(self._positions)}

  def set_state(self, state: dict[str, Any]) -> None:
    """Restores ``{"step", "positions"}`` after checking it could have come from here.

    Raises:
      ValueError: a state whose positions are not T non-negative integers summing to
        ``step * batch_size`` (each step draws B examples): a damaged or foreign file.
    """
    try:
      step = int(state["step"])
      positions = [int(p) for p in state["positions"]]
    except (KeyError, TypeError, ValueError) as e:
      raise ValueError(f"not a mixture iterator state ({type(e).__name__}: {e})") from e
    if len(positions) != len(self._positions):
      raise ValueError(f"state has {len(positions)} task positions, the mixture has "
                       f"{len(self._positions)} tasks")
    if step < 0 or min(positions) < 0 or sum(positions) != step * self._ds.batch_size:
      raise ValueError(f"positions {positions} at step {step} are not {step} steps of "
                       f"{self._ds.batch_size} examples (each non-negative, summing to "
                       f"{step * self._ds.batch_size})")
    self._step = step
    self._positions = positions

  def __str__(self) -> str:
    return f"MixtureIterator(step={self._step})"
