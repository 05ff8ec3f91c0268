"""Merging ``T`` task vectors into the base, one leaf at a time.

``merge(base, task_vectors, "ties", options={"k": 0.2})`` stacks one leaf of the ``T``
task vectors at a time (``[T, *shape]``), asks the method for ``delta [*shape]`` and
writes ``base + scaling * delta`` in the base's dtype; leaves outside the task vectors
(frozen, per-task heads) are the base's. All task vectors must cover the same leaves
with the same shapes (one line names the first difference).

Random methods get, per leaf, the keep mask from ``masks`` (one pytree per task, keyed
like the task vectors) or a key ``fold_in(key, i)`` with ``i`` the leaf's index in the
sorted order of the merged paths, so a merge is a function of its seed.

Methods that consume statistics (Fisher merging, RegMean) get them from ``statistics``:
one ``{path: array}`` per task vector (``statistics.py`` computes them from a run's
model and data), stacked per leaf to ``[T, ...]``. Missing statistics, statistics for
some tasks but not others, or a wrong shape are one line. Methods with one update per
task (TALL masks, EMR-merging) are merged with ``merge_tasks``: one model per task.

References:
  Ilharco et al. 2023, "Editing Models with Task Arithmetic", ICLR; Yadav et al. 2023
  (TIES), Yu et al. 2024 (DARE), Davari & Belilovsky 2024 (Breadcrumbs): the methods in
  ``methods/``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp

from modular.merging import method as method_lib
from modular.merging.method import MergeMethod
from modular.paths import flat_paths, path_str

PyTree = Any


def _check_same_leaves(flats: list[dict[str, Any]], what: str) -> list[str]:
  """The sorted common paths; raises one line when the pytrees differ."""
  paths = sorted(flats[0])
  for i, f in enumerate(flats[1:], start=1):
    if sorted(f) != paths:
      diff = sorted(set(paths) ^ set(f))
      raise ValueError(f"merging: {what} {i} and 0 cover different parameters "
                       f"(first: {diff[0]!r})")
    for p in paths:
      if jnp.shape(f[p]) != jnp.shape(flats[0][p]):
        raise ValueError(f"merging: {what} {i}'s {p!r} has shape {jnp.shape(f[p])}, "
                         f"{what} 0's {jnp.shape(flats[0][p])}")
  return paths


def _check_statistics(method: MergeMethod, statistics: Sequence[Any] | None,
                      num_tasks: int) -> list[dict[str, Any]] | None:
  """The per-task statistics as flat dicts; one line when the method's are missing."""
  if method.statistics is None:
    return None
  if statistics is None:
    raise ValueError(f"merging: {method.name} needs {method.statistics} statistics of every "
                     "task (merging.statistics computes them from each run's data)")
  if len(statistics) != num_tasks:
    raise ValueError(f"merging.statistics: {len(statistics)} statistics for {num_tasks} "
                     "task vectors")
  return [flat_paths(s) for s in statistics]


def _leaf_statistics(stat_flats: list[dict[str, Any]] | None, path: str) -> jax.Array | None:
  """``[T, ...]`` statistics of one leaf, None when no task has any."""
  if stat_flats is None:
    return None
  have = [path in f for f in stat_flats]
  if not any(have):
    return None
  if not all(have):
    raise ValueError(f"merging.statistics: task {have.index(False)} has no statistics for "
                     f"{path!r} that task {have.index(True)} has")
  shapes = {jnp.shape(f[path]) for f in stat_flats}
  if len(shapes) > 1:
    raise ValueError(f"merging.statistics: the tasks' statistics of {path!r} have shapes "
                     f"{sorted(shapes)}")
  return jnp.stack([jnp.asarray(f[path], jnp.float32) for f in stat_flats])


def merge_deltas(task_vectors: Sequence[PyTree], method: MergeMethod | str, *,
                 options: Mapping[str, Any] | None = None, weights: Any = None,
                 key: jax.Array | int | None = None,
                 masks: Sequence[PyTree] | None = None,
                 statistics: Sequence[PyTree] | None = None) -> dict[str, jax.Array]:
  """The merged update per leaf, before ``scaling``.

  Args:
    task_vectors: ``T`` pytrees with the same leaves ``[*shape]``.
    method: a ``MergeMethod`` or a registered name (with ``options``).
    options: the method's options when ``method`` is a name.
    weights: ``[T]`` per-task weights (default ones).
    key: a PRNG key or int seed (random methods).
    masks: ``T`` pytrees of bool keep masks keyed like the task vectors (random methods).
    statistics: ``T`` ``{path: array}`` (methods with ``statistics``: Fisher diagonals
      ``[*shape]`` or input Grams ``[n, n]`` per leaf).

  Returns:
    ``{path: delta [*shape]}`` over the task vectors' leaves (``[T, *shape]`` for
    methods with ``per_task_output``).
  """
  if isinstance(method, str):
    method = method_lib.build(method, options)
  if not task_vectors:
    raise ValueError("merging: no task vectors to merge")
  flats = [flat_paths(tv) for tv in task_vectors]
  paths = _check_same_leaves(flats, "task vector")
  num_tasks = len(flats)
  w = method_lib.ones_weights(num_tasks, weights)
  mask_flats = None
  if masks is not None:
    if len(masks) != num_tasks:
      raise ValueError(f"merging.masks: {len(masks)} masks for {num_tasks} task vectors")
    mask_flats = [flat_paths(m) for m in masks]
  if isinstance(key, int):
    key = jax.random.key(key)

  def stacked(p: str) -> jax.Array:
    return jnp.stack([jnp.asarray(f[p]) for f in flats])

  stat_flats = _check_statistics(method, statistics, num_tasks)
  context = method.prepare(lambda: (stacked(p) for p in paths), paths=paths, weights=w)
  out = {}
  for i, p in enumerate(paths):
    leaf_mask = None if mask_flats is None else jnp.stack(
        [jnp.asarray(m[p], bool) for m in mask_flats])
    leaf_key = None if key is None else jax.random.fold_in(key, i)
    out[p] = method.combine(stacked(p), w, context=context, mask=leaf_mask, key=leaf_key,
                            path=p, stats=_leaf_statistics(stat_flats, p))
  return out


def _check_against_base(base_flat: dict[str, Any], deltas: dict[str, jax.Array],
                        lead: int) -> None:
  for p, d in deltas.items():
    if p not in base_flat:
      raise ValueError(f"merging: the task vectors hold {p!r}, which the base lacks")
    if jnp.shape(base_flat[p]) != jnp.shape(d)[lead:]:
      raise ValueError(f"merging: the task vectors' {p!r} has shape {jnp.shape(d)[lead:]}, "
                       f"the base's {jnp.shape(base_flat[p])}")


def _apply(base: PyTree, deltas: dict[str, jax.Array], scaling: float) -> PyTree:
  def one(path, leaf):
    d = deltas.get(path_str(path))
    if d is None:
      return leaf
    leaf = jnp.asarray(leaf)
    return (leaf + scaling * d).astype(leaf.dtype)

  return jax.tree_util.tree_map_with_path(one, base)


def merge(base: PyTree, task_vectors: Sequence[PyTree], method: MergeMethod | str, *,
          options: Mapping[str, Any] | None = None, weights: Any = None,
          key: jax.Array | int | None = None,
          masks: Sequence[PyTree] | None = None,
          statistics: Sequence[PyTree] | None = None) -> PyTree:
  """``base + scaling * method(task_vectors)``.

  Args:
    base: the base parameters (nested dict).
    task_vectors: ``T`` task vectors (``task_vectors.task_vector``) on a subset of
      ``base``'s leaves.
    method, options, weights, key, masks, statistics: as ``merge_deltas``.

  Returns:
    The merged parameters, with ``base``'s structure and dtypes.

  Raises:
    ValueError: one line for a leaf the base lacks, a shape mismatch, a bad option,
      missing statistics, or a method with one model per task (use ``merge_tasks``).
  """
  if isinstance(method, str):
    method = method_lib.build(method, options)
  if method.per_task_output:
    raise ValueError(f"merging: {method.name} gives one model per task; use merge_tasks")
  deltas = merge_deltas(task_vectors, method, weights=weights, key=key, masks=masks,
                        statistics=statistics)
  _check_against_base(flat_paths(base), deltas, 0)
  return _apply(base, deltas, method.scaling)


def merge_tasks(base: PyTree, task_vectors: Sequence[PyTree], method: MergeMethod | str, *,
                options: Mapping[str, Any] | None = None, weights: Any = None,
                key: jax.Array | int | None = None, masks: Sequence[PyTree] | None = None,
                statistics: Sequence[PyTree] | None = None) -> list[PyTree]:
  """One model per task: ``base + scaling * delta_t`` for every task ``t``.

  For methods with ``per_task_output`` (TALL masks, EMR-merging) ``delta_t`` is task
  ``t``'s own update (its mask and rescaler over the shared merged vector); for every
  other method all ``T`` models are the one merged model.

  Args:
    base, task_vectors, method, options, weights, key, masks, statistics: as ``merge``.

  Returns:
    ``T`` parameter pytrees with ``base``'s structure and dtypes, in task order.
  """
  if isinstance(method, str):
    method = method_lib.build(method, options)
  deltas = merge_deltas(task_vectors, method, weights=weights, key=key, masks=masks,
                        statistics=statistics)
  if not method.per_task_output:
    _check_against_base(flat_paths(base), deltas, 0)
    return [_apply(base, deltas, method.scaling)] * len(task_vectors)
  _check_against_base(flat_paths(base), deltas, 1)
  return [_apply(base, {p: d[t] for p, d in deltas.items()}, method.scaling)
          for t in range(len(task_vectors))]
