"""A LoRA run's parameters folded into the dense model's layout, so its task vector merges.

The LoRA FFN (``modules/lora.py``) computes ``x (W_in + s A_in[t] B_in[t])`` and
``h (W_out + s A_out[t] B_out[t])`` with ``s = alpha / rank``: its update is exactly a
dense update of ``W_in`` and ``W_out``. ``fold`` writes the dense model's parameters
(``blocks/i/ffn/w_in`` from ``blocks/i/ffn/base/w_in`` plus ``s A B``; the factors
dropped), so a LoRA run and a fully fine-tuned run of the same base give task vectors
of one shape, and the merged model is the plain dense model. A LoRA run's merged set is
its trainable leaves (through ``modules.peft.dense_path``) plus every folded matrix.

References:
  Hu et al. 2022, "LoRA: Low-Rank Adaptation of Large Language Models", ICLR, Sec. 4.1
  (``W = W_0 + B A`` merged for inference); Ilharco et al. 2023 (task vectors).
"""

from __future__ import annotations

import copy
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from modular.modules import lora as lora_lib
from modular.modules.peft import dense_path
from modular.paths import flat_paths, path_str

PyTree = Any
# w_gate: only on a gated (SwiGLU) FFN, whose LoRA holds a gate pair too.
_FACTORS = {"w_in": ("lora_a_in", "lora_b_in"), "w_out": ("lora_a_out", "lora_b_out"),
            "w_gate": ("lora_a_gate", "lora_b_gate")}


def is_lora(cfg: ml_collections.ConfigDict) -> bool:
  """Whether the run's FFN slot is LoRA (``model.ffn.name == "lora"``)."""
  return cfg.model.ffn.get("name") == "lora"


def scale(cfg: ml_collections.ConfigDict) -> float:
  """``alpha / rank`` of the run's LoRA FFN (the module's defaults where unset)."""
  ffn = cfg.model.ffn
  return float(ffn.get("alpha", lora_lib.DEFAULTS["alpha"])) / int(
      ffn.get("rank", lora_lib.DEFAULTS["rank"]))


def fold(params: PyTree, s: float, task: int | None = None) -> dict[str, jax.Array]:
  """The dense model's flat parameters ``{path: array}`` of a LoRA model's ``params``.

  Args:
    params: the LoRA model's parameters (``blocks/i/ffn/base/w_in``, ``lora_a_in``
      ``[n, d, r]``, ``lora_b_in`` ``[n, r, d_ff]``, ...).
    s: ``alpha / rank``.
    task: which of the ``n`` per-task updates; None (default) when there is one update
      (a single-task run or a shared LoRA).

  Returns:
    ``{dense path: array}``: every non-factor leaf at its dense path, ``w_in`` and
    ``w_out`` (and a gated FFN's ``w_gate``) with ``s A[task] B[task]`` added
    (float32 products, the leaf's dtype).

  Raises:
    ValueError: ``task`` is None and the run holds ``n > 1`` per-task updates (one dense
      model cannot stand for all of them; folding one silently would drop the others).
  """
  flat = flat_paths(params)
  out = {dense_path(p): jnp.asarray(v) for p, v in flat.items()
         if not p.rsplit("/", 1)[-1].startswith("lora_")}
  for p in flat:
    if not p.endswith("/lora_a_in"):
      continue
    head = p.rsplit("/", 1)[0]
    n = jnp.shape(flat[p])[0]
    if task is None and n > 1:
      raise ValueError(f"merging: {head} holds {n} per-task LoRA updates; merge runs with "
                       "one (shared or single-task) LoRA, or fold one task explicitly")
    for w, (a_name, b_name) in _FACTORS.items():
      if f"{head}/{a_name}" not in flat:  # no gate pair on an ungated FFN
        continue
      a = jnp.asarray(flat[f"{head}/{a_name}"], jnp.float32)[task or 0]  # [d_in, r]
      b = jnp.asarray(flat[f"{head}/{b_name}"], jnp.float32)[task or 0]  # [r, d_out]
      target = dense_path(f"{head}/base/{w}")
      out[target] = (out[target].astype(jnp.float32) + s * a @ b).astype(out[target].dtype)
  return out


def folded_paths(params: PyTree) -> set[str]:
  """The dense paths that ``fold`` adds a LoRA update to."""
  heads = {p.rsplit("/", 1)[0] for p in flat_paths(params) if p.endswith("/lora_a_in")}
  flat = flat_paths(params)
  return {dense_path(f"{h}/base/{w}") for h in heads for w, (a, _) in _FACTORS.items()
          if f"{h}/{a}" in flat}


def trained_paths(params: PyTree, frozen: Sequence[str], lora: bool) -> set[str]:
  """The dense paths a run could change: trainable leaves (plus folded ones for LoRA)."""
  out = {dense_path(p) for p in flat_paths(params)
         if not any(re.search(f, p) for f in frozen)
         and not p.rsplit("/", 1)[-1].startswith("lora_")}
  return out | folded_paths(params) if lora else out


def dense_config(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``cfg`` with the plain dense FFN in place of LoRA (the merged model's config)."""
  out = copy.deepcopy(cfg)
  out.model.ffn = ml_collections.ConfigDict({"name": "dense"})
  return out


def fill(template: PyTree, flat: dict[str, Any], what: str) -> PyTree:
  """``template``'s structure with every leaf from ``flat`` (by path); one line if missing."""

  def one(path, leaf):
    p = path_str(path)
    if p not in flat:
      raise ValueError(f"merging: {what} has no value for parameter {p!r}")
    if jnp.shape(flat[p]) != jnp.shape(leaf):
      raise ValueError(f"merging: {what}'s {p!r} has shape {jnp.shape(flat[p])}, the "
                       f"model's {jnp.shape(leaf)}")
    return jnp.asarray(flat[p], jnp.asarray(leaf).dtype)

  return jax.tree_util.tree_map_with_path(one, template)
