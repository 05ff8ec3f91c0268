"""Per-task gradients (one forward, T backward) against T separate jax.grad calls."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modular import mtl

T, B, D_IN, D_H = 4, 8, 6, 16


def _params(seed=0):
  r = np.random.default_rng(seed)
  f = lambda *s: jnp.asarray(r.normal(size=s) * 0.5, jnp.float32)
  return {"trunk": {"w1": f(D_IN, D_H), "b1": f(D_H), "ln_scale": 1.0 + f(D_H),
                    "ln_bias": f(D_H), "w2": f(D_H, D_H)},
          "heads": {"w": f(T, D_H), "b": f(T)}}


def _layer_norm(x, scale, bias):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) * jax.lax.rsqrt(var + 1e-5) * scale + bias


def _trunk(p, x, y=None):
  del y
  h = jnp.tanh(x @ p["trunk"]["w1"] + p["trunk"]["b1"])
  h = _layer_norm(h, p["trunk"]["ln_scale"], p["trunk"]["ln_bias"])
  return jax.nn.gelu(h @ p["trunk"]["w2"])                      # [B, D_H]


def _heads(p, z, x, y):
  del x
  pred = z @ p["heads"]["w"].T + p["heads"]["b"]                # [B, T]
  return jnp.mean((pred - y) ** 2, axis=0)                      # [T]


def _loss_vec(p, x, y):
  return _heads(p, _trunk(p, x), x, y)


def _data(seed=1):
  r = np.random.default_rng(seed)
  return (jnp.asarray(r.normal(size=(B, D_IN)), jnp.float32),
          jnp.asarray(r.normal(size=(B, T)), jnp.float32))


@functools.lru_cache(maxsize=None)
def _separate_grads(seed_p, seed_data):
  """T independent jax.grad calls, each under its own jit, stacked: the reference."""
  p, (x, y) = _params(seed_p), _data(seed_data)
  gs = [jax.jit(jax.grad(lambda q, t=t: _loss_vec(q, x, y)[t]))(p) for t in range(T)]
  return jax.tree.map(lambda *a: np.stack([np.asarray(v) for v in a]), *gs)


@pytest.mark.parametrize("strategy", ["vmap", "unroll"])
def test_per_task_grads_match_separate_grad_calls_with_layer_norm(strategy):
  # Regression for jax 0.10.2, whose jit(vmap(vjp)) is wrong in float32 on CPU with a LN.
  p, (x, y) = _params(), _data()
  fn = jax.jit(mtl.per_task_value_and_grad(_loss_vec, strategy=strategy))
  losses, grads = fn(p, x, y)
  ref = _separate_grads(0, 1)
  np.testing.assert_allclose(losses, _loss_vec(p, x, y), rtol=1e-6)
  for (path, g), r in zip(jax.tree_util.tree_leaves_with_path(grads), jax.tree.leaves(ref)):
    assert g.shape == r.shape, path
    np.testing.assert_allclose(np.asarray(g), r, rtol=2e-5, atol=1e-6, err_msg=str(path))


def test_per_task_grads_jacrev_agrees():
  p, (x, y) = _params(2), _data(3)
  _, grads = jax.jit(mtl.per_task_value_and_grad(_loss_vec))(p, x, y)
  jac = jax.jit(jax.jacrev(_loss_vec))(p, x, y)
  for g, j in zip(jax.tree.leaves(grads), jax.tree.leaves(jac)):
    np.testing.assert_allclose(np.asarray(g), np.asarray(j), rtol=2e-5, atol=1e-6)


def test_has_aux_and_shape_check():
  p, (x, y) = _params(), _data()
  f = lambda q, x, y: (_loss_vec(q, x, y), {"n": jnp.sum(x)})
  (losses, aux), grads = jax.jit(mtl.per_task_value_and_grad(f, has_aux=True))(p, x, y)
  np.testing.assert_allclose(aux["n"], np.sum(np.asarray(x)), rtol=1e-5)
  assert grads["heads"]["w"].shape == (T, T, D_H)
  with pytest.raises(ValueError, match="loss vector"):
    mtl.per_task_value_and_grad(lambda q, x, y: jnp.sum(_loss_vec(q, x, y)))(p, x, y)
  with pytest.raises(ValueError, match="strategy"):
    mtl.per_task_value_and_grad(_loss_vec, strategy="loop")


@pytest.mark.parametrize("strategy", ["vmap", "unroll"])
def test_rep_level_grads_against_numpy_chain_rule(strategy):
  p, (x, y) = _params(4), _data(5)
  fn = mtl.rep_value_and_grad(_trunk, _heads, strategy=strategy)

  @jax.jit
  def run(p, x, y, coef):
    losses, z_grads, backprop = fn(p, x, y)
    z_ct = jnp.tensordot(coef, z_grads, axes=(0, 0))
    return losses, z_grads, backprop(z_ct)

  coef = jnp.asarray([0.3, -1.0, 2.0, 0.5], jnp.float32)
  losses, z_grads, grads = run(p, x, y, coef)
  # Reference in NumPy: dL_t/dz for MSE heads, then the trunk's pullback of the
  # combined cotangent equals the gradient of sum_t coef_t L_t w.r.t. trunk params.
  z = np.asarray(_trunk(p, x), np.float64)
  w, b, yy = (np.asarray(a, np.float64) for a in (p["heads"]["w"], p["heads"]["b"], y))
  resid = z @ w.T + b - yy                                      # [B, T]
  ref_z = np.stack([2.0 / B * resid[:, t:t + 1] * w[t][None, :] for t in range(T)])
  np.testing.assert_allclose(np.asarray(z_grads), ref_z, rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(losses, (resid ** 2).mean(0), rtol=1e-5)
  weighted = jax.grad(lambda q: jnp.sum(coef * _heads(jax.lax.stop_gradient(q), _trunk(q, x), x, y)))(p)
  for a, r in zip(jax.tree.leaves(grads["trunk"]), jax.tree.leaves(weighted["trunk"])):
    np.testing.assert_allclose(np.asarray(a), np.asarray(r), rtol=1e-4, atol=1e-6)
  # Heads get the plain sum of their task gradients: d/dw_t = 2/B sum_b resid[b,t] z[b].
  np.testing.assert_allclose(np.asarray(grads["heads"]["w"]), 2.0 / B * resid.T @ z,
                             rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(np.asarray(grads["heads"]["b"]), 2.0 / B * resid.sum(0),
                             rtol=1e-4, atol=1e-6)


def test_rep_level_mgda_matches_numpy_min_norm_on_z():
  p, (x, y) = _params(6), _data(7)
  method = mtl.MGDA(iters=250)
  fn = mtl.rep_value_and_grad(_trunk, _heads)

  @jax.jit
  def run(p):
    losses, z_grads, backprop = fn(p, x, y)
    z_ct, _, stats = method.combine(z_grads, method.init(p), losses=losses, mask=None)
    return z_grads, z_ct, stats

  z_grads, z_ct, stats = run(p)
  flat = np.asarray(z_grads, np.float64).reshape(T, -1)
  # Min-norm point over the simplex by NumPy brute force on a fine grid is too big for
  # T=4; check the KKT conditions instead: <g_t, d> >= ||d||^2 with equality on the support.
  d = np.asarray(z_ct, np.float64).reshape(-1)
  w = np.asarray(stats["weights"], np.float64)
  np.testing.assert_allclose(w.sum(), 1.0, rtol=1e-5)
  assert np.all(w >= -1e-7)
  np.testing.assert_allclose(d, w @ flat, rtol=1e-4, atol=1e-7)
  inner = flat @ d
  assert np.all(inner >= d @ d - 1e-4 * np.abs(flat).max() ** 2 * flat.shape[1])
  np.testing.assert_allclose(inner[w > 1e-3], d @ d, rtol=1e-3)
