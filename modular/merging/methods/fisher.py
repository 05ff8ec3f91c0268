"""Fisher merging: average the models weighted by each task's diagonal Fisher information.

Each parameter is the Fisher-weighted mean of the fine-tuned models' values,

  theta* = sum_t w_t F_t theta_t / sum_t w_t F_t
         = theta_0 + sum_t w_t F_t tau_t / sum_t w_t F_t        (elementwise),

the maximizer of ``sum_t w_t log p(theta | theta_t, F_t)`` under a Laplace (diagonal
Gaussian) approximation of each task's posterior. ``F_t`` is the diagonal Fisher of
run ``t``'s model on its own task's data, the mean over examples of the squared
per-example gradient of the log-likelihood (``statistics.fisher_diagonal``: with the
data's labels, the empirical Fisher, by default; ``fisher="sampled"`` draws each label
from the model, an unbiased estimate of the paper's expectation over the model's
predictive distribution). The Fisher is floored at ``floor`` (the paper's code:
1e-6), so coordinates no task's data informs get the plain weighted average.

The statistics are computed outside the method (``merge_runs`` calls
``statistics.for_run`` with ``num_examples`` examples of every run's training data)
and passed to ``merge`` as ``statistics=[{path: F_t [*shape]}, ...]``; every merged leaf
needs one.

References:
  Matena & Raffel 2022, "Merging Models with Fisher-Weighted Averaging", NeurIPS,
  Sec. 2 (Eqs. 3-5); Tang et al. 2024, FusionBench (``num_fisher_examples`` 256).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from modular.merging.method import (MergeMethod, at_least, one_of, option, per_task,
                                    register)


@register("fisher")
@dataclasses.dataclass(eq=False)
class FisherMerging(MergeMethod):
  """Diagonal-Fisher-weighted averaging.

  Attributes:
    floor: the least Fisher value (numerical floor).
    num_examples: examples of each run's training data for its Fisher.
    fisher: ``"empirical"`` (the data's labels) or ``"sampled"`` (labels from the model).
    scaling: lambda (1: the Fisher-weighted average itself).
  """

  statistics = "fisher"
  floor: float = option(1e-6, at_least(0.0))
  num_examples: int = option(256, at_least(1))
  fisher: str = option("empirical", one_of("empirical", "sampled"))
  scaling: float = option(1.0, at_least(0.0))

  def statistics_options(self) -> dict:
    """The keyword arguments of ``statistics.for_run``."""
    return {"num_examples": self.num_examples, "fisher": self.fisher}

  def combine(self, tau: jax.Array, weights: jax.Array, *, stats: jax.Array | None = None,
              path: str = "", **unused) -> jax.Array:
    """``[T, *shape], [T], Fisher [T, *shape] -> [*shape]``."""
    if stats is None:
      raise ValueError(f"merging.statistics: fisher has no Fisher diagonal for {path!r}")
    if stats.shape != tau.shape:
      raise ValueError(f"merging.statistics: the Fisher of {path!r} has shape "
                       f"{tuple(stats.shape[1:])}, the parameter {tuple(tau.shape[1:])}")
    f = jnp.maximum(stats, self.floor) * per_task(weights, stats)  # [T, *shape]
    total = jnp.sum(f, axis=0)
    delta = jnp.sum(f * tau.astype(jnp.float32), axis=0) / jnp.where(total > 0, total, 1.0)
    return delta.astype(tau.dtype)
