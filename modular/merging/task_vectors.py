"""Task vectors: a fine-tuned model's parameters minus its base, over the merged set.

A task vector lives on the leaves that fine-tuning could change and that are shared
between tasks: the trainable set of the run's partition (``optim.frozen``: a frozen leaf
equals its base and is left out) minus the ``exclude`` regexes (per-task heads, which
are kept per task instead of merged). It is a pruned nested dict keyed like the
parameters (``modular.train.partition``), so a merge touches only its leaves and copies
every other leaf from the base.

A fine-tuned model whose leaves or shapes differ from the base's is refused with one
line naming the first differing parameter.

References:
  Ilharco et al. 2023, "Editing Models with Task Arithmetic", ICLR, Sec. 2
  (``tau = theta_ft - theta_pre``).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp

from modular.paths import flat_paths, path_str
from modular.train.partition import Partition

PyTree = Any


def check_compatible(base: PyTree, other: PyTree, what: str = "the fine-tuned model") -> None:
  """Raises a one-line ValueError when ``other``'s paths or shapes differ from ``base``'s."""
  a, b = flat_paths(base), flat_paths(other)
  missing = sorted(set(a) - set(b))
  extra = sorted(set(b) - set(a))
  if missing:
    raise ValueError(f"merging: {what} lacks parameter {missing[0]!r} of the base "
                     f"({len(missing)} missing)")
  if extra:
    raise ValueError(f"merging: {what} has parameter {extra[0]!r} that the base lacks "
                     f"({len(extra)} extra)")
  for path, leaf in a.items():
    if tuple(jnp.shape(leaf)) != tuple(jnp.shape(b[path])):
      raise ValueError(f"merging: {what}'s {path!r} has shape {tuple(jnp.shape(b[path]))}, "
                       f"the base's {tuple(jnp.shape(leaf))}")


def merged_partition(frozen: Sequence[str] = (), exclude: Sequence[str] = ()) -> Partition:
  """The partition whose trainable set is the merged set: not frozen, not excluded."""
  return Partition(tuple(frozen) + tuple(exclude))


def task_vector(base: PyTree, finetuned: PyTree, *, frozen: Sequence[str] = (),
                exclude: Sequence[str] = (), what: str = "the fine-tuned model") -> PyTree:
  """``finetuned - base`` over the merged set.

  Args:
    base: the base parameters (nested dict).
    finetuned: a fine-tuned model's parameters, same paths and shapes.
    frozen: the run's ``optim.frozen`` regexes (those leaves are left out).
    exclude: regexes of leaves kept per task (e.g. ``("^heads/",)``).
    what: how errors name ``finetuned``.

  Returns:
    A pruned nested dict of ``finetuned - base`` (float32 or the leaves' dtype) on the
    merged leaves.

  Raises:
    ValueError: one line naming the first differing parameter or shape.
  """
  check_compatible(base, finetuned, what)
  part = merged_partition(frozen, exclude)
  return jax.tree.map(lambda f, b: jnp.asarray(f) - jnp.asarray(b),
                      part.trainable(finetuned), part.trainable(base))


def apply(base: PyTree, delta: PyTree, scaling: float = 1.0) -> PyTree:
  """``base + scaling * delta`` on ``delta``'s leaves; other leaves are ``base``'s.

  Args:
    base: nested dict of parameters.
    delta: a pruned nested dict on a subset of ``base``'s paths (e.g. a task vector).
    scaling: lambda.

  Returns:
    A new parameter dict with ``base``'s structure and dtypes.
  """
  flat = flat_paths(delta)

  def one(path, leaf):
    d = flat.get(path_str(path))
    if d is None:
      return leaf
    return (jnp.asarray(leaf) + scaling * jnp.asarray(d)).astype(jnp.asarray(leaf).dtype)

  return jax.tree_util.tree_map_with_path(one, base)
