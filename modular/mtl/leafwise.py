"""Methods that need the task gradients themselves, not only their Gram matrix.

GradDrop and TrimmedMean act coordinate by coordinate; ExcessMTL, DB-MTL and MoCo keep
running per-task, per-coordinate quantities (state shaped like ``[T, ...]`` gradients,
so T times the shared parameters' memory). ``LeafwiseMethod.combine`` still reads the
Gram matrix for the common telemetry, then hands the shared ``[T, ...]`` leaves, in
their original layout (task axis first, no flattening, sharding kept), to
``aggregate``. Task-specific leaves keep their own task's gradient (``sum_t g_t``).

Subclasses set ``linear_in_grads = False`` when the update is not a combination of
this step's gradients (then ``stats`` has no ``weights``).

References:
  Chen et al. 2020, "Just Pick a Sign" (GradDrop); Yin et al. 2018 (coordinate-wise
  trimmed mean) - the two methods that motivated the per-coordinate path.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from modular.mtl import gram as gram_lib
from modular.mtl.method import Method

PyTree = Any


@dataclasses.dataclass(eq=False)
class LeafwiseMethod(Method):
  """Base of the methods that read the shared gradients leaf by leaf."""

  streams_gram = False  # the update needs the [T, ...] leaves, not only G

  def shared_zeros(self, params: PyTree, num_tasks: int) -> tuple:
    """``[T, ...]`` float32 zeros for every shared leaf of ``params``, in leaf order.

    The per-coordinate state of ExcessMTL, DB-MTL and MoCo; aligned with the leaves
    ``aggregate`` receives (same regexes, same order).
    """
    leaves, treedef = jax.tree_util.tree_flatten(params)
    mask = treedef.flatten_up_to(gram_lib.task_specific_mask(params, self.task_specific))
    return tuple(jnp.zeros((num_tasks,) + jnp.shape(x), jnp.float32)
                 for x, s in zip(leaves, mask) if not s)

  def aggregate(self, leaves: list[jax.Array], state: PyTree, gram: jax.Array,
                losses: jax.Array | None, present: jax.Array
                ) -> tuple[list[jax.Array], PyTree, dict]:
    """Combines the shared leaves.

    Args:
      leaves: shared ``[T, ...]`` gradient leaves (absent tasks already zeroed).
      state: the method state.
      gram: ``[T, T]`` Gram matrix of the shared part.
      losses: ``[T]`` or None.
      present: ``[T]`` float 0/1.

    Returns:
      ``(updates, new_state, extra_stats)``; ``updates`` are the leaves without the
      task axis.
    """
    raise NotImplementedError

  def combine(self, task_grads, state, *, params=None, losses=None, present=None,
              mask="config"):
    del params
    leaves, treedef = jax.tree_util.tree_flatten(task_grads)
    num_tasks = leaves[0].shape[0]
    present = gram_lib.present_or_ones(present, num_tasks)
    if isinstance(mask, str):
      mask = gram_lib.task_specific_mask(task_grads, self.task_specific)
    specific = [False] * len(leaves) if mask is None else treedef.flatten_up_to(mask)
    gram = gram_lib.gram_matrix(task_grads, mask)
    shared = [g * present.astype(g.dtype).reshape((-1,) + (1,) * (g.ndim - 1))
              for g, s in zip(leaves, specific) if not s]
    updates, state, extra = self.aggregate(shared, state, gram, losses, present)
    it = iter(updates)
    out = [jnp.sum(g, axis=0) if s else next(it).astype(g.dtype)
           for g, s in zip(leaves, specific)]
    stats = gram_lib.telemetry(gram, jnp.diag(present), present)
    del stats["weights"], stats["norms_after"]
    stats["update_norm"] = jnp.sqrt(sum(jnp.sum(jnp.square(u.astype(jnp.float32)))
                                        for u in updates))
    stats.update(extra)
    return jax.tree_util.tree_unflatten(treedef, out), state, stats
