"""Data config defaults, loose field forms, and validation errors that name the key."""

import os

import ml_collections
import pytest

import modular.data as data
from modular.data import config as config_lib


def test_defaults():
  cfg = data.default_data_config()
  data.validate_data_config(cfg)
  assert isinstance(cfg, ml_collections.ConfigDict)
  assert data.task_names(cfg) == ["copy", "reverse", "sort", "duplicate", "mod_add",
                                  "parity", "assoc_recall", "induction"]
  assert (cfg.n_symbols, cfg.min_len, cfg.max_len, cfg.seq_len) == (10, 3, 8, 32)
  assert (cfg.num_train, cfg.num_eval, cfg.seed) == (5000, 256, 0)
  assert (cfg.sampling, cfg.temperature, cfg.batching) == ("proportional", 2.0, "mixed")
  assert cfg.external == [] and cfg.data_dir == ""
  assert data.vocab_size(cfg) == 2 + 16 + 10
  assert config_lib.data_dir(cfg) == os.path.expanduser("~/.cache/modular/tfds")


def test_tasks_as_string_or_sequence():
  cfg = data.default_data_config()
  cfg.tasks = "copy, reverse,sort"
  assert data.task_names(cfg) == ["copy", "reverse", "sort"]
  data.validate_data_config(cfg)
  cfg.tasks = ("parity", "count")
  assert data.task_names(cfg) == ["parity", "count"]
  data.validate_data_config(cfg)
  # A round trip through to_dict() (what the training loop does) keeps it valid.
  data.validate_data_config(ml_collections.ConfigDict(cfg.to_dict()))


def test_weights_forms():
  cfg = data.default_data_config()
  cfg.tasks = "copy,reverse,sort"
  cfg.sampling = "explicit"
  for weights in ("copy:2, sort:1", {"copy": 2.0, "sort": 1.0}, [2, 0, 1]):
    cfg.weights = weights
    assert config_lib.parse_weights(cfg).tolist() == [2.0, 0.0, 1.0]


def _error(**overrides):
  cfg = data.default_data_config()
  for key, value in overrides.items():
    cfg[key] = value
  with pytest.raises(ValueError) as info:
    data.validate_data_config(cfg)
  return str(info.value)


@pytest.mark.parametrize("overrides, key, fragment", [
    ({"tasks": "copy,nope"}, "tasks", "unknown task 'nope'"),
    ({"tasks": "copy,copy"}, "tasks", "unique"),
    ({"tasks": ""}, "tasks", "no tasks"),
    ({"tasks": 3}, "tasks", "list of names"),
    ({"sampling": "softmax"}, "sampling", "unknown sampling"),
    ({"batching": "packed"}, "batching", "unknown batching"),
    ({"temperature": 0.0}, "temperature", "> 0"),
    ({"n_symbols": 1}, "n_symbols", ">= 2"),
    ({"min_len": 0}, "min_len", ">= 1"),
    ({"min_len": 5, "max_len": 4}, "max_len", "min_len"),
    ({"num_train": "many"}, "num_train", "int"),
    ({"seq_len": 24}, "seq_len", "task 'duplicate'"),
    ({"tasks": "count", "n_symbols": 8}, "n_symbols", "task 'count' needs n_symbols >= 9"),
    ({"sampling": "explicit", "weights": "copy:1,bogus:2"}, "weights", "unknown tasks"),
    ({"sampling": "explicit", "weights": "copy:0"}, "weights", "positive sum"),
    ({"sampling": "explicit", "weights": [1, 2]}, "weights", "one weight per task"),
    ({"external": [{"name": "x"}]}, "external[0].tfds_name", "required"),
    ({"external": [{"name": "x", "tfds_name": "t", "preprocess": "nocolon"}]},
     "external[0].preprocess", "module:function"),
    ({"external": [{"name": "x", "tfds_name": "t", "preprocess": "m:f", "oops": 1}]},
     "external[0]", "unknown keys"),
    ({"external": [{"name": "copy", "tfds_name": "t",
                    "preprocess": "modular.data.external:sentence_label"}]},
     "external", "unique"),
    ({"external": [{"name": "x", "tfds_name": "t", "preprocess": "no_such_module_zz:f"}]},
     "external[0].preprocess", "cannot import 'no_such_module_zz'"),
    ({"external": "glue"}, "external", "list of dicts"),
])
def test_validation_names_the_key(overrides, key, fragment):
  message = _error(**overrides)
  assert message.startswith(f"config.data.{key}"), message
  assert fragment in message, message


def test_seq_len_error_gives_lengths():
  message = _error(seq_len=24)
  assert "prompt of 8 and an answer of 16" in message and "seq_len >= 25" in message
  cfg = data.default_data_config()
  cfg.seq_len = 25  # the tightest length that fits every default task
  data.validate_data_config(cfg)


def test_unknown_and_missing_keys():
  cfg = data.default_data_config()
  cfg.sampeling = "uniform"
  with pytest.raises(ValueError, match=r"config\.data\.sampeling: unknown key"):
    data.validate_data_config(cfg)
  cfg = ml_collections.ConfigDict(data.default_data_config().to_dict())
  del cfg["seq_len"]
  with pytest.raises(ValueError, match=r"config\.data\.seq_len: missing"):
    data.validate_data_config(cfg)


def test_too_many_tasks():
  cfg = data.default_data_config()
  cfg.tasks = list(data.tasks.TASKS.names())  # 10 built-ins
  cfg.external = [{"name": f"ext{i}", "tfds_name": "t",
                   "preprocess": "modular.data.external:sentence_label"}
                  for i in range(7)]
  with pytest.raises(ValueError, match=r"config\.data\.tasks: 17 tasks exceed MAX_TASKS=16"):
    data.validate_data_config(cfg)
