"""A pretrained encoder trains through the loop on WordNet classification batches:
per-task accuracy is evaluated, and with ``optim.freeze_pretrained`` every imported
tensor leaves the run bit-identical while the modules and heads train."""

import os

import numpy as np
import pytest

from modular.checkpoints import hf_bert
from modular.checkpoints.testing import write_tiny_bert
from modular.overrides import load_config_file
from modular.paths import flat_paths
from modular.train import loop

pytestmark = pytest.mark.slow  # an integration test: CI runs it; -m "not slow" skips it

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize("mode", ["lora"])
def test_minilm_config_trains_with_frozen_imports(tmp_path, mode):
  ckpt = tmp_path / "tiny_bert"
  ckpt.mkdir()
  # A tiny BERT with MiniLM's vocabulary, so the WordNet tasks' tokenizer fits it.
  tensors = write_tiny_bert(str(ckpt), vocab_size=30522, max_positions=32)
  cfg = load_config_file(os.path.join(ROOT, "configs", f"minilm.py:{mode},tiny"))
  cfg.model.pretrained = str(ckpt)
  cfg.data.tokenizer = hf_bert.DEFAULT
  cfg.train.steps = 3
  cfg.train.eval_every = 3
  cfg.train.progress = False
  cfg.train.async_checkpoint = False
  summary = loop.train(cfg, str(tmp_path / "run"))
  acc = summary["eval"]["accuracy"]
  assert set(acc) == {"def_pos", "relation"} and all(0.0 <= a <= 1.0 for a in acc.values())
  final = flat_paths(summary["state"]["params"])
  converted = hf_bert.convert(tensors, num_layers=2, num_heads=2)
  imported = {hf_bert._resolve(p, final): v for p, v in converted.items()}
  same = {p: np.array_equal(np.asarray(final[p]), v) for p, v in imported.items()}
  if mode == "lora":
    assert all(same.values()), [p for p, s in same.items() if not s]
    lora_b = [p for p in final if "/ffn/" in p and "lora_b" in p]
    assert lora_b and any(np.abs(np.asarray(final[p])).max() > 0 for p in lora_b)
  else:
    assert not any(same[p] for p in same if "attn/w" in p)  # full fine-tuning moves them
