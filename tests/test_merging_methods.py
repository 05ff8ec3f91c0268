"""Merging methods against peft's and mergekit's merges, NumPy, and shared properties.

``tests/golden/merging.npz`` holds peft 0.21.2's ``task_arithmetic``, ``magnitude_prune``,
``ties`` (both sign methods), ``dare_linear`` and ``dare_ties``, and mergekit 0.1.5's
``breadcrumbs`` and unit-weight ``ties``, on fixed random tensors, written by
``tests/golden/make_merging_golden.py`` (torch, peft and mergekit are never needed here).
peft trims per tensor (our ``trim_scope="tensor"``), its ``density`` is our ``k`` and
``1 - p``; DARE is fed the mask peft drew. The paper's whole-model trim of TIES and the
paper's ``beta``/``gamma`` rule of Model Breadcrumbs are checked against NumPy
references. Every registered method passes the same properties: one task gives
``base + lambda * tau``, the order of the tasks does not matter, zero task vectors give
the base back.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modular import merging
from modular.merging.methods.breadcrumbs import Breadcrumbs
from modular.merging.methods.dare import DARE, DARETies
from modular.merging.methods.magnitude_prune import MagnitudePrune
from modular.merging.methods.task_arithmetic import TaskArithmetic
from modular.merging.methods.ties import TIES

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "merging.npz")
ATOL = 1e-6


@pytest.fixture(scope="module")
def golden():
  with np.load(GOLDEN) as z:
    return {k: z[k] for k in z.files}


def _leaves(g):
  return sorted({k.split("/")[0] for k in g if "/" in k})


def _peft_cases(g):
  k = float(g["density"])
  p = 1.0 - float(g["dare_density"])
  return {
      "task_arithmetic": (TaskArithmetic(scaling=1.0), None),
      "magnitude_prune": (MagnitudePrune(k=k), None),
      "ties_total": (TIES(k=k, trim_scope="tensor", sign="total"), None),
      "ties_frequency": (TIES(k=k, trim_scope="tensor", sign="frequency"), None),
      "dare_linear": (DARE(p=p), "dare_linear_mask"),
      "dare_ties": (DARETies(p=p), "dare_ties_mask"),
  }


@pytest.mark.parametrize("entry", ["task_arithmetic", "magnitude_prune", "ties_total",
                                   "ties_frequency", "dare_linear", "dare_ties"])
def test_matches_peft_per_leaf(golden, entry):
  method, mask_key = _peft_cases(golden)[entry]
  w = jnp.asarray(golden["weights"])
  for leaf in _leaves(golden):
    tau = jnp.asarray(golden[f"{leaf}/tau"])
    mask = None if mask_key is None else jnp.asarray(golden[f"{leaf}/{mask_key}"])
    got = np.asarray(method.combine(tau, w, mask=mask))
    want = golden[f"{leaf}/{entry}"]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=ATOL, err_msg=f"{entry} {leaf}")
    if entry not in ("task_arithmetic",):  # the sparsified methods really drop entries
      assert np.mean(want == 0) > 0 or entry.startswith("dare")


def test_matches_mergekit(golden):
  """Breadcrumbs with mergekit's kept fraction; TIES with unit weights (mergekit == peft)."""
  k, gamma = (float(x) for x in golden["crumbs"])
  crumbs = Breadcrumbs(k=k, gamma=gamma, scaling=1.0)
  ties = TIES(k=float(golden["density"]), trim_scope="tensor")
  w = jnp.asarray(golden["weights"])
  for leaf in _leaves(golden):
    tau = jnp.asarray(golden[f"{leaf}/tau"])
    want = golden[f"{leaf}/mergekit_breadcrumbs"]
    kept = np.asarray(merging.ops.outlier_mask(tau, 0.0, gamma, k)).reshape(3, -1).sum(1)
    assert list(kept) == [int(k * tau[0].size)] * 3  # both tails dropped per task
    np.testing.assert_allclose(np.asarray(crumbs.combine(tau, w)), want, rtol=0, atol=ATOL)
    np.testing.assert_allclose(np.asarray(ties.combine(tau, jnp.ones(3))),
                               golden[f"{leaf}/mergekit_ties_unit"], rtol=0, atol=ATOL)


def test_merge_driver_matches_peft_on_a_pytree(golden):
  """The whole pytree through ``merge``: base + delta, per leaf as peft, masks per task."""
  leaves = _leaves(golden)
  t = golden[f"{leaves[0]}/tau"].shape[0]
  taus = [{"enc": {l: golden[f"{l}/tau"][i] for l in leaves}} for i in range(t)]
  base = {"enc": {l: np.full(golden[f"{l}/tau"].shape[1:], 0.5, np.float32) for l in leaves},
          "head": np.ones((3,), np.float32)}
  masks = [{"enc": {l: golden[f"{l}/dare_ties_mask"][i] for l in leaves}} for i in range(t)]
  p = 1.0 - float(golden["dare_density"])
  out = merging.merge(base, taus, DARETies(p=p), weights=golden["weights"], masks=masks)
  for l in leaves:
    np.testing.assert_allclose(np.asarray(out["enc"][l]), 0.5 + golden[f"{l}/dare_ties"],
                               rtol=0, atol=ATOL)
  np.testing.assert_array_equal(np.asarray(out["head"]), base["head"])


def _np_ties_model(taus, weights, k):
  """NumPy TIES with the paper's trim: one threshold per task over all its parameters."""
  flat = np.concatenate([t.reshape(t.shape[0], -1) for t in taus], axis=1)
  keep = int(k * flat.shape[1])
  thr = np.sort(np.abs(flat), axis=1)[:, flat.shape[1] - keep]
  out = []
  for t in taus:
    tt = np.where(np.abs(t) >= thr.reshape((-1,) + (1,) * (t.ndim - 1)), t, 0)
    sign = np.where(tt.sum(0) >= 0, 1.0, -1.0)
    agree = np.sign(tt) == sign
    wt = tt * weights.reshape((-1,) + (1,) * (t.ndim - 1))
    out.append((wt * agree).sum(0) / np.maximum(agree.sum(0), 1))
  return out


def test_ties_model_trim_matches_numpy(golden):
  leaves = _leaves(golden)
  taus = [golden[f"{l}/tau"] for l in leaves]
  w = golden["weights"]
  tvs = [{l: golden[f"{l}/tau"][i] for l in leaves} for i in range(taus[0].shape[0])]
  got = merging.merge_deltas(tvs, TIES(k=0.3), weights=w)
  want = _np_ties_model(taus, w, 0.3)
  for l, ref in zip(leaves, want):
    np.testing.assert_allclose(np.asarray(got[l]), ref, rtol=0, atol=ATOL)
  # The whole-model trim keeps int(k * D) entries per task over all leaves.
  thr = merging.ops.global_thresholds([jnp.asarray(t) for t in taus], 0.3)
  kept = sum(np.sum(np.abs(t) >= np.asarray(thr).reshape((-1,) + (1,) * (t.ndim - 1)),
                    axis=tuple(range(1, t.ndim))) for t in taus)
  d = sum(t[0].size for t in taus)
  np.testing.assert_array_equal(kept, [int(0.3 * d)] * taus[0].shape[0])


def test_breadcrumbs_matches_numpy(golden):
  tau = golden["d/tau"]  # [T, 16, 8]
  w = golden["weights"]
  beta, gamma = 0.5, 0.1
  flat = np.abs(tau.reshape(tau.shape[0], -1))
  n = flat.shape[1]
  want = np.zeros(tau.shape[1:], np.float64)
  for t in range(tau.shape[0]):
    order = np.argsort(flat[t])
    keep = np.zeros(n, bool)
    keep[order[int(beta * n):n - int(gamma * n)]] = True
    want += w[t] * np.where(keep.reshape(tau.shape[1:]), tau[t], 0)
  got = Breadcrumbs(beta=beta, gamma=gamma).combine(jnp.asarray(tau), jnp.asarray(w))
  np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=ATOL)


def test_dare_own_draw_keep_rate_and_rescale():
  p, n = 0.3, 50_000
  tau = jnp.ones((2, n), jnp.float32)
  dropped = np.asarray(DARE(p=p).drop(tau, None, jax.random.key(7)))
  kept = dropped != 0
  sigma = np.sqrt(p * (1 - p) / n)
  for row in kept:  # each task's keep rate within 5 standard errors of 1 - p
    assert abs(row.mean() - (1 - p)) < 5 * sigma
  np.testing.assert_allclose(dropped[kept], 1.0 / (1.0 - p), rtol=1e-6)
  assert abs(dropped.mean() - 1.0) < 5 * sigma / (1 - p)  # the expectation is kept
  assert np.mean(kept[0] == kept[1]) < 0.65  # tasks draw independent masks
  # Reproducible from the seed through merge; another seed gives another draw.
  tvs = [{"w": jnp.linspace(-1, 1, 64).reshape(8, 8)}, {"w": jnp.ones((8, 8))}]
  a = merging.merge_deltas(tvs, "dare", options={"p": 0.5}, key=3)["w"]
  b = merging.merge_deltas(tvs, "dare", options={"p": 0.5}, key=3)["w"]
  c = merging.merge_deltas(tvs, "dare", options={"p": 0.5}, key=4)["w"]
  np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert not np.array_equal(np.asarray(a), np.asarray(c))


# -- properties over every registered method ------------------------------------------

ALL = merging.METHODS.names()


def _tree(rng, scale=1.0):
  return {"blocks": {"0": {"w": (scale * rng.normal(size=(6, 4))).astype(np.float32),
                           "b": (scale * rng.normal(size=(4,))).astype(np.float32)}},
          "emb": (scale * rng.normal(size=(5, 3))).astype(np.float32)}


def _statistics(method, taus, rng):
  """Random statistics of the kind ``method`` consumes (positive Fisher, SPD Grams)."""
  if method.statistics == "fisher":
    return [jax.tree.map(lambda x: (rng.random(x.shape) + 0.1).astype(np.float32), t)
            for t in taus]
  if method.statistics == "gram":
    out = []
    for _ in taus:
      a = rng.normal(size=(6, 6))
      out.append({"blocks/0/w": (a @ a.T / 6 + np.eye(6)).astype(np.float32)})
    return out
  if method.statistics == "coefficients":  # AdaMerging's learned lambda_t, here 1
    return [jax.tree.map(lambda x: np.float32(1.0), t) for t in taus]
  return None


def _models(base, taus, method, **kw):
  """The merged model(s): one per task for per-task methods, else one."""
  if method.per_task_output:
    return merging.merge_tasks(base, taus, method, **kw)
  return [merging.merge(base, taus, method, **kw)]


def test_every_method_is_registered_and_builds():
  assert {"task_arithmetic", "ties", "dare", "dare_ties", "breadcrumbs",
          "magnitude_prune", "average", "lines", "tall_masks", "emr_merging", "fisher",
          "regmean", "adamerging"} <= set(ALL)
  for name in ALL:
    assert merging.build(name).name == name


@pytest.mark.parametrize("name", ALL)
def test_one_task_gives_base_plus_lambda_tau(name):
  cls = merging.METHODS.get(name)
  opts = dict(cls.identity_options)
  opts["scaling"] = 0.5
  rng = np.random.default_rng(0)
  base, tau = _tree(rng), _tree(rng)
  method = merging.build(name, opts)
  (out,) = _models(base, [tau], method, key=0, statistics=_statistics(method, [tau], rng))
  want = jax.tree.map(lambda b, t: b + 0.5 * t, base, tau)
  atol = 1e-5 if method.statistics == "gram" else ATOL  # a float32 solve
  for g, w in zip(jax.tree.leaves(out), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(g), w, rtol=0, atol=atol)


@pytest.mark.parametrize("name", ALL)
def test_task_order_does_not_matter(name):
  method = merging.build(name)
  rng = np.random.default_rng(1)
  base = _tree(rng)
  taus = [_tree(rng) for _ in range(4)]
  weights = np.array([0.5, 1.0, 1.5, 2.0], np.float32)
  masks = [jax.tree.map(lambda x: rng.random(x.shape) < 0.5, t) for t in taus]
  stats = _statistics(method, taus, rng)
  order = [2, 0, 3, 1]
  kw = {"masks": masks} if method.random else {}
  a = _models(base, taus, method, weights=weights, statistics=stats, **kw)
  kw = {"masks": [masks[i] for i in order]} if method.random else {}
  b = _models(base, [taus[i] for i in order], method, weights=weights[order],
              statistics=None if stats is None else [stats[i] for i in order], **kw)
  if method.per_task_output:  # one model per task, in the tasks' order
    b = [b[order.index(t)] for t in range(len(taus))]
  atol = 1e-5 if method.statistics == "gram" else ATOL  # a float32 solve
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):  # up to float32 summation order
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6, atol=atol)


@pytest.mark.parametrize("name", ALL)
def test_zero_task_vectors_give_the_base(name):
  rng = np.random.default_rng(2)
  base = _tree(rng)
  zeros = [_tree(rng, 0.0) for _ in range(3)]
  method = merging.build(name)
  for out in _models(base, zeros, method, key=0, statistics=_statistics(method, zeros, rng)):
    for x, y in zip(jax.tree.leaves(out), jax.tree.leaves(base)):
      assert np.all(np.isfinite(np.asarray(x)))
      np.testing.assert_array_equal(np.asarray(x), y)


# -- task vectors and errors ----------------------------------------------------------


def test_task_vector_covers_the_merged_set_only():
  rng = np.random.default_rng(3)
  base = {**_tree(rng), "heads": {"0": {"w": np.zeros((3, 2), np.float32)}}}
  ft = jax.tree.map(lambda x: x + 1.0, base)
  tau = merging.task_vector(base, ft, frozen=("^emb$",), exclude=("^heads/",))
  assert sorted(tau) == ["blocks"]
  np.testing.assert_allclose(np.asarray(tau["blocks"]["0"]["w"]), np.ones((6, 4)), atol=ATOL)
  out = merging.merge(base, [tau, tau], "task_arithmetic")  # lambda 0.3, two tasks
  np.testing.assert_allclose(np.asarray(out["blocks"]["0"]["b"]), base["blocks"]["0"]["b"] + 0.6,
                             atol=ATOL)
  np.testing.assert_array_equal(np.asarray(out["emb"]), base["emb"])
  np.testing.assert_array_equal(np.asarray(out["heads"]["0"]["w"]), base["heads"]["0"]["w"])


def test_bad_inputs_are_one_line():
  rng = np.random.default_rng(4)
  base = _tree(rng)
  other = {**_tree(rng), "emb": np.zeros((5, 4), np.float32)}
  cases = [
      (lambda: merging.task_vector(base, other, what="run B"),
       "merging: run B's 'emb' has shape (5, 4), the base's (5, 3)"),
      (lambda: merging.task_vector(base, {"emb": base["emb"]}),
       "merging: the fine-tuned model lacks parameter 'blocks/0/b'"),
      (lambda: merging.build("ties", {"k": 1.5}), "merging.options.k: must be in [0.0, 1.0]"),
      (lambda: merging.build("ties", {"density": 0.2}),
       "merging.options.density: unknown option of 'ties'"),
      (lambda: merging.build("dare", {"p": 1.0}), "merging.options.p: must be in [0, 1)"),
      (lambda: merging.build("tiez"), "merging.method: unknown merging method 'tiez'"),
      (lambda: merging.merge(base, [base], "dare"), "merging: dare needs a keep mask or"),
      (lambda: merging.merge(base, [base, base], "ties", weights=[1.0]),
       "merging.weights: 1 weights for 2 task vectors"),
  ]
  for fn, start in cases:
    with pytest.raises(ValueError) as e:
      fn()
    msg = str(e.value)
    assert msg.startswith(start), msg
    assert "\n" not in msg
