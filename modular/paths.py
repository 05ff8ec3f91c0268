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
    The keys joined by ``"/"`` (dict keys, sequence indices, attribute names):
    ``jax.tree_util.keystr(path, simple=True, separator="/")``.
  """
  return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def flat_paths(tree: Any) -> dict[str, Any]:
  """``{"blocks/0/ffn/w_in": leaf, ...}`` of a pytree."""
  return {path_str(p): leaf for p, leaf in jax.tree_util.tree_leaves_with_path(tree)}
