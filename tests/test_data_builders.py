"""The TFDS builder: offline build into tmp dirs, array_record read-back, no TensorFlow."""

import subprocess
import sys

import numpy as np
import pytest

from modular.data import tasks as tasks_lib
from modular.data.builders.algorithmic import AlgorithmicTasks
from modular.data.builders.algorithmic import algorithmic_tasks
from modular.data.builders.algorithmic import make_config

NUM_TRAIN, NUM_TEST = 300, 64


def _build(data_dir, task, **kwargs):
  config = make_config(task, num_train=NUM_TRAIN, num_test=NUM_TEST, **kwargs)
  builder = AlgorithmicTasks(config=config, data_dir=str(data_dir), file_format="array_record")
  builder.download_and_prepare()
  return builder, builder.as_data_source()


def _examples(source):
  return [(ex["prompt"].tolist(), ex["answer"].tolist()) for ex in
          (source[i] for i in range(len(source)))]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  """copy and sort built twice into two dirs, and once with another seed."""
  a, b = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
  return {
      "a": {t: _build(a, t)[1] for t in ("copy", "sort")},
      "b": {t: _build(b, t)[1] for t in ("copy", "sort")},
      "seed1": {"copy": _build(a, "copy", seed=1)[1]},
  }


def test_read_back_from_array_record(built):
  source = built["a"]["copy"]
  assert set(source) == {"train", "test"}
  assert len(source["train"]) == NUM_TRAIN and len(source["test"]) == NUM_TEST
  ex = source["train"][0]
  assert set(ex) == {"prompt", "answer", "task"}
  assert ex["prompt"].dtype == np.int32 and ex["answer"].dtype == np.int32
  assert ex["task"] in (b"copy", "copy")
  for prompt, answer in _examples(source["train"]):
    assert prompt == answer and 3 <= len(prompt) <= 8


def test_builds_are_deterministic(built):
  for task in ("copy", "sort"):
    for split in ("train", "test"):
      assert _examples(built["a"][task][split]) == _examples(built["b"][task][split])


def test_same_examples_as_generator(built):
  # The stored set equals the in-memory generation (TFDS may reorder by key hash).
  config = make_config("sort", num_train=NUM_TRAIN, num_test=NUM_TEST)
  for split in ("train", "test"):
    expected = sorted((p.tolist(), a.tolist())
                      for p, a in algorithmic_tasks.generate_split(config, split))
    assert sorted(_examples(built["a"]["sort"][split])) == expected


def test_train_and_test_differ(built):
  for task in ("copy", "sort"):
    train = {tuple(p) for p, _ in _examples(built["a"][task]["train"])}
    test = [tuple(p) for p, _ in _examples(built["a"][task]["test"])]
    # The copy/sort spaces (10^3 + .. + 10^8 prompts) are large: test is held out.
    assert not train.intersection(test)


def test_seed_changes_data_and_location(built, tmp_path):
  assert _examples(built["a"]["copy"]["train"]) != _examples(built["seed1"]["copy"]["train"])
  names = {make_config("copy").name, make_config("copy", seed=1).name,
           make_config("copy", n_symbols=12).name, make_config("copy", max_len=9).name,
           make_config("copy", num_train=10).name, make_config("sort").name}
  assert len(names) == 6
  assert make_config("copy").name == "copy-sym10-len3to8-train5000-test256-seed0"


def test_small_space_test_split_still_built(tmp_path):
  # parity over 3 bits has 8 prompts: the test split cannot avoid train prompts.
  config = make_config("parity", min_len=3, max_len=3, num_train=50, num_test=20)
  test = algorithmic_tasks.generate_split(config, "test")
  assert len(test) == 20


def test_every_task_builds_quickly(tmp_path):
  import time  # pylint: disable=g-import-not-at-top
  start = time.perf_counter()
  for task in tasks_lib.TASKS.names():
    _, source = _build(tmp_path, task)
    assert len(source["train"]) == NUM_TRAIN
  assert time.perf_counter() - start < 30


def test_no_tensorflow_needed(tmp_path):
  code = (
      "import sys\n"
      "from modular.data.builders.algorithmic import AlgorithmicTasks, make_config\n"
      f"b = AlgorithmicTasks(config=make_config('reverse', num_train=20, num_test=5),"
      f" data_dir={str(tmp_path)!r}, file_format='array_record')\n"
      "b.download_and_prepare()\n"
      "ex = b.as_data_source()['train'][0]\n"
      "assert ex['answer'].tolist() == ex['prompt'][::-1].tolist()\n"
      "assert 'tensorflow' not in sys.modules, 'tensorflow was imported'\n"
  )
  result = subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, cwd=str(_repo_root()), env=_env())
  assert result.returncode == 0, result.stderr[-3000:]


def _repo_root():
  import pathlib  # pylint: disable=g-import-not-at-top
  return pathlib.Path(__file__).resolve().parents[1]


def _env():
  import os  # pylint: disable=g-import-not-at-top
  env = dict(os.environ)
  env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_repo_root()), env.get("PYTHONPATH")]))
  return env
