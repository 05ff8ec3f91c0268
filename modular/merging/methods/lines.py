"""LiNeS: scale the merged update of each layer linearly with the layer's depth.

A merged task vector ``delta`` (Task Arithmetic's ``sum_t w_t tau_t`` by default, or
any other registered method's, ``merge=``) is scaled per layer,

  theta = theta_0 + lambda(l) * delta_l,   lambda(l) = alpha + beta * l / (L - 1),

for the blocks ``l = 0 .. L-1``, so shallow layers stay near the pretrained weights
(general features) and deep layers keep their task-specific updates (the paper's
``lambda^(l) = alpha + beta (l - 1) / (L - 1)`` with 1-based ``l``).

Layer depth from the parameter path (``layer_depth``): ``blocks/<i>/...`` is block
``i``, at depth ``i / (L - 1)`` (0 when ``L = 1``); leaves before the blocks (``embed``,
``pos_embed``, ``type_embed``, ``ln_embed``) sit at the shallow end (depth 0: scaled by
``alpha``); leaves after them (``ln_final``, ``head``, ``heads``, per-task heads) at the
deep end (depth 1: ``alpha + beta``). ``L`` is ``num_blocks`` or, when None, one more
than the largest block index among the merged leaves.

Defaults: the paper tunes ``alpha`` and ``beta`` on validation data. Here
``alpha = None`` means ``1 / T``, so the shallowest layers get the tasks' average (the
paper's motivation: keep them close to the shared pretrained features), and
``beta = 0.5`` is the middle of the paper's ``[0, 1]`` range for the deep-layer
increase; sweep both (``modular-sweep``) for a real comparison.

References:
  Wang et al. 2024, "LiNeS: Post-training Layer Scaling Prevents Forgetting and
  Enhances Model Merging", ICLR 2025, Sec. 3 (Eq. 1) and Sec. 4 (multi-task merging).
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Iterable, Sequence

import jax

from modular.merging import method as method_lib
from modular.merging.method import MergeMethod, at_least, option, register

_BLOCK = re.compile(r"^blocks/(\d+)(/|$)")
_DEEP = ("ln_final", "head", "heads")


def block_index(path: str) -> int | None:
  """``"blocks/3/ffn/w_in" -> 3``; None for a leaf outside the blocks."""
  m = _BLOCK.match(path)
  return int(m.group(1)) if m else None


def layer_depth(path: str, num_blocks: int) -> float:
  """The depth in [0, 1] of a leaf (see the module docstring).

  Args:
    path: the parameter path.
    num_blocks: L, the number of blocks.

  Returns:
    ``i / (L - 1)`` for ``blocks/<i>`` (0 when ``L = 1``); 1 for the leaves after the
    blocks (``ln_final``, heads, ``per_task_*``); 0 for the embeddings.
  """
  i = block_index(path)
  if i is not None:
    return i / (num_blocks - 1) if num_blocks > 1 else 0.0
  first = path.split("/", 1)[0]
  if first in _DEEP or "per_task_" in path:
    return 1.0
  return 0.0


def _optional_nonnegative(v) -> str | None:
  if v is None or (isinstance(v, (int, float)) and v >= 0):
    return None
  return f"must be None or >= 0, got {v!r}"


def _optional_blocks(v) -> str | None:
  if v is None or (isinstance(v, int) and v >= 1):
    return None
  return f"must be None or an int >= 1, got {v!r}"


def _plain_method(name: str) -> str | None:
  if name == "lines":
    return "must name another method, not 'lines'"
  try:
    cls = method_lib.METHODS.get(name)
  except KeyError as e:
    return e.args[0]
  if cls.statistics is not None or cls.per_task_output or cls.random:
    return f"{name!r} needs statistics, a key or gives one model per task; use a plain method"
  return None


@register("lines")
@dataclasses.dataclass(eq=False)
class LiNeS(MergeMethod):
  """Layer-increasing network scaling of a merged task vector.

  Attributes:
    alpha: the shallowest layers' factor; None: ``1 / T``.
    beta: the increase from the shallowest to the deepest block.
    num_blocks: L; None: inferred from the merged paths.
    merge: the method whose merged update is scaled (its default options, its own
      ``scaling`` ignored); default ``task_arithmetic``: ``sum_t w_t tau_t``.
    scaling: a global factor on top of ``lambda(l)`` (default 1).
  """

  alpha: float | None = option(None, _optional_nonnegative)
  beta: float = option(0.5, at_least(0.0))
  num_blocks: int | None = option(None, _optional_blocks)
  merge: str = option("task_arithmetic", _plain_method)
  scaling: float = option(1.0, at_least(0.0))
  identity_options = {"alpha": 1.0, "beta": 0.0}

  def __post_init__(self):
    super().__post_init__()
    self._inner = method_lib.build(self.merge)

  def prepare(self, leaves: Callable[[], Iterable[jax.Array]], *,
              paths: Sequence[str] = (), **kw) -> Any:
    """``(L, T, the inner method's context)``."""
    blocks = [i for i in map(block_index, paths) if i is not None]
    num_blocks = self.num_blocks or (max(blocks) + 1 if blocks else 1)
    if blocks and max(blocks) >= num_blocks:
      raise ValueError(f"merging.options.num_blocks: {num_blocks}, but the task vectors "
                       f"hold block {max(blocks)}")
    num_tasks = next(iter(leaves())).shape[0] if paths else 1
    return num_blocks, num_tasks, self._inner.prepare(leaves, paths=paths, **kw)

  def factor(self, path: str, num_blocks: int, num_tasks: int) -> float:
    """``lambda(l) = alpha + beta * depth(path)``."""
    alpha = 1.0 / num_tasks if self.alpha is None else self.alpha
    return alpha + self.beta * layer_depth(path, num_blocks)

  def combine(self, tau: jax.Array, weights: jax.Array, *, context: Any = None,
              path: str = "", **kw) -> jax.Array:
    """``[T, *shape], [T] -> [*shape]``: the inner method's update times ``lambda(l)``."""
    num_blocks, num_tasks, inner = context
    delta = self._inner.combine(tau, weights, context=inner, path=path, **kw)
    return self.factor(path, num_blocks, num_tasks) * delta
