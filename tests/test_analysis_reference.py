"""Head importance, ablation, head means and neuron counts against a NumPy model.

The NumPy model below re-implements the standard decoder (pre-LN attention with head
gates and mean ablation, dense ReLU FFN, shared head) in float64 from the parameter
dict alone. Gradients are checked against its central finite differences, ablations
against its forward passes with a head switched off, means and neuron counts against
its captured activations. Other analysis tests import it from here.

References:
  Michel et al. 2019, "Are Sixteen Heads Really Better than One?"; Tan et al. 2024,
  "Neuron Specialization".
"""

from __future__ import annotations

import numpy as np
import pytest

from modular.analysis import ablation as ablation_lib
from modular.analysis import head_importance as hi
from modular.analysis.activations import collect_activations
from modular.analysis.batches import prepare_batches, synthetic_batches
from modular.models import build_model, default_model_config
from modular.objective import FunctionalModel

SIZES = dict(d_model=16, num_heads=2, num_layers=2, d_ff=32, vocab_size=24, seq_len=8,
             num_tasks=3)


def tiny_model(seed: int = 0, **overrides):
  """A small built model: (fm, params as float64 NumPy tree, params)."""
  cfg = default_model_config()
  for k, v in {**SIZES, **overrides}.items():
    cfg[k] = v
  fm, params, _ = FunctionalModel.split(build_model(cfg, seed))
  return fm, params


def np_params(params):
  import jax
  return jax.tree.map(lambda x: np.asarray(x, np.float64), params)


def _ln(x, p, eps=1e-5):
  mean = x.mean(-1, keepdims=True)
  var = ((x - mean) ** 2).mean(-1, keepdims=True)
  return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def np_forward(p, inputs, gates=None, means=None):
  """NumPy float64 forward pass of the standard decoder.

  Args:
    p: float64 parameter tree.
    inputs: [B, L] tokens.
    gates: [NL, H] or [B, NL, H] head gates (None: ones).
    means: [NL, H, dh] mean-ablation values (None: zero ablation).

  Returns:
    (logits [B, L, V], {"heads": [NL][B, L, H, dh], "ffn_act": [NL][B, L, F]}).
  """
  b, seq = inputs.shape
  x = p["embed"][inputs] + p["pos_embed"][:seq]
  nl = len(p["blocks"])
  cap = {"heads": [], "ffn_act": []}
  for l in range(nl):
    blk = p["blocks"][l]
    a = blk["attn"]
    h = _ln(x, blk["ln_attn"])
    q = np.einsum("bld,dhk->blhk", h, a["wq"])
    k = np.einsum("bld,dhk->blhk", h, a["wk"])
    v = np.einsum("bld,dhk->blhk", h, a["wv"])
    logits = np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1])
    logits = np.where(np.tril(np.ones((seq, seq), bool)), logits, -1e30)
    probs = np.exp(logits - logits.max(-1, keepdims=True))
    probs /= probs.sum(-1, keepdims=True)
    heads = np.einsum("bhqs,bshk->bqhk", probs, v)
    if gates is not None:
      g = np.asarray(gates, np.float64)
      g = g[l][None, None, :, None] if g.ndim == 2 else g[:, l][:, None, :, None]
      m = 0.0 if means is None else np.asarray(means, np.float64)[l]
      heads = g * heads + (1 - g) * m
    cap["heads"].append(heads)
    x = x + np.einsum("blhk,hkd->bld", heads, a["wo"])
    f = blk["ffn"]
    act = np.maximum(_ln(x, blk["ln_ffn"]) @ f["w_in"] + f["b_in"], 0.0)
    cap["ffn_act"].append(act)
    x = x + act @ f["w_out"] + f["b_out"]
  x = _ln(x, p["ln_final"])
  return x @ p["head"]["kernel"] + p["head"]["bias"], cap


def np_example_losses(logits, batch):
  """[B] mean answer-token cross-entropy per example (float64)."""
  z = logits - logits.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  tok = -np.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0]
  mask = batch["mask"]
  return (tok * mask).sum(-1) / np.maximum(mask.sum(-1), 1.0)


def np_task_metrics(logits, batch, num_tasks):
  """Per-task token-mean loss and accuracy over a batch (float64)."""
  z = logits - logits.max(-1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
  tok = -np.take_along_axis(logp, batch["targets"][..., None], -1)[..., 0]
  right = (logits.argmax(-1) == batch["targets"]).astype(np.float64)
  loss, acc = np.zeros(num_tasks), np.zeros(num_tasks)
  for t in range(num_tasks):
    m = batch["mask"] * (batch["task_id"] == t)[:, None]
    loss[t] = (tok * m).sum() / max(m.sum(), 1.0)
    acc[t] = (right * m).sum() / max(m.sum(), 1.0)
  return loss, acc


def np_gate_grads(p, batch, nl, nh, eps=1e-5):
  """[B, NL, H] dL(x_b)/dxi by central differences on per-example gates."""
  b = batch["inputs"].shape[0]
  out = np.zeros((b, nl, nh))
  for l in range(nl):
    for h in range(nh):
      g = np.ones((b, nl, nh))
      g[:, l, h] += eps
      up = np_example_losses(np_forward(p, batch["inputs"], g)[0], batch)
      g[:, l, h] -= 2 * eps
      down = np_example_losses(np_forward(p, batch["inputs"], g)[0], batch)
      out[:, l, h] = (up - down) / (2 * eps)
  return out


@pytest.fixture(scope="module")
def setup():
  fm, params = tiny_model(seed=1)
  data = synthetic_batches(3, SIZES["vocab_size"], SIZES["seq_len"], 5, answer_len=3, seed=2)
  batches = prepare_batches(data, batch_size=8)  # 15 examples -> 2 batches, 1 padding row
  pool = {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
  return fm, params, np_params(params), batches, pool


def test_numpy_model_matches_jax(setup):
  fm, params, p, batches, _ = setup
  logits, _ = fm.apply(params, batches[0])
  np.testing.assert_allclose(np.asarray(logits), np_forward(p, batches[0]["inputs"])[0],
                             rtol=1e-4, atol=1e-4)


def test_per_example_gate_grads_match_finite_differences(setup):
  fm, params, p, batches, _ = setup
  for batch in batches:
    got = np.asarray(hi.per_example_gate_grads(fm, params, batch))
    want = np_gate_grads(p, batch, fm.num_layers, fm.num_heads)
    np.testing.assert_allclose(got, want, rtol=2e-3, atol=2e-5)


def test_gradient_importance_matches_numpy(setup):
  fm, params, p, batches, pool = setup
  got = hi.gradient_head_importance(fm, params, batches)
  g = np.abs(np_gate_grads(p, pool, fm.num_layers, fm.num_heads))  # [N, NL, H]
  valid = pool["mask"].sum(-1) > 0
  raw = np.stack([g[(pool["task_id"] == t) & valid].mean(0) for t in range(fm.num_tasks)])
  norm = raw / np.linalg.norm(raw, axis=-1, keepdims=True)
  np.testing.assert_allclose(got.raw, raw, rtol=2e-3, atol=2e-5)
  np.testing.assert_allclose(got.normalized, norm, rtol=2e-3, atol=2e-5)
  np.testing.assert_array_equal(got.examples, [5, 5, 5])


def test_task_vector_route_agrees(setup):
  """T backward passes of the per-task loss vector give the same per-example grads."""
  fm, params, _, batches, _ = setup
  batch = batches[0]
  per_ex = np.asarray(hi.per_example_gate_grads(fm, params, batch))  # [B, NL, H]
  per_task = np.asarray(hi.task_vector_gate_grads(fm, params, batch))  # [T, B, NL, H]
  n_b = batch["mask"].sum(-1)
  for t in range(fm.num_tasks):
    rows = batch["task_id"] == t
    rows &= n_b > 0
    tokens_t = n_b[rows].sum()
    scaled = per_task[t][rows] * (tokens_t / n_b[rows])[:, None, None]
    np.testing.assert_allclose(scaled, per_ex[rows], rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(per_task[t][~rows], 0.0, atol=1e-7)


def test_head_means_and_neuron_counts_match_numpy(setup):
  fm, params, p, batches, pool = setup
  acts = collect_activations(fm, params, batches)
  _, cap = np_forward(p, pool["inputs"])
  valid = (pool["mask"].sum(-1) > 0)[:, None] & (pool["inputs"] != 0)  # [N, L]
  means = np.stack([h[valid].mean(0) for h in cap["heads"]])  # [NL, H, dh]
  np.testing.assert_allclose(acts.head_means, means, rtol=1e-4, atol=1e-5)
  for l in range(fm.num_layers):
    fired = cap["ffn_act"][l] > 0  # [N, L, F]
    want = np.stack([(fired & (valid & (pool["task_id"] == t)[:, None])[..., None]).sum((0, 1))
                     for t in range(fm.num_tasks)])
    np.testing.assert_array_equal(acts.neuron_counts[f"block{l}/ffn"], want)
  np.testing.assert_array_equal(acts.task_tokens,
                                [(valid & (pool["task_id"] == t)[:, None]).sum() for t in range(3)])


@pytest.mark.parametrize("share_prefix", [True, False])
def test_ablation_matrices_match_numpy(setup, share_prefix):
  fm, params, p, batches, pool = setup
  means = collect_activations(fm, params, batches).head_means
  got = ablation_lib.ablation_matrices(fm, params, batches, means, share_prefix=share_prefix)
  keep = pool["mask"].sum(-1) > 0
  pool = {k: v[keep] for k, v in pool.items()}
  base_loss, base_acc = np_task_metrics(np_forward(p, pool["inputs"])[0], pool, 3)
  np.testing.assert_allclose(got.base_loss, base_loss, rtol=1e-4)
  np.testing.assert_allclose(got.base_accuracy, base_acc, atol=1e-6)
  for mode, m in (("zero", None), ("mean", means)):
    for l in range(fm.num_layers):
      for h in range(fm.num_heads):
        gates = np.ones((fm.num_layers, fm.num_heads))
        gates[l, h] = 0.0
        loss, acc = np_task_metrics(np_forward(p, pool["inputs"], gates, m)[0], pool, 3)
        np.testing.assert_allclose(got.delta_loss[mode][l, h], loss - base_loss, atol=2e-5)
        np.testing.assert_allclose(got.delta_accuracy[mode][l, h], acc - base_acc, atol=1e-6)


def test_ablation_chunked_equals_vmapped(setup):
  fm, params, _, batches, _ = setup
  means = collect_activations(fm, params, batches).head_means
  a = ablation_lib.ablation_matrices(fm, params, batches, means)
  b = ablation_lib.ablation_matrices(fm, params, batches, means, chunk=1)
  for mode in ("zero", "mean"):
    np.testing.assert_allclose(a.delta_loss[mode], b.delta_loss[mode], atol=1e-6)


def test_ablation_needs_means_for_mean_mode(setup):
  fm, params, _, batches, _ = setup
  with pytest.raises(ValueError, match="mean ablation needs head means"):
    ablation_lib.ablation_matrices(fm, params, batches, None, modes=("mean",))
