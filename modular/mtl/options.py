"""A method's options: dataclass fields with defaults and checks, one validation path.

Every multi-task method is a dataclass (``method.Method``): its fields are its options,
their defaults are the paper's, and ``option(default, check)`` attaches a check. The
config names the method in ``mtl.method`` and sets options under ``mtl.options``::

  --config.mtl.method=cagrad --config.mtl.options.c=0.4

``resolve`` turns ``mtl.options`` into constructor keyword arguments: unknown keys are
an error naming the known ones, values given as strings on the command line are parsed
by the type of the field's default, and numbers are coerced (an int where a float is
expected). The checks run in ``Method.__post_init__``, so building a method from
Python and from the config validate the same way. Every error is one line,
``config.mtl.options.<key>: ...`` (``config.mtl.<key>`` for the common keys).

References:
  Quinton & Rey 2024, "Jacobian Descent for Multi-Objective Optimization" (TorchJD's
  aggregators: one class per method, its hyperparameters as constructor arguments).
"""

from __future__ import annotations

import ast
import dataclasses
from typing import Any, Callable, Mapping

# Keys of ``mtl`` that every method may take from the config (not from ``mtl.options``).
COMMON_KEYS = ("num_tasks", "seed", "task_specific")

Check = Callable[[Any], "str | None"]


def option(default: Any, check: Check | None = None, doc: str = "") -> Any:
  """A dataclass field with a default, an optional check and a one-line description.

  Args:
    default: the paper's default (a tuple for sequences; ``None`` for "not set").
    check: ``value -> None`` if fine, else the reason (``"must be > 0, got -1"``).
    doc: what the option means, shown in error messages' context (optional).

  Returns:
    A ``dataclasses.field``.
  """
  return dataclasses.field(default=default, metadata={"check": check, "doc": doc})


def at_least(low: float) -> Check:
  """Check: ``value >= low``."""
  return lambda v: None if v >= low else f"must be >= {low}, got {v!r}"


def greater(low: float) -> Check:
  """Check: ``value > low``."""
  return lambda v: None if v > low else f"must be > {low}, got {v!r}"


def in_range(low: float, high: float) -> Check:
  """Check: ``low <= value <= high``."""
  return lambda v: None if low <= v <= high else f"must be in [{low}, {high}], got {v!r}"


def one_of(*choices: Any) -> Check:
  """Check: ``value in choices``."""
  return lambda v: None if v in choices else f"must be one of {list(choices)}, got {v!r}"


def error_key(name: str) -> str:
  """The config path of a method field: ``config.mtl.<k>`` or ``config.mtl.options.<k>``."""
  return f"config.mtl.{name}" if name in COMMON_KEYS else f"config.mtl.options.{name}"


def _coerce(name: str, value: Any, default: Any) -> Any:
  """Converts ``value`` to the type of ``default``; raises ValueError naming the key."""
  if isinstance(value, str) and not isinstance(default, str) and default is not None:
    if isinstance(default, bool) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
      return value.lower() in ("true", "1", "yes")
    try:
      value = ast.literal_eval(value)
    except (ValueError, SyntaxError):
      raise ValueError(f"{error_key(name)}: cannot parse {value!r} as "
                       f"{type(default).__name__}") from None
  if default is None:
    return tuple(value) if isinstance(value, list) else value
  kind = type(default)
  ok = {bool: lambda v: isinstance(v, bool),
        int: lambda v: isinstance(v, int) and not isinstance(v, bool),
        float: lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        str: lambda v: isinstance(v, str),
        tuple: lambda v: isinstance(v, (list, tuple))}.get(kind, lambda v: True)
  if not ok(value):
    raise ValueError(f"{error_key(name)}: must be a {kind.__name__}, got {value!r}")
  if kind is float:
    return float(value)
  if kind is tuple:
    return tuple(value)
  return value


def check_fields(obj: Any) -> None:
  """Runs every field's check on a method instance; raises ValueError naming the key."""
  for f in dataclasses.fields(obj):
    check = f.metadata.get("check")
    if check is not None:
      reason = check(getattr(obj, f.name))
      if reason:
        raise ValueError(f"{error_key(f.name)}: {reason}")


def option_fields(cls: type) -> dict[str, dataclasses.Field]:
  """The method's own options (its fields minus the common keys), by name."""
  return {f.name: f for f in dataclasses.fields(cls) if f.name not in COMMON_KEYS}


def defaults(cls: type) -> dict[str, Any]:
  """The method's options with their defaults, ``{name: default}``."""
  return {k: f.default for k, f in option_fields(cls).items()}


def resolve(cls: type, options: Mapping[str, Any], common: Mapping[str, Any]) -> dict[str, Any]:
  """Constructor keyword arguments for ``cls`` from ``mtl.options`` and the common keys.

  Args:
    cls: the method class (a dataclass).
    options: ``mtl.options`` as a mapping (strings are parsed by the default's type).
    common: ``num_tasks``, ``seed``, ``task_specific`` from the ``mtl`` section; only
      those the class has as fields are passed.

  Returns:
    ``{field: value}`` for ``cls(**kwargs)``.

  Raises:
    ValueError: ``config.mtl.options.<key>: unknown option of <method>; known: ...``,
      or a type error naming the key.
  """
  fields = option_fields(cls)
  method = getattr(cls, "name", cls.__name__)
  kwargs = {}
  for key, value in options.items():
    if key not in fields:
      known = ", ".join(sorted(fields)) or "(none)"
      raise ValueError(f"config.mtl.options.{key}: unknown option of {method!r}; known: {known}")
    kwargs[key] = _coerce(key, value, fields[key].default)
  names = {f.name for f in dataclasses.fields(cls)}
  for key in COMMON_KEYS:
    if key in names and key in common:
      value = common[key]
      kwargs[key] = tuple(value) if key == "task_specific" else value
  return kwargs
