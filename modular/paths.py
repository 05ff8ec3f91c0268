"""Parameter paths as strings: ``"blocks/0/ffn/w_in"``.

One spelling for every place that selects parameters by regex (sharding logs,
optimizer path rules, gradient-surgery task-specific rules, frozen backbones,
warm starts).
"""

from __future__ import annotations

from typing import Any, Sequence

import jax


def path_str(path: Sequence[Any]) -> str:
  """Joins a pytree key path as ``"a/b/0/c"``.

  Args:
    path: a key path from ``jax.tree_util.tree_flatten_with_path``.

  Returns:
    The keys joined by ``"/"`` (dict keys, sequence indices, attribute names).
  """
  parts = []
  for k in path:
    if isinstance(k, jax.tree_util.DictKey):
      parts.append(str(k.key))
    elif isinstance(k, jax.tree_util.SequenceKey):
      parts.append(str(k.idx))
    elif isinstance(k, jax.tree_util.GetAttrKey):
      parts.append(str(k.name))
    elif isinstance(k, jax.tree_util.FlattenedIndexKey):
      parts.append(str(k.key))
    else:
      parts.append(str(k))
  return "/".join(parts)


def flat_paths(tree: Any) -> dict[str, Any]:
  """``{"blocks/0/ffn/w_in": leaf, ...}`` of a pytree."""
  return {path_str(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}
