"""Activation and attribution patching against a NumPy model and a planted model.

The NumPy decoder below (float64, from the parameter dict alone) applies the same
writes as ``Context.patches`` (``(1 - w) * value + w * source`` at a site) and
records every site. Checked: a patched forward pass against the model's; the
vmapped patching maps (heads, residual positions, FFN neurons) and path patching
against loops of NumPy patched passes; attribution patching
against NumPy central differences of the patch weight (its exact meaning) and
against the exact maps (agreement); a planted model (``planted_models``) whose head
map is nonzero exactly on the heads planted for each task; the declared
corruption rules of the built-in tasks; and the hook switched off: the same traced
program as without it, and outputs bit-identical to a zero-weight patch.

References:
  Wang et al. 2023, "Interpretability in the Wild"; Nanda 2023, "Attribution
  Patching"; Michel et al. 2019 (planted heads as in the head-importance tests).
"""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
from planted_models import planted_model
from test_analysis_reference import _ln, np_params

from modular.analysis import patching
from modular.data import pairs as pairs_lib
from modular.data import tasks as tasks_lib
from modular.data import vocab
from modular.models import build_model, default_model_config
from modular.models.context import Context
from modular.objective import FunctionalModel

NL, H, D, SEQ, SYMBOLS = 2, 2, 16, 12, 8
NAMES = ("copy", "assoc_recall", "induction")


def np_forward(p, inputs, patches=None):
  """NumPy float64 decoder with writes {site: (weight, source)} -> (logits, sites)."""
  patches = patches or {}
  sites = {}

  def tap(name, value):
    if name in patches:
      w, src = (np.asarray(a, np.float64) for a in patches[name])
      value = (1.0 - w) * value + w * src
    sites[name] = value
    return value

  seq = inputs.shape[1]
  x = p["embed"][inputs] + p["pos_embed"][:seq]
  for l in range(len(p["blocks"])):
    blk = p["blocks"][l]
    x = tap(f"block{l}/resid_pre", x)
    a, h = blk["attn"], _ln(x, blk["ln_attn"])
    q, k, v = (np.einsum("bld,dhk->blhk", h, a[w]) for w in ("wq", "wk", "wv"))
    logits = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1])
    logits = np.where(np.tril(np.ones((seq, seq), bool)), logits, -1e30)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    heads = tap(f"block{l}/attn/attn_heads", np.einsum("bhqs,bshk->bqhk", probs, v))
    x = x + tap(f"block{l}/attn/out", np.einsum("blhk,hkd->bld", heads, a["wo"]))
    f = blk["ffn"]
    act = tap(f"block{l}/ffn/ffn_act",
              np.maximum(_ln(x, blk["ln_ffn"]) @ f["w_in"] + f["b_in"], 0.0))
    x = x + tap(f"block{l}/ffn/out", act @ f["w_out"] + f["b_out"])
  x = _ln(x, p["ln_final"])
  return x @ p["head"]["kernel"] + p["head"]["bias"], sites


def np_metric(logits, clean, alt, metric, num_tasks):
  """Per-task metric (NumPy): logit difference where the answers differ, or loss."""
  t, mask = clean["targets"], clean["mask"]
  if metric == "loss":
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    val, where = -np.take_along_axis(logp, t[..., None], -1)[..., 0], mask
  else:
    pick = lambda y: np.take_along_axis(logits, y[..., None], -1)[..., 0]
    val, where = pick(t) - pick(alt), mask * (t != alt)
  out = np.zeros(num_tasks)
  for k in range(num_tasks):
    m = where * (clean["task_id"] == k)[:, None]
    out[k] = (val * m).sum() / max(m.sum(), 1.0)
  return out


SIZES = dict(d_model=D, num_heads=H, num_layers=NL, d_ff=32, seq_len=SEQ,
             vocab_size=vocab.vocab_size(SYMBOLS), num_tasks=len(NAMES))


@pytest.fixture(scope="module")
def setup():
  cfg = default_model_config()
  for k, v in SIZES.items():
    cfg[k] = v
  fm, params, _ = FunctionalModel.split(build_model(cfg, 0))
  spec = tasks_lib.TaskSpec(SYMBOLS, 2, 4)
  clean, corrupt = pairs_lib.corrupted_pairs(NAMES, spec, seq_len=SEQ, examples_per_task=6,
                                             length=4, seed=1)
  return fm, params, np_params(params), clean, corrupt


def test_patched_forward_matches_numpy(setup):
  fm, params, p, clean, corrupt = setup
  _, src = np_forward(p, clean["inputs"])
  w_head = np.zeros((SEQ, H, 1))
  w_head[5, 1] = 1.0  # head (0, 1) at position 5
  w_pos = np.zeros((SEQ, 1))
  w_pos[3] = 0.5  # half-way at position 3
  names = {"block0/attn/attn_heads": w_head, "block1/resid_pre": w_pos,
           "block1/ffn/out": np.ones((1, 1)), "block0/attn/out": w_pos}
  writes = {n: (w, src[n]) for n, w in names.items()}
  want, _ = np_forward(p, corrupt["inputs"], writes)
  cast = {n: (np.float32(w), np.float32(s)) for n, (w, s) in writes.items()}
  got = jax.jit(lambda q, b, w: fm.apply(q, b, patches=w)[0])(params, corrupt, cast)
  np.testing.assert_allclose(np.asarray(got), want, atol=1e-5, rtol=0)
  assert np.abs(want - np_forward(p, corrupt["inputs"])[0]).max() > 1e-2  # it did patch


@pytest.fixture(scope="module")
def heads_map(setup):
  fm, params, _, clean, corrupt = setup
  return patching.activation_patching(fm, params, clean, corrupt, site="heads", metric="loss",
                                      batch_size=len(clean["inputs"]))


def test_head_map_matches_numpy_loop(setup, heads_map):
  """Heads [L, H] with the per-task loss of the clean answer."""
  fm, _, p, clean, corrupt = setup
  alt = corrupt["targets"]
  _, src = np_forward(p, clean["inputs"])
  base = np_metric(np_forward(p, corrupt["inputs"])[0], clean, alt, "loss", 3)
  gap = np_metric(np_forward(p, clean["inputs"])[0], clean, alt, "loss", 3) - base
  want = np.zeros((NL, H, 3))
  for l in range(NL):
    for h in range(H):
      name = f"block{l}/attn/attn_heads"
      w = np.zeros((1, H, 1))
      w[0, h] = 1.0
      logits, _ = np_forward(p, corrupt["inputs"], {name: (w, src[name])})
      want[l, h] = np_metric(logits, clean, alt, "loss", 3) - base
  r = heads_map
  assert r.shape == (NL, H) and r.task_map(1).shape == (NL, H)
  np.testing.assert_allclose(r.effect, want, atol=1e-5, rtol=0)
  np.testing.assert_allclose(r.normalized, want / gap, atol=1e-4, rtol=0)
  assert np.abs(want).max() > 1e-2


def test_attribution_is_the_patch_weight_gradient(setup, heads_map):
  """Attribution of head (l, h) = dM/dw at w = 0 (NumPy central differences)."""
  _, _, p, clean, corrupt = setup
  alt, eps = corrupt["targets"], 1e-4
  _, src = np_forward(p, clean["inputs"])
  want = np.zeros((NL, H, 3))
  for l in range(NL):
    for h in range(H):
      name = f"block{l}/attn/attn_heads"
      w = np.zeros((1, H, 1))
      w[0, h] = eps
      up = np_metric(np_forward(p, corrupt["inputs"], {name: (w, src[name])})[0],
                     clean, alt, "loss", 3)
      down = np_metric(np_forward(p, corrupt["inputs"], {name: (-w, src[name])})[0],
                       clean, alt, "loss", 3)
      want[l, h] = (up - down) / (2 * eps)
  np.testing.assert_allclose(heads_map.attribution, want, atol=2e-4, rtol=1e-3)


def test_attribution_agrees_with_exact(setup, heads_map):
  a = heads_map.agreement
  print(f"heads [L, H] loss: {a}")
  assert a.entries == NL * H * 3
  assert a.pearson > 0.9 and a.spearman > 0.8
  assert a.max_abs_diff < 0.5 * a.max_abs_exact


def test_position_map_matches_numpy(setup):
  """The residual stream per layer and position, with the logit difference."""
  fm, params, p, clean, corrupt = setup
  r = patching.activation_patching(fm, params, clean, corrupt, site="resid",
                                   attribution=False, batch_size=len(clean["inputs"]))
  alt = corrupt["targets"]
  _, src = np_forward(p, clean["inputs"])
  base = np_metric(np_forward(p, corrupt["inputs"])[0], clean, alt, "logit_diff", 3)
  assert r.shape == (NL, SEQ) and r.attribution is None
  for l, s in [(0, 2), (1, 5), (1, 6)]:
    w = np.zeros((SEQ, 1))
    w[s] = 1.0
    name = f"block{l}/resid_pre"
    logits, _ = np_forward(p, corrupt["inputs"], {name: (w, src[name])})
    np.testing.assert_allclose(r.effect[l, s],
                               np_metric(logits, clean, alt, "logit_diff", 3) - base, atol=1e-5)
  same = (clean["inputs"] == corrupt["inputs"]).all(0)  # positions no pair changes
  # layer 0 there is the input: nothing changes (up to the vmapped program's rounding)
  np.testing.assert_allclose(r.effect[0, same], 0.0, atol=2e-6)


def test_neuron_map_matches_numpy(setup):
  """One component per FFN neuron (the dense FFN's hidden units), [NL, F]."""
  fm, params, p, clean, corrupt = setup
  r = patching.activation_patching(fm, params, clean, corrupt, site="neurons", metric="loss",
                                   attribution=False, batch_size=len(clean["inputs"]))
  alt = corrupt["targets"]
  _, src = np_forward(p, clean["inputs"])
  base = np_metric(np_forward(p, corrupt["inputs"])[0], clean, alt, "loss", 3)
  assert r.shape == (NL, 32)
  for l, n in [(0, 3), (1, 17), (1, 30)]:
    w = np.zeros((1, 32))
    w[0, n] = 1.0
    name = f"block{l}/ffn/ffn_act"
    logits, _ = np_forward(p, corrupt["inputs"], {name: (w, src[name])})
    np.testing.assert_allclose(r.effect[l, n], np_metric(logits, clean, alt, "loss", 3) - base,
                               atol=1e-5)
  assert np.abs(r.effect).max() > 1e-3


def test_path_patching_matches_numpy(setup):
  """Sender (0, h) -> receivers {(1, 1)}: the three runs of Wang et al. in NumPy."""
  from modular.analysis.path_patching import path_patching
  fm, params, p, clean, corrupt = setup
  r = path_patching(fm, params, clean, corrupt, [(1, 1)], metric="loss",
                    batch_size=len(clean["inputs"]))
  alt, x = corrupt["targets"], corrupt["inputs"]
  _, src = np_forward(p, clean["inputs"])
  _, tgt = np_forward(p, x)
  base = np_metric(np_forward(p, x)[0], clean, alt, "loss", 3)
  assert r.effect.shape == (1, H, 3)
  for h in range(H):
    mixed = tgt["block0/attn/attn_heads"].copy()
    mixed[:, :, h] = src["block0/attn/attn_heads"][:, :, h]
    _, run2 = np_forward(p, x, {"block0/attn/attn_heads": (np.ones((1, H, 1)), mixed)})
    w = np.zeros((1, H, 1))
    w[0, 1] = 1.0
    logits, _ = np_forward(p, x, {"block1/attn/attn_heads":
                                  (w, run2["block1/attn/attn_heads"])})
    np.testing.assert_allclose(r.effect[0, h], np_metric(logits, clean, alt, "loss", 3) - base,
                               atol=1e-5)
  assert np.abs(r.effect).max() > 1e-3
  with pytest.raises(ValueError, match="receivers:"):
    path_patching(fm, params, clean, corrupt, [(0, 1)])


PLANTED = {(0, 0): {0}, (0, 1): {0, 1}, (1, 0): set(), (1, 1): {1, 2}}


def test_planted_heads_are_recovered_exactly(setup, heads_map):
  """Head (l, h) reads values only from its planted tasks' indicator dims (written by
  the task token), so exactly those heads carry the corrupted symbols to the answer:
  the map of the loss of the model's own clean answers is nonzero exactly there. The
  model has the sizes of ``setup`` (one compiled patching call serves both)."""
  _, _, _, pairs, twins = setup
  fm, params = planted_model(len(NAMES), NL, H, D, SIZES["d_ff"], SIZES["vocab_size"], SEQ,
                             PLANTED, {}, seed=0, value_scale=3.0)
  teach = jax.jit(lambda q, b: fm.apply(q, b)[0].argmax(-1).astype(np.int32))
  clean = dict(pairs, targets=np.asarray(teach(params, pairs)))
  corrupt = dict(twins, targets=np.asarray(teach(params, twins)))
  r = patching.activation_patching(fm, params, clean, corrupt, site="heads", metric="loss",
                                   batch_size=len(clean["inputs"]))
  effect = np.abs(r.effect)  # [NL, H, T]
  floor = 1e-3 * effect.max()
  planted = np.zeros_like(effect, bool)
  for (l, h), tasks in PLANTED.items():
    planted[l, h, list(tasks)] = True
  print(f"planted: smallest planted |effect| {effect[planted].min():.3g}, largest other "
        f"{effect[~planted].max():.3g}, floor {floor:.3g}; attribution vs exact "
        f"{r.agreement}")
  np.testing.assert_array_equal(effect > floor, planted)
  np.testing.assert_array_equal(np.abs(r.attribution) > floor, planted)


@pytest.mark.parametrize("name", [n for n in tasks_lib.TASKS.names() if pairs_lib.has_rule(n)])
def test_corruption_rules(name):
  """Each rule keeps the lengths, changes the answer, and gives a correct example."""
  task, spec = tasks_lib.get_task(name), tasks_lib.TaskSpec(12, 1, 8)
  rng = np.random.default_rng(0)
  for _ in range(200):
    p, a = task(rng, spec)
    p2, a2 = task.corrupted(rng, spec, p, a)
    assert p2.shape == p.shape and a2.shape == a.shape and not np.array_equal(a, a2)
    if name == "assoc_recall":
      keys, values = p2[:-1:2], p2[1:-1:2]
      assert len(set(keys)) == len(keys) and a2[0] == values[list(keys).index(p2[-1])]
    elif name == "induction":
      body = p2[:-1]
      assert (body == p2[-1]).sum() == 1 and a2[0] == body[list(body).index(p2[-1]) + 1]
    elif name == "count":
      assert a2[0] == (p2[:-1] == p2[-1]).sum()
    elif name == "parity":
      assert a2[0] == p2.sum() % 2
    elif name == "mod_add":
      np.testing.assert_array_equal(a2, (p2[:len(p2) // 2] + p2[len(p2) // 2:]) % 12)
    else:
      fn = {"copy": lambda x: x, "reverse": lambda x: x[::-1], "sort": np.sort,
            "duplicate": lambda x: np.repeat(x, 2), "shift": lambda x: (x + 1) % 12}[name]
      np.testing.assert_array_equal(a2, fn(p2))


def test_hook_off_is_the_same_program(setup, monkeypatch):
  """Without patches the traced forward pass is the one without the hook, and a
  zero-weight patch at every site leaves the outputs bit-identical."""
  fm, params, _, clean, _ = setup
  hooked = str(jax.make_jaxpr(lambda q: fm.apply(q, clean)[0])(params))
  monkeypatch.setattr(Context, "intervene", lambda self, name, value: value)
  assert str(jax.make_jaxpr(lambda q: fm.apply(q, clean)[0])(params)) == hooked
  monkeypatch.undo()
  def run(q, b, w):
    logits, ctx = fm.apply(q, b, capture=True, patches=w)
    return logits, ctx.intermediates

  run = jax.jit(run)
  plain, sites = run(params, clean, None)
  zero = {n: (np.zeros(a.shape[:-1] + (1,), np.float32), a + 1.0)
          for n, a in sites.items() if n.endswith(("resid_pre", "out", "heads", "ffn_act"))}
  assert len(zero) == 5 * NL
  patched, _ = run(params, clean, zero)
  np.testing.assert_array_equal(np.asarray(patched), np.asarray(plain))


def test_bad_site_metric_and_pairs_are_one_line(setup):
  fm, params, _, clean, corrupt = setup
  with pytest.raises(ValueError, match="site: unknown 'neuron'"):
    patching.activation_patching(fm, params, clean, corrupt, site="neuron")
  with pytest.raises(ValueError, match="metric: unknown"):
    patching.activation_patching(fm, params, clean, corrupt, metric="kl")
  with pytest.raises(ValueError, match="must pair up"):
    patching.activation_patching(fm, params, clean, dict(corrupt, mask=0 * corrupt["mask"]))
  with pytest.raises(ValueError, match="declares no corruption rule"):
    pairs_lib.corrupted_pairs(["copy", "mine"], tasks_lib.TaskSpec(8, 2, 4), seq_len=SEQ,
                              examples_per_task=1, tasks=["mine"])


def test_report_view_names_the_strongest_heads(setup, heads_map, tmp_path):
  from modular.analysis import patching_report
  figs, line = patching_report.write_patching(heads_map, list(NAMES), 6, str(tmp_path))
  assert figs[0][0] == "Patching" and os.path.getsize(tmp_path / figs[0][2]) > 1000
  for t, name in enumerate(NAMES):
    m = heads_map.task_map(t)
    l, h = np.unravel_index(np.nanargmax(m), m.shape)
    assert f"{name} L{l}H{h} ({m[l, h]:.2f})" in line
  assert f"Pearson {heads_map.agreement.pearson:.2f}" in line
