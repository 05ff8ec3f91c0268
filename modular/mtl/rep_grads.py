"""Representation-level per-task gradients: surgery on the shared representation.

For a model split into a shared ``trunk_fn(params, *args) -> z`` and task heads
``heads_fn(params, z, *args) -> losses [T]``, the per-task gradients with respect to
``z`` cost one forward pass and ``T`` backward passes through the heads only. A
method combines them (``method.combine(z_grads, ..., mask=None)``) into one
cotangent for ``z``, which is pulled back through the trunk once. The total is close
to one summed-loss step, for any model size: this is LibMTL's ``rep_grad`` and, with
MGDA, Sener & Koltun's MGDA-UB.

The Gram matrix is taken over the whole representation (every example and feature),
as MGDA-UB defines it; LibMTL sums the representation gradients over the batch
before forming it. Parameters used inside ``heads_fn`` (the task heads) receive the
plain sum of the task gradients, which is each head's own gradient; put every
parameter that surgery should act on inside ``trunk_fn``.

Example::

  losses, z_grads, backprop = rep_value_and_grad(trunk_fn, heads_fn)(params, batch)
  z_ct, state, stats = method.combine(z_grads, state, losses=losses, mask=None)
  grads = backprop(z_ct)                     # structure of params

References:
  Sener & Koltun 2018, "Multi-Task Learning as Multi-Objective Optimization",
  NeurIPS (MGDA-UB, Section 3.3); Lin & Zhang 2023, "LibMTL: A Python Library for
  Multi-Task Learning", JMLR (rep_grad).
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp

from modular.mtl.task_grads import pull_back_tasks, resolve_strategy

PyTree = Any


def rep_value_and_grad(trunk_fn: Callable[..., PyTree], heads_fn: Callable[..., Any], *,
                       has_aux: bool = False,
                       strategy: str = "auto") -> Callable[..., tuple]:
  """Per-task gradients with respect to the shared representation.

  Args:
    trunk_fn: ``trunk_fn(params, *args) -> z`` (a pytree of arrays).
    heads_fn: ``heads_fn(params, z, *args) -> losses [T]`` (or ``(losses, aux)``).
    has_aux: whether ``heads_fn`` returns ``(losses, aux)``.
    strategy: how the ``T`` head backward passes run (``"vmap"``, ``"unroll"``,
      ``"auto"``).

  Returns:
    A function ``(params, *args) -> (losses, z_task_grads, backprop)``: losses
    ``[T]`` (or ``(losses, aux)``), ``z_task_grads`` the structure of ``z`` with a
    leading task axis ``[T, ...]``, and ``backprop(z_cotangent) -> grads`` giving
    the parameter gradient (trunk through ``z_cotangent``, heads by the summed
    losses).
  """
  resolve_strategy(strategy)

  def wrapped(params, *args):
    z, trunk_vjp = jax.vjp(lambda p: trunk_fn(p, *args), params)
    heads = lambda p, zz: heads_fn(p, zz, *args)
    if has_aux:
      losses, heads_vjp, aux = jax.vjp(heads, params, z, has_aux=True)
    else:
      losses, heads_vjp = jax.vjp(heads, params, z)
    num_tasks = losses.shape[0]
    # T backward passes through the heads; only the z part is kept (XLA drops the rest).
    _, z_task_grads = pull_back_tasks(heads_vjp, num_tasks, losses.dtype, strategy)
    # One more through the heads for their own parameters (z part unused, dropped).
    head_param_grads, _ = heads_vjp(jnp.ones((num_tasks,), losses.dtype))

    def backprop(z_cotangent: PyTree) -> PyTree:
      (trunk_grads,) = trunk_vjp(z_cotangent)
      return jax.tree_util.tree_map(jnp.add, trunk_grads, head_param_grads)

    return ((losses, aux) if has_aux else losses), z_task_grads, backprop

  return wrapped
