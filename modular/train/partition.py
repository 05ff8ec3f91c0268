"""The trainable / frozen partition of the parameters, from ``optim.frozen`` path regexes.

The step splits the parameter dict into two sub-dicts before differentiating: only the
trainable one is an argument of the loss that ``jax.vjp`` / ``jax.grad`` see, so a frozen
parameter gets no backward work and reaches nothing downstream (the clip norm, the
logged ``grad_norm``, the gradient-surgery Gram matrix, the optimizer state and weight
decay all see trainable leaves only). The frozen sub-dict enters the forward pass as a
constant; ``merge`` rebuilds the full dict, so ``state["params"]`` still holds every
parameter and checkpoints keep their layout.

Sub-dicts are pruned nested dicts: a branch without a trainable leaf is left out, so
the trainable dict has exactly the structure optax and orbax need. With no frozen
pattern the trainable dict is the parameter dict itself.

The partition knows no model: it reads regexes (``re.search``) over parameter paths
(``"blocks/0/ffn/base/w_in"``, see ``modular.paths``), e.g. the parameter-efficient
mode's ``modules.peft.frozen_backbone()`` or every tensor imported from a pretrained
checkpoint.
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Mapping
from typing import Any, Callable, Sequence

PyTree = Any
_EMPTY = object()


def _select(tree: PyTree, keep: Callable[[str], bool], prefix: str) -> Any:
  """The leaves of ``tree`` whose path passes ``keep``, empty branches pruned."""
  if isinstance(tree, Mapping):
    out = {}
    for k, v in tree.items():
      sub = _select(v, keep, f"{prefix}/{k}" if prefix else str(k))
      if sub is not _EMPTY:
        out[k] = sub
    return out if out else _EMPTY
  return tree if keep(prefix) else _EMPTY


def _merge(a: Any, b: Any) -> Any:
  """The union of two nested dicts with disjoint leaves."""
  if not isinstance(a, Mapping) or not isinstance(b, Mapping):
    raise ValueError("partition: the trainable and frozen sub-dicts overlap")
  out = dict(a)
  for k, v in b.items():
    out[k] = _merge(out[k], v) if k in out else v
  return out


@dataclasses.dataclass(frozen=True)
class Partition:
  """Which parameters train: every path that matches none of ``frozen``.

  Attributes:
    frozen: path regexes (``re.search``) of the frozen parameters.
  """

  frozen: tuple[str, ...] = ()

  @classmethod
  def from_patterns(cls, frozen: Sequence[str], params: PyTree | None = None,
                    key: str = "optim.frozen") -> "Partition":
    """Builds and checks the partition of ``params``.

    Args:
      frozen: path regexes (the config's ``optim.frozen``).
      params: the parameter dict; when given, the partition must leave at least one
        trainable leaf, and patterns that match nothing are logged.
      key: the config key named in errors.

    Returns:
      The partition.

    Raises:
      ValueError: ``config.<key>: ...`` for an invalid regex or when every
        parameter would be frozen.
    """
    for p in frozen:
      try:
        re.compile(p)
      except re.error as e:
        raise ValueError(f"config.{key}: invalid regex {p!r} ({e})") from None
    part = cls(tuple(frozen))
    if params is not None and part.frozen:
      from modular.paths import flat_paths  # local: keeps this file free of jax at import
      names = list(flat_paths(params))
      if all(part.is_frozen(n) for n in names):
        raise ValueError(f"config.{key}: freezes all {len(names)} parameters; nothing "
                         "would train")
      unused = [p for p in part.frozen if not any(re.search(p, n) for n in names)]
      if unused:
        logging.info("%s patterns that match no parameter of this model: %s", key, unused)
    return part

  def is_frozen(self, path: str) -> bool:
    """Whether the parameter at ``path`` is frozen."""
    return any(re.search(p, path) for p in self.frozen)

  def trainable(self, tree: PyTree) -> PyTree:
    """The trainable sub-dict of ``tree`` (params, shardings, ... keyed like params)."""
    if not self.frozen:
      return tree
    out = _select(tree, lambda p: not self.is_frozen(p), "")
    return {} if out is _EMPTY else out

  def frozen_part(self, tree: PyTree) -> PyTree:
    """The frozen sub-dict of ``tree`` ({} when nothing is frozen)."""
    if not self.frozen:
      return {}
    out = _select(tree, self.is_frozen, "")
    return {} if out is _EMPTY else out

  def split(self, tree: PyTree) -> tuple[PyTree, PyTree]:
    """``(trainable, frozen)`` sub-dicts of ``tree``."""
    return self.trainable(tree), self.frozen_part(tree)

  def merge(self, trainable: PyTree, frozen: PyTree) -> PyTree:
    """The full dict from its two parts (inverse of ``split``)."""
    if not self.frozen:
      return trainable
    return _merge(trainable, frozen)
