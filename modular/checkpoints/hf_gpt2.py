"""Import a Hugging Face GPT-2 checkpoint (``GPT2LMHeadModel``) into the decoder.

One family of the protocol in ``family.py`` (config.json ``model_type`` "gpt2"),
built by ``model.arch = "decoder"``: GPT-2's block is the decoder's pre-LN block

  x = x + attn(LN_1(x));  x = x + mlp(LN_2(x));  logits = LN_f(x) E^T

with learned positions (``wpe``, ``n_positions`` rows: ``model.max_positions``),
biases on q/k/v/o (``model.attn_bias``), the tanh GELU (``gelu_new``: our "gelu")
and the LM head tied to the input embedding (``model.tie_embeddings`` and the
"tied" head; an untied ``lm_head.weight`` goes to the "shared" head's kernel).
The FFN is the dense slot (``c_fc``/``c_proj``), so LoRA, Polytropon and the
upcycled task MoE wrap it as for any decoder; adapters and head gates work as there.

GPT-2 stores its linears as ``Conv1D``: weights [in, out] (the transpose of
``torch.nn.Linear``), and q/k/v fused in one ``c_attn`` [d, 3d] split here into
the three [d, H, dh] projections.

Config fields that change the math and are not implemented stop the load with one
line naming them (``scale_attn_by_inverse_layer_idx``, ``scale_attn_weights=False``,
``add_cross_attention``, pruned heads, an unknown ``activation_function``); so does a
field this import does not know at all.

References:
  Radford et al. 2019, "Language Models are Unsupervised Multitask Learners" (GPT-2).
"""

from __future__ import annotations

import re
from typing import Any, Callable

import numpy as np

from modular.checkpoints.family import HF_ACTIVATIONS, Family, register
from modular.checkpoints.locate import CheckpointError


# ---- reshapes from the checkpoint layout to ours (h: heads) --------------------------
def _copy(w, h):  # Conv1D [in, out] is already our [in, out]
  return w


def _linear(w, h):  # torch Linear [out, in] -> [in, out] (an untied lm_head)
  return w.T


def _fused(part: int) -> Callable[[np.ndarray, int], np.ndarray]:
  """c_attn's q (0), k (1) or v (2): weight [d, 3d] -> [d, H, dh]; bias [3d] -> [H, dh]."""

  def fn(w, h):
    d = w.shape[0] if w.ndim == 2 else w.shape[0] // 3
    if w.shape[-1] != 3 * d:
      raise ValueError(f"a fused q/k/v needs [d, 3d] / [3d], got {w.shape}")
    piece = w[..., part * d:(part + 1) * d]
    return piece.reshape(*piece.shape[:-1], h, d // h)

  return fn


def _heads_out(w, h):  # c_proj Conv1D [H*dh, d] -> [H, dh, d]
  return w.reshape(h, -1, w.shape[1])


H = "h.{i}."
B = "blocks/{i}/"
# (checkpoint name, parameter path, reshape); "{i}" is the layer index.
MAPPING: tuple[tuple[str, str, Callable], ...] = (
    ("wte.weight", "embed", _copy),
    ("wpe.weight", "pos_embed", _copy),
    (H + "ln_1.weight", B + "ln_attn/scale", _copy),
    (H + "ln_1.bias", B + "ln_attn/bias", _copy),
    (H + "attn.c_attn.weight", B + "attn/wq", _fused(0)),
    (H + "attn.c_attn.weight", B + "attn/wk", _fused(1)),
    (H + "attn.c_attn.weight", B + "attn/wv", _fused(2)),
    (H + "attn.c_attn.bias", B + "attn/bq", _fused(0)),
    (H + "attn.c_attn.bias", B + "attn/bk", _fused(1)),
    (H + "attn.c_attn.bias", B + "attn/bv", _fused(2)),
    (H + "attn.c_proj.weight", B + "attn/wo", _heads_out),
    (H + "attn.c_proj.bias", B + "attn/bo", _copy),
    (H + "ln_2.weight", B + "ln_ffn/scale", _copy),
    (H + "ln_2.bias", B + "ln_ffn/bias", _copy),
    (H + "mlp.c_fc.weight", B + "ffn/w_in", _copy),
    (H + "mlp.c_fc.bias", B + "ffn/b_in", _copy),
    (H + "mlp.c_proj.weight", B + "ffn/w_out", _copy),
    (H + "mlp.c_proj.bias", B + "ffn/b_out", _copy),
    ("ln_f.weight", "ln_final/scale", _copy),
    ("ln_f.bias", "ln_final/bias", _copy),
)
UNTIED = (("lm_head.weight", "head/kernel", _linear),)
# Checkpoint tensors (regexes) that are deliberately not imported, and why.
IGNORED = {
    r"h\.\d+\.attn\.(bias|masked_bias)": "the causal-mask buffers of older saves",
    r"lm_head\.weight": "tied to wte.weight (tie_word_embeddings)",
}
# GPT2Config's own fields (besides PretrainedConfig's generic ones).
KNOWN_KEYS = frozenset((
    "vocab_size", "n_positions", "n_ctx", "n_embd", "n_layer", "n_head", "n_inner",
    "activation_function", "resid_pdrop", "embd_pdrop", "attn_pdrop", "layer_norm_epsilon",
    "summary_type", "summary_use_proj", "summary_activation", "summary_proj_to_labels",
    "summary_first_dropout", "scale_attn_weights", "scale_attn_by_inverse_layer_idx",
    "reorder_and_upcast_attn", "add_cross_attention", "tie_word_embeddings", "pruned_heads",
    "n_special", "predict_special_tokens"))
# Fields whose non-default value changes the math in a way the decoder does not have:
# (key, the value it must have, what the other value would do).
REFUSED = (
    ("scale_attn_by_inverse_layer_idx", False, "attention logits scaled by 1/(layer+1)"),
    ("scale_attn_weights", True, "attention logits not scaled by 1/sqrt(head_dim)"),
    ("add_cross_attention", False, "cross-attention to an encoder"),
    ("n_special", 0, "extra special-token embeddings"),
)


@register
class GPT2(Family):
  """GPT-2 decoders (``GPT2Model`` / ``GPT2LMHeadModel``)."""

  name = "gpt2"
  model_types = ("gpt2",)
  arch = "decoder"
  prefixes = ("transformer.",)
  ignored = IGNORED
  known_keys = KNOWN_KEYS

  def check_config(self, hf: dict[str, Any], where: str) -> None:
    super().check_config(hf, where)
    for key, ok, means in REFUSED:
      if key in hf and hf[key] != ok:
        raise CheckpointError(f"{where}: {key}={hf[key]!r} is not implemented ({means}); "
                              f"the import needs {ok!r}")
    if hf.get("pruned_heads"):
      raise CheckpointError(f"{where}: pruned_heads={hf['pruned_heads']!r} is not "
                            "implemented (every layer needs all n_head heads)")
    act = hf.get("activation_function", "gelu_new")
    if act not in HF_ACTIVATIONS:
      raise CheckpointError(f"{where}: activation_function {act!r} is not supported; "
                            f"known: {sorted(HF_ACTIVATIONS)}")

  def model_sizes(self, hf: dict[str, Any]) -> dict[str, Any]:
    d = int(hf["n_embd"])
    return {
        "arch": "decoder",
        "d_model": d,
        "num_heads": int(hf["n_head"]),
        "num_layers": int(hf["n_layer"]),
        "d_ff": int(hf.get("n_inner") or 4 * d),
        "vocab_size": int(hf["vocab_size"]),
        "max_positions": int(hf["n_positions"]),
        "layer_norm_eps": float(hf.get("layer_norm_epsilon", 1e-5)),
        "activation": HF_ACTIVATIONS[hf.get("activation_function", "gelu_new")],
        "attn_bias": True,
        "tie_embeddings": self.tied(hf),
    }

  def mapping(self, hf: dict[str, Any]) -> tuple[tuple[str, str, Callable], ...]:
    return MAPPING if self.tied(hf) else MAPPING + UNTIED

  def is_ignored(self, name: str) -> bool:
    return any(re.fullmatch(p, name) for p in self.ignored)

  def default_head(self, hf: dict[str, Any]) -> dict[str, Any]:
    return {"name": "tied" if self.tied(hf) else "shared"}

  def special_tokens(self, hf: dict[str, Any]) -> dict[str, int | None]:
    eos = hf.get("eos_token_id")
    pad = hf.get("pad_token_id")
    return {"bos": hf.get("bos_token_id", eos), "eos": eos, "pad": eos if pad is None else pad}

  @staticmethod
  def tied(hf: dict[str, Any]) -> bool:
    return bool(hf.get("tie_word_embeddings", True))
