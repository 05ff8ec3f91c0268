"""An external TFDS dataset as a task, offline, through the tiny toy_text builder."""

import numpy as np
import pytest

import modular.data as data
from modular.data import external
from modular.data import mixture
from modular.data import sources
from modular.data import vocab
from modular.data.builders.toy_text import modular_toy_text

SEQ_LEN = 20
NUM_TRAIN = 100  # built-ins; the toy set has 400 train and 64 validation examples


def _cfg(data_dir, **overrides):
  cfg = data.default_data_config()
  cfg.data_dir = str(data_dir)
  cfg.tasks = ["copy"]
  cfg.seq_len = SEQ_LEN
  cfg.num_train = NUM_TRAIN
  cfg.num_eval = 50
  cfg.external = [{
      "name": "sentiment",
      "tfds_name": "modular_toy_text",
      "imports": "modular.data.builders.toy_text",
      "preprocess": "modular.data.external:sentence_label",
      "kwargs": {"text_key": "sentence"},
  }]
  for key, value in overrides.items():
    cfg[key] = value
  return cfg


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds_ext")


def test_text_to_symbols():
  a = external.text_to_symbols("Hello world", 10)
  assert a.dtype == np.int32 and a.shape == (11,)
  assert 0 <= a.min() and a.max() < 10
  np.testing.assert_array_equal(a, external.text_to_symbols(b"hello WORLD", 10))
  np.testing.assert_array_equal(a[:4], external.text_to_symbols("hello world", 10, max_len=4))
  # Same character, same symbol; stable across runs (CRC32, not Python's hash).
  assert a[2] == a[3] == a[9]
  assert external.text_to_symbols("a", 1000)[0] == 0xE8B7BE43 % 1000
  assert external.text_to_symbols("", 10).shape == (0,)


def test_toy_builder_labels_match_sentences(data_dir):
  builder = sources.external_builder(_cfg(data_dir), external.parse_external(
      _cfg(data_dir).external[0], 0))
  builder.download_and_prepare()
  raw = builder.as_data_source()
  assert len(raw["train"]) == 400 and len(raw["validation"]) == 64
  for i in range(64):
    ex = raw["validation"][i]
    words = ex["sentence"].decode().split()
    assert ex["label"] == int(any(w in modular_toy_text._POSITIVE for w in words))


def test_external_task_in_sources_and_names(data_dir):
  cfg = _cfg(data_dir)
  assert data.task_names(cfg) == ["copy", "sentiment"]
  all_sources = data.build_task_sources(cfg)
  assert len(all_sources["sentiment"]["train"]) == 400
  assert len(all_sources["sentiment"]["test"]) == 64  # the "validation" split
  raw = sources.external_builder(cfg, external.parse_external(cfg.external[0], 0))
  raw = raw.as_data_source()["validation"]
  for i in range(10):
    ex = all_sources["sentiment"]["test"][i]
    sentence, label = raw[i]["sentence"], raw[i]["label"]
    np.testing.assert_array_equal(  # truncated to seq_len - 2
        ex["prompt"], external.text_to_symbols(sentence, 10, max_len=SEQ_LEN - 2))
    assert ex["answer"].tolist() == [label] and ex["task"] == "sentiment"


def test_external_batches_and_rates(data_dir):
  cfg = _cfg(data_dir, sampling="proportional")
  rates = data.sampling_rates(cfg)
  np.testing.assert_allclose(rates, [0.2, 0.8])  # 100 : 400 train examples
  cfg.sampling = "temperature"
  np.testing.assert_allclose(data.sampling_rates(cfg), [10 / 30, 20 / 30])  # sqrt sizes
  cfg.sampling = "proportional"
  it = data.make_train_iterator(cfg, batch_size=64)
  ids = []
  for _ in range(40):
    batch = next(it)
    ids.append(batch["task_id"])
    ext = batch["task_id"] == 1
    # Sentiment rows: one answer token, label 0 or 1, prompt truncated to fit.
    np.testing.assert_array_equal(batch["mask"][ext].sum(axis=1), 1.0)
    answers = batch["targets"][ext][batch["mask"][ext] == 1] - vocab.symbol(0)
    assert set(answers.tolist()) <= {0, 1}
    np.testing.assert_array_equal(batch["inputs"][ext][:, 0], vocab.task_token(1))
  freq = np.bincount(np.concatenate(ids), minlength=2) / (40 * 64)
  # 2,560 draws: std 0.008; tolerance 0.035 is > 4 std.
  np.testing.assert_allclose(freq, rates, atol=0.035)


def test_external_eval_batches(data_dir):
  cfg = _cfg(data_dir)
  evals = data.make_eval_batches(cfg, batch_size=32)
  assert [len(evals[name]) for name in ("copy", "sentiment")] == [2, 2]
  real = np.concatenate([b["mask"].sum(axis=1) > 0 for b in evals["sentiment"]])
  assert real.sum() == 50  # num_eval of the 64 validation examples


def test_long_text_is_truncated_to_fit(data_dir):
  example = {"sentence": b"x" * 100, "label": 1}
  prompt, answer = external.sentence_label(example, n_symbols=10, max_tokens=SEQ_LEN - 1)
  assert len(prompt) + len(answer) == SEQ_LEN - 1  # 2 + P + A == seq_len + 1
  data.encode_example(prompt, answer, 0, seq_len=SEQ_LEN, n_symbols=10)
  with pytest.raises(ValueError, match="label 12"):
    external.sentence_label({"sentence": "a", "label": 12}, n_symbols=10, max_tokens=5)


def test_missing_split_and_bad_function(data_dir):
  cfg = _cfg(data_dir)
  cfg.external[0]["eval_split"] = "dev"
  with pytest.raises(ValueError, match="no split 'dev'"):
    data.build_task_sources(cfg)
  with pytest.raises(ValueError, match="no function 'nope'"):
    external.resolve_function("modular.data.external:nope")
  assert mixture.rates_from_sizes([1, 3], "uniform").tolist() == [0.5, 0.5]
