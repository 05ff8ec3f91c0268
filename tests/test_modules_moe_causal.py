"""Routing sees only real tokens and stays causal, over every slot filler in the registry.

* The load-balance loss and z-loss of ``configs/moe.py:tiny`` at initialization, on its
  own evaluation batch (56% padding), equal a NumPy reference over the real tokens
  (from the same router logits), and do not move when the all-padding tail is cut or
  all-padding rows are appended.
* For every filler of every slot (FFN, adapter, head, block), changing the tokens after
  position k (to other tokens, or to padding) leaves every logit up to k unchanged,
  with capacity small enough that tokens are dropped wherever a filler drops tokens.
The expert-sharded run is checked in ``test_modules_moe_sharded.py``.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modular.data.vocab import PAD_ID
from modular.models import slots
from modular.modules import testing
from modular.objective import FunctionalModel, per_task_metrics

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------- real tokens: configs/moe.py:tiny
@pytest.fixture(scope="module")
def moe_tiny(data_dir):
  from modular import config as config_lib
  from modular.data import make_eval_batches
  from modular.models import build_model
  from modular.overrides import load_config_file
  cfg = load_config_file(os.path.join(ROOT, "configs", "moe.py"), "tiny")
  cfg.data.data_dir = data_dir
  cfg = config_lib.fill_derived(cfg)
  fm, params, _ = FunctionalModel.split(build_model(cfg.model, seed=cfg.train.seed))
  evals = make_eval_batches(cfg.data, cfg.train.batch_size)
  batch = {k: np.concatenate([b[k] for bs in evals.values() for b in bs])
           for k in ("inputs", "targets", "mask", "task_id")}

  @jax.jit
  def run(batch):
    logits, ctx = fm.apply(params, batch, capture=True)
    loss = per_task_metrics(logits, batch, fm.num_tasks)["loss"]
    return loss, ctx.losses, ctx.intermediates, ctx.stats

  return cfg, batch, run


def _np_lb_and_z(logits, valid, k, num_experts):
  """Switch load balance E sum_e f_e P_e and ST-MoE z-loss over the rows ``valid``."""
  z = logits[valid].astype(np.float64)  # [N, E]
  p = np.exp(z - z.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  top = np.argsort(-p, -1, kind="stable")[:, :k]
  f = np.array([(top == e).sum(-1).mean() / k for e in range(num_experts)])
  lse = np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1)) + z.max(-1)
  return num_experts * np.sum(f * p.mean(0)), np.mean(lse ** 2)


def test_moe_tiny_losses_count_real_tokens_only(moe_tiny):
  cfg, batch, run = moe_tiny
  ffn = cfg.model.ffn
  valid = batch["inputs"] != PAD_ID
  assert 0.5 < 1 - valid.mean() < 0.6  # the batch: 56% padding
  _, losses, inter, stats = jax.device_get(run(batch))
  for layer in range(cfg.model.num_layers):
    logits = inter[f"block{layer}/ffn/router_logits"]  # [B, L, E]
    lb, z = _np_lb_and_z(logits, valid, ffn.top_k, ffn.num_experts)
    all_lb, _ = _np_lb_and_z(logits, np.ones_like(valid), ffn.top_k, ffn.num_experts)
    got = float(losses[f"block{layer}/ffn/load_balance"])
    print(f"layer {layer}: load_balance {got:.5f}, NumPy real tokens "
          f"{ffn.load_balance_weight * lb:.5f}, all positions {ffn.load_balance_weight * all_lb:.5f}")
    np.testing.assert_allclose(got, ffn.load_balance_weight * lb, rtol=1e-5)
    np.testing.assert_allclose(float(losses[f"block{layer}/ffn/router_z"]),
                               ffn.z_loss_weight * z, rtol=1e-5)
    dropped = float(stats[f"block{layer}/ffn/dropped_fraction"])
    assert 0 <= dropped < 0.2, dropped  # real tokens only (21-25% counted padding)


def test_moe_tiny_loss_ignores_padding_tail(moe_tiny):
  _, batch, run = moe_tiny
  valid = batch["inputs"] != PAD_ID
  last = int(np.nonzero(valid.any(0))[0].max()) + 1
  assert last < batch["inputs"].shape[1]
  cut = {k: v[:, :last] if v.ndim == 2 else v for k, v in batch.items()}
  pad_rows = {k: np.concatenate([v, np.zeros((8,) + v.shape[1:], v.dtype)])
              for k, v in batch.items()}  # all-PAD rows, mask 0
  ref_loss, ref_aux, _, _ = jax.device_get(run(batch))
  for variant in (cut, pad_rows):
    loss, aux, _, _ = jax.device_get(run(variant))
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-6, atol=1e-7)
    for key in ref_aux:
      np.testing.assert_allclose(aux[key], ref_aux[key], rtol=1e-6, err_msg=key)


# ------------------------------------------------------------- causality, every filler
TIGHT = {"capacity_factor": 0.5}  # tried on every filler; kept where it is an option
REQUIRED = {"classify": {"num_classes": 3}}  # fillers with options that have no default
SEQ, K = 12, 5  # sequence length; tokens after position K change


def _cases():
  """(slot, filler) for every registered filler of every slot."""
  registries = {"ffn": slots.FFN, "adapter": slots.ADAPTER, "head": slots.HEAD,
                "block": slots.BLOCK}
  return [(kind, name) for kind, reg in registries.items() for name in reg.names()]


def _model(kind: str, name: str):
  """A tiny model with filler ``name`` in slot ``kind`` (both adapter slots for an
  adapter) and the tight-capacity token MoE in the FFN slot otherwise. The filler gets
  ``TIGHT`` if it takes those options."""
  for extra in (TIGHT, {}):
    filler = dict(extra, name=name, **REQUIRED.get(name, {}))
    slot_cfgs = {"ffn": dict(TIGHT, name="moe")}
    if kind == "adapter":
      slot_cfgs.update(adapter_attn=filler, adapter_ffn=filler)
    else:
      slot_cfgs[kind] = filler
    cfg = testing.model_config(num_tasks=3, seq_len=SEQ, num_layers=1, **slot_cfgs)
    try:
      return cfg, testing.build(cfg)
    except ValueError as e:
      if not extra or "unknown option" not in str(e):
        raise
  raise AssertionError("unreachable")


@pytest.mark.parametrize("kind,name", _cases())
def test_changing_later_tokens_leaves_earlier_logits_unchanged(kind, name):
  cfg, model = _model(kind, name)
  fm, params, _ = FunctionalModel.split(model)
  rng = np.random.default_rng(0)
  b = 6
  inputs = rng.integers(1, cfg.vocab_size, (b, SEQ)).astype(np.int32)
  inputs[1, 9:] = PAD_ID  # a padded example
  changed = inputs.copy()
  changed[:3, K + 1:] = rng.integers(1, cfg.vocab_size, (3, SEQ - K - 1))  # other tokens
  changed[3:, K + 1:] = PAD_ID  # padding instead
  task = np.arange(b, dtype=np.int32) % 3

  @jax.jit
  def run(inputs):
    logits, ctx = fm.apply(params, {"inputs": inputs, "task_id": task}, capture=True)
    return logits, ctx.intermediates["final"], ctx.stats

  (y0, h0, stats), (y1, h1, _) = jax.device_get((run(inputs), run(changed)))
  # Per-position outputs: the logits [B, L, V]; a sequence-level head ([B, C], e.g. a
  # classifier) has none, so its input, the final hidden states [B, L, d], is checked.
  pairs = [(h0, h1)] + ([(y0, y1)] if y0.shape[:2] == inputs.shape else [])
  for a, b in pairs:
    assert not np.allclose(a[:, K + 1:], b[:, K + 1:])  # the change is seen later on
    np.testing.assert_allclose(b[:, :K + 1], a[:, :K + 1], rtol=0, atol=1e-6)
  dropped = [float(v) for key, v in stats.items() if key.endswith("dropped_fraction")]
  assert dropped or kind == "ffn", stats.keys()  # the MoE FFN is in the model
  if dropped:  # a token router: its capacity really drops tokens here
    assert max(dropped) > 0, (name, dropped)
