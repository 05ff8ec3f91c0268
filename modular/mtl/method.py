"""The common shape of every multi-task method, and the registry that names them.

Two kinds of method share one interface:

* Gram-space methods (PCGrad, MGDA, CAGrad, Nash-MTL, IMTL-G, Aligned-MTL, GradNorm) need the
  per-task gradients ``[T, ...]``. A subclass implements only ``solve``: from the
  ``T x T`` Gram matrix it returns a contribution matrix ``C`` (row ``i`` holds the
  coefficients of task ``i``'s contribution over the original gradients) and the
  new state. ``combine`` reads the gradients twice (Gram, then ``sum_t c_t g_t``
  with ``c = sum_i C[i]``) and adds telemetry.
* Loss weightings (mean, uncertainty, DWA) set ``needs_task_grads = False``: the
  training loop differentiates ``sum_t stop_gradient(w_t) L_t (+ extra_loss)`` and
  calls ``observe`` with the losses. Their ``combine`` also works (``C = diag(w)``),
  so every method is usable as an optax transform over ``[T, ...]`` gradients.

``as_optax`` returns an ``optax.GradientTransformationExtraArgs`` whose update takes
the per-task gradients and keyword-only ``losses=`` and ``present=``, so that
``optax.chain(mtl.pcgrad(), optax.adam(1e-3))`` works outside our loop.

References:
  Yu et al. 2020, "Gradient Surgery for Multi-Task Learning"; Sener & Koltun 2018,
  "Multi-Task Learning as Multi-Objective Optimization" (method catalogue).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import optax

from modular.mtl import gram as gram_lib
from modular.registry import Registry

PyTree = Any
Stats = dict[str, jax.Array]

METHODS: Registry["Method"] = Registry(
    "mtl method",
    lazy_modules=(
        "modular.mtl.weighting",
        "modular.mtl.pcgrad",
        "modular.mtl.mgda",
        "modular.mtl.cagrad",
        "modular.mtl.nashmtl",
        "modular.mtl.imtl",
        "modular.mtl.aligned_mtl",
        "modular.mtl.gradnorm",
    ))


class Method:
  """Base class of a multi-task method (see the module docstring).

  Args:
    task_specific: regexes over parameter paths; matching leaves are
      task-specific and keep their own task's gradient.
    num_tasks: number of tasks; needed by methods with per-task state.
  """

  name: str = "method"
  needs_task_grads: bool = True
  # Task-specific leaves get sum_t g_t (False: each head its own unweighted gradient,
  # as LibMTL's gradient methods) or sum_t w_t g_t (True: the loss weightings, whose
  # loop path differentiates sum_t w_t L_t).
  weight_task_specific: bool = False

  def __init__(self, task_specific: Sequence[str] = (), num_tasks: int = 0):
    self.task_specific = tuple(task_specific)
    self.num_tasks = int(num_tasks)

  # -- state -------------------------------------------------------------------
  def init(self, params: PyTree) -> PyTree:
    """Returns the method state (a pytree of arrays) for ``params``."""
    del params
    return optax.EmptyState()

  def _require_num_tasks(self) -> int:
    if self.num_tasks < 1:
      raise ValueError(f"mtl method {self.name!r} keeps per-task state: set "
                       "mtl.num_tasks (a positive int) in the config")
    return self.num_tasks

  # -- Gram-space path -----------------------------------------------------------
  def solve(self, gram: jax.Array, state: PyTree, losses: jax.Array | None,
            present: jax.Array) -> tuple[jax.Array, PyTree, Stats]:
    """Computes the contribution matrix from the Gram matrix.

    Args:
      gram: ``[T, T]`` Gram matrix of the shared gradients.
      state: the method state.
      losses: ``[T]`` per-task losses or None.
      present: ``[T]`` float 0/1; absent tasks must get zero coefficients.

    Returns:
      ``(contrib [T, T], new_state, extra_stats)``.
    """
    raise NotImplementedError

  def combine(self, task_grads: PyTree, state: PyTree, *, params: PyTree = None,
              losses: jax.Array | None = None, present: jax.Array | None = None,
              mask: PyTree | None | str = "config") -> tuple[PyTree, PyTree, Stats]:
    """Combines per-task gradients into one update.

    Args:
      task_grads: pytree of ``[T, ...]`` leaves (same structure as the params).
      state: the method state.
      params: unused; accepted for optax symmetry.
      losses: ``[T]`` per-task losses (needed by GradNorm and the weightings).
      present: ``[T]`` float 0/1, tasks that occur in the batch (default all).
      mask: ``"config"`` (default) builds the task-specific mask from the
        method's path regexes; None treats every leaf as shared; or a pytree of
        bools.

    Returns:
      ``(grads, new_state, stats)``: grads without the task axis, stats as in
      ``gram.telemetry`` plus the method's own entries.
    """
    del params
    num_tasks = jax.tree_util.tree_leaves(task_grads)[0].shape[0]
    present = gram_lib.present_or_ones(present, num_tasks)
    if isinstance(mask, str):
      mask = gram_lib.task_specific_mask(task_grads, self.task_specific)
    gram = gram_lib.gram_matrix(task_grads, mask)
    contrib, state, extra = self.solve(gram, state, losses, present)
    contrib = contrib * present[:, None] * present[None, :]
    stats = gram_lib.telemetry(gram, contrib, present)
    stats.update(extra)
    specific = stats["weights"] if self.weight_task_specific else None
    grads = gram_lib.weighted_sum(task_grads, stats["weights"], mask, specific)
    return grads, state, stats

  # -- loss-weighting path -----------------------------------------------------
  def loss_weights(self, state: PyTree, present: jax.Array) -> jax.Array:
    """Per-task loss weights ``[T]`` (weighting methods only)."""
    raise NotImplementedError(
        f"mtl method {self.name!r} needs per-task gradients (needs_task_grads=True)")

  def observe(self, state: PyTree, losses: jax.Array,
              present: jax.Array) -> tuple[PyTree, Stats]:
    """Updates the state from this step's losses (weighting methods only)."""
    del losses, present
    return state, {}

  def extra_loss(self, state: PyTree) -> jax.Array:
    """A scalar added to the training loss; constant in the parameters."""
    del state
    return jnp.zeros((), jnp.float32)

  def weight_bounds(self, num_tasks: int) -> tuple[float, float]:
    """The documented range ``[low, high]`` of a present task's weight.

    Methods with learned weights override it and keep their weights inside it under
    any losses (``tests/test_mtl_edge_cases.py``); the default only promises finite.
    """
    del num_tasks
    return -float("inf"), float("inf")

  # -- optax form ----------------------------------------------------------------
  def as_optax(self) -> optax.GradientTransformationExtraArgs:
    """This method as an optax transform over ``[T, ...]`` gradients."""

    def update(task_grads, state, params=None, *, losses=None, present=None, **extra):
      del extra
      grads, state, _ = self.combine(task_grads, state, params=params, losses=losses,
                                     present=present)
      return grads, state

    return optax.GradientTransformationExtraArgs(self.init, update)


class Weighting(Method):
  """A loss weighting: ``combine`` uses ``C = diag(loss_weights)``, then ``observe``."""

  needs_task_grads = False
  needs_losses = True
  weight_task_specific = True

  def solve(self, gram, state, losses, present):
    del gram
    w = self.loss_weights(state, present)
    if losses is None and self.needs_losses:
      raise ValueError(f"mtl method {self.name!r} needs losses= in combine/update")
    state, extra = self.observe(state, losses, present)
    return jnp.diag(w), state, extra
