"""Every method against an independent NumPy/SciPy reference on hand-built gradients."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.optimize as so

from modular import mtl
from modular.mtl.pcgrad import pcgrad_coefficients, random_orders

RTOL = 1e-5


# ---------------------------------------------------------------- hand-built gradients
def _grads(vectors, head=None):
  """Splits [T, 7] vectors into a two-leaf pytree {'a': [T, 3], 'b': [T, 2, 2]} (+ head)."""
  v = np.asarray(vectors, np.float32)
  tree = {"a": jnp.asarray(v[:, :3]), "b": jnp.asarray(v[:, 3:7].reshape(-1, 2, 2))}
  if head is not None:
    tree["head"] = jnp.asarray(np.asarray(head, np.float32))
  return tree


def _flat(tree):
  return np.concatenate([np.asarray(tree["a"]).reshape(-1), np.asarray(tree["b"]).reshape(-1)])


def _random(t, seed, shift=0.0):
  r = np.random.default_rng(seed)
  return r.normal(size=(t, 7)) + shift * r.normal(size=(1, 7))


CONFLICTING = np.array([[1.0, 0.0, 0.5, 0.0, 0.2, 0.0, 0.1],
                        [-0.8, 1.0, 0.0, 0.3, 0.0, -0.2, 0.0],
                        [0.1, -1.2, -0.4, 0.0, 0.5, 0.0, 0.3]])
ALIGNED = np.abs(CONFLICTING) + 0.1  # all pairwise inner products > 0


def _combine(method, vectors, present=None, losses=None, state=None, head=None):
  """Runs ``method.combine`` under jit (one compile per method instance and shapes)."""
  grads = _grads(vectors, head)
  state = method.init(None) if state is None else state
  t = len(vectors)
  present = jnp.ones(t) if present is None else jnp.asarray(present, jnp.float32)
  losses = jnp.ones(t) if losses is None else jnp.asarray(losses, jnp.float32)
  if not hasattr(method, "_test_jit"):
    method._test_jit = jax.jit(
        lambda g, s, p, l: method.combine(g, s, present=p, losses=l))
  return method._test_jit(grads, state, present, losses)


_orders = jax.jit(random_orders, static_argnums=1)


def _next_orders(state, t):
  """The orders PCGrad draws from ``state`` (same split as ``PCGrad.solve``)."""
  return np.asarray(_orders(jax.random.split(jax.random.wrap_key_data(state.key))[1], t))


PCGRAD = mtl.PCGrad(0)


# ---------------------------------------------------------------- NumPy references
def ref_pcgrad(g, orders):
  """Algorithm 1 of Yu et al. with explicit vectors, float64."""
  g = np.asarray(g, np.float64)
  out = []
  for i in range(len(g)):
    gi = g[i].copy()
    for j in orders[i]:
      dot = gi @ g[j]
      if dot < 0:
        gi = gi - dot / (g[j] @ g[j]) * g[j]
    out.append(gi)
  return np.sum(out, 0), np.array(out)


def ref_min_norm(g):
  g = np.asarray(g, np.float64)
  G, t = g @ g.T, len(g)
  res = so.minimize(lambda w: w @ G @ w, np.ones(t) / t, jac=lambda w: 2 * G @ w,
                    bounds=[(0, 1)] * t, constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
                    method="SLSQP", options={"ftol": 1e-15, "maxiter": 1000})
  return res.x @ g


def ref_cagrad(g, c, rescale=True):
  g = np.asarray(g, np.float64)
  t, G = len(g), g @ g.T
  g0 = g.mean(0)
  r = c * np.linalg.norm(g0)
  obj = lambda w: w @ g @ g0 + r * np.sqrt(w @ G @ w + 1e-18)
  best = min((so.minimize(obj, x0, bounds=[(0, 1)] * t, method="SLSQP",
                          constraints=[{"type": "eq", "fun": lambda w: w.sum() - 1}],
                          options={"ftol": 1e-14, "maxiter": 2000})
              for x0 in [np.ones(t) / t] + list(np.eye(t))), key=lambda res: res.fun)
  gw = best.x @ g
  d = g0 + r / np.linalg.norm(gw) * gw
  return d / (1 + c * c) if rescale else d


def ref_imtl_g(g):
  """IMTL-G's closed form from the paper: differences against the first task."""
  g = np.asarray(g, np.float64)
  u = g / np.linalg.norm(g, axis=1, keepdims=True)
  d_mat, u_mat = g[0:1] - g[1:], u[0:1] - u[1:]
  alpha = g[0] @ u_mat.T @ np.linalg.inv(d_mat @ u_mat.T)
  return np.concatenate([[1 - alpha.sum()], alpha])


# ---------------------------------------------------------------- Gram primitives
def test_gram_and_weighted_sum_match_flattened_numpy():
  v = _random(4, 0)
  grads = _grads(v, head=np.eye(4)[:, :4] * 3.0)
  mask = mtl.task_specific_mask(grads, ["^head$"])
  assert mask == {"a": False, "b": False, "head": True}
  np.testing.assert_allclose(mtl.gram_matrix(grads, mask), v @ v.T, rtol=RTOL, atol=1e-5)
  coef = jnp.asarray([0.5, -1.0, 2.0, 0.25])
  out = mtl.weighted_sum(grads, coef, mask)
  np.testing.assert_allclose(_flat(out), np.asarray(coef) @ v, rtol=RTOL, atol=1e-6)
  np.testing.assert_allclose(out["head"], np.full(4, 3.0), rtol=RTOL)  # own gradient, unweighted


def test_task_specific_paths_nested():
  params = {"blocks": [{"attn": 1.0, "adapter_ffn": {"down": 2.0}}], "head": {"kernel": 3.0}}
  mask = mtl.task_specific_mask(params, ["adapter", "^head/"])
  assert mask == {"blocks": [{"attn": False, "adapter_ffn": {"down": True}}],
                  "head": {"kernel": True}}


# ---------------------------------------------------------------- PCGrad
def test_pcgrad_two_tasks_exact_and_order_free():
  v = CONFLICTING[:2]
  ref, _ = ref_pcgrad(v, [[1], [0]])
  for seed in (0, np.int64(1), jax.random.key(2)):
    state = mtl.PCGrad(seed).init(None)
    assert state.key.shape == (2,) and state.key.dtype == jnp.uint32
    out, _, stats = _combine(PCGRAD, v, state=state)
    np.testing.assert_allclose(_flat(out), ref, rtol=RTOL, atol=1e-6)
  assert float(stats["conflict_fraction"]) == 1.0


def test_pcgrad_no_conflict_is_plain_sum():
  out, _, stats = _combine(PCGRAD, ALIGNED)
  np.testing.assert_allclose(_flat(out), ALIGNED.sum(0), rtol=RTOL)
  assert float(stats["conflict_fraction"]) == 0.0
  assert int(stats["num_projections"]) == 0
  np.testing.assert_allclose(stats["norms_after"], stats["norms_before"], rtol=RTOL)


@pytest.mark.parametrize("t,seed", [(3, 0), (5, 1), (8, 2)])
def test_pcgrad_random_orders_match_reference(t, seed):
  v = CONFLICTING if t == 3 else _random(t, seed)
  method = PCGRAD
  state = mtl.PCGrad(seed).init(None)
  for _ in range(2):  # two steps: the key advances and the order is redrawn
    orders = _next_orders(state, t)
    assert all(sorted(o) == [j for j in range(t) if j != i] for i, o in enumerate(orders))
    ref, per_task = ref_pcgrad(v, orders)
    out, new_state, stats = _combine(method, v, state=state)
    np.testing.assert_allclose(_flat(out), ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(stats["norms_after"], np.linalg.norm(per_task, axis=1),
                               rtol=1e-4, atol=1e-5)
    cos = (v @ v.T) / np.outer(np.linalg.norm(v, axis=1), np.linalg.norm(v, axis=1))
    np.testing.assert_allclose(stats["cosine"], cos, atol=1e-5)
    iu = np.triu_indices(t, 1)
    np.testing.assert_allclose(stats["conflict_fraction"], np.mean(cos[iu] < 0), rtol=1e-6)
    assert not np.array_equal(new_state.key, state.key)
    state = new_state


def test_pcgrad_fixed_order_coefficients():
  v = _random(4, 7)
  orders = np.array([[3, 1, 2], [0, 2, 3], [3, 0, 1], [2, 1, 0]])
  coef, _ = jax.jit(pcgrad_coefficients)(jnp.asarray(v @ v.T, jnp.float32), jnp.ones(4), jnp.asarray(orders))
  _, per_task = ref_pcgrad(v, orders)
  np.testing.assert_allclose(np.asarray(coef) @ v, per_task, rtol=1e-4, atol=1e-5)


def test_pcgrad_absent_tasks_and_task_specific_head():
  v = np.concatenate([CONFLICTING, np.zeros((1, 7))])          # task 3 absent: zero grad
  head = np.diag([1.0, 2.0, 3.0, 0.0])                          # per-task head rows
  out, _, stats = _combine(mtl.PCGrad(0, task_specific=["^head$"]), v,
                           present=[1, 1, 1, 0], head=head)
  orders = [[j for j in o if j != 3] for o in _next_orders(PCGRAD.init(None), 4)[:3]]
  ref, _ = ref_pcgrad(CONFLICTING, orders)
  np.testing.assert_allclose(_flat(out), ref, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(out["head"], [1.0, 2.0, 3.0, 0.0])
  assert float(stats["weights"][3]) == 0.0 and np.isfinite(np.asarray(stats["cosine"])).all()


def test_pcgrad_optax_chain():
  v = CONFLICTING[:2]
  tx = optax.chain(mtl.pcgrad(jax.random.key(3)), optax.sgd(0.1))
  params = jax.tree.map(lambda g: g[0], _grads(v))
  state = tx.init(params)
  updates, _ = jax.jit(tx.update)(_grads(v), state, params)
  ref, _ = ref_pcgrad(v, [[1], [0]])
  np.testing.assert_allclose(_flat(updates), -0.1 * ref, rtol=RTOL, atol=1e-6)


def test_every_factory_composes_with_optax_chain():
  """The optax form equals combine: chain(method, sgd(1)) returns -combined."""
  params = jax.tree.map(lambda g: g[0], _grads(CONFLICTING))
  losses = jnp.asarray([1.0, 2.0, 0.5])
  pairs = [(mtl.mgda(), mtl.MGDA()), (mtl.cagrad(), mtl.CAGrad()), (mtl.nash_mtl(), mtl.NashMTL()),
           (mtl.imtl_g(), mtl.IMTLG()), (mtl.aligned_mtl(), mtl.AlignedMTL()),
           (mtl.mean(), mtl.Mean()), (mtl.gradnorm(3), mtl.GradNorm(3)), (mtl.dwa(3), mtl.DWA(3)),
           (mtl.uncertainty(3), mtl.Uncertainty(3))]
  txs = [optax.chain(factory, optax.sgd(1.0)) for factory, _ in pairs]

  @jax.jit
  def run_all(g):  # one compile for every method
    via_optax = [tx.update(g, tx.init(params), params, losses=losses)[0] for tx in txs]
    via_combine = [m.combine(g, m.init(params), losses=losses)[0] for _, m in pairs]
    return via_optax, via_combine

  via_optax, via_combine = run_all(_grads(CONFLICTING))
  for (_, m), u, ref in zip(pairs, via_optax, via_combine):
    np.testing.assert_allclose(_flat(u), -_flat(ref), rtol=1e-5, atol=1e-6, err_msg=m.name)
  np.testing.assert_allclose(_flat(via_combine[5]), CONFLICTING.mean(0), rtol=1e-5)


# ---------------------------------------------------------------- MGDA
@pytest.mark.parametrize("vectors", [CONFLICTING, ALIGNED, _random(5, 3, 0.5), _random(8, 4, 1.0)],
                         ids=["conflicting", "aligned", "t5", "t8"])
def test_mgda_min_norm_point(vectors):
  out, _, stats = _combine(mtl.MGDA(), vectors)
  ref = ref_min_norm(vectors)
  scale = np.linalg.norm(vectors, axis=1).max()
  np.testing.assert_allclose(_flat(out), ref, atol=1e-4 * scale)
  np.testing.assert_allclose(float(np.sum(stats["weights"])), 1.0, rtol=1e-5)


def test_mgda_absent_task_excluded():
  v = np.concatenate([CONFLICTING, 5.0 * _random(1, 9)])
  out, _, stats = _combine(mtl.MGDA(), v, present=[1, 1, 1, 0])
  np.testing.assert_allclose(_flat(out), ref_min_norm(CONFLICTING), atol=1e-5)
  assert float(stats["weights"][3]) == 0.0


def test_mgda_l2_normalization():
  v = CONFLICTING * np.array([[1.0], [4.0], [0.5]])
  out, _, _ = _combine(mtl.MGDA(normalization="l2"), v)
  n = np.linalg.norm(v, axis=1, keepdims=True)
  np.testing.assert_allclose(_flat(out), ref_min_norm(v / n), atol=1e-5)


# ---------------------------------------------------------------- CAGrad
@pytest.mark.parametrize("vectors,c", [(CONFLICTING, 0.4), (ALIGNED, 0.4), (_random(6, 5, 0.5), 0.8),
                                       (_random(4, 6), 0.0)], ids=["conflicting", "aligned", "t6", "c0"])
def test_cagrad_matches_scipy(vectors, c):
  out, _, _ = _combine(mtl.CAGrad(c=c, rescale=True), vectors)
  ref = ref_cagrad(vectors, c)
  np.testing.assert_allclose(_flat(out), ref, rtol=1e-4, atol=1e-4 * np.linalg.norm(ref))


# ---------------------------------------------------------------- Nash-MTL
@pytest.mark.parametrize("vectors", [CONFLICTING, ALIGNED, _random(6, 8, 0.5),
                                     _random(4, 2) * np.array([[30.0], [1.0], [0.05], [2.0]])],
                         ids=["conflicting", "aligned", "t6", "badly_scaled"])
def test_nashmtl_solves_g_alpha_equals_inverse_alpha(vectors):
  out, _, stats = _combine(mtl.NashMTL(), vectors)
  g = np.asarray(vectors, np.float64)
  alpha = np.asarray(stats["weights"], np.float64)
  assert np.all(alpha > 0)
  np.testing.assert_allclose((g @ g.T) @ alpha, 1.0 / alpha, rtol=2e-3)
  ref = so.fsolve(lambda a: (g @ g.T) @ a - 1.0 / a, 1.0 / np.linalg.norm(g, axis=1), xtol=1e-13)
  np.testing.assert_allclose(alpha, ref, rtol=2e-3)
  np.testing.assert_allclose(_flat(out), ref @ g, rtol=2e-3, atol=1e-4)


def test_nashmtl_absent_task():
  v = np.concatenate([_random(3, 10, 0.5), np.zeros((1, 7))])
  _, _, stats = _combine(mtl.NashMTL(), v, present=[1, 1, 1, 0])
  g = v[:3]
  alpha = np.asarray(stats["weights"])
  assert alpha[3] == 0.0
  np.testing.assert_allclose((g @ g.T) @ alpha[:3], 1.0 / alpha[:3], rtol=2e-3)


# ---------------------------------------------------------------- IMTL-G
@pytest.mark.parametrize("vectors", [CONFLICTING, ALIGNED, _random(5, 11, 0.5)],
                         ids=["conflicting", "aligned", "t5"])
def test_imtl_g_matches_paper_closed_form(vectors):
  out, _, stats = _combine(mtl.IMTLG(), vectors)
  alpha = ref_imtl_g(vectors)
  np.testing.assert_allclose(stats["weights"], alpha, rtol=1e-3, atol=1e-4)
  d = alpha @ vectors
  np.testing.assert_allclose(_flat(out), d, rtol=1e-3, atol=1e-4)
  u = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
  proj = u @ _flat(out)
  np.testing.assert_allclose(proj, proj[0], rtol=1e-3)


# ---------------------------------------------------------------- Aligned-MTL
def ref_aligned(g):
  """Senushkin et al. Alg. 1 with explicit vectors: SVD of the [P, T] gradient matrix."""
  g = np.asarray(g, np.float64)
  u, sig, vt = np.linalg.svd(g.T, full_matrices=False)          # g.T = U S V^T
  keep = sig > sig.max() * 1e-6
  u, sig, vt = u[:, keep], sig[keep], vt[keep]
  aligned = sig.min() * u @ vt                                    # [P, T] columns g_hat_i
  return aligned.sum(1), aligned.T


@pytest.mark.parametrize("vectors", [CONFLICTING, ALIGNED, _random(5, 12, 0.5)],
                         ids=["conflicting", "aligned", "t5"])
def test_aligned_mtl_matches_svd_reference(vectors):
  out, _, stats = _combine(mtl.AlignedMTL(), vectors)
  ref, per_task = ref_aligned(vectors)
  np.testing.assert_allclose(_flat(out), ref, rtol=1e-3, atol=1e-4)
  # Aligned components: orthogonal, all with norm sigma_min.
  np.testing.assert_allclose(stats["norms_after"], np.linalg.norm(per_task, axis=1), rtol=1e-3)
  gram_hat = per_task @ per_task.T
  np.testing.assert_allclose(gram_hat, np.eye(len(vectors)) * gram_hat[0, 0], atol=1e-3 * gram_hat[0, 0])


def test_aligned_mtl_absent_task():
  v = np.concatenate([CONFLICTING, 3.0 * _random(1, 13)])
  out, _, stats = _combine(mtl.AlignedMTL(), v, present=[1, 1, 1, 0])
  np.testing.assert_allclose(_flat(out), ref_aligned(CONFLICTING)[0], rtol=1e-3, atol=1e-4)
  assert abs(float(stats["weights"][3])) < 1e-6


# ---------------------------------------------------------------- weightings
def test_mean_over_present():
  m = mtl.Mean(task_specific=["^head$"])
  np.testing.assert_allclose(m.loss_weights(None, jnp.asarray([1.0, 0.0, 1.0])), [0.5, 0.0, 0.5])
  out, _, _ = _combine(m, CONFLICTING, present=[1, 1, 0], head=np.diag([2.0, 4.0, 0.0]))
  np.testing.assert_allclose(_flat(out), CONFLICTING[:2].mean(0), rtol=RTOL)
  # A weighting scales heads like the loop's sum_t w_t L_t would: w_t times their gradient.
  np.testing.assert_allclose(out["head"], [1.0, 2.0, 0.0], rtol=RTOL)


def test_uncertainty_closed_form():
  lr, t = 0.1, 3
  m = mtl.Uncertainty(t, lr=lr, init_value=0.0)
  state = m.init(None)
  s = np.zeros(t)
  for losses, present in [([2.0, 0.5, 1.0], [1, 1, 1]), ([1.0, 3.0, 4.0], [1, 0, 1])]:
    p = np.asarray(present, np.float64)
    w = m.loss_weights(state, jnp.asarray(p))
    np.testing.assert_allclose(w, np.exp(-s) * p, rtol=RTOL)
    state, stats = jax.jit(m.observe)(state, jnp.asarray(losses), jnp.asarray(p))
    s = s - lr * p * (1.0 - np.exp(-s) * np.asarray(losses))   # d/ds [exp(-s) L + s]
    np.testing.assert_allclose(state.log_var, s, rtol=RTOL)
  np.testing.assert_allclose(m.extra_loss(state), s.sum(), rtol=RTOL)


def test_dwa_closed_form():
  temp, t = 2.0, 3
  m = mtl.DWA(t, temperature=temp)
  state = m.init(None)
  history = [np.array([3.0, 2.0, 1.0]), np.array([2.0, 2.0, 0.5]), np.array([1.0, 3.0, 0.5])]
  for k, losses in enumerate(history):
    w = np.asarray(m.loss_weights(state, jnp.ones(t)))
    if k < 2:
      np.testing.assert_allclose(w, np.ones(t), rtol=RTOL)
    else:
      r = history[k - 1] / history[k - 2]
      ref = t * np.exp(r / temp) / np.exp(r / temp).sum()
      np.testing.assert_allclose(w, ref, rtol=RTOL)
    state, _ = m.observe(state, jnp.asarray(losses), jnp.ones(t))
  r = history[2] / history[1]
  w = np.asarray(m.loss_weights(state, jnp.asarray([1.0, 0.0, 1.0])))
  e = np.exp(r[[0, 2]] / temp)
  np.testing.assert_allclose(w, [2 * e[0] / e.sum(), 0.0, 2 * e[1] / e.sum()], rtol=RTOL)


def test_gradnorm_one_step_by_hand():
  alpha, lr = 1.5, 0.1
  v = CONFLICTING * np.array([[1.0], [3.0], [0.5]])
  m = mtl.GradNorm(3, alpha=alpha, lr=lr)
  state = m.init(None)
  l0 = np.array([2.0, 1.0, 4.0])
  out, state, _ = _combine(m, v, losses=l0, state=state)
  np.testing.assert_allclose(_flat(out), v.sum(0), rtol=RTOL)   # w = 1 at step 0
  # Step 0 by hand: r_t = 1, target = mean_t ||g_t||.
  n = np.linalg.norm(v, axis=1)
  w = np.ones(3)
  w = np.maximum(w - lr * np.sign(w * n - n.mean()) * n, 1e-6)
  w = w * 3 / w.sum()
  np.testing.assert_allclose(state.weights, w, rtol=1e-5)
  # Step 1 by hand with new losses.
  l1 = np.array([1.0, 0.9, 2.0])
  out, state, stats = _combine(m, v, losses=l1, state=state)
  np.testing.assert_allclose(_flat(out), w @ v, rtol=1e-5)
  ratio = l1 / l0
  r = ratio / ratio.mean()
  gw = w * n
  target = gw.mean() * r ** alpha
  np.testing.assert_allclose(stats["targets"], target, rtol=1e-5)
  w2 = np.maximum(w - lr * np.sign(gw - target) * n, 1e-6)
  w2 = w2 * w.sum() / w2.sum()
  np.testing.assert_allclose(state.weights, w2, rtol=1e-5)


# ---------------------------------------------------------------- config and build
def test_build_every_registered_method_and_config_errors():
  cfg = mtl.default_mtl_config()
  cfg.num_tasks = 3
  params = jax.tree.map(lambda g: g[0], _grads(CONFLICTING))
  names = mtl.METHODS.names()
  methods = []
  for name in names:
    cfg.method = name
    methods.append(mtl.build(cfg, params))
  assert {"pcgrad", "mgda", "cagrad", "nashmtl", "imtl_g", "aligned_mtl", "gradnorm", "mean",
          "uncertainty", "dwa"} <= set(names)
  losses = jnp.asarray([1.0, 2.0, 3.0])
  results = jax.jit(lambda g: [m.combine(g, m.init(params), losses=losses) for m in methods])(
      _grads(CONFLICTING))
  for name, method, (out, _, stats) in zip(names, methods, results):
    assert np.isfinite(_flat(out)).all(), name
    assert stats["cosine"].shape == (3, 3) and stats["norms_before"].shape == (3,), name
    if method.linear_in_grads:
      # The update is the stats' weights applied to the original gradients.
      np.testing.assert_allclose(_flat(out), np.asarray(stats["weights"]) @ CONFLICTING,
                                 rtol=1e-4, atol=1e-5, err_msg=name)
  for key, value, match in [("method", "pcgard", "config.mtl.method: unknown"),
                            ("task_specific", ["("], "config.mtl.task_specific"),
                            ("options", {"c": -1.0}, r"config.mtl.options.c: must be >= 0"),
                            ("options", {"iters": 0}, r"config.mtl.options.iters: must be >= 1"),
                            ("options", {"cc": 1.0}, r"config.mtl.options.cc: unknown option of "
                             r"'cagrad'; known: c, iters, rescale"),
                            ("options", {"c": "abc"}, r"config.mtl.options.c: cannot parse")]:
    bad = mtl.default_mtl_config()
    bad.method = "cagrad"
    bad[key] = value
    with pytest.raises(ValueError, match=match):
      mtl.validate_mtl_config(bad)
  good = mtl.default_mtl_config()
  good.method, good.options = "cagrad", {"c": "0.5", "rescale": "false", "iters": 3}
  built = mtl.build(good)
  assert (built.c, built.rescale, built.iters) == (0.5, False, 3)
  # An old run folder's flat keys still configure its method.
  legacy = mtl.default_mtl_config()
  legacy.method, legacy.cagrad_c, legacy.mgda_iters = "cagrad", 0.7, 5
  assert mtl.build(legacy).c == 0.7 and mtl.method_options("cagrad")["c"] == 0.4
  cfg = mtl.default_mtl_config()
  cfg.method = "dwa"
  with pytest.raises(ValueError, match="mtl.num_tasks"):
    mtl.build(cfg, params).init(params)
