"""Rematerialization of transformer blocks (``model.remat``), chosen by name.

``jax.checkpoint`` around each block trades compute for memory: the backward pass
recomputes the block's activations instead of keeping them from the forward pass. The
policy names which intermediates may still be saved:

  none              no checkpoint (every activation the backward needs is kept)
  block             checkpoint each block with jax's default policy: only the block's
                    input is saved, everything inside is recomputed
  nothing_saveable  the same, named as ``jax.checkpoint_policies`` names it
  dots_saveable     matmul outputs are saved, the elementwise work is recomputed
  dots_with_no_batch_dims_saveable  only matmuls without batch dimensions (the weight
                    products, not attention's q k^T and p v) are saved

Blocks write auxiliary losses, statistics and captures into the ``Context``
collectors; inside ``jax.checkpoint`` they write into fresh collectors that the
checkpointed function returns, and ``call`` merges them into the caller's. With
``ctx.capture`` or ``ctx.patches`` (analysis) blocks run without a checkpoint: the
exact path is kept.

References:
  Chen et al. 2016, "Training Deep Nets with Sublinear Memory Cost".
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import jax
from flax import nnx

from modular.models.context import Context

_POLICIES = jax.checkpoint_policies
POLICIES: dict[str, Callable | None] = {
    "block": None,  # jax.checkpoint's default: save nothing but the inputs
    "nothing_saveable": _POLICIES.nothing_saveable,
    "dots_saveable": _POLICIES.dots_saveable,
    "dots_with_no_batch_dims_saveable": _POLICIES.dots_with_no_batch_dims_saveable,
}
NAMES = ("none",) + tuple(POLICIES)


def check(name: str) -> str:
  """Returns ``name`` if it is a known remat policy; raises naming the config key."""
  if name not in NAMES:
    raise ValueError(f"config.model.remat: unknown {name!r}; known: {', '.join(NAMES)}")
  return name


def call(block: nnx.Module, x: jax.Array, ctx: Context, remat: str, **kwargs) -> jax.Array:
  """Runs ``block(x, ctx, **kwargs)``, under ``jax.checkpoint`` unless ``remat == "none"``.

  Args:
    block: an NNX block ``(x [B, L, d], ctx) -> [B, L, d]``.
    x: the residual stream [B, L, d].
    ctx: the block's context (collectors shared with the model's).
    remat: a name of ``NAMES``.
    **kwargs: passed to the block.

  Returns:
    The block's output [B, L, d]; its losses and statistics are in ``ctx``.
  """
  if remat == "none" or ctx.capture or ctx.patches:
    return block(x, ctx, **kwargs)
  graphdef, state = nnx.split(block)

  def run(state, x):
    inner = dataclasses.replace(ctx, losses={}, stats={}, intermediates={})
    y = nnx.merge(graphdef, state)(x, inner, **kwargs)
    return y, (inner.losses, inner.stats)

  y, (losses, stats) = jax.checkpoint(run, policy=POLICIES[remat])(state, x)
  ctx.losses.update(losses)
  ctx.stats.update(stats)
  return y
