"""The fused attention (``jax.nn.dot_product_attention``) against the exact path.

Training runs without head gates and capture and takes the fused path; the analysis
(gates of ones, capture) takes the exact one. On the decoder (causal) and the encoder
(padded keys masked), the logits and the gradients of both paths agree to float32
tolerance, and the exact path with capture records the probabilities.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modular import models as models_lib
from modular.objective import FunctionalModel

T, B, L, V = 2, 3, 7, 13


def _model(arch):
  cfg = models_lib.default_model_config()
  cfg.update(d_model=16, num_heads=2, num_layers=2, d_ff=32, vocab_size=V, seq_len=L,
             num_tasks=T, arch=arch)
  return FunctionalModel.split(models_lib.build_model(cfg, seed=0))[:2]


@pytest.mark.parametrize("arch", ["decoder", "encoder"])
def test_fused_attention_equals_the_exact_path(arch):
  fm, params = _model(arch)
  r = np.random.default_rng(0)
  inputs = r.integers(1, V, size=(B, L)).astype(np.int32)
  inputs[1, 4:] = 0  # padding: the encoder masks these keys
  batch = {"inputs": jnp.asarray(inputs), "task_id": jnp.asarray([0, 1, 1], jnp.int32)}
  ones = jnp.ones((fm.num_layers, fm.num_heads))

  def both(p):
    fast = lambda q: fm.apply(q, batch)[0]
    exact = lambda q: fm.apply(q, batch, head_gates=ones)[0]
    loss = lambda f: lambda q: jnp.sum(jnp.sin(f(q)))
    return fast(p), exact(p), jax.grad(loss(fast))(p), jax.grad(loss(exact))(p)

  fast, exact, g_fast, g_exact = jax.jit(both)(params)
  np.testing.assert_allclose(fast, exact, rtol=1e-5, atol=1e-5)
  diff = max(float(jnp.max(jnp.abs(a - b)))
             for a, b in zip(jax.tree.leaves(g_fast), jax.tree.leaves(g_exact)))
  assert diff < 1e-5, diff
  print(f"{arch}: max |logits| diff {float(jnp.max(jnp.abs(fast - exact))):.1e}, "
        f"grads {diff:.1e}")
  _, ctx = fm.apply(params, batch, capture=True)
  probs = ctx.intermediates["block0/attn/attn_probs"]  # [B, H, L, L]
  np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
