"""A LoRA model folded into the dense layout computes the same logits as the LoRA model."""

from __future__ import annotations

import os
import sys

import jax
import numpy as np
import pytest

from modular.merging import lora as lora_lib
from modular.paths import flat_paths

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_fold_gives_the_lora_models_logits():
  sys.path.insert(0, os.path.join(ROOT, "configs"))
  from modular import config as config_lib
  from modular import models as models_lib
  from modular.objective import FunctionalModel
  from modular.overrides import load_config_file
  cfg = load_config_file(os.path.join(ROOT, "configs", "lora.py"), "tiny,peft")
  cfg.data.tasks = ["copy"]
  config_lib.fill_derived(cfg)
  fm, params, _ = FunctionalModel.split(models_lib.build_model(cfg.model, 0))
  rng = np.random.default_rng(0)
  # B is zero at init: give every factor a visible value so the fold matters.
  params = jax.tree_util.tree_map_with_path(
      lambda p, x: x + 0.1 * rng.normal(size=x.shape).astype(x.dtype)
      if "lora_" in jax.tree_util.keystr(p) else x, params)
  s = lora_lib.scale(cfg)
  assert s == 16.0 / 8
  dense_cfg = lora_lib.dense_config(cfg)
  dfm, template, _ = FunctionalModel.split(models_lib.build_model(dense_cfg.model, 0))
  folded = lora_lib.fold(params, s)
  assert sorted(folded) == sorted(flat_paths(template))
  assert lora_lib.folded_paths(params) == {f"blocks/{i}/ffn/{w}" for i in range(2)
                                           for w in ("w_in", "w_out")}
  flat = flat_paths(params)
  a = np.asarray(flat["blocks/0/ffn/lora_a_in"][0])  # [d, r]
  b = np.asarray(flat["blocks/0/ffn/lora_b_in"][0])  # [r, d_ff]
  np.testing.assert_allclose(np.asarray(folded["blocks/0/ffn/w_in"]),
                             np.asarray(flat["blocks/0/ffn/base/w_in"]) + s * a @ b, atol=1e-6)
  dense = lora_lib.fill(template, folded, "the folded model")
  shape = (3, cfg.model.seq_len)
  batch = {"inputs": rng.integers(0, cfg.model.vocab_size, shape).astype(np.int32),
           "task_id": np.zeros((3,), np.int32)}
  want, _ = fm.apply(params, batch)
  got, _ = dfm.apply(dense, batch)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)
  # Trained set of the parameter-efficient run: the folded matrices, not the backbone.
  trained = lora_lib.trained_paths(params, tuple(cfg.optim.frozen), lora=True)
  assert lora_lib.folded_paths(params) <= trained
  assert "embed" not in trained and "blocks/0/ffn/b_in" not in trained


def test_per_task_lora_is_refused_unless_a_task_is_named():
  rng = np.random.default_rng(1)
  n, d, r, f = 3, 4, 2, 5
  params = {"blocks": [{"ffn": {
      "base": {"w_in": np.zeros((d, f), np.float32), "w_out": np.zeros((f, d), np.float32)},
      "lora_a_in": rng.normal(size=(n, d, r)).astype(np.float32),
      "lora_b_in": rng.normal(size=(n, r, f)).astype(np.float32),
      "lora_a_out": rng.normal(size=(n, f, r)).astype(np.float32),
      "lora_b_out": rng.normal(size=(n, r, d)).astype(np.float32)}}]}
  with pytest.raises(ValueError, match=r"blocks/0/ffn holds 3 per-task LoRA updates"):
    lora_lib.fold(params, 2.0)
  ffn = params["blocks"][0]["ffn"]
  got = lora_lib.fold(params, 2.0, task=2)["blocks/0/ffn/w_in"]
  np.testing.assert_allclose(np.asarray(got), 2.0 * ffn["lora_a_in"][2] @ ffn["lora_b_in"][2],
                             rtol=1e-6)
