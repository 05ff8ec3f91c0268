"""Llama-family checkpoints imported into the decoder match transformers (issue 21).

Against the committed tiny checkpoints ``tests/golden/tiny_{llama,qwen2,mistral}/``
and their golden logits ``tests/golden/llama.npz`` (all written by
``tests/golden/make_llama_golden.py`` with transformers' ``*ForCausalLM``: GQA and an
untied head with llama3 rope scaling; Qwen2's q/k/v biases with a tied head; Mistral's
multi-query attention with linear scaling): the logits on real tokens of right- and
left-padded batches to 1e-4, on the fast and on the exact attention path; the
tokenizers' ids; both config.json rope layouts (4.x ``rope_theta``/``rope_scaling``,
5.x ``rope_parameters``) giving the same sizes; one-line refusals of what is not
implemented or does not fit; LoRA fine-tuning with the imported tensors frozen.
"""

import json
import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from modular import checkpoints
from modular.merging import lora as merging_lora
from modular.models.norms import RMSNorm
from modular.models.rope import inv_frequencies
from modular.objective import per_task_metrics
from modular.paths import flat_paths
from modular.train.partition import Partition

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = np.load(os.path.join(HERE, "golden", "llama.npz"))
NAMES = ("llama", "qwen2", "mistral")
SENTENCES = (  # as in make_llama_golden.SENTENCES
    "a small domesticated carnivorous mammal",
    "the act of moving from one place to another",
    "definition: a building where people live supersense:",
    "someone who has committed a crime",
)
TOL = 1e-4


def _folder(name: str) -> str:
  return os.path.join(HERE, "golden", f"tiny_{name}")


def _padded(name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(ids [2N, L]: N right- then N left-padded rows, token_mask [2N, L], lengths [N])."""
  ids, lengths = GOLDEN[f"{name}_ids"], GOLDEN[f"{name}_lengths"]
  width = ids.shape[1]
  right = np.arange(width)[None] < lengths[:, None]
  left_ids = np.zeros_like(ids)
  for r, k in enumerate(lengths):
    left_ids[r, width - k:] = ids[r, :k]
  return (np.concatenate([ids, left_ids]), np.concatenate([right, right[:, ::-1]]), lengths)


def _errors(name: str, **apply_kwargs) -> tuple[float, float]:
  """Max abs logit error on real tokens (right-padded, left-padded) against the golden."""
  ids, mask, lengths = _padded(name)
  cfg = checkpoints.pretrained_model_config(_folder(name), seq_len=ids.shape[1])
  with cfg.unlocked():
    cfg.padding_mask = True  # left padding: padded keys masked, positions from the mask
  fm, params, _ = checkpoints.build_pretrained(cfg)
  if apply_kwargs.pop("gates", False):  # the exact path (explicit probabilities, gates)
    apply_kwargs["head_gates"] = jnp.ones((fm.num_layers, fm.num_heads))
  batch = {"inputs": ids, "task_id": np.zeros(len(ids), np.int32), "token_mask": mask}
  logits = np.asarray(jax.jit(lambda p, b: fm.apply(p, b, **apply_kwargs)[0])(params, batch))
  gold, n, width = GOLDEN[f"{name}_logits"], len(lengths), ids.shape[1]
  right = np.abs(logits[:n] - gold)[mask[:n]].max()
  left = max(np.abs(logits[n + r, width - k:] - gold[r, :k]).max()
             for r, k in enumerate(lengths))
  return float(right), float(left)


@pytest.mark.parametrize("name", NAMES)
def test_logits_match_transformers(name):
  right, left = _errors(name)
  assert right <= TOL and left <= TOL, (right, left)
  real = GOLDEN[f"{name}_logits"][_padded(name)[1][:len(GOLDEN[f"{name}_lengths"])]]
  assert np.abs(real).std() > 0.5  # the golden is not near zero


def test_exact_attention_path_matches_transformers():
  """Head gates take the explicit-probability path (GQA repeat, one combined mask)."""
  right, left = _errors("llama", gates=True)
  assert right <= TOL and left <= TOL, (right, left)


@pytest.mark.parametrize("name", NAMES)
def test_tokenizer_matches_transformers(name):
  tok = checkpoints.load_tokenizer(_folder(name))
  for s, ids, n in zip(SENTENCES, GOLDEN[f"{name}_ids"], GOLDEN[f"{name}_lengths"]):
    assert tok.encode(s).ids == ids[:n].tolist()
  family, hf = checkpoints.read_config(_folder(name))
  want = {"bos": None, "eos": 0, "pad": 0} if name == "qwen2" else {"bos": 1, "eos": 2, "pad": 0}
  assert family.name == "llama" and family.special_tokens(hf) == want


def _as_4x(hf: dict) -> dict:
  """A 5.x config.json in transformers 4.x's layout: rope_theta beside rope_scaling."""
  out = {k: v for k, v in hf.items() if k != "rope_parameters"}
  params = dict(hf["rope_parameters"])
  out["rope_theta"] = params.pop("rope_theta")
  kind = params.pop("rope_type")
  # Older saves name the type "type"; the default type is written as null.
  out["rope_scaling"] = None if kind == "default" else {"type": kind, **params}
  return out


@pytest.mark.parametrize("name", NAMES)
def test_both_rope_layouts_give_the_same_sizes(name):
  family, hf = checkpoints.read_config(_folder(name))
  old = _as_4x(hf)
  family.check_config(old, "4.x config.json")
  sizes = family.model_sizes(hf)
  assert family.model_sizes(old) == sizes
  assert sizes["positions"] == "rope" and sizes["norm"] == "rms" and sizes["ffn_gated"]
  kind = sizes["rope_scaling"].get("rope_type", "default")
  assert kind == {"llama": "llama3", "qwen2": "default", "mistral": "linear"}[name]
  if kind != "default":  # the scaling moves the frequencies the golden checks
    base = inv_frequencies(8, sizes["rope_theta"])
    scaled = inv_frequencies(8, sizes["rope_theta"], sizes["rope_scaling"])
    assert (scaled < base).sum() >= 3, (base, scaled)


def test_rmsnorm_takes_float32_statistics():
  x = jax.random.normal(jax.random.key(0), (3, 32), jnp.bfloat16) * 30.0
  norm = RMSNorm(32, eps=1e-6)
  x32 = np.asarray(x, np.float32)
  want = (x32 / np.sqrt((x32 ** 2).mean(-1, keepdims=True) + 1e-6)).astype(jnp.bfloat16)
  got = norm(x)  # as LlamaRMSNorm: float32 weight * normed.to(bf16) is float32
  assert got.dtype == jnp.float32
  np.testing.assert_array_equal(np.asarray(got), np.asarray(want, np.float32))


def _broken(tmp_path, name, *, tensors=None, config=None) -> str:
  from safetensors.numpy import load_file, save_file
  folder = tmp_path / "broken"
  shutil.copytree(_folder(name), folder)
  if tensors is not None:
    t = load_file(os.path.join(_folder(name), "model.safetensors"))
    save_file(tensors(t), str(folder / "model.safetensors"))
  if config is not None:
    with open(folder / "config.json") as f:
      hf = json.load(f)
    with open(folder / "config.json", "w") as f:
      json.dump(config(hf), f)
  return str(folder)


K = "model.layers.1.self_attn.k_proj.weight"
ROPE = "rope_parameters"
CASES = {
    "sliding_window": ("mistral", dict(config=lambda hf: {**hf, "sliding_window": 16}),
                       "sliding_window=16 below max_position_embeddings=64 is not implemented"),
    "qwen2 sliding": ("qwen2", dict(config=lambda hf: {
        **hf, "use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1}),
                      "sliding_window=8 below"),
    "layer_types": ("qwen2", dict(config=lambda hf: {
        **hf, "layer_types": ["full_attention", "sliding_attention"]}),
                    "layer_types 'sliding_attention' is not implemented"),
    "rope type": ("llama", dict(config=lambda hf: {
        **hf, ROPE: {**hf[ROPE], "rope_type": "yarn"}}), "rope_type 'yarn' is not implemented"),
    "4.x rope type": ("qwen2", dict(config=lambda hf: {
        **_as_4x(hf), "rope_scaling": {"type": "dynamic", "factor": 2.0}}),
                      "rope_type 'dynamic' is not implemented"),
    "activation": ("llama", dict(config=lambda hf: {**hf, "hidden_act": "relu2"}),
                   "hidden_act 'relu2' is not supported"),
    "head_dim": ("llama", dict(config=lambda hf: {**hf, "head_dim": 16}),
                 "head_dim=16 other than hidden_size / num_attention_heads = 8"),
    "unknown field": ("llama", dict(config=lambda hf: {**hf, "qk_layernorm": True}),
                      "field 'qk_layernorm' is not known to the llama import"),
    "missing": ("llama", dict(tensors=lambda t: {k: v for k, v in t.items()
                                                 if "layers.0.mlp.gate_proj" not in k}),
                "'layers.0.mlp.gate_proj.weight' is missing"),
    "unexpected": ("qwen2", dict(tensors=lambda t: {**t, "model.layers.0.self_attn.q_norm.weight":
                                                    t[K][0]}),
                   "'layers.0.self_attn.q_norm.weight' is unexpected"),
    "mis-shaped": ("llama", dict(tensors=lambda t: {**t, K: t[K][:8]}),  # one kv head
                   "'blocks/1/attn/wk' has shape (32, 1, 8)"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_checkpoint_is_one_line(tmp_path, case):
  name, kwargs, expected = CASES[case]
  folder = _broken(tmp_path, name, **kwargs)
  with pytest.raises(checkpoints.CheckpointError) as e:
    cfg = checkpoints.pretrained_model_config(folder, seq_len=8)
    checkpoints.build_pretrained(cfg)
  msg = str(e.value)
  assert expected in msg and "\n" not in msg, msg


def test_ffn_without_a_gated_form_is_one_line():
  cfg = checkpoints.pretrained_model_config(_folder("llama"), seq_len=8,
                                            ffn={"name": "moe", "num_experts": 2})
  with pytest.raises(ValueError) as e:
    checkpoints.build_pretrained(cfg)
  msg = str(e.value)
  assert "'moe' has no gated (SwiGLU)" in msg and "\n" not in msg, msg


def test_polytropon_wraps_the_swiglu_ffn():
  """Skills on the up and down projections: B = 0 at init gives the import's logits,
  and the gradient reaches the skills' B and the imported gate (both in the path)."""
  ids, lengths = GOLDEN["llama_ids"][:2], GOLDEN["llama_lengths"][:2]
  real = np.arange(ids.shape[1])[None] < lengths[:, None]
  cfg = checkpoints.pretrained_model_config(_folder("llama"), seq_len=ids.shape[1],
                                            ffn={"name": "polytropon", "num_skills": 2})
  fm, params, _ = checkpoints.build_pretrained(cfg)
  batch = {"inputs": ids, "task_id": np.zeros(len(ids), np.int32)}

  def total(p):
    logits = fm.apply(p, batch)[0]
    return logits[real].sum(), logits

  grads, logits = jax.jit(jax.grad(total, has_aux=True))(params)
  assert np.abs(np.asarray(logits) - GOLDEN["llama_logits"][:2])[real].max() <= TOL
  ffn = grads["blocks"][0]["ffn"]
  assert np.abs(np.asarray(ffn["skills_in"]["b"])).max() > 0
  assert np.abs(np.asarray(ffn["base"]["w_gate"])).max() > 0


def test_task_moe_upcycles_the_swiglu_ffn():
  """Every expert a copy of the gated FFN, routes summing to 1: the imported logits, on
  the shared-route (evaluation) and the chunked per-example (training) paths."""
  ids, lengths = GOLDEN["llama_ids"], GOLDEN["llama_lengths"]
  real = np.arange(ids.shape[1])[None] < lengths[:, None]
  cfg = checkpoints.pretrained_model_config(
      _folder("llama"), seq_len=ids.shape[1],
      ffn={"name": "task_moe", "num_experts": 3, "top_k": 2, "expert_d_ff": 64})
  fm, params, _ = checkpoints.build_pretrained(cfg)
  assert params["blocks"][0]["ffn"]["w_gate"].shape == (3, 32, 64)
  batch = {"inputs": ids, "task_id": np.zeros(len(ids), np.int32)}
  for kwargs in ({}, {"deterministic": False, "rng": jax.random.key(0)}):
    logits = jax.jit(lambda p, b: fm.apply(p, b, **kwargs)[0])(params, batch)
    err = np.abs(np.asarray(logits) - GOLDEN["llama_logits"])[real].max()
    assert err <= TOL, (kwargs, err)


def test_lora_fine_tuning_lowers_the_loss_with_imports_frozen():
  """LoRA (up, gate and down pairs) on tiny_llama: only LoRA leaves move."""
  folder = _folder("llama")
  ids, lengths = GOLDEN["llama_ids"], GOLDEN["llama_lengths"]
  real = np.arange(ids.shape[1])[None] < lengths[:, None]
  cfg = checkpoints.pretrained_model_config(folder, seq_len=ids.shape[1],
                                            ffn={"name": "lora", "rank": 4})
  fm, params, _ = checkpoints.build_pretrained(cfg)
  task_id = np.zeros(len(ids), np.int32)
  logits, _ = fm.apply(params, {"inputs": ids, "task_id": task_id})  # B = 0: the import
  assert np.abs(np.asarray(logits) - GOLDEN["llama_logits"])[real].max() <= TOL
  lm = {"inputs": ids, "task_id": task_id,
        "targets": np.concatenate([ids[:, 1:], ids[:, :1]], 1),
        "mask": np.concatenate([real[:, 1:], np.zeros((len(ids), 1), bool)], 1)
                  .astype(np.float32)}
  frozen = checkpoints.frozen_patterns(params, cfg.num_layers, pretrained=folder)
  part = Partition.from_patterns(frozen, params)
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
  assert np.isfinite(losses).all() and losses[-1] < 0.8 * losses[0], losses
  before, after = flat_paths(start), flat_paths(jax.tree.map(np.asarray, params))
  frozen_paths = [p for p in before if part.is_frozen(p)]
  # Every checkpoint tensor: 9 per layer (2 norms, q/k/v/o, gate/up/down), embed,
  # the final norm and lm_head.
  assert len(frozen_paths) == len(frozen) == 9 * 2 + 3
  assert {"embed", "head/kernel", "blocks/0/ffn/base/w_gate"} <= set(frozen_paths)
  assert all(np.array_equal(before[p], after[p]) for p in frozen_paths)
  moved = [p for p in before if not part.is_frozen(p) and not np.array_equal(before[p], after[p])]
  assert moved and all("lora" in p for p in moved), moved
  assert {p.rsplit("/", 1)[1] for p in moved} >= {"lora_b_gate", "lora_b_in", "lora_b_out"}
  # Folded into the dense SwiGLU FFN (merging, export), the gate update goes with it.
  dense_cfg = checkpoints.pretrained_model_config(folder, seq_len=ids.shape[1])
  dfm, template, _ = checkpoints.build_pretrained(dense_cfg)
  folded = merging_lora.fold(params, merging_lora.scale(ml_collections.ConfigDict(
      {"model": {"ffn": cfg.ffn.to_dict()}})))
  assert merging_lora.folded_paths(params) == {f"blocks/{i}/ffn/{w}" for i in range(2)
                                               for w in ("w_in", "w_out", "w_gate")}
  dense = merging_lora.fill(template, folded, "the folded model")
  ours = np.asarray(jax.jit(lambda p: fm.apply(p, lm)[0])(params))
  theirs = np.asarray(jax.jit(lambda p: dfm.apply(p, lm)[0])(dense))
  np.testing.assert_allclose(theirs[real], ours[real], atol=1e-4)
