"""The one dropout both blocks (decoder and encoder) use on sublayer outputs."""

import jax
import jax.numpy as jnp
import numpy as np

from modular.models.context import Context
from modular.models.transformer import dropout


def _ctx(deterministic):
  return Context(task_id=jnp.zeros((2,), jnp.int32), num_tasks=1,
                 deterministic=deterministic, rng=None if deterministic else jax.random.PRNGKey(0))


def test_dropout_rate_scale_and_identity():
  x = jnp.ones((8, 4096))
  for rate in (0.1, 0.5):
    y = np.asarray(dropout(x, rate, _ctx(False), "drop_ffn"))
    dropped = (y == 0).mean()
    assert abs(dropped - rate) < 0.02, (rate, dropped)  # binomial sd < 0.003
    np.testing.assert_allclose(y[y != 0], 1.0 / (1.0 - rate), rtol=1e-6)  # inverted scaling
  np.testing.assert_array_equal(dropout(x, 0.5, _ctx(True), "drop_ffn"), x)
  np.testing.assert_array_equal(dropout(x, 0.0, _ctx(False), "drop_ffn"), x)
  a = dropout(x, 0.5, _ctx(False), "drop_attn")
  b = dropout(x, 0.5, _ctx(False), "drop_ffn")
  assert not np.array_equal(a, b)  # each named site draws its own mask
  np.testing.assert_array_equal(a, dropout(x, 0.5, _ctx(False), "drop_attn"))
