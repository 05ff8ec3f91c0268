"""Task-level MoE: routes, mixing against NumPy, gradients, two stages, extraction."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from modular.modules import routing
from modular.modules import testing as T
from modular.modules.task_extract import count_params, experts_used, extract_task
from modular.objective import FunctionalModel


def _np_softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _ffn(**opts):
  cfg = {"name": "task_moe", "num_experts": 4, **opts}
  return T.build_filler("ffn", cfg, T.slot_args(d_model=8, d_ff=12, num_tasks=3))


def _np_reference(ffn, x, task, table):
  """y_b = sum over experts e of w[task_b, e] * FFN_e(x_b); table [T, E] dense."""
  w_in, b_in = np.asarray(ffn.w_in[...]), np.asarray(ffn.b_in[...])
  w_out, b_out = np.asarray(ffn.w_out[...]), np.asarray(ffn.b_out[...])
  y = np.zeros_like(x)
  for b in range(x.shape[0]):
    for e in range(w_in.shape[0]):
      w = table[task[b], e]
      if w:
        y[b] += w * (np.maximum(x[b] @ w_in[e] + b_in[e], 0) @ w_out[e] + b_out[e])
  return y


@pytest.mark.parametrize("opts,task", [
    ({"top_k": 2, "temperature": 0.5}, [0, 1, 2, 1]),      # mixed batch: sorted chunks
    ({"top_k": 2, "chunk": 1}, [0, 1, 2, 1, 1]),           # chunk 1: per-example gather
    ({"top_k": 1, "chunk": 3}, [2, 0, 1, 1, 2, 0, 0]),     # partly filled chunks
    ({"top_k": 2, "temperature": 0.5}, [2, 2, 2, 2]),      # one route: dense fast path
    ({"top_k": 1}, [0, 2, 1, 0]),                          # Switch-style raw probability
    ({"route_mode": "average", "top_k": 1}, [0, 1, 2, 0]),  # stage 1: all experts, 1/E
])
def test_task_moe_matches_numpy(opts, task):
  ffn = _ffn(**opts)
  for name in ("b_in", "b_out"):
    getattr(ffn, name)[...] = jax.random.normal(jax.random.PRNGKey(7), getattr(ffn, name).shape)
  logits = np.asarray(ffn.router.task_embed[...]) @ np.asarray(ffn.router.kernel[...])
  probs = _np_softmax(logits / opts.get("temperature", 1.0))
  k = opts["top_k"]
  table = np.zeros_like(probs)
  for t in range(3):
    top = np.argsort(-probs[t])[:k]
    table[t, top] = probs[t, top] / (probs[t, top].sum() if k > 1 else 1.0)
  if opts.get("route_mode") == "average":
    table = np.full_like(probs, 0.25)
  x = np.random.default_rng(0).normal(size=(len(task), 5, 8)).astype(np.float32)
  y, _, stats = T.call(ffn, jnp.asarray(x), task, 3)
  np.testing.assert_allclose(np.asarray(y), _np_reference(ffn, x, task, table),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(np.asarray(stats["block0/ffn/task_expert_usage"]), table,
                             rtol=1e-5, atol=1e-6)


def test_gumbel_and_straight_through():
  ffn = _ffn(top_k=1, gate="gumbel", straight_through=True, temperature=2.0)
  router = ffn.router
  train = T.context([0, 1, 2], 3, rng=jax.random.PRNGKey(3))
  experts, weights = router.table(train)
  noise = routing.gumbel(train.key("task_route"), (3, 4))
  logits = np.asarray(router.logits()) + np.asarray(noise)
  np.testing.assert_array_equal(np.asarray(experts[:, 0]), np.argmax(logits, -1))
  np.testing.assert_allclose(np.asarray(weights), 1.0, atol=1e-6)  # hard forward
  eval_experts, _ = router.table(T.context([0], 3))
  np.testing.assert_array_equal(np.asarray(eval_experts[:, 0]),
                                np.argmax(np.asarray(router.logits()), -1))

  # The backward pass is the softmax's: d w_t / d logits = p (onehot - p) / tau.
  graphdef, params = nnx.split(router, nnx.Param)

  def chosen_weight(params):
    return nnx.merge(graphdef, params).table(train)[1][0, 0]

  grad = jax.grad(chosen_weight)(params)["kernel"][...]
  p = _np_softmax(logits / 2.0)[0]
  e0 = int(np.argmax(logits[0]))
  dlogits = p[e0] * ((np.arange(4) == e0) - p) / 2.0
  ref = np.outer(np.asarray(router.task_embed[...])[0], dlogits)
  np.testing.assert_allclose(np.asarray(grad), ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("opts,reaches", [
    ({"top_k": 1}, True), ({"top_k": 2}, True),
    ({"top_k": 1, "gate": "gumbel", "straight_through": True}, True),
    ({"route_mode": "average"}, False),
])
def test_gradient_reaches_routing_logits(opts, reaches):
  ffn = _ffn(**opts)
  graphdef, params = nnx.split(ffn, nnx.Param)
  x = jax.random.normal(jax.random.PRNGKey(1), (3, 5, 8))

  def loss(params):
    ctx = T.context([0, 1, 2], 3, rng=jax.random.PRNGKey(0))
    return jnp.sum(nnx.merge(graphdef, params)(x, ctx) ** 2)

  grads = jax.jit(jax.grad(loss))(params)
  for name in ("kernel", "task_embed"):
    assert (float(jnp.abs(grads["router"][name][...]).sum()) > 0) == reaches, name


def test_two_stages_share_the_parameter_tree():
  avg = T.build(T.model_config(3, ffn={"name": "task_moe", "route_mode": "average"}))
  learned = T.build(T.model_config(3, ffn={"name": "task_moe", "route_mode": "learned"}))
  _, p_avg, _ = FunctionalModel.split(avg)
  _, p_learned, _ = FunctionalModel.split(learned)
  assert jax.tree.structure(p_avg) == jax.tree.structure(p_learned)
  assert all(a.shape == b.shape for a, b in zip(jax.tree.leaves(p_avg),
                                                jax.tree.leaves(p_learned)))


@pytest.mark.parametrize("slots", [
    {"ffn": {"name": "task_moe", "num_experts": 4, "top_k": 2}},
    {"ffn": {"name": "task_moe", "num_experts": 4, "top_k": 1, "gate": "gumbel",
             "straight_through": True}},
    {"block": {"name": "task_moe_block", "num_experts": 3, "top_k": 1}},
])
def test_extracted_subnetwork_matches_full_model(slots):
  model = T.build(T.model_config(3, **slots))
  fm, params, _ = FunctionalModel.split(model)
  run = jax.jit(lambda fm, p, b: fm.apply(p, b)[0], static_argnums=0)
  inputs = T.batch(3, batch_size=4)["inputs"]
  k = next(iter(slots.values()))["top_k"]
  for task in range(3):
    batch = {"inputs": inputs, "task_id": jnp.full((4,), task, jnp.int32)}
    sub = extract_task(model, task)
    fs, ps, _ = FunctionalModel.split(sub)
    np.testing.assert_allclose(np.asarray(run(fs, ps, batch)),
                               np.asarray(run(fm, params, batch)), rtol=1e-5, atol=1e-5)
    assert count_params(sub) < count_params(model)
    assert all(len(v) == k for v in experts_used(model, task).values())
  assert count_params(model) == sum(x.size for x in jax.tree.leaves(params))  # unchanged
