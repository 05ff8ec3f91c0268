"""Sampling rates and the empirical task frequencies of the mixture."""

import grain
import numpy as np
import pytest

import modular.data as data
from modular.data import mixture

SIZES = [100, 400, 1600]


def test_rates_formulas():
  # Hand-computed: proportional 1:4:16, temperature 2 -> sqrt -> 10:20:40.
  np.testing.assert_allclose(mixture.rates_from_sizes(SIZES, "proportional"),
                             np.array([1, 4, 16]) / 21)
  np.testing.assert_allclose(mixture.rates_from_sizes(SIZES, "uniform"), [1 / 3] * 3)
  np.testing.assert_allclose(mixture.rates_from_sizes(SIZES, "temperature", 2.0),
                             np.array([10, 20, 40]) / 70)
  np.testing.assert_allclose(mixture.rates_from_sizes(SIZES, "temperature", 1.0),
                             mixture.rates_from_sizes(SIZES, "proportional"))
  np.testing.assert_allclose(mixture.rates_from_sizes(SIZES, "explicit", weights=[2, 1, 1]),
                             [0.5, 0.25, 0.25])
  with pytest.raises(ValueError, match="unknown sampling"):
    mixture.rates_from_sizes(SIZES, "nope")


def test_sampling_rates_from_config():
  cfg = data.default_data_config()  # eight built-ins of equal size
  np.testing.assert_allclose(data.sampling_rates(cfg), [1 / 8] * 8)
  cfg.sampling = "explicit"
  cfg.weights = "copy:3,reverse:1"
  rates = data.sampling_rates(cfg)
  assert rates.shape == (8,)
  np.testing.assert_allclose(rates[:2], [0.75, 0.25])
  assert rates[2:].sum() == 0


def _synthetic(sizes):
  """One MapDataset per task: example j of task t is {"task_id": t, "index": j}."""
  return [grain.MapDataset.range(n).map(
      lambda j, t=t: {"task_id": np.int32(t), "index": np.int64(j)}).repeat()
          for t, n in enumerate(sizes)]


@pytest.mark.parametrize("sampling", ["proportional", "uniform", "temperature"])
def test_mixed_frequencies_follow_rates(sampling):
  rates = mixture.rates_from_sizes(SIZES, sampling, temperature=2.0)
  ds = mixture.MixtureIterDataset(_synthetic(SIZES), rates, batch_size=100,
                                  batching="mixed", seed=0)
  it = iter(ds)
  ids = np.concatenate([next(it)["task_id"] for _ in range(200)])  # 20,000 draws
  freq = np.bincount(ids, minlength=3) / len(ids)
  # Binomial std <= sqrt(0.25 / 20000) = 0.0035; tolerance 0.015 is > 4 std.
  np.testing.assert_allclose(freq, rates, atol=0.015)
  # Each task stream is read in order, without skipping: positions == counts.
  assert it.get_state()["positions"] == np.bincount(ids, minlength=3).tolist()


@pytest.mark.parametrize("sampling", ["proportional", "temperature"])
def test_homogeneous_frequencies_follow_rates(sampling):
  rates = mixture.rates_from_sizes(SIZES, sampling, temperature=2.0)
  ds = mixture.MixtureIterDataset(_synthetic(SIZES), rates, batch_size=4,
                                  batching="homogeneous", seed=0)
  it = iter(ds)
  batch_tasks = []
  for _ in range(3000):
    batch = next(it)
    assert len(set(batch["task_id"].tolist())) == 1
    batch_tasks.append(int(batch["task_id"][0]))
  freq = np.bincount(batch_tasks, minlength=3) / len(batch_tasks)
  # 3,000 batch draws: std <= 0.0091; tolerance 0.035 is > 3.8 std.
  np.testing.assert_allclose(freq, rates, atol=0.035)


def test_mixture_rejects_bad_arguments():
  datasets = _synthetic([5, 5])
  with pytest.raises(ValueError, match="one rate per dataset"):
    mixture.MixtureIterDataset(datasets, [0.5, 0.3], batch_size=2, batching="mixed", seed=0)
  with pytest.raises(ValueError, match="batching"):
    mixture.MixtureIterDataset(datasets, [0.5, 0.5], batch_size=2, batching="x", seed=0)
  it = iter(mixture.MixtureIterDataset(datasets, [0.5, 0.5], batch_size=2,
                                       batching="mixed", seed=0))
  with pytest.raises(ValueError, match="task positions"):
    it.set_state({"step": 0, "positions": [0, 0, 0]})
