"""The precision policy: the compute dtype of the model, float32 where it matters.

``model.dtype`` names the compute dtype ("float32", the default, or "bfloat16").
Parameters and the optimizer state stay float32 (the master copy): the functional
model casts the floating parameter leaves to the compute dtype when it runs
(``FunctionalModel.apply``), so the embeddings, every matmul and attention run in the
compute dtype, and the gradients, which flow back through the cast, arrive in
float32. What is kept in float32 whatever the compute dtype:

* LayerNorm / RMSNorm statistics (mean, variance) and the normalization itself
  (``norm_in_float32``);
* every softmax: attention probabilities on the exact path, router and gate
  probabilities (``softmax``); ``jax.nn.dot_product_attention`` already computes
  its logits and softmax in float32 for bfloat16 inputs;
* the losses (``objective.token_losses`` upcasts the logits), auxiliary losses
  (``Context.add_loss``), the Gram matrix of per-task gradients
  (``mtl.gram.gram_matrix`` accumulates in float32) and every multi-task solve,
  which sees float32 gradients.

The residual stream is carried in the compute dtype: a block's output is cast back
to it (``residual``), so a float32 statistic cannot silently promote the rest of the
network.

References:
  Micikevicius et al. 2018, "Mixed Precision Training" (float32 master weights).
  Kalamkar et al. 2019, "A Study of BFLOAT16 for Deep Learning Training".
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
NAMES = tuple(DTYPES)


def check(name: str) -> str:
  """Returns ``name`` if it is a known compute dtype.

  Raises:
    ValueError: one line naming ``config.model.dtype`` and the known names.
  """
  if name not in DTYPES:
    raise ValueError(f"config.model.dtype: unknown {name!r}; known: {', '.join(NAMES)}")
  return name


def compute_dtype(name: str) -> Any:
  """The jnp dtype for a policy name ("float32" -> jnp.float32)."""
  return DTYPES[check(name)]


def cast_params(params: Any, name: str) -> Any:
  """Casts the floating leaves of a parameter pytree to the compute dtype ``name``.

  Integer and boolean leaves are left as they are; with "float32" the tree is
  returned unchanged (the same arrays). The cast is differentiable: the gradient of
  a loss with respect to the float32 master leaves is float32.
  """
  if name == "float32":
    return params
  dtype = compute_dtype(name)

  def cast(x):
    x = jnp.asarray(x)
    return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x

  return jax.tree.map(cast, params)


def softmax(logits: jax.Array, axis: int = -1) -> jax.Array:
  """softmax in float32, returned in the dtype of ``logits``."""
  return jax.nn.softmax(logits.astype(jnp.float32), axis=axis).astype(logits.dtype)


def norm_in_float32(x: jax.Array, scale: jax.Array, bias: jax.Array | None, eps: float,
                    center: bool = True) -> jax.Array:
  """LayerNorm (``center``) or RMSNorm of the last axis in float32, returned in x's dtype.

  Args:
    x: [..., d] activations in the compute dtype.
    scale: [d] gain; bias: [d] shift or None.
    eps: added to the variance (or the mean square).
    center: subtract the mean (LayerNorm) or not (RMSNorm).

  Returns:
    [..., d] normalized ``x`` times ``scale`` (plus ``bias``), in ``x.dtype``.
  """
  x32 = x.astype(jnp.float32)
  if center:
    x32 = x32 - x32.mean(-1, keepdims=True)
  var = (x32 ** 2).mean(-1, keepdims=True)
  out = x32 * jax.lax.rsqrt(var + eps) * scale.astype(jnp.float32)
  if bias is not None:
    out = out + bias.astype(jnp.float32)
  return out.astype(x.dtype)


def residual(x: jax.Array, like: jax.Array) -> jax.Array:
  """``x`` in the dtype of ``like`` (the residual stream's compute dtype)."""
  return x.astype(like.dtype)
