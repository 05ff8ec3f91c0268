"""Token-level MoE: dispatch, combine and capacity dropping against NumPy references."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modular.modules import routing
from modular.modules.testing import build_filler, call, context, slot_args


def _np_softmax(z):
  z = z - z.max(-1, keepdims=True)
  e = np.exp(z)
  return e / e.sum(-1, keepdims=True)


def _np_route(probs, k, capacity, normalize=True, valid=None):
  """Loop reference: tokens in position order, each placing its k choices; padding
  (``valid`` False) takes no slot."""
  s, e = probs.shape
  valid = np.ones(s, bool) if valid is None else valid
  order = np.argsort(-probs, axis=-1, kind="stable")[:, :k]
  gates = np.take_along_axis(probs, order, -1)
  if normalize and k > 1:
    gates = gates / gates.sum(-1, keepdims=True)
  count = np.zeros(e, int)
  dispatch = np.zeros((s, e, capacity))
  combine = np.zeros((s, e, capacity))
  for t in range(s):
    for j in range(k):
      ex = order[t, j]
      if not valid[t]:
        continue
      if count[ex] < capacity:
        dispatch[t, ex, count[ex]] = 1.0
        combine[t, ex, count[ex]] = gates[t, j]
        count[ex] += 1
  return dispatch, combine


def _np_moe(x, p, k, factor, act=lambda h: np.maximum(h, 0), valid=None):
  """Per-sequence groups; dropped choices and padding add nothing."""
  b, s, d = x.shape
  e = p["router"].shape[-1]
  cap = max(1, min(s, math.ceil(factor * s * k / e)))
  y = np.zeros_like(x)
  for g in range(b):
    probs = _np_softmax(x[g] @ p["router"])
    _, combine = _np_route(probs, k, cap, valid=None if valid is None else valid[g])
    for t in range(s):
      for ex in range(e):
        w = combine[t, ex].sum()
        if w:
          h = act(x[g, t] @ p["w_in"][ex] + p["b_in"][ex])
          y[g, t] += w * (h @ p["w_out"][ex] + p["b_out"][ex])
  return y


def _params(module):
  names = ("router", "w_in", "b_in", "w_out", "b_out")
  return {n: np.asarray(getattr(module, n)[...], np.float64) for n in names}


def test_dispatch_combine_masks_match_numpy():
  rng = np.random.default_rng(0)
  probs = _np_softmax(rng.normal(size=(3, 10, 4)) * 2).astype(np.float32)
  valid = rng.random((3, 10)) > 0.3
  for (k, cap), mask in itertools.product([(1, 2), (2, 3), (2, 10), (3, 4)], [None, valid]):
    route = routing.top_k_route(jnp.asarray(probs), k, cap,
                                valid=None if mask is None else jnp.asarray(mask))
    dispatch, combine = routing.dispatch_combine_masks(route, 4)
    for g in range(3):
      d_ref, c_ref = _np_route(probs[g].astype(np.float64), k, cap,
                               valid=None if mask is None else mask[g])
      np.testing.assert_array_equal(np.asarray(dispatch[g]), d_ref)
      np.testing.assert_allclose(np.asarray(combine[g]), c_ref, atol=1e-6)


@pytest.mark.parametrize("dispatch", ["einsum", "scatter"])
@pytest.mark.parametrize("k,factor", [(1, 1.0), (2, 0.5), (2, 2.0)])
def test_moe_forward_matches_numpy(dispatch, k, factor):
  args = slot_args(d_model=8, d_ff=12, num_tasks=2, seq_len=10)
  ffn = build_filler("ffn", {"name": "moe", "num_experts": 4, "top_k": k,
                             "capacity_factor": factor, "dispatch": dispatch}, args)
  p = _params(ffn)
  p["b_in"] += np.random.default_rng(1).normal(size=p["b_in"].shape)  # non-zero biases
  p["b_out"] += np.random.default_rng(2).normal(size=p["b_out"].shape)
  ffn.b_in[...] = jnp.asarray(p["b_in"], jnp.float32)
  ffn.b_out[...] = jnp.asarray(p["b_out"], jnp.float32)
  x = np.random.default_rng(3).normal(size=(3, 10, 8)).astype(np.float32)
  valid = np.arange(10)[None, :] < np.array([[10], [6], [3]])  # padded tails
  y, _, stats = call(ffn, jnp.asarray(x), [0, 1, 0], 2, token_mask=valid)
  np.testing.assert_allclose(np.asarray(y), _np_moe(x.astype(np.float64), p, k, factor,
                                                    valid=valid), rtol=2e-4, atol=2e-4)
  dropped = float(stats["block0/ffn/dropped_fraction"])
  if factor < 1:
    assert dropped > 0  # capacity dropping is exercised
  np.testing.assert_allclose(np.asarray(stats["block0/ffn/expert_load"]).sum(), 1.0,
                             rtol=1e-5)


def test_dropped_tokens_pass_through_residual():
  """With capacity 1, tokens beyond the first per expert get exactly zero output."""
  args = slot_args(d_model=8, d_ff=8, num_tasks=1)
  ffn = build_filler("ffn", {"name": "moe", "num_experts": 2, "top_k": 1,
                             "capacity_factor": 0.01}, args)
  ffn.b_out[...] = jnp.ones_like(ffn.b_out[...])
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 6, 8))
  y = np.asarray(call(ffn, x, [0], 1)[0])
  assert (np.abs(y).sum(-1) > 0).sum() <= 2  # at most one token per expert survives


def test_losses_match_numpy():
  rng = np.random.default_rng(4)
  logits = rng.normal(size=(2, 5, 4)).astype(np.float32)
  probs = _np_softmax(logits.astype(np.float64))
  route = routing.top_k_route(jnp.asarray(probs, jnp.float32), 2, 5)
  top = np.argsort(-probs, -1, kind="stable")[..., :2]
  f = np.stack([(top == e).sum(-1).mean() / 2 for e in range(4)])
  ref_lb = 4 * np.sum(f * probs.mean((0, 1)))
  got = routing.load_balance_loss(jnp.asarray(probs, jnp.float32), route.expert)
  np.testing.assert_allclose(float(got), ref_lb, rtol=1e-5)
  lse = np.log(np.exp(logits.astype(np.float64)).sum(-1))
  np.testing.assert_allclose(float(routing.router_z_loss(jnp.asarray(logits))),
                             np.mean(lse ** 2), rtol=1e-5)
  # Over real tokens only: the same formulas on the rows that are not padding.
  valid = rng.random((2, 5)) > 0.4
  f_v = np.stack([(top[valid] == e).sum(-1).mean() / 2 for e in range(4)])
  ref_lb_v = 4 * np.sum(f_v * probs[valid].mean(0))
  got_v = routing.load_balance_loss(jnp.asarray(probs, jnp.float32), route.expert,
                                    jnp.asarray(valid))
  np.testing.assert_allclose(float(got_v), ref_lb_v, rtol=1e-5)
  np.testing.assert_allclose(
      float(routing.router_z_loss(jnp.asarray(logits), jnp.asarray(valid))),
      np.mean(lse[valid] ** 2), rtol=1e-5)


@pytest.mark.parametrize("gate", ["add", "concat", "per_task"])
def test_task_aware_gate_matches_numpy(gate):
  args = slot_args(d_model=8, d_ff=8, num_tasks=3)
  ffn = build_filler("ffn", {"name": "moe", "num_experts": 4, "task_gate": gate}, args)
  x = np.random.default_rng(5).normal(size=(2, 3, 8)).astype(np.float32)
  task = np.array([[0, 1, 2], [2, 2, 1]])
  got = np.asarray(ffn.router_logits(jnp.asarray(x), jnp.asarray(task)))
  r = np.asarray(ffn.router[...])
  if gate == "add":
    ref = (x + np.asarray(ffn.task_embed[...])[task]) @ r
  elif gate == "concat":
    emb = np.asarray(ffn.task_embed[...])[task]
    ref = np.concatenate([x, emb], -1) @ np.concatenate([r, np.asarray(ffn.task_router[...])])
  else:
    ref = np.einsum("gsd,gsde->gse", x, r[task])
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)


def test_gradient_reaches_router_and_losses_are_added():
  from flax import nnx
  args = slot_args(d_model=8, d_ff=8, num_tasks=2)
  ffn = build_filler("ffn", {"name": "moe", "num_experts": 4, "task_gate": "add"}, args)
  graphdef, params = nnx.split(ffn, nnx.Param)
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 6, 8))

  def loss(params):
    ctx = context([0, 1], 2)
    y = nnx.merge(graphdef, params)(x, ctx)
    assert set(ctx.losses) == {"block0/ffn/load_balance", "block0/ffn/router_z"}
    return jnp.sum(y ** 2) + sum(ctx.losses.values())

  grads = jax.jit(jax.grad(loss))(params)
  assert float(jnp.abs(grads["router"][...]).sum()) > 0
  assert float(jnp.abs(grads["task_embed"][...]).sum()) > 0
  usage = call(ffn, x, [0, 1], 2)[2]["block0/ffn/task_expert_usage"]
  np.testing.assert_allclose(np.asarray(usage).sum(-1), [1.0, 1.0], rtol=1e-5)


def test_unknown_option_names_the_key():
  with pytest.raises(ValueError, match="model.ffn.num_expert"):
    build_filler("ffn", {"name": "moe", "num_expert": 4}, slot_args())
