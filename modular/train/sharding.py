"""Device mesh and logical-axis sharding rules.

Parameters carry logical axis names (``logical_axes`` metadata: vocab, embed, mlp,
heads, ...); the config's ``mesh.rules`` table maps each name to mesh axes
(big_vision / MaxText style). The same code runs on one CPU, on 8 simulated CPU
devices, on a GPU and on a multi-host pod: only the mesh shape changes.

A dimension whose size is not divisible by its mesh axes is replicated instead
(e.g. a vocabulary of 31 on a model axis of 2): this keeps small research models
running on any mesh, and ``describe`` shows what was chosen.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from modular import config as config_lib
from modular.paths import path_str


def make_mesh(cfg: ml_collections.ConfigDict, devices: Sequence[jax.Device] | None = None
              ) -> Mesh:
  """Builds the named mesh of ``cfg.mesh.shape`` over ``devices`` (default: all).

  Uses ``jax.sharding.Mesh`` directly (Auto axis types: sharding propagates from the
  annotated inputs and outputs of the jitted step).
  """
  devices = list(jax.devices() if devices is None else devices)
  shape = config_lib.mesh_shape(cfg, len(devices))
  grid = np.asarray(devices, dtype=object).reshape(tuple(shape.values()))
  return Mesh(grid, tuple(shape.keys()))


def _mesh_axes(rules: dict[str, Any], logical: str | None) -> tuple[str, ...]:
  if logical is None or logical not in rules or rules[logical] is None:
    return ()
  target = rules[logical]
  return tuple(target) if isinstance(target, (tuple, list)) else (target,)


def logical_to_spec(logical_axes: Sequence[str | None] | None, shape: Sequence[int],
                    rules: dict[str, Any], mesh: Mesh) -> P:
  """Maps a parameter's logical axes to a PartitionSpec on ``mesh``.

  Args:
    logical_axes: one logical name (or None) per dimension; None: replicated.
    shape: the array's shape (for the divisibility check).
    rules: logical name -> mesh axis / tuple of mesh axes / None.
    mesh: the device mesh.

  Returns:
    A PartitionSpec; a mesh axis is used at most once, and only on a dimension it divides.
  """
  if logical_axes is None:
    return P()
  used: set[str] = set()
  spec = []
  for name, size in zip(logical_axes, shape):
    axes = tuple(a for a in _mesh_axes(rules, name)
                 if a not in used and mesh.shape.get(a, 1) > 1)
    n = math.prod(mesh.shape[a] for a in axes) if axes else 1
    if not axes or size % n:
      spec.append(None)
      continue
    used.update(axes)
    spec.append(axes[0] if len(axes) == 1 else axes)
  return P(*spec)


def param_shardings(params: Any, logical_axes: Any, cfg: ml_collections.ConfigDict,
                    mesh: Mesh) -> Any:
  """NamedShardings for a parameter tree from its logical axes tree."""
  rules = dict((k, v) for k, v in cfg.mesh.rules)
  return jax.tree.map(
      lambda p, axes: NamedSharding(mesh, logical_to_spec(axes, p.shape, rules, mesh)),
      params, logical_axes, is_leaf=lambda x: isinstance(x, tuple) or x is None)


def batch_sharding(cfg: ml_collections.ConfigDict, mesh: Mesh) -> NamedSharding:
  """Shards the leading (batch) dimension over the mesh axes of the ``batch`` rule."""
  rules = dict((k, v) for k, v in cfg.mesh.rules)
  axes = tuple(a for a in _mesh_axes(rules, "batch") if mesh.shape.get(a, 1) > 1)
  return NamedSharding(mesh, P(axes if axes else None))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def describe(params: Any, shardings: Any) -> list[str]:
  """One line per parameter: path, shape and PartitionSpec (for logs and tests)."""
  lines = []
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  specs = jax.tree.leaves(shardings, is_leaf=lambda x: isinstance(x, NamedSharding))
  for (path, p), s in zip(flat, specs):
    lines.append(f"{path_str(path)} {tuple(p.shape)} {s.spec}")
  return lines
