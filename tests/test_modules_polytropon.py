"""Polytropon: skill averaging against NumPy, sampling modes, telemetry, gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from modular.modules import routing
from modular.modules import testing as T


def _sigmoid(z):
  return 1.0 / (1.0 + np.exp(-z))


def _ffn(**opts):
  cfg = {"name": "polytropon", "num_skills": 3, "rank": 4, **opts}
  ffn = T.build_filler("ffn", cfg, T.slot_args(d_model=8, d_ff=12, num_tasks=3))
  key = jax.random.PRNGKey(5)
  for sk in (ffn.skills_in, ffn.skills_out):  # non-zero B so the updates show
    key, sub = jax.random.split(key)
    sk.b[...] = 0.3 * jax.random.normal(sub, sk.b.shape)
  ffn.allocation.logits[...] = 2.0 * jax.random.normal(key, ffn.allocation.logits.shape)
  return ffn


def _np_forward(ffn, x, task, alloc):
  """Per example: average the skills' A and B with the task's normalized weights."""
  base = {k: np.asarray(getattr(ffn.base, k)[...]) for k in ("w_in", "b_in", "w_out", "b_out")}
  w = alloc / (alloc.sum(-1, keepdims=True) + 1e-6)  # [T, h, S]

  def update(sk, v, t):
    a, b = np.asarray(sk.a[...]), np.asarray(sk.b[...])  # [S, d, h, r], [S, h, r, f]
    out = 0
    for head in range(a.shape[2]):
      a_t = sum(w[t, head, s] * a[s, :, head] for s in range(a.shape[0]))  # [d, r]
      b_t = sum(w[t, head, s] * b[s, head] for s in range(a.shape[0]))  # [r, f]
      out = out + v @ a_t @ b_t
    return sk.scale * out

  ys = []
  for i, t in enumerate(task):
    h = np.maximum(x[i] @ base["w_in"] + base["b_in"] + update(ffn.skills_in, x[i], t), 0)
    ys.append(h @ base["w_out"] + base["b_out"] + update(ffn.skills_out, h, t))
  return np.stack(ys)


@pytest.mark.parametrize("heads", [1, 2])
def test_skill_averaging_matches_numpy_at_evaluation(heads):
  ffn = _ffn(heads=heads)
  x = np.random.default_rng(0).normal(size=(4, 5, 8)).astype(np.float32)
  task = [0, 2, 1, 2]
  y, losses, stats = T.call(ffn, jnp.asarray(x), task, 3)
  p = _sigmoid(np.asarray(ffn.allocation.logits[...], np.float64))  # eval: sigmoid
  np.testing.assert_allclose(np.asarray(y), _np_forward(ffn, x, task, p), rtol=1e-4, atol=1e-5)
  # Telemetry of the shared allocation, recorded once under polytropon/.
  np.testing.assert_allclose(np.asarray(stats["polytropon/task_skill"]), p.mean(1), rtol=1e-5)
  ent = -(p * np.log(p) + (1 - p) * np.log(1 - p)).mean()
  np.testing.assert_allclose(float(stats["polytropon/discreteness"]), ent, rtol=1e-4)
  np.testing.assert_allclose(float(stats["polytropon/sparsity"]), (p < 0.5).mean())
  u = p.sum((0, 1)) / p.sum()
  np.testing.assert_allclose(float(stats["polytropon/skill_entropy"]), -(u * np.log(u)).sum(),
                             rtol=1e-4)
  assert not losses


@pytest.mark.parametrize("st", [False, True])
def test_training_uses_gumbel_sigmoid_samples(st):
  ffn = _ffn(temperature=0.5, straight_through=st, sparsity_weight=0.1)
  x = np.random.default_rng(1).normal(size=(3, 4, 8)).astype(np.float32)
  rng = jax.random.PRNGKey(9)
  y, losses, _ = T.call(ffn, jnp.asarray(x), [0, 1, 2], 3, rng=rng)
  key = T.context([0], 3, rng=rng).at(layer=-1, position="polytropon").key("allocation")
  logits = ffn.allocation.logits[...]
  sample = np.asarray(routing.gumbel_sigmoid(logits, key, 0.5), np.float64)
  if st:
    sample = (sample > 0.5).astype(np.float64)
  np.testing.assert_allclose(np.asarray(y), _np_forward(ffn, x, [0, 1, 2], sample),
                             rtol=1e-4, atol=1e-5)
  p = _sigmoid(np.asarray(logits, np.float64))
  np.testing.assert_allclose(float(losses["polytropon/sparsity"]), 0.1 * p.mean(), rtol=1e-5)


def test_gumbel_sigmoid_is_a_relaxed_bernoulli():
  logits = jnp.array([-1.0, 0.0, 2.0])
  draws = jax.vmap(lambda k: routing.gumbel_sigmoid(logits, k, 0.1))(
      jax.random.split(jax.random.PRNGKey(0), 4000))
  np.testing.assert_allclose(np.asarray((draws > 0.5).mean(0)), _sigmoid(np.asarray(logits)),
                             atol=0.03)


@pytest.mark.parametrize("opts", [{}, {"straight_through": True}, {"heads": 2},
                                  {"share_allocation": False}])
def test_gradient_reaches_allocation_logits(opts):
  ffn = _ffn(**opts)
  # Mostly-on allocations: a straight-through sample with no active skill gives its
  # task no update (the update is bilinear in the weights) and so no gradient.
  ffn.allocation.logits[...] = 1.5 + 0.5 * ffn.allocation.logits[...]
  graphdef, params = nnx.split(ffn, nnx.Param)
  x = jax.random.normal(jax.random.PRNGKey(2), (3, 4, 8))

  def loss(params):
    ctx = T.context([0, 1, 2], 3, rng=jax.random.PRNGKey(0))
    return jnp.sum(nnx.merge(graphdef, params)(x, ctx) ** 2)

  g = jax.jit(jax.grad(loss))(params)["allocation"]["logits"][...]
  assert np.all(np.abs(np.asarray(g)).sum((1, 2)) > 0)  # every task's row


def test_shared_allocation_is_one_matrix_for_the_model():
  from modular.objective import FunctionalModel
  model = T.build(T.model_config(3, ffn={"name": "polytropon"}))
  _, params, axes = FunctionalModel.split(model)
  assert "allocation" in params["blocks"][0]["ffn"]
  assert "allocation" not in params["blocks"][1]["ffn"]  # same object, stored once
  assert axes["blocks"][0]["ffn"]["allocation"]["logits"] == ("tasks", None, "skills")
  per_layer = T.build(T.model_config(3, ffn={"name": "polytropon", "share_allocation": False}))
  _, params, _ = FunctionalModel.split(per_layer)
  assert all("allocation" in params["blocks"][i]["ffn"] for i in range(2))
