"""Import Hugging Face Llama-family checkpoints (Llama, Qwen2, Mistral) into the decoder.

One family of the protocol in ``family.py`` (config.json ``model_type`` "llama",
"qwen2", "mistral"), built by ``model.arch = "decoder"``. The block is

  x = x + attn(RMSNorm_1(x));  x = x + down(act(gate(h)) * up(h)), h = RMSNorm_2(x)
  logits = RMSNorm_f(x) W_head

with rotary position embeddings on q and k (``rope_theta`` and the "default",
"linear" or "llama3" scaling: ``model.positions = "rope"``), grouped-query attention
(``num_key_value_heads``: ``model.num_kv_heads``), the SwiGLU FFN (gate/up/down:
``ffn/w_gate``, ``ffn/w_in``, ``ffn/w_out`` with ``model.ffn_gated``) and an untied
``lm_head`` (the bias-free "shared" head) or a tied one (the "tied" head). Qwen2
adds biases on q/k/v (``model.attn_qkv_bias``); Llama's ``attention_bias`` puts
them on q/k/v/o and ``mlp_bias`` on the FFN. The FFN is the dense slot, so LoRA
(with a gate pair) and Polytropon wrap it as for any decoder.

The rotary settings are read from either ``config.json`` layout: transformers 4.x
(``rope_theta`` and ``rope_scaling``, whose type is ``rope_type`` or the older
``type``) or 5.x (``rope_parameters``). Linear weights are ``torch.nn.Linear``'s
[out, in]; q/k/v [H*dh, d] become [d, H, dh] and o [d, H*dh] becomes [H, dh, d].

Fields that change the math and are not implemented stop the load with one line
naming them: sliding-window attention (Mistral's ``sliding_window`` below
``max_position_embeddings``, Qwen2's ``use_sliding_window``, a ``layer_types``
entry other than full attention), an unknown rope type, ``partial_rotary_factor``
below 1, a ``head_dim`` other than hidden_size / num_attention_heads, an unknown
``hidden_act``; so does a field this import does not know at all.

References:
  Touvron et al. 2023, "LLaMA: Open and Efficient Foundation Language Models".
  Ainslie et al. 2023, "GQA: Training Generalized Multi-Query Transformer Models".
  Bai et al. 2023, "Qwen Technical Report"; Jiang et al. 2023, "Mistral 7B".
"""

from __future__ import annotations

import re
from typing import Any, Callable

import numpy as np

from modular.checkpoints.family import HF_ACTIVATIONS, Family, register
from modular.checkpoints.locate import CheckpointError
from modular.models import rope as rope_lib


# ---- reshapes from torch.nn.Linear [out, in] to ours (h: query heads) ----------------
def _copy(w, h):
  return w


def _linear(w, h):  # [out, in] -> [in, out]
  return w.T


def _heads_in(dh: int) -> Callable[[np.ndarray, int], np.ndarray]:
  """q/k/v: weight [n*dh, d] -> [d, n, dh]; bias [n*dh] -> [n, dh] (n: H or Hkv)."""

  def fn(w, h):
    return w.T.reshape(w.shape[1], -1, dh) if w.ndim == 2 else w.reshape(-1, dh)

  return fn


def _heads_out(w, h):  # o_proj [d, H*dh] -> [H, dh, d]
  return w.T.reshape(h, -1, w.shape[0])


L = "layers.{i}."
B = "blocks/{i}/"
NORMS = (
    ("embed_tokens.weight", "embed", _copy),
    (L + "input_layernorm.weight", B + "ln_attn/scale", _copy),
    (L + "post_attention_layernorm.weight", B + "ln_ffn/scale", _copy),
    ("norm.weight", "ln_final/scale", _copy),
)
MLP = (
    (L + "mlp.gate_proj.weight", B + "ffn/w_gate", _linear),
    (L + "mlp.up_proj.weight", B + "ffn/w_in", _linear),
    (L + "mlp.down_proj.weight", B + "ffn/w_out", _linear),
)
MLP_BIAS = (
    (L + "mlp.up_proj.bias", B + "ffn/b_in", _copy),
    (L + "mlp.down_proj.bias", B + "ffn/b_out", _copy),
)
UNTIED = (("lm_head.weight", "head/kernel", _linear),)
# Checkpoint tensors (regexes) that are deliberately not imported, and why.
IGNORED = {
    r"layers\.\d+\.self_attn\.rotary_emb\.inv_freq": "RoPE buffers of older saves "
                                                     "(recomputed from the config)",
    r"lm_head\.weight": "tied to embed_tokens.weight (tie_word_embeddings)",
}
# The config fields of LlamaConfig, Qwen2Config and MistralConfig (4.x and 5.x).
KNOWN_KEYS = frozenset((
    "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
    "num_attention_heads", "num_key_value_heads", "head_dim", "hidden_act",
    "max_position_embeddings", "rms_norm_eps", "tie_word_embeddings", "rope_theta",
    "rope_scaling", "rope_parameters", "partial_rotary_factor", "attention_bias",
    "attention_dropout", "mlp_bias", "pretraining_tp", "sliding_window",
    "use_sliding_window", "max_window_layers", "layer_types", "is_encoder_decoder"))
ROPE_KEYS = "config.json rope_parameters / rope_scaling"


def rope_settings(hf: dict[str, Any]) -> tuple[float, dict[str, Any]]:
  """(rope_theta, scaling dict) from either config layout.

  5.x writes ``rope_parameters`` = {rope_theta, rope_type, factor, ...}; 4.x writes
  ``rope_theta`` beside ``rope_scaling`` (None, or {rope_type | type, factor, ...}).
  ``original_max_position_embeddings`` of llama3 defaults to max_position_embeddings,
  as transformers does.
  """
  params = dict(hf.get("rope_parameters") or {})
  if any(isinstance(v, dict) for v in params.values()):
    raise CheckpointError(f"{ROPE_KEYS}: rope_parameters per layer type "
                          f"({sorted(params)}) are not implemented")
  params.update(hf.get("rope_scaling") or {})
  theta = float(params.pop("rope_theta", hf.get("rope_theta", 10000.0)))
  kind = params.pop("rope_type", params.pop("type", "default")) or "default"
  params.pop("type", None)
  scaling = {"rope_type": kind, **params} if kind != "default" else {}
  if kind == "llama3":
    scaling.setdefault("original_max_position_embeddings", hf["max_position_embeddings"])
  return theta, scaling


@register
class Llama(Family):
  """Llama-family decoders (``LlamaForCausalLM``, ``Qwen2ForCausalLM``, ``MistralForCausalLM``)."""

  name = "llama"
  model_types = ("llama", "qwen2", "mistral")
  arch = "decoder"
  prefixes = ("model.",)
  ignored = IGNORED
  known_keys = KNOWN_KEYS

  def check_config(self, hf: dict[str, Any], where: str) -> None:
    super().check_config(hf, where)
    act = hf.get("hidden_act", "silu")
    if act not in HF_ACTIVATIONS:
      raise CheckpointError(f"{where}: hidden_act {act!r} is not supported; "
                            f"known: {sorted(HF_ACTIVATIONS)}")
    max_pos = int(hf.get("max_position_embeddings", 2048))
    window = hf.get("sliding_window")
    sliding = window is not None and int(window) < max_pos
    if hf.get("model_type") == "qwen2":  # Qwen2 slides only with use_sliding_window
      sliding = sliding and bool(hf.get("use_sliding_window", False)) and (
          int(hf.get("max_window_layers", 0)) < int(hf["num_hidden_layers"]))
    if sliding:
      raise CheckpointError(f"{where}: sliding_window={window} below "
                            f"max_position_embeddings={max_pos} is not implemented "
                            "(sliding-window attention); the import needs null")
    kinds = sorted(set(hf.get("layer_types") or ["full_attention"]) - {"full_attention"})
    if kinds:
      raise CheckpointError(f"{where}: layer_types {kinds[0]!r} is not implemented "
                            "(only 'full_attention')")
    if hf.get("is_encoder_decoder"):
      raise CheckpointError(f"{where}: is_encoder_decoder=True is not a decoder checkpoint")
    d, h = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    if hf.get("head_dim") not in (None, d // h) or d % h:
      raise CheckpointError(f"{where}: head_dim={hf.get('head_dim')} other than "
                            f"hidden_size / num_attention_heads = {d / h:g} is not "
                            "implemented")
    partial = dict(hf.get("rope_parameters") or {}).get(
        "partial_rotary_factor", hf.get("partial_rotary_factor", 1.0))
    if partial not in (None, 1, 1.0):
      raise CheckpointError(f"{where}: partial_rotary_factor={partial} is not implemented "
                            "(rotary embeddings on every head dimension)")
    _, scaling = rope_settings(hf)
    try:
      rope_lib.rope_type(scaling, key=f"{where}: rope_parameters")
    except ValueError as e:
      raise CheckpointError(str(e)) from None

  def model_sizes(self, hf: dict[str, Any]) -> dict[str, Any]:
    theta, scaling = rope_settings(hf)
    heads = int(hf["num_attention_heads"])
    return {
        "arch": "decoder",
        "d_model": int(hf["hidden_size"]),
        "num_heads": heads,
        "num_layers": int(hf["num_hidden_layers"]),
        "d_ff": int(hf["intermediate_size"]),
        "vocab_size": int(hf["vocab_size"]),
        "max_positions": int(hf.get("max_position_embeddings", 2048)),
        "layer_norm_eps": float(hf.get("rms_norm_eps", 1e-6)),
        "activation": HF_ACTIVATIONS[hf.get("hidden_act", "silu")],
        "norm": "rms",
        "positions": "rope",
        "rope_theta": theta,
        "rope_scaling": scaling,
        "num_kv_heads": int(hf.get("num_key_value_heads") or heads),
        "attn_bias": bool(hf.get("attention_bias", False)),
        "attn_qkv_bias": hf.get("model_type") == "qwen2",
        "ffn_gated": True,
        "ffn_bias": bool(hf.get("mlp_bias", False)),
        "tie_embeddings": self.tied(hf),
    }

  def mapping(self, hf: dict[str, Any]) -> tuple[tuple[str, str, Callable], ...]:
    dh = int(hf["hidden_size"]) // int(hf["num_attention_heads"])
    table = NORMS + MLP + tuple(
        (L + f"self_attn.{m}_proj.weight", B + f"attn/w{m}", _heads_in(dh)) for m in "qkv")
    table += ((L + "self_attn.o_proj.weight", B + "attn/wo", _heads_out),)
    attention_bias = bool(hf.get("attention_bias", False))
    if attention_bias or hf.get("model_type") == "qwen2":
      table += tuple((L + f"self_attn.{m}_proj.bias", B + f"attn/b{m}", _heads_in(dh))
                     for m in "qkv")
    if attention_bias:
      table += ((L + "self_attn.o_proj.bias", B + "attn/bo", _copy),)
    if hf.get("mlp_bias", False):
      table += MLP_BIAS
    return table if self.tied(hf) else table + UNTIED

  def is_ignored(self, name: str) -> bool:
    return any(re.fullmatch(p, name) for p in self.ignored)

  def default_head(self, hf: dict[str, Any]) -> dict[str, Any]:
    return {"name": "tied"} if self.tied(hf) else {"name": "shared", "bias": False}

  def special_tokens(self, hf: dict[str, Any]) -> dict[str, int | None]:
    eos = hf.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) else eos  # Llama 3 instruct lists several
    pad = hf.get("pad_token_id")
    return {"bos": hf.get("bos_token_id"), "eos": eos, "pad": eos if pad is None else pad}

  @staticmethod
  def tied(hf: dict[str, Any]) -> bool:
    return bool(hf.get("tie_word_embeddings", False))
