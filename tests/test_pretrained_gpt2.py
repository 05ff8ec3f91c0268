"""GPT-2 imported into the decoder matches Hugging Face transformers (issue 21).

Against the committed tiny checkpoint ``tests/golden/tiny_gpt2/`` and its golden
logits ``tests/golden/gpt2.npz`` (both written by ``tests/golden/make_gpt2_golden.py``
with transformers' ``GPT2LMHeadModel``): the logits on real tokens (sequences of
different lengths, right-padded in one batch) to 1e-5, the gradient head importance
[2, 4] of the next-token loss to 1e-5, the tokenizer's ids, loading
from a copied folder as a user's own folder loads, one-line refusals of a bad
tensor or config field, and LoRA fine-tuning with the imported tensors frozen.
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from modular import checkpoints
from modular.checkpoints import hf_gpt2
from modular.objective import per_task_metrics
from modular.paths import flat_paths
from modular.train.partition import Partition

HERE = os.path.dirname(os.path.abspath(__file__))
FOLDER = os.path.join(HERE, "golden", "tiny_gpt2")
GOLDEN = np.load(os.path.join(HERE, "golden", "gpt2.npz"))
SENTENCES = (  # as in make_gpt2_golden.SENTENCES
    "a small domesticated carnivorous mammal",
    "the act of moving from one place to another",
    "definition: a building where people live supersense:",
    "someone who has committed a crime",
)
TOL = 1e-5


def _batch() -> dict:
  ids = GOLDEN["ids"]  # [N, L], right-padded with 0 (<|endoftext|>)
  real = np.arange(ids.shape[1])[None] < GOLDEN["lengths"][:, None]
  return {"inputs": ids, "task_id": np.zeros(len(ids), np.int32), "real": real}


def _lm_batch() -> dict:
  """Next-token targets: position t predicts token t+1 where both are real."""
  batch = _batch()
  ids, real = batch["inputs"], batch["real"]
  pad = np.zeros((len(ids), 1), bool)
  return {"inputs": ids, "task_id": batch["task_id"],
          "targets": np.concatenate([ids[:, 1:], ids[:, :1]], 1),
          "mask": np.concatenate([real[:, 1:], pad], 1).astype(np.float32)}


def _logits(folder: str, **slots) -> np.ndarray:
  batch = _batch()
  cfg = checkpoints.pretrained_model_config(folder, seq_len=batch["inputs"].shape[1], **slots)
  fm, params, _ = checkpoints.build_pretrained(cfg)
  logits = jax.jit(lambda p, b: fm.apply(p, b)[0])(
      params, {k: batch[k] for k in ("inputs", "task_id")})
  return np.asarray(logits)


def test_logits_match_transformers():
  real = _batch()["real"]
  ours = _logits(FOLDER)
  err = np.abs(ours - GOLDEN["logits"])[real].max()
  assert err <= TOL, err
  assert np.abs(GOLDEN["logits"][real]).std() > 0.5  # the golden is not near zero


def test_head_importance_matches_transformers():
  """dL/dxi [2, 4] of the mean next-token CE, against transformers with hooked gates."""
  lm = _lm_batch()
  cfg = checkpoints.pretrained_model_config(FOLDER, seq_len=lm["inputs"].shape[1])
  fm, params, _ = checkpoints.build_pretrained(cfg)

  def loss(gates):
    logits, _ = fm.apply(params, lm, head_gates=gates)
    return per_task_metrics(logits, lm, 1)["loss"][0]

  value, grad = jax.jit(jax.value_and_grad(loss))(jnp.ones((fm.num_layers, fm.num_heads)))
  assert abs(float(value) - float(GOLDEN["loss"])) <= TOL, (value, GOLDEN["loss"])
  err = np.abs(np.asarray(grad) - GOLDEN["gate_grad"]).max()
  assert err <= TOL and np.abs(GOLDEN["gate_grad"]).max() > 0.01, err


def test_tokenizer_matches_transformers():
  tok = checkpoints.load_tokenizer(FOLDER)
  for s, ids, n in zip(SENTENCES, GOLDEN["ids"], GOLDEN["lengths"]):
    assert tok.encode(s).ids == ids[:n].tolist()
  family, hf = checkpoints.read_config(FOLDER)
  assert family.name == "gpt2" and family.special_tokens(hf) == {"bos": 0, "eos": 0, "pad": 0}


def test_user_folder_loads_like_the_committed_one(tmp_path):
  folder = tmp_path / "my gpt2"  # a user's folder: another path, a space in it
  shutil.copytree(FOLDER, folder)
  cfg = checkpoints.pretrained_model_config(str(folder), seq_len=8)
  assert (cfg.arch, cfg.d_model, cfg.num_layers, cfg.num_heads, cfg.d_ff, cfg.vocab_size,
          cfg.max_positions, cfg.head.name) == ("decoder", 32, 2, 4, 128, 128, 64, "tied")
  _, params, _ = checkpoints.build_pretrained(cfg)
  from safetensors.numpy import load_file
  wte = load_file(os.path.join(FOLDER, "model.safetensors"))["transformer.wte.weight"]
  np.testing.assert_array_equal(np.asarray(params["embed"]), wte)
  assert "head" not in params  # tied: the head reads embed itself


def _broken(tmp_path, *, tensors=None, config=None, truncate=False) -> str:
  from safetensors.numpy import load_file, save_file
  folder = tmp_path / "broken"
  shutil.copytree(FOLDER, folder)
  if truncate:  # a download or copy cut short
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[:len(data) // 3])
  if tensors is not None:
    t = load_file(os.path.join(FOLDER, "model.safetensors"))
    save_file(tensors(t), str(folder / "model.safetensors"))
  if config is not None:
    with open(folder / "config.json") as f:
      hf = json.load(f)
    with open(folder / "config.json", "w") as f:
      json.dump(config(hf), f)
  return str(folder)


C_ATTN = "transformer.h.1.attn.c_attn.weight"
CASES = {
    "mis-shaped": (dict(tensors=lambda t: {**t, C_ATTN: t[C_ATTN][:, :90]}),
                   "'h.1.attn.c_attn.weight' of shape (32, 90)"),
    "missing": (dict(tensors=lambda t: {k: v for k, v in t.items() if "ln_f.bias" not in k}),
                "'ln_f.bias' is missing"),
    "unexpected": (dict(tensors=lambda t: {**t, "transformer.h.0.attn.q_norm": t[C_ATTN][0]}),
                   "'h.0.attn.q_norm' is unexpected"),
    "unknown field": (dict(config=lambda hf: {**hf, "use_parallel_residual": True}),
                      "field 'use_parallel_residual' is not known to the gpt2 import"),
    "refused field": (dict(config=lambda hf: {**hf, "scale_attn_by_inverse_layer_idx": True}),
                      "scale_attn_by_inverse_layer_idx=True is not implemented"),
    "activation": (dict(config=lambda hf: {**hf, "activation_function": "quick_gelu"}),
                   "activation_function 'quick_gelu' is not supported"),
    "truncated": (dict(truncate=True), "model.safetensors: not a readable safetensors file"),
    "no family": (dict(config=lambda hf: {**hf, "model_type": "gpt_neox"}),
                  "model_type 'gpt_neox' has no checkpoint family; known: bert, gpt2"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_checkpoint_is_one_line(tmp_path, case):
  kwargs, expected = CASES[case]
  folder = _broken(tmp_path, **kwargs)
  with pytest.raises(checkpoints.CheckpointError) as e:
    cfg = checkpoints.pretrained_model_config(folder, seq_len=8)
    checkpoints.build_pretrained(cfg)
  msg = str(e.value)
  assert expected in msg and "\n" not in msg, msg


def test_untied_head_reads_lm_head(tmp_path):
  rng = np.random.default_rng(0)
  lm_head = rng.normal(size=(128, 32)).astype(np.float32)
  folder = _broken(tmp_path, tensors=lambda t: {**t, "lm_head.weight": lm_head},
                   config=lambda hf: {**hf, "tie_word_embeddings": False})
  cfg = checkpoints.pretrained_model_config(folder, seq_len=8)
  assert cfg.head.name == "shared" and not cfg.tie_embeddings
  _, params, _ = checkpoints.build_pretrained(cfg)
  np.testing.assert_array_equal(np.asarray(params["head"]["kernel"]), lm_head.T)


def test_lora_fine_tuning_lowers_the_loss_with_imports_frozen():
  batch = _batch()
  ids = batch["inputs"]
  cfg = checkpoints.pretrained_model_config(FOLDER, seq_len=ids.shape[1],
                                            ffn={"name": "lora", "rank": 4})
  fm, params, _ = checkpoints.build_pretrained(cfg)
  # The imported model without LoRA's update is the golden model: B starts at zero.
  logits, _ = fm.apply(params, {"inputs": ids, "task_id": batch["task_id"]})
  assert np.abs(np.asarray(logits) - GOLDEN["logits"])[batch["real"]].max() <= TOL
  frozen = checkpoints.frozen_patterns(params, cfg.num_layers, pretrained=FOLDER)
  part = Partition.from_patterns(frozen, params)
  lm = _lm_batch()
  tx = optax.adam(3e-2)

  def loss(trainable, rest):
    logits, _ = fm.apply(part.merge(trainable, rest), lm)
    return per_task_metrics(logits, lm, 1)["loss"][0]

  @jax.jit
  def step(params, opt):
    trainable, rest = part.split(params)
    value, grads = jax.value_and_grad(loss)(trainable, rest)
    updates, opt = tx.update(grads, opt, trainable)
    return part.merge(optax.apply_updates(trainable, updates), rest), opt, value

  opt = tx.init(part.trainable(params))
  start = jax.tree.map(np.asarray, params)
  losses = []
  for _ in range(8):
    params, opt, value = step(params, opt)
    losses.append(float(value))
  assert losses[-1] < 0.8 * losses[0], losses
  before, after = flat_paths(start), flat_paths(jax.tree.map(np.asarray, params))
  frozen_paths = [p for p in before if part.is_frozen(p)]
  assert len(frozen_paths) == len(frozen) and "embed" in frozen_paths
  assert all(np.array_equal(before[p], after[p]) for p in frozen_paths)
  moved = [p for p in before if not part.is_frozen(p) and not np.array_equal(before[p], after[p])]
  assert moved and all("lora" in p for p in moved), moved
  assert jnp.isfinite(jnp.asarray(losses)).all()
