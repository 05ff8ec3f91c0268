"""Fisher merging and RegMean, and the statistics they consume, against NumPy references.

* ``fisher_diagonal`` on a tiny softmax regression, whose per-example gradient of
  ``log p(y|x)`` is ``x (e_y - p)^T`` in closed form (empirical, with padding rows and
  chunking), and its sampled form against the true Fisher ``p_c (1 - p_c)`` of the bias;
  on the framework's decoder against a loop of ``jax.grad`` over single examples.
* Fisher merging against ``sum_t w_t F_t theta_t / sum_t w_t F_t`` in parameter space.
* RegMean against the least-squares solution over the stacked inputs (``alpha = 1``)
  and the closed form with shrunk Grams (``alpha = 0.9``), attention-shaped weights
  included; ``gram_matrices`` of the decoder's first block against a NumPy LayerNorm.
* Missing or mismatched statistics are one line.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modular import merging
from modular import models as models_lib
from modular.merging import statistics
from modular.objective import FunctionalModel, token_losses

D, C = 3, 4


def _softmax_ll(params, batch, key=None):
  logp = jax.nn.log_softmax(batch["x"] @ params["w"] + params["b"])  # [B, C]
  label = batch["label"]
  valid = label >= 0
  if key is not None:
    label = jax.random.categorical(key, jax.lax.stop_gradient(logp))
  ll = jnp.take_along_axis(logp, jnp.maximum(label, 0)[:, None], axis=-1)[:, 0]
  return ll * valid, valid.astype(jnp.float32)


def test_fisher_diagonal_of_softmax_regression_matches_numpy():
  rng = np.random.default_rng(0)
  params = {"w": rng.normal(size=(D, C)).astype(np.float32),
            "b": rng.normal(size=(C,)).astype(np.float32)}
  x = rng.normal(size=(10, D)).astype(np.float32)
  y = rng.integers(0, C, size=10).astype(np.int32)
  y[4] = -1  # a padding row: no loss, no Fisher
  batches = [{"x": x[:6], "label": y[:6]}, {"x": x[6:], "label": y[6:]}]
  got = statistics.fisher_diagonal(_softmax_ll, params, batches, chunk=4)
  z = x @ params["w"] + params["b"]
  p = np.exp(z - z.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  keep = y >= 0
  r = np.eye(C)[np.maximum(y, 0)] - p  # [N, C]: d log p(y|x) / d z
  want_w = np.mean([np.outer(x[i], r[i]) ** 2 for i in np.flatnonzero(keep)], axis=0)
  want_b = np.mean(r[keep] ** 2, axis=0)
  np.testing.assert_allclose(np.asarray(got["w"]), want_w, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(np.asarray(got["b"]), want_b, rtol=1e-5, atol=1e-7)
  first = statistics.fisher_diagonal(_softmax_ll, params, batches, num_examples=5)
  np.testing.assert_allclose(np.asarray(first["b"]), np.mean(r[:6][keep[:6]] ** 2, 0),
                             rtol=1e-5)  # stops after the batch that reaches 5 examples
  # Sampled labels: the bias's Fisher is E_y (e_y - p)_c^2 = p_c (1 - p_c).
  n = 4000
  same = {"x": np.repeat(x[:1], n, 0), "label": np.zeros(n, np.int32)}
  sampled = statistics.fisher_diagonal(_softmax_ll, params, [same], chunk=n,
                                       key=jax.random.key(0))
  sigma = np.sqrt(p[0] * (1 - p[0]) * (1 - 2 * p[0]) ** 2 / n) + 1e-3
  assert np.all(np.abs(np.asarray(sampled["b"]) - p[0] * (1 - p[0])) < 5 * sigma)


@pytest.fixture(scope="module")
def decoder():
  cfg = models_lib.default_model_config()
  cfg.update(d_model=8, num_heads=2, num_layers=2, d_ff=16, vocab_size=11, seq_len=6,
             num_tasks=2)
  return FunctionalModel.split(models_lib.build_model(cfg, seed=0))[:2]


def _lm_batch(rng, b=3, length=6):
  inputs = rng.integers(1, 11, size=(b, length)).astype(np.int32)
  inputs[1, 4:] = 0  # padding
  mask = np.zeros((b, length), np.float32)
  mask[:, 2:4] = 1.0
  mask[2] = 0.0  # an example without answer tokens
  return {"inputs": inputs, "targets": np.roll(inputs, -1, 1), "mask": mask,
          "task_id": np.array([0, 1, 1], np.int32)}


def test_fisher_of_the_decoder_matches_single_example_grads(decoder):
  fm, params = decoder
  batch = _lm_batch(np.random.default_rng(1))
  got = statistics.fisher_diagonal(statistics.model_log_likelihood(fm), params, [batch])

  @jax.jit
  def grad(p, one):  # d (-log p(answer | prompt)) / d theta of a batch of one
    return jax.grad(lambda q: jnp.sum(token_losses(fm.apply(q, one)[0], one["targets"])
                                      * one["mask"]))(p)

  grads = [grad(params, {k: jnp.asarray(v[i:i + 1]) for k, v in batch.items()})
           for i in (0, 1)]  # example 2 carries no loss
  want = jax.tree.map(lambda a, b: (a ** 2 + b ** 2) / 2, *grads)
  for p, w in statistics.flat_paths(want).items():
    np.testing.assert_allclose(np.asarray(got[p]), np.asarray(w), rtol=2e-4, atol=1e-9,
                               err_msg=p)


def test_gram_matrices_of_the_decoder(decoder):
  fm, params = decoder
  batch = _lm_batch(np.random.default_rng(2))
  got = statistics.gram_matrices(fm, params, [batch])
  linear = {f"blocks/{i}/{n}" for i in (0, 1) for n in ("attn/wq", "attn/wk", "attn/wv",
                                                       "attn/wo", "ffn/w_in", "ffn/w_out")}
  assert set(got) == linear | {"head/kernel"}
  assert got["blocks/0/ffn/w_out"].shape == (16, 16) and got["blocks/1/attn/wo"].shape == (8, 8)
  # Block 0's attention input is LN(embed[tokens] + pos) over the real tokens.
  params = jax.tree.map(np.asarray, params)
  h = params["embed"][batch["inputs"]] + params["pos_embed"][:6]  # [B, L, d]
  ln = params["blocks"][0]["ln_attn"]
  h = (h - h.mean(-1, keepdims=True)) / np.sqrt(h.var(-1, keepdims=True) + 1e-5)
  h = h * ln["scale"] + ln["bias"]
  rows = h[batch["inputs"] != 0].astype(np.float64)
  np.testing.assert_allclose(np.asarray(got["blocks/0/attn/wq"]), rows.T @ rows / len(rows),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_array_equal(np.asarray(got["blocks/0/attn/wq"]),
                                np.asarray(got["blocks/0/attn/wv"]))


def test_fisher_merging_matches_numpy():
  rng = np.random.default_rng(3)
  base = {"a": rng.normal(size=(4, 3)), "b": rng.normal(size=(5,))}
  base = jax.tree.map(lambda x: x.astype(np.float32), base)
  taus = [jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), base)
          for _ in range(3)]
  fishers = [jax.tree.map(lambda x: (rng.random(x.shape) ** 4).astype(np.float32), base)
             for _ in range(3)]
  fishers[0]["b"][:2] = 0.0
  fishers[1]["b"][:2] = fishers[2]["b"][:2] = 0.0  # no task informs b[:2]: the mean
  w = np.array([1.0, 2.0, 0.5], np.float32)
  got = merging.merge(base, taus, "fisher", weights=w, statistics=fishers)
  for k in base:
    thetas = np.stack([base[k] + t[k] for t in taus]).astype(np.float64)
    f = np.maximum(np.stack([fi[k] for fi in fishers]), 1e-6) * w.reshape(-1, *[1] * base[k].ndim)
    np.testing.assert_allclose(np.asarray(got[k]), (f * thetas).sum(0) / f.sum(0),
                               rtol=1e-5, atol=1e-6)
  mean = (base["b"] + sum(wt * t["b"] for wt, t in zip(w, taus)) / w.sum())[:2]
  np.testing.assert_allclose(np.asarray(got["b"][:2]), mean, rtol=1e-5)


def test_regmean_matches_least_squares_and_numpy():
  rng = np.random.default_rng(4)
  shapes = {"blocks/0/ffn/w_in": (6, 5), "blocks/0/attn/wq": (6, 2, 3),
            "blocks/0/attn/wo": (2, 3, 6), "blocks/0/ffn/b_in": (5,)}
  base = {p: rng.normal(size=s).astype(np.float32) for p, s in shapes.items()}
  taus = [{p: rng.normal(size=s).astype(np.float32) for p, s in shapes.items()}
          for _ in range(3)]
  xs = {}  # each task's inputs of every linear leaf [n_t, d_in]
  for p, s in shapes.items():
    if len(s) > 1:
      d_in = 6 if s[0] == 6 else s[0] * s[1]
      xs[p] = [rng.normal(size=(n, d_in)) * rng.random(d_in) for n in (9, 14, 11)]
  grams = [{p: (x[t].T @ x[t] / len(x[t])).astype(np.float32) for p, x in xs.items()}
           for t in range(3)]
  got = merging.merge(base, taus, "regmean", options={"alpha": 1.0}, statistics=grams)
  for p, x in xs.items():  # alpha 1: min_W sum_t ||X_t W - X_t W_t||^2 / n_t
    w_t = [(base[p] + t[p]).reshape(x[0].shape[1], -1) for t in taus]
    lhs = np.vstack([xi / np.sqrt(len(xi)) for xi in x])
    rhs = np.vstack([xi @ wi / np.sqrt(len(xi)) for xi, wi in zip(x, w_t)])
    want = np.linalg.lstsq(lhs, rhs, rcond=None)[0].reshape(shapes[p])
    np.testing.assert_allclose(np.asarray(got[p]), want, rtol=1e-4, atol=1e-4, err_msg=p)
  np.testing.assert_allclose(np.asarray(got["blocks/0/ffn/b_in"]),
                             base["blocks/0/ffn/b_in"] + np.mean(
                                 [t["blocks/0/ffn/b_in"] for t in taus], 0), atol=1e-6)
  w = np.array([1.0, 0.5, 2.0], np.float32)
  got = merging.merge(base, taus, "regmean", weights=w, statistics=grams)  # alpha 0.9
  for p in xs:
    g = [wt * (0.9 * gt[p] + 0.1 * np.diag(np.diag(gt[p]))) for wt, gt in zip(w, grams)]
    d_in = g[0].shape[0]
    b = sum(gi @ (base[p] + t[p]).reshape(d_in, -1) for gi, t in zip(g, taus))
    want = np.linalg.solve(sum(g).astype(np.float64), b).reshape(shapes[p])
    np.testing.assert_allclose(np.asarray(got[p]), want, rtol=1e-4, atol=1e-4, err_msg=p)


def test_bad_statistics_are_one_line():
  rng = np.random.default_rng(5)
  base = {"w": rng.normal(size=(4, 3)).astype(np.float32)}
  taus = [base, base]
  fisher = [{"w": np.ones((4, 3), np.float32)}] * 2
  gram = {"w": np.eye(4, dtype=np.float32)}
  cases = [
      (lambda: merging.merge(base, taus, "fisher"),
       "merging: fisher needs fisher statistics of every task"),
      (lambda: merging.merge(base, taus, "regmean", statistics=[gram]),
       "merging.statistics: 1 statistics for 2 task vectors"),
      (lambda: merging.merge(base, taus, "fisher", statistics=[{"w": np.ones((3, 4))}] * 2),
       "merging.statistics: the Fisher of 'w' has shape (3, 4), the parameter (4, 3)"),
      (lambda: merging.merge(base, taus, "fisher", statistics=[{}, {}]),
       "merging.statistics: fisher has no Fisher diagonal for 'w'"),
      (lambda: merging.merge(base, taus, "regmean", statistics=[gram, {}]),
       "merging.statistics: task 1 has no statistics for 'w' that task 0 has"),
      (lambda: merging.merge(base, taus, "regmean", statistics=[{"w": np.eye(3)}] * 2),
       "merging.statistics: the Gram of 'w' is [3, 3], which matches no input axes"),
      (lambda: merging.merge(base, taus, "regmean", statistics=[gram, {"w": np.eye(5)}]),
       "merging.statistics: the tasks' statistics of 'w' have shapes"),
      (lambda: merging.build("regmean", {"alpha": 1.5}), "merging.options.alpha: must be in"),
      (lambda: statistics.load("/nonexistent.npz"), "merging.statistics: cannot read"),
      (lambda: statistics.for_run("coefficients", None, None, None),
       "merging.statistics: adamerging's coefficients are learned over all runs together "
       "(merge_runs"),
      (lambda: merging.merge(base, taus, "adamerging", statistics=[{"w": np.ones(2)}] * 2),
       "merging.statistics: the coefficients of 'w' have shape (2,), not a scalar per task"),
  ]
  del fisher
  for fn, start in cases:
    with pytest.raises(ValueError) as e:
      fn()
    assert str(e.value).startswith(start) and "\n" not in str(e.value), str(e.value)


def test_adamerging_coefficients_match_numpy_adam():
  """Task-wise AdaMerging on a linear softmax model: 5 optax Adam steps on the mean
  prediction entropy equal NumPy's closed-form entropy gradient and Adam; layer-wise
  coefficients lower the entropy; the method merges with them."""
  from modular.merging.methods import adamerging
  rng = np.random.default_rng(6)
  base = {"blocks/0/w": rng.normal(size=(D, C)).astype(np.float32),
          "blocks/1/w": rng.normal(size=(C, C)).astype(np.float32)}
  taus = [{p: rng.normal(size=x.shape).astype(np.float32) for p, x in base.items()}
          for _ in range(2)]
  x = rng.normal(size=(8, D)).astype(np.float32)
  first = lambda flat, batch: (batch["x"] @ flat["blocks/0/w"], jnp.ones(len(batch["x"])))
  lam = adamerging.learn_coefficients(first, base, [{"blocks/0/w": t["blocks/0/w"]}
                                                    for t in taus], [{"x": x}],
                                      steps=5, learning_rate=0.05)
  ref, m, v = np.full(2, 0.3), np.zeros(2), np.zeros(2)
  for k in range(1, 6):
    z = x @ (base["blocks/0/w"] + sum(l * t["blocks/0/w"] for l, t in zip(ref, taus)))
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    h = -(p * np.log(p)).sum(1, keepdims=True)
    dz = -p * (np.log(p) + h) / len(x)  # d mean H / d z
    g = np.array([np.sum(dz * (x @ t["blocks/0/w"])) for t in taus])
    m, v = 0.9 * m + 0.1 * g, 0.999 * v + 0.001 * g ** 2
    ref = ref - 0.05 * (m / (1 - 0.9 ** k)) / (np.sqrt(v / (1 - 0.999 ** k)) + 1e-8)
  np.testing.assert_allclose([float(l["blocks/0/w"]) for l in lam], ref, rtol=1e-4, atol=1e-5)
  # Layer-wise, through both layers: lower entropy than the 0.3 start, one lambda per layer.
  both = lambda flat, batch: (jax.nn.relu(batch["x"] @ flat["blocks/0/w"]) @ flat["blocks/1/w"],
                              jnp.ones(len(batch["x"])))
  lam = adamerging.learn_coefficients(both, base, taus, [{"x": x}], layer_wise=True,
                                      steps=30, learning_rate=0.05)
  merged = merging.merge(base, taus, "adamerging", statistics=lam)
  start = merging.merge(base, taus, "task_arithmetic")  # lambda 0.3 everywhere
  h = lambda flat: float(adamerging.entropy(*both(flat, {"x": x})))
  assert h(merged) < h(start) - 1e-3
  assert float(lam[0]["blocks/0/w"]) != float(lam[0]["blocks/1/w"])
  want = {p: base[p] + sum(float(l[p]) * t[p] for l, t in zip(lam, taus)) for p in base}
  for p in base:
    np.testing.assert_allclose(np.asarray(merged[p]), want[p], rtol=1e-6, atol=1e-6)
