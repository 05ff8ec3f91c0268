"""The small tensor operations that merging methods are built from.

Every function takes one leaf of the stacked task vectors, ``tau [T, *shape]``, and
works per task along axis 0:

* ``topk_mask``: keep the ``int(k * n)`` largest magnitudes of each task in this tensor
  (peft's ``magnitude_based_pruning``; ``n`` is the tensor's size);
* ``global_thresholds`` / ``threshold_mask``: the same trim over a task's whole model
  (the TIES paper's trim: one threshold per task over all its parameters);
* ``outlier_mask``: drop both tails of each task's magnitudes (Model Breadcrumbs);
* ``random_mask``: keep each entry with probability ``1 - p`` (DARE);
* ``elect_sign`` and ``disjoint_mean``: TIES's sign election and disjoint merge.

References:
  Yadav et al. 2023, "TIES-Merging: Resolving Interference When Merging Models",
  NeurIPS (trim, elect sign, disjoint merge); Yu et al. 2024, "Language Models are Super
  Mario: Absorbing Abilities from Homologous Models as a Free Lunch", ICML (DARE);
  Davari & Belilovsky 2024, "Model Breadcrumbs: Scaling Multi-Task Model Merging with
  Sparse Masks", ECCV.
"""

from __future__ import annotations

from typing import Iterable

import jax
import jax.numpy as jnp


def _flat(tau: jax.Array) -> jax.Array:
  """``[T, *shape] -> [T, n]``."""
  return tau.reshape(tau.shape[0], -1)


def topk_mask(tau: jax.Array, k: float) -> jax.Array:
  """Keeps the ``int(k * n)`` largest ``|tau|`` of each task within this tensor.

  Args:
    tau: ``[T, *shape]``.
    k: the kept fraction in [0, 1] (peft's ``density``).

  Returns:
    bool ``[T, *shape]`` with exactly ``int(k * n)`` True per task (``n = prod(shape)``).
  """
  flat = jnp.abs(_flat(tau))
  n = flat.shape[1]
  keep = int(k * n)
  if keep >= n:
    return jnp.ones(tau.shape, bool)
  if keep <= 0:
    return jnp.zeros(tau.shape, bool)
  _, idx = jax.lax.top_k(flat, keep)  # [T, keep]
  rows = jnp.arange(flat.shape[0])[:, None]
  mask = jnp.zeros(flat.shape, bool).at[rows, idx].set(True)
  return mask.reshape(tau.shape)


def global_thresholds(leaves: Iterable[jax.Array], k: float) -> jax.Array:
  """Per-task magnitude thresholds that keep the top ``k`` of each task's whole model.

  Args:
    leaves: the stacked task-vector leaves ``[T, *shape_i]``.
    k: the kept fraction in [0, 1].

  Returns:
    float32 ``[T]``: the ``int(k * D)``-th largest ``|tau|`` of each task over all ``D``
    parameters (``+inf`` when nothing is kept, ``-inf`` when everything is).
  """
  mags = jnp.concatenate([jnp.abs(_flat(x)).astype(jnp.float32) for x in leaves], axis=1)
  d = mags.shape[1]
  keep = int(k * d)
  if keep <= 0:
    return jnp.full((mags.shape[0],), jnp.inf, jnp.float32)
  if keep >= d:
    return jnp.full((mags.shape[0],), -jnp.inf, jnp.float32)
  return jnp.sort(mags, axis=1)[:, d - keep]


def threshold_mask(tau: jax.Array, thresholds: jax.Array) -> jax.Array:
  """``|tau| >= thresholds[t]`` per task: bool ``[T, *shape]``."""
  thr = thresholds.reshape((-1,) + (1,) * (tau.ndim - 1))
  return jnp.abs(tau).astype(jnp.float32) >= thr


def outlier_mask(tau: jax.Array, beta: float, gamma: float,
                 k: float | None = None) -> jax.Array:
  """Drops the smallest ``beta`` and the largest ``gamma`` fractions of ``|tau|`` per task.

  Args:
    tau: ``[T, *shape]``.
    beta: fraction of the smallest magnitudes dropped (``int(beta * n)`` entries).
    gamma: fraction of the largest magnitudes dropped (``int(gamma * n)`` entries).
    k: mergekit's rule instead of ``beta`` when set: keep ``int(k * n)`` entries, above
      the ``n - int(k n) - int(gamma n)`` smallest (fewer outliers dropped when that is
      negative).

  Returns:
    bool ``[T, *shape]``: True for the entries whose magnitude rank (ascending, ``0..n-1``)
    lies in ``[low, high)``: ``[int(beta n), n - int(gamma n))``, or with ``k``
    ``[low, low + int(k n))`` with ``low = max(0, n - int(k n) - int(gamma n))``.
  """
  flat = jnp.abs(_flat(tau))
  n = flat.shape[1]
  if k is None:
    low, high = int(beta * n), n - int(gamma * n)
  else:
    low = max(0, n - int(k * n) - int(gamma * n))
    high = low + int(k * n)
  ranks = jnp.argsort(jnp.argsort(flat, axis=1), axis=1)  # [T, n] ascending rank
  return ((ranks >= low) & (ranks < high)).reshape(tau.shape)


def random_mask(key: jax.Array, shape: tuple[int, ...], p: float) -> jax.Array:
  """DARE's keep mask: each entry kept with probability ``1 - p`` (bool ``shape``)."""
  return jax.random.bernoulli(key, 1.0 - p, shape)


def elect_sign(tau: jax.Array, method: str = "total") -> jax.Array:
  """TIES's elected sign per coordinate.

  Args:
    tau: ``[T, *shape]`` (already trimmed).
    method: ``"total"``: the sign of ``sum_t tau_t`` (the paper: the sign with the larger
      total magnitude); ``"frequency"``: the sign held by more tasks.

  Returns:
    ``[*shape]`` of +1 / -1 (+1 where the sum is 0, as peft).
  """
  if method == "total":
    s = jnp.sum(tau, axis=0)
  elif method == "frequency":
    s = jnp.sum(jnp.sign(tau), axis=0)
  else:
    raise ValueError(f"merging.options.sign: must be 'total' or 'frequency', got {method!r}")
  return jnp.where(s >= 0, 1, -1).astype(tau.dtype)


def disjoint_mean(weighted: jax.Array, agree: jax.Array) -> jax.Array:
  """Mean over the tasks that agree with the elected sign.

  Args:
    weighted: ``[T, *shape]`` task vectors (times their weights).
    agree: bool ``[T, *shape]``: ``sign(tau_t) == elected`` (zeros never agree).

  Returns:
    ``[*shape]``: ``sum_t agree * weighted / max(1, sum_t agree)`` (0 where none agree).
  """
  total = jnp.sum(jnp.where(agree, weighted, 0), axis=0)
  count = jnp.sum(agree, axis=0).astype(weighted.dtype)
  return total / jnp.maximum(count, 1)


def ties_combine(tau: jax.Array, weights: jax.Array, sign: str = "total") -> jax.Array:
  """Elect the sign on ``tau``, weight each task, take the disjoint mean.

  Args:
    tau: ``[T, *shape]`` trimmed (or DARE-dropped) task vectors.
    weights: ``[T]``.
    sign: ``elect_sign``'s method.

  Returns:
    ``[*shape]``.
  """
  elected = elect_sign(tau, sign)
  agree = jnp.sign(tau) == elected[None]
  w = weights.reshape(weights.shape + (1,) * (tau.ndim - 1)).astype(tau.dtype)
  return disjoint_mean(tau * w, agree)
