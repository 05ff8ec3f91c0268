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

Absent tasks (``present[t] = 0``: no example of task ``t`` in the batch, so its loss and
gradient are 0) get weight 0 and never enter the state: their entries keep their bits,
and a value a method takes "from the first step" (a first loss, a normaliser, an EMA's
bias correction) is taken at the task's first present step, counting that task's own
steps. ``tests/test_mtl_absent_tasks.py`` checks this over the whole registry.

``as_optax`` returns an ``optax.GradientTransformationExtraArgs`` whose update takes
the per-task gradients and keyword-only ``losses=`` and ``present=``, so that
``optax.chain(mtl.pcgrad(), optax.adam(1e-3))`` works outside our loop.

References:
  Yu et al. 2020, "Gradient Surgery for Multi-Task Learning"; Sener & Koltun 2018,
  "Multi-Task Learning as Multi-Objective Optimization" (method catalogue).
"""

from __future__ import annotations

import dataclasses
import os
import pkgutil
from typing import Any, Callable, ClassVar, TypeVar

import jax
import jax.numpy as jnp
import optax

from modular.mtl import gram as gram_lib
from modular.mtl import options as options_lib
from modular.registry import Registry

PyTree = Any
Stats = dict[str, jax.Array]

# Every module of this package is imported on the first lookup, so that its
# ``@register`` decorators run: adding a method is adding one file.
_INFRASTRUCTURE = {"method", "options", "config", "gram", "simplex", "task_grads", "rep_grads",
                   "qp", "streaming"}
METHODS: Registry[type["Method"]] = Registry(
    "mtl method",
    lazy_modules=tuple(
        f"modular.mtl.{m.name}" for m in pkgutil.iter_modules([os.path.dirname(__file__)])
        if m.name not in _INFRASTRUCTURE))

M = TypeVar("M", bound=type)


def register(*names: str) -> Callable[[M], M]:
  """Class decorator: registers a method class under ``names`` (the first is its name).

  Example::

    @register("cagrad")
    @dataclasses.dataclass(eq=False)
    class CAGrad(Method):
      c: float = option(0.4, at_least(0.0))
  """
  return METHODS.register_class(*names)


@dataclasses.dataclass(eq=False)
class Method:
  """Base class of a multi-task method (see the module docstring).

  Subclasses are dataclasses whose fields are the method's options
  (``options.option``), checked in ``__post_init__``.

  Args:
    task_specific: regexes over parameter paths; matching leaves are
      task-specific and keep their own task's gradient (keyword only).
    num_tasks: number of tasks; needed by methods with per-task state (keyword
      only, unless the method declares it as its first field).
  """

  name: ClassVar[str] = "method"
  needs_task_grads: ClassVar[bool] = True
  # Task-specific leaves get sum_t g_t (False: each head its own unweighted gradient,
  # as LibMTL's gradient methods) or sum_t w_t g_t (True: the loss weightings, whose
  # loop path differentiates sum_t w_t L_t).
  weight_task_specific: ClassVar[bool] = False
  # False where the update is not sum_t w_t g_t of this step's gradients (GradDrop,
  # TrimmedMean, DB-MTL, MoCo): their stats carry no "weights".
  linear_in_grads: ClassVar[bool] = True
  simplex_weights: ClassVar[bool] = False  # weights on the simplex: bounds [0, 1]
  # True where the update is sum_t c_t g_t with c from solve_gram (the Gram matrix and
  # the state) alone, so mtl.gram="streaming" applies (``streaming.py``); False for the
  # leaf-wise methods, which read the gradients coordinate by coordinate.
  streams_gram: ClassVar[bool] = True

  task_specific: tuple = dataclasses.field(default=(), kw_only=True)
  num_tasks: int = dataclasses.field(default=0, kw_only=True,
                                     metadata={"check": options_lib.at_least(0)})

  def __post_init__(self):
    if isinstance(self.task_specific, str):
      raise ValueError("config.mtl.task_specific: must be a list of regexes")
    self.task_specific = tuple(self.task_specific)
    self.num_tasks = int(self.num_tasks)
    options_lib.check_fields(self)

  # -- state -------------------------------------------------------------------
  def init(self, params: PyTree) -> PyTree:
    """Returns the method state (a pytree of arrays) for ``params``."""
    del params
    return optax.EmptyState()

  def _require_num_tasks(self) -> int:
    if self.num_tasks < 1:
      raise ValueError(f"config.mtl.num_tasks: method {self.name!r} keeps per-task state: "
                       "set it to a positive int")
    return self.num_tasks

  # -- Gram-space path -----------------------------------------------------------
  def solve(self, gram: jax.Array, state: PyTree, losses: jax.Array | None,
            present: jax.Array) -> tuple[jax.Array, PyTree, Stats]:
    """Computes the contribution matrix from the Gram matrix.

    Args:
      gram: ``[T, T]`` Gram matrix of the shared gradients.
      state: the method state.
      losses: ``[T]`` per-task losses or None.
      present: ``[T]`` float 0/1; absent tasks must get zero coefficients and keep
        their state entries unchanged.

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
    stats, state = self.solve_gram(gram, state, losses, present)
    specific = stats["weights"] if self.weight_task_specific else None
    grads = gram_lib.weighted_sum(task_grads, stats["weights"], mask, specific)
    return grads, state, stats

  def solve_gram(self, gram: jax.Array, state: PyTree, losses: jax.Array | None,
                 present: jax.Array) -> tuple[Stats, PyTree]:
    """``solve``, absent tasks zeroed, and the telemetry: everything but the gradients.

    Shared by ``combine`` and the streaming path (``streaming.streaming_combine``), which
    forms ``sum_t weights_t g_t`` by one more VJP instead of reading ``[T, ...]``.

    Args:
      gram: ``[T, T]`` Gram matrix of the shared gradients.
      state: the method state.
      losses: ``[T]`` or None.
      present: ``[T]`` float 0/1.

    Returns:
      ``(stats, new_state)``; ``stats["weights"]`` ``[T]`` are the update's coefficients.
    """
    contrib, state, extra = self.solve(gram, state, losses, present)
    contrib = contrib * present[:, None] * present[None, :]
    stats = gram_lib.telemetry(gram, contrib, present)
    stats.update(extra)
    return stats, state

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

    Methods with learned weights keep their weights inside it under any losses
    (``tests/test_mtl_edge_cases.py``): [0, 1] for a method whose weights lie on the
    simplex (class attribute ``simplex_weights``); others override it; the default
    only promises finite.
    """
    del num_tasks
    if self.simplex_weights:
      return 0.0, 1.0
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


@dataclasses.dataclass(eq=False)
class Weighting(Method):
  """A loss weighting: ``combine`` uses ``C = diag(loss_weights)``, then ``observe``."""

  needs_task_grads = False
  needs_losses = True
  weight_task_specific = True

  def current_weights(self, state: PyTree, losses: jax.Array,
                      present: jax.Array) -> jax.Array:
    """Weights ``[T]`` for this step's losses (``[T]``, constant); default ``loss_weights``.

    Weightings whose weights depend on the current losses (GLS, STCH, FAMO) override it.
    """
    del losses
    return self.loss_weights(state, present)

  @property
  def reads_current_losses(self) -> bool:
    """Whether ``current_weights`` reads this step's losses (it is overridden).

    Gradient accumulation over micro-batches (``train.microbatches``) then computes the
    whole batch's losses in a forward pass before the weighted backward passes.
    """
    return type(self).current_weights is not Weighting.current_weights

  def scalarize(self, state: PyTree, losses: jax.Array, present: jax.Array) -> jax.Array:
    """The scalar the loop differentiates: ``sum_t stop_gradient(w_t) L_t + extra_loss``.

    Args:
      state: the method state.
      losses: ``[T]`` per-task losses (differentiable).
      present: ``[T]`` float 0/1.

    Returns:
      A scalar whose gradient is ``sum_t w_t g_t``.
    """
    w = jax.lax.stop_gradient(
        self.current_weights(state, jax.lax.stop_gradient(losses), present))
    return jnp.sum(w * losses) + self.extra_loss(state)

  def solve(self, gram, state, losses, present):
    del gram
    if losses is None and self.needs_losses:
      raise ValueError(f"mtl method {self.name!r} needs losses= in combine/update")
    w = self.current_weights(state, losses, present)
    state, extra = self.observe(state, losses, present)
    return jnp.diag(w), state, extra
