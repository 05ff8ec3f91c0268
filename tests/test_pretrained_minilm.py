"""all-MiniLM-L6-v2 imported into the encoder matches Hugging Face transformers.

Against the golden file written by ``tests/golden/make_minilm_golden.py`` always, and
against the live reference when torch and transformers are importable: hidden states
on real tokens and the gradient head importance [6, 12] to <= 1e-4.
"""

import importlib.util
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modular import checkpoints
from modular.checkpoints import hf_bert

def _load_golden_module():
  path = os.path.join(os.path.dirname(__file__), "golden", "make_minilm_golden.py")
  spec = importlib.util.spec_from_file_location("make_minilm_golden", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


golden = _load_golden_module()

TOL = 1e-4
LIVE = all(importlib.util.find_spec(m) for m in ("torch", "transformers"))


@pytest.fixture(scope="module")
def minilm():
  """The imported MiniLM with a 3-class [CLS] head set to the golden probe."""
  cfg = checkpoints.pretrained_model_config(
      seq_len=golden.SEQ_LEN, head={"name": "classify", "num_classes": golden.NUM_CLASSES})
  fm, params, _ = checkpoints.build_pretrained(cfg)
  w, b = golden.probe(cfg.d_model)
  params["head"]["per_task_kernel"] = jnp.asarray(w[None])
  params["head"]["per_task_bias"] = jnp.asarray(b[None])
  batch = golden.inputs()
  n = batch["inputs"].shape[0]
  batch.update(task_id=np.zeros(n, np.int32), label=golden.LABELS.astype(np.int32))

  @jax.jit
  def hidden_and_grad(params, batch):
    def loss(gates):
      logits, ctx = fm.apply(params, batch, head_gates=gates, capture=True)
      from modular.objective import per_task_metrics
      return per_task_metrics(logits, batch, 1)["loss"][0], ctx.intermediates["final"]
    gates = jnp.ones((fm.num_layers, fm.num_heads))
    (value, hidden), grad = jax.value_and_grad(loss, has_aux=True)(gates)
    return hidden, grad, value

  hidden, grad, value = jax.device_get(hidden_and_grad(params, batch))
  return {"batch": batch, "hidden": hidden, "grad": grad, "loss": value, "cfg": cfg}


def test_tokenizer_matches_golden_inputs(minilm):
  ref = np.load(golden.GOLDEN)
  np.testing.assert_array_equal(minilm["batch"]["inputs"], ref["inputs"])
  np.testing.assert_array_equal(minilm["batch"]["token_mask"], ref["token_mask"])


def test_hidden_states_match_golden(minilm):
  ref = np.load(golden.GOLDEN)
  ours = golden.summarize(minilm["hidden"], minilm["batch"]["token_mask"])
  for key in ("hidden_head", "hidden_proj"):
    err = np.abs(ours[key] - ref[key]).max()
    assert err <= TOL, (key, err)


def test_head_importance_matches_golden(minilm):
  ref = np.load(golden.GOLDEN)
  assert minilm["grad"].shape == (6, 12)
  assert np.abs(minilm["grad"]).max() > 1e-3  # a real signal, not zeros
  assert np.abs(minilm["grad"] - ref["gate_grad"]).max() <= TOL
  assert abs(float(minilm["loss"]) - float(ref["loss"])) <= TOL


@pytest.mark.skipif(not LIVE, reason="torch/transformers not installed")
def test_matches_live_transformers(minilm):
  ref = golden.reference(minilm["batch"])
  mask = minilm["batch"]["token_mask"]
  err = np.abs(minilm["hidden"][mask] - ref["hidden"][mask]).max()
  assert err <= TOL, err
  assert np.abs(minilm["grad"] - ref["gate_grad"]).max() <= TOL


def test_every_table_row_imported_exactly(minilm):
  """Each mapped tensor lands at its path, reshaped as the table says (NumPy check)."""
  cfg = minilm["cfg"]
  tensors = hf_bert.load_tensors(hf_bert.checkpoint_dir(cfg.pretrained))
  _, params, _ = checkpoints.build_pretrained(cfg)
  from modular.paths import flat_paths
  flat = flat_paths(params)
  h, dh = cfg.num_heads, cfg.d_model // cfg.num_heads
  q = tensors["encoder.layer.3.attention.self.query.weight"]  # [out, in]
  np.testing.assert_array_equal(flat["blocks/3/attn/wq"][:, 2, :], q[2 * dh:3 * dh].T)
  o = tensors["encoder.layer.5.attention.output.dense.weight"]  # [d, H*dh]
  np.testing.assert_array_equal(flat["blocks/5/attn/wo"][4], o[:, 4 * dh:5 * dh].T)
  np.testing.assert_array_equal(flat["blocks/0/ffn/w_in"],
                                tensors["encoder.layer.0.intermediate.dense.weight"].T)
  imported = {p for _, p, _ in hf_bert.rows(cfg.num_layers)}
  assert len(imported) == len(tensors) - len(hf_bert.IGNORED)
  n = sum(int(np.prod(flat[p].shape)) for p in imported)
  assert 22.5e6 < n < 22.8e6  # 22.7M parameters
