"""``AlgorithmicTasks``: a TFDS builder with one config per built-in task.

Every config carries all generation parameters (task, alphabet size, length
range, split sizes, seed) and encodes them in its name, so that two data
configs that differ in any of them get two distinct cached datasets under the
same ``data_dir`` (``BUILDER_CONFIGS`` holds the defaults under the bare task names):

  <data_dir>/algorithmic_tasks/copy-sym10-len3to8-train5000-test256-seed0/1.0.0/

Splits ``train`` and ``test`` come from disjoint seed streams; in addition a
test example is redrawn (up to ``_TEST_RETRIES`` times) while its prompt also
occurs in the train split, so that the test split is held out wherever the
task's example space is large enough (parity over 3-8 bits, for example, has
only 504 prompts and cannot be).

Features: ``prompt`` and ``answer`` (int32, shape ``(None,)``, symbol indices)
and ``task`` (text). Build with ``file_format="array_record"`` and read with
``builder.as_data_source()``: no TensorFlow is needed on either side.

Example:
  builder = AlgorithmicTasks(config=make_config("copy", num_train=1000),
                             data_dir="/tmp/tfds", file_format="array_record")
  builder.download_and_prepare()
  train = builder.as_data_source()["train"]   # train[i] -> {"prompt", "answer", "task"}
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Iterator

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from modular.data import tasks as tasks_lib

_TEST_RETRIES = 10


@dataclasses.dataclass(eq=False, kw_only=True)
class AlgorithmicConfig(tfds.core.BuilderConfig):
  """Generation parameters of one task's dataset (see module docstring).

  Attributes:
    task: registered task name (``modular.data.tasks.TASKS``).
    n_symbols: alphabet size.
    min_len: shortest input sequence.
    max_len: longest input sequence.
    num_train: examples in the train split.
    num_test: examples in the test split.
    seed: generation seed (train and test use derived, disjoint streams).
  """
  task: str = "copy"
  n_symbols: int = 10
  min_len: int = 3
  max_len: int = 8
  num_train: int = 5000
  num_test: int = 256
  seed: int = 0

  @property
  def spec(self) -> tasks_lib.TaskSpec:
    return tasks_lib.TaskSpec(self.n_symbols, self.min_len, self.max_len)


def config_name(task: str, n_symbols: int, min_len: int, max_len: int,
                num_train: int, num_test: int, seed: int) -> str:
  """The config name that encodes all generation parameters."""
  return (f"{task}-sym{n_symbols}-len{min_len}to{max_len}"
          f"-train{num_train}-test{num_test}-seed{seed}")


def make_config(task: str, *, n_symbols: int = 10, min_len: int = 3, max_len: int = 8,
                num_train: int = 5000, num_test: int = 256,
                seed: int = 0) -> AlgorithmicConfig:
  """Builds the config of one task; its name encodes every parameter.

  Args:
    task: registered task name.
    n_symbols: alphabet size.
    min_len: shortest input sequence.
    max_len: longest input sequence.
    num_train: train split size.
    num_test: test split size.
    seed: generation seed.

  Returns:
    An ``AlgorithmicConfig`` to pass as ``AlgorithmicTasks(config=...)``.
  """
  tasks_lib.get_task(task)  # KeyError for unknown names, listing the known ones
  name = config_name(task, n_symbols, min_len, max_len, num_train, num_test, seed)
  return AlgorithmicConfig(
      name=name, description=f"algorithmic task {task!r}", task=task,
      n_symbols=n_symbols, min_len=min_len, max_len=max_len,
      num_train=num_train, num_test=num_test, seed=seed)


def _rng(seed: int, task: str, split: int) -> np.random.Generator:
  """A generator keyed on (seed, task, split); stable across Python runs."""
  return np.random.default_rng([seed, zlib.crc32(task.encode()), split])


def generate_split(config: AlgorithmicConfig, split: str) -> list[tasks_lib.Example]:
  """Generates one split in memory (the builder and the tests share this).

  Args:
    config: the task's generation parameters.
    split: "train" or "test".

  Returns:
    A list of ``(prompt, answer)`` int32 symbol arrays, in generation order.
  """
  task = tasks_lib.get_task(config.task)
  spec = config.spec
  rng = _rng(config.seed, config.task, 0)
  train = [task(rng, spec) for _ in range(config.num_train)]
  if split == "train":
    return train
  if split != "test":
    raise ValueError(f"unknown split {split!r}; expected 'train' or 'test'")
  seen = {p.tobytes() for p, _ in train}
  rng = _rng(config.seed, config.task, 1)
  test = []
  for _ in range(config.num_test):
    for _ in range(_TEST_RETRIES):
      prompt, answer = task(rng, spec)
      if prompt.tobytes() not in seen:
        break
    test.append((prompt, answer))
  return test


class AlgorithmicTasks(tfds.core.GeneratorBasedBuilder):
  """The built-in algorithmic tasks; one ``AlgorithmicConfig`` per task."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  # `tfds.builder("algorithmic_tasks/copy")` gets the defaults; `make_config`
  # names carry the parameters and never clash with these bare task names.
  BUILDER_CONFIGS = [
      AlgorithmicConfig(name=name, description=f"algorithmic task {name!r}", task=name)
      for name in tasks_lib.TASKS.names()
  ]
  # TFDS 4.9.10 resolves `code_path` through `importlib_resources`, a package it
  # only declares for Python < 3.9; pointing at this file skips that lookup.
  code_path = epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="Seeded algorithmic sequence tasks over a symbol alphabet.",
        features=tfds.features.FeaturesDict({
            "prompt": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "answer": tfds.features.Tensor(shape=(None,), dtype=np.int32),
            "task": tfds.features.Text(),
        }),
        supervised_keys=("prompt", "answer"),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download.
    return {"train": self._generate_examples("train"),
            "test": self._generate_examples("test")}

  def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
    config = self.builder_config
    for i, (prompt, answer) in enumerate(generate_split(config, split)):
      yield i, {"prompt": prompt, "answer": answer, "task": config.task}
