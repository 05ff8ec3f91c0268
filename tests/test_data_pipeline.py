"""Batch format, checkpointable iterator state, sharding and eval batches."""

import json

import grain
import numpy as np
import pytest

import modular.data as data
from modular.data import pipeline
from modular.data import vocab

SEQ_LEN = 20


def _cfg(data_dir, **overrides):
  cfg = data.default_data_config()
  cfg.data_dir = str(data_dir)
  cfg.tasks = "copy,reverse,sort"  # the comma-string form of the list
  cfg.seq_len = SEQ_LEN
  cfg.num_train = 200
  cfg.num_eval = 40
  for key, value in overrides.items():
    cfg[key] = value
  return cfg


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


def _take(it, n):
  return [next(it) for _ in range(n)]


def _assert_same(batches_a, batches_b):
  assert len(batches_a) == len(batches_b)
  for a, b in zip(batches_a, batches_b):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def _decode_row(inputs, targets):
  """(task token, prompt symbols, answer symbols) of one row, read from the tokens."""
  seq = np.concatenate([inputs[:1], targets])  # [L + 1]
  sep = int(np.flatnonzero(seq == vocab.SEP_ID)[0])
  end = sep + 1
  while end < len(seq) and seq[end] != vocab.PAD_ID:
    end += 1
  first = vocab.symbol(0)
  return int(seq[0]), (seq[1:sep] - first).tolist(), (seq[sep + 1:end] - first).tolist()


def test_batch_format(data_dir):
  cfg = _cfg(data_dir)
  it = data.make_train_iterator(cfg, batch_size=32)
  for batch in _take(it, 4):
    assert set(batch) == {"inputs", "targets", "mask", "task_id"}
    assert batch["inputs"].shape == batch["targets"].shape == (32, SEQ_LEN)
    assert batch["mask"].shape == (32, SEQ_LEN) and batch["task_id"].shape == (32,)
    assert batch["inputs"].dtype == batch["targets"].dtype == np.int32
    assert batch["mask"].dtype == np.float32 and batch["task_id"].dtype == np.int32
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
    np.testing.assert_array_equal(batch["inputs"][:, 0], 2 + batch["task_id"])
    assert set(batch["task_id"].tolist()) <= {0, 1, 2}
    for inputs, targets, mask, t in zip(batch["inputs"], batch["targets"], batch["mask"],
                                        batch["task_id"]):
      token, prompt, answer = _decode_row(inputs, targets)
      assert token == vocab.task_token(int(t))
      reference = {0: prompt, 1: prompt[::-1], 2: sorted(prompt)}[int(t)]
      assert answer == reference and 3 <= len(prompt) <= 8
      # Mask: exactly the positions whose target is an answer token.
      sep = int(np.flatnonzero(inputs == vocab.SEP_ID)[0])
      expected = np.zeros(SEQ_LEN, np.float32)
      expected[sep:sep + len(answer)] = 1.0
      np.testing.assert_array_equal(mask, expected)
      assert mask.sum() == len(answer)
      np.testing.assert_array_equal(targets[mask == 1] - vocab.symbol(0), answer)


def test_state_json_roundtrip_resumes_exactly(data_dir):
  for batching in ("mixed", "homogeneous"):
    cfg = _cfg(data_dir, batching=batching)
    it = data.make_train_iterator(cfg, batch_size=16)
    _take(it, 30)  # past the first epoch of some tasks (200 examples each)
    state = json.loads(json.dumps(it.get_state()))
    expected = _take(it, 5)
    resumed = data.make_train_iterator(cfg, batch_size=16)
    resumed.set_state(state)
    _assert_same(_take(resumed, 5), expected)
    # Setting an older state on a used iterator rewinds it too.
    it.set_state(state)
    _assert_same(_take(it, 5), expected)


def test_state_roundtrip_with_prefetch(data_dir):
  cfg = _cfg(data_dir)
  it = data.make_train_iterator(cfg, batch_size=8, prefetch=2)
  _take(it, 7)
  state = json.loads(json.dumps(it.get_state()))
  expected = _take(it, 3)
  resumed = data.make_train_iterator(cfg, batch_size=8)
  resumed.set_state(state)
  _assert_same(_take(resumed, 3), expected)


def test_seed_determinism(data_dir):
  a = _take(data.make_train_iterator(_cfg(data_dir), batch_size=8), 3)
  b = _take(data.make_train_iterator(_cfg(data_dir), batch_size=8), 3)
  c = _take(data.make_train_iterator(_cfg(data_dir, seed=1), batch_size=8), 3)
  _assert_same(a, b)
  assert any((x["inputs"] != y["inputs"]).any() for x, y in zip(a, c))


def test_homogeneous_batches_have_one_task(data_dir):
  it = data.make_train_iterator(_cfg(data_dir, batching="homogeneous"), batch_size=8)
  seen = set()
  for batch in _take(it, 30):
    assert len(set(batch["task_id"].tolist())) == 1
    seen.add(int(batch["task_id"][0]))
  assert seen == {0, 1, 2}


def test_shards_read_disjoint_slices(data_dir):
  # min_len 6: 10^6+ distinct prompts, so equal rows mean the same stored example.
  cfg = _cfg(data_dir, min_len=6, tasks=["copy"])
  rows = []
  for shard in range(2):
    it = data.make_train_iterator(cfg, batch_size=25, shard_index=shard, shard_count=2)
    rows.append({r.tobytes() for b in _take(it, 4) for r in b["inputs"]})  # one epoch
  assert len(rows[0]) == len(rows[1]) == 100
  assert not rows[0] & rows[1]
  # Homogeneous draws agree across shards, so the global batch is one task.
  cfg = _cfg(data_dir, batching="homogeneous")
  tasks = [[int(b["task_id"][0]) for b in _take(
      data.make_train_iterator(cfg, 4, shard_index=s, shard_count=2), 10)] for s in range(2)]
  assert tasks[0] == tasks[1]
  with pytest.raises(ValueError, match="shard_index"):
    data.make_train_iterator(cfg, 4, shard_index=2, shard_count=2)


def test_epoch_shuffle_covers_each_epoch():
  ds = pipeline.EpochShuffleMapDataset(grain.MapDataset.range(50), seed=(3, 1))
  first, second = [ds[i] for i in range(50)], [ds[i] for i in range(50, 100)]
  assert sorted(first) == sorted(second) == list(range(50))
  assert first != second and first != list(range(50))
  assert ds[123] == ds[123]  # random access, any position, any order
  assert [ds[i] for i in range(50)] == first


def test_eval_batches(data_dir):
  cfg = _cfg(data_dir)
  evals = data.make_eval_batches(cfg, batch_size=16)
  assert list(evals) == ["copy", "reverse", "sort"]
  for t, (name, batches) in enumerate(evals.items()):
    assert len(batches) == 3  # 40 examples -> 16 + 16 + 8 real rows
    real = np.concatenate([b["mask"].sum(axis=1) > 0 for b in batches])
    assert real.sum() == 40 and not real[40:].any()
    for batch in batches:
      assert batch["inputs"].shape == (16, SEQ_LEN)
      np.testing.assert_array_equal(batch["task_id"], t)
      np.testing.assert_array_equal(batch["inputs"][:, 0], vocab.task_token(t))
    # Padding rows: task token, then PAD only, no loss.
    pad = batches[-1]
    assert (pad["inputs"][8:, 1:] == vocab.PAD_ID).all() and (pad["mask"][8:] == 0).all()
  again = data.make_eval_batches(cfg, batch_size=16)
  _assert_same(evals["sort"], again["sort"])


def test_encode_example_too_long_names_task():
  ok = pipeline.encode_example(np.array([1, 2]), np.array([3]), 4, seq_len=4, n_symbols=10)
  np.testing.assert_array_equal(ok["inputs"], [6, 19, 20, 1])
  np.testing.assert_array_equal(ok["targets"], [19, 20, 1, 21])
  np.testing.assert_array_equal(ok["mask"], [0, 0, 0, 1])
  with pytest.raises(ValueError, match=r"task 'mine'.*prompt 3 \+ answer 1"):
    pipeline.encode_example(np.array([1, 2, 3]), np.array([3]), 0, seq_len=4, n_symbols=10,
                            task_name="mine")
