"""The common shape of every merging method, and the registry that names them.

A merging method turns ``T`` task vectors into one update of the base model. It works one
parameter tensor (one leaf) at a time: ``combine(tau [T, *shape], weights [T]) ->
delta [*shape]``, and the merged model is ``base + scaling * delta`` (``driver.py``).
Only one leaf of the ``T`` task vectors is stacked at a time, never ``T`` models.

A method is a dataclass whose fields are its options (defaults from its paper), each with
a check, registered with ``@register(name)``; one new file in ``methods/`` adds a method,
and this package imports every module of that folder on the first lookup. Methods that
need a pass over the whole model before merging (TIES trims to the top ``k`` of each task
over all its parameters) override ``prepare``, which sees the leaves one at a time.

Random methods (DARE) take an explicit keep mask per leaf, or a PRNG key from which
``merge`` derives one key per leaf (``jax.random.fold_in`` with the leaf's index in path
order), so a merge is reproducible from its seed.

Methods that need data do not see the model: they name the statistics they consume
(``statistics = "fisher"`` or ``"gram"``), which ``statistics.py`` computes from a run's
model and data, and ``combine`` gets this leaf's ``[T, ...]`` slice (``stats=``). Methods
with one update per task (``per_task_output``: TALL masks, EMR-merging) return
``[T, *shape]`` and are merged with ``driver.merge_tasks``. ``combine`` also gets the
leaf's ``path`` (LiNeS reads the layer depth from it).

Errors are one line naming the option: ``merging.options.k: must be in [0, 1], got 1.5``.

References:
  Ilharco et al. 2023, "Editing Models with Task Arithmetic", ICLR (task vectors).
"""

from __future__ import annotations

import ast
import dataclasses
import os
import pkgutil
from typing import Any, Callable, ClassVar, Iterable, Mapping, Sequence, TypeVar

import jax
import jax.numpy as jnp

from modular.mtl import options as options_lib
from modular.registry import Registry

METHODS: Registry[type["MergeMethod"]] = Registry(
    "merging method",
    lazy_modules=tuple(
        f"modular.merging.methods.{m.name}"
        for m in pkgutil.iter_modules([os.path.join(os.path.dirname(__file__), "methods")])))

M = TypeVar("M", bound=type)
option = options_lib.option
at_least = options_lib.at_least
in_range = options_lib.in_range
one_of = options_lib.one_of


def register(*names: str) -> Callable[[M], M]:
  """Class decorator: registers a merging method under ``names`` (the first is its name)."""
  return METHODS.register_class(*names)


def error_key(name: str) -> str:
  """The config path of an option: ``merging.options.<name>``."""
  return f"merging.options.{name}"


@dataclasses.dataclass(eq=False)
class MergeMethod:
  """Base class of a merging method (see the module docstring).

  Attributes:
    scaling: lambda, the factor on the merged task vector: ``base + scaling * delta``.
  """

  name: ClassVar[str] = "method"
  random: ClassVar[bool] = False  # needs a keep mask or a key (DARE)
  # The per-task statistics the method consumes (``statistics.KINDS``: "fisher", "gram");
  # None: none. ``merge`` refuses in one line when they are not given.
  statistics: ClassVar[str | None] = None
  # True: ``combine`` returns one update per task ``[T, *shape]`` (TALL masks, EMR):
  # the result is one model per task (``driver.merge_tasks``), not one merged model.
  per_task_output: ClassVar[bool] = False
  # Options under which one task vector comes back unchanged (``delta = weight * tau``);
  # the property tests build the method with them. None: no such setting.
  identity_options: ClassVar[Mapping[str, Any] | None] = {}

  scaling: float = option(1.0, options_lib.at_least(0.0))

  def __post_init__(self):
    for f in dataclasses.fields(self):
      if isinstance(f.default, float) and isinstance(getattr(self, f.name), int):
        setattr(self, f.name, float(getattr(self, f.name)))
      check = f.metadata.get("check")
      reason = check(getattr(self, f.name)) if check is not None else None
      if reason:
        raise ValueError(f"{error_key(f.name)}: {reason}")

  def prepare(self, leaves: Callable[[], Iterable[jax.Array]], *,
              paths: Sequence[str] = (), weights: jax.Array | None = None) -> Any:
    """A pass over the whole model before merging (default: nothing).

    Args:
      leaves: a callable returning a fresh iterator over the ``[T, *shape]`` stacked
        task-vector leaves, in path order (one leaf in memory at a time).
      paths: the merged leaves' paths, in the same order (LiNeS reads layer depths).
      weights: ``[T]`` the per-task weights ``combine`` will get (EMR's rescalers).

    Returns:
      A context passed to every ``combine`` call (e.g. per-task thresholds ``[T]``).
    """
    del leaves
    return None

  def combine(self, tau: jax.Array, weights: jax.Array, *, context: Any = None,
              mask: jax.Array | None = None, key: jax.Array | None = None,
              path: str = "", stats: jax.Array | None = None) -> jax.Array:
    """Merges one leaf.

    Args:
      tau: ``[T, *shape]`` the task vectors' values of this leaf.
      weights: ``[T]`` per-task weights (peft's ``weights``; ones by default).
      context: what ``prepare`` returned.
      mask: ``[T, *shape]`` bool keep mask (random methods only; else ignored).
      key: a PRNG key for this leaf (random methods only; else ignored).
      path: the leaf's parameter path (``"blocks/0/ffn/w_in"``).
      stats: ``[T, ...]`` this leaf's statistics, stacked over tasks (methods with
        ``statistics`` only: Fisher ``[T, *shape]``, Gram ``[T, n, n]``; None for a leaf
        without them).

    Returns:
      ``delta [*shape]`` (``[T, *shape]`` with ``per_task_output``), before ``scaling``.
    """
    raise NotImplementedError


def build(name: str, options: Mapping[str, Any] | None = None) -> MergeMethod:
  """Builds a registered method from its name and options.

  Args:
    name: a registered name (``"ties"``); unknown names list the known ones.
    options: option values; strings (from the command line) are parsed by the type of
      the option's default.

  Returns:
    The method.

  Raises:
    ValueError: ``merging.options.<key>: ...`` for an unknown option or a bad value;
      ``merging.method: unknown merging method ...`` for an unknown name.
  """
  try:
    cls = METHODS.get(name)
  except KeyError as e:
    raise ValueError(f"merging.method: {e.args[0]}") from None
  fields = {f.name: f for f in dataclasses.fields(cls)}
  kwargs = {}
  for key, value in (options or {}).items():
    if key not in fields:
      raise ValueError(f"{error_key(key)}: unknown option of {name!r}; known: "
                       f"{', '.join(sorted(fields))}")
    if fields[key].default is None and isinstance(value, str):  # "not set" by default
      value = None if value.lower() == "none" else _literal(key, value)
    try:
      kwargs[key] = options_lib._coerce(  # pylint: disable=protected-access
          key, value, fields[key].default)
    except ValueError as e:
      raise ValueError(str(e).replace("config.mtl.options.", "merging.options.")) from None
  return cls(**kwargs)


def _literal(key: str, value: str) -> Any:
  try:
    return ast.literal_eval(value)
  except (ValueError, SyntaxError):
    raise ValueError(f"{error_key(key)}: cannot parse {value!r}") from None


def ones_weights(num_tasks: int, weights: Any = None) -> jax.Array:
  """``weights`` as float32 ``[T]`` (ones when None); a wrong length is one line."""
  if weights is None:
    return jnp.ones((num_tasks,), jnp.float32)
  w = jnp.asarray(weights, jnp.float32).reshape(-1)
  if w.shape[0] != num_tasks:
    raise ValueError(f"merging.weights: {w.shape[0]} weights for {num_tasks} task vectors")
  return w


def per_task(weights: jax.Array, tau: jax.Array) -> jax.Array:
  """``weights [T]`` broadcast against ``tau [T, *shape]``."""
  return weights.reshape(weights.shape + (1,) * (tau.ndim - 1)).astype(tau.dtype)
