"""What predicts interference at merge time: task-vector cosines and sign conflicts per layer.

* ``cosine_matrix``: ``[T, T]`` cosine similarities of the flattened task vectors,
  accumulated one leaf at a time (``G += tau_leaf tau_leaf^T``), the matrix task
  arithmetic's analysis reports (near-orthogonal task vectors merge with little
  interference).
* ``sign_conflicts``: per layer, the share of coordinates where the tasks that move a
  coordinate do not all move it the same way (some ``tau_t > 0`` and some ``tau_t < 0``),
  the interference TIES's sign election resolves; optionally after trimming each task to
  its top ``k`` per tensor, as TIES counts them.

Layers are named by ``layer_of(path)``: ``blocks/<i>`` for the blocks, else the first
path component (``embed``, ``head``, ``ln_final``).

References:
  Ilharco et al. 2023, "Editing Models with Task Arithmetic", ICLR, Sec. 6 (cosine
  similarity of task vectors); Yadav et al. 2023, "TIES-Merging: Resolving Interference
  When Merging Models", NeurIPS, Sec. 3 and Fig. 3 (sign conflicts).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import jax.numpy as jnp
import numpy as np

from modular.merging import ops
from modular.paths import flat_paths

PyTree = Any


def layer_of(path: str) -> str:
  """``"blocks/3/ffn/w_in" -> "blocks/3"``; ``"embed" -> "embed"``."""
  parts = path.split("/")
  if parts[0] == "blocks" and len(parts) > 1:
    return "/".join(parts[:2])
  return parts[0]


def _stacked_leaves(task_vectors: Sequence[PyTree]):
  flats = [flat_paths(tv) for tv in task_vectors]
  for p in sorted(flats[0]):
    yield p, jnp.stack([jnp.asarray(f[p], jnp.float32) for f in flats])


def cosine_matrix(task_vectors: Sequence[PyTree]) -> np.ndarray:
  """``[T, T]`` cosine similarities of the task vectors (0 rows for zero vectors).

  Args:
    task_vectors: ``T`` pytrees with the same leaves.

  Returns:
    float64 ``[T, T]``; the diagonal is 1 for every non-zero task vector.
  """
  t = len(task_vectors)
  gram = np.zeros((t, t), np.float64)
  for _, tau in _stacked_leaves(task_vectors):
    flat = tau.reshape(t, -1)
    gram += np.asarray(flat @ flat.T, np.float64)
  norms = np.sqrt(np.maximum(np.diag(gram), 0.0))
  safe = np.where(norms > 0, norms, 1.0)
  cos = gram / safe[:, None] / safe[None, :]
  return np.where((norms[:, None] > 0) & (norms[None, :] > 0), cos, 0.0)


def sign_conflicts(task_vectors: Sequence[PyTree], k: float | None = None,
                   layer: Callable[[str], str] = layer_of) -> dict[str, float]:
  """Per layer, the share of coordinates whose non-zero task entries disagree in sign.

  Args:
    task_vectors: ``T`` pytrees with the same leaves.
    k: trim each task to its top ``k`` per tensor first (TIES's count); None: no trim.
    layer: maps a parameter path to its layer name.

  Returns:
    ``{layer: share in [0, 1]}``, plus ``"all"`` over every coordinate.
  """
  conflicts: dict[str, float] = {}
  sizes: dict[str, int] = {}
  for p, tau in _stacked_leaves(task_vectors):
    if k is not None:
      tau = tau * ops.topk_mask(tau, k)
    conflict = jnp.any(tau > 0, axis=0) & jnp.any(tau < 0, axis=0)
    name = layer(p)
    conflicts[name] = conflicts.get(name, 0.0) + float(jnp.sum(conflict))
    sizes[name] = sizes.get(name, 0) + int(conflict.size)
  out = {name: conflicts[name] / sizes[name] for name in sorted(sizes)}
  total = sum(sizes.values())
  out["all"] = sum(conflicts.values()) / total if total else 0.0
  return out
