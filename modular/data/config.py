"""The data config: defaults, parsing of loose fields, validation.

Fields (``default_data_config()``):
  data_dir     ""  -> ~/.cache/modular/tfds; where TFDS datasets are prepared
  tasks        the 8 default built-ins; a list/tuple or a "copy,reverse" string
  n_symbols    10   alphabet size (vocab = 2 + MAX_TASKS + n_symbols)
  min_len      3    shortest input sequence of a built-in task
  max_len      8    longest input sequence of a built-in task
  seq_len      32   model sequence length L (the longest default example needs 25)
  prompt_width 0    0: the prompt follows the task token; > 0: prompts are
                    left-padded with PAD to this width so SEP (and the answer)
                    start at the same position in every example; -1: the
                    longest prompt of the built-in tasks (position-aligned answers
                    make copy/reverse-like tasks much faster to learn)
  num_train    5000 train examples per built-in task
  num_train_by_task  ""  per-task exceptions to num_train: "copy:4000,sort:500"
                    (tasks of different sizes, so the sampling choice matters)
  num_eval     256  held-out ('test' split) examples per task for evaluation
  val_share    0.0  share of every task's train split carved into a validation
                    split (``modular.data.splits``: by synset for WordNet); > 0:
                    periodic evaluation is on the whole validation split, the run
                    keeps its validation-best checkpoint and measures the test split
                    (num_eval examples per task) once with it (``train.select_metric``)
  sampling     "proportional" | "uniform" | "temperature" | "explicit"
  temperature  2.0  p_t proportional to n_t ** (1 / temperature)
  weights      ""   per-task weights for sampling="explicit": "copy:2,sort:1",
                    a dict name -> weight, or a list aligned with task_names
  batching     "mixed" (examples drawn from the mixture) | "homogeneous"
                    (each batch from one task drawn by the rates)
  seed         0    shuffling and mixture sampling
  data_seed    0    generation of the built-in datasets (kept apart from
                    ``seed`` so that training seeds share one dataset)
  external     []   external TFDS tasks, see ``modular.data.external``
  wordnet      []   WordNet classification tasks (``modular.data.classification``);
                    they cannot share a run with the next-token tasks above
  tokenizer    ""   checkpoint name or folder whose tokenizer encodes text tasks
                    ("": config.model.pretrained's, filled by ``fill_derived``;
                    all-MiniLM-L6-v2's where no model config is at hand)

The ConfigDict is not type-safe (``type_safe=False``) so that ``tasks`` and
``weights`` can be overridden with strings from the command line;
``validate_data_config`` checks every type instead.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import ml_collections
import numpy as np

from modular.data import classification as classification_lib
from modular.data import external as external_lib
from modular.data import tasks as tasks_lib
from modular.data import vocab

SAMPLINGS = ("proportional", "uniform", "temperature", "explicit")
BATCHINGS = ("mixed", "homogeneous")
DEFAULT_DATA_DIR = "~/.cache/modular/tfds"


def default_data_config() -> ml_collections.ConfigDict:
  """Returns the data config with its defaults (see module docstring)."""
  return ml_collections.ConfigDict(dict(
      data_dir="",
      tasks=list(tasks_lib.DEFAULT_TASKS),
      n_symbols=10,
      min_len=3,
      max_len=8,
      seq_len=32,
      prompt_width=0,
      num_train=5000,
      num_train_by_task="",
      num_eval=256,
      val_share=0.0,
      sampling="proportional",
      temperature=2.0,
      weights="",
      batching="mixed",
      seed=0,
      data_seed=0,
      external=[],
      wordnet=[],
      tokenizer="",
  ), type_safe=False)


def _error(key: str, message: str) -> ValueError:
  return ValueError(f"config.data.{key}: {message}")


def builtin_task_names(cfg: Any) -> list[str]:
  """The built-in task names of ``cfg.tasks`` (list, tuple or comma string)."""
  tasks = cfg.tasks
  if isinstance(tasks, str):
    return [t.strip() for t in tasks.split(",") if t.strip()]
  if isinstance(tasks, (list, tuple)) and all(isinstance(t, str) for t in tasks):
    return list(tasks)
  raise _error("tasks", f"expected a list of names or a comma-separated string, got {tasks!r}")


def external_tasks(cfg: Any) -> list[external_lib.ExternalTask]:
  """The parsed ``cfg.external`` entries."""
  entries = cfg.external
  if entries is None:
    return []
  if not isinstance(entries, (list, tuple)):
    raise _error("external", f"expected a list of dicts, got {type(entries).__name__}")
  return [external_lib.parse_external(e, i) for i, e in enumerate(entries)]


def task_names(cfg: Any) -> list[str]:
  """All task names in task-id order: built-ins, external tasks, WordNet tasks."""
  return (builtin_task_names(cfg) + [t.name for t in external_tasks(cfg)]
          + classification_lib.wordnet_task_names(cfg))


def vocab_size(cfg: Any) -> int:
  """Vocabulary size: the tokenizer's for text tasks, else from ``n_symbols`` alone."""
  if classification_lib.is_classification(cfg):
    return classification_lib.vocab_size(cfg)
  return vocab.vocab_size(cfg.n_symbols)


def data_dir(cfg: Any) -> str:
  """The TFDS data directory, with the default and ``~`` resolved."""
  return os.path.expanduser(cfg.data_dir or DEFAULT_DATA_DIR)


def task_spec(cfg: Any) -> tasks_lib.TaskSpec:
  """Generation parameters of the built-in tasks."""
  return tasks_lib.TaskSpec(cfg.n_symbols, cfg.min_len, cfg.max_len)


def parse_weights(cfg: Any) -> np.ndarray:
  """Explicit per-task weights aligned with ``task_names(cfg)``.

  Args:
    cfg: the data config; ``cfg.weights`` is "name:w,name:w", a mapping
      name -> weight (tasks left out get 0), or a list aligned with the tasks.

  Returns:
    float64 weights [T], not normalized.
  """
  names = task_names(cfg)
  weights = cfg.weights
  weights = weights.to_dict() if hasattr(weights, "to_dict") else weights
  if isinstance(weights, str):
    pairs = [item.split(":") for item in weights.split(",") if item.strip()]
    if any(len(p) != 2 for p in pairs):
      raise _error("weights", f"expected 'task:weight,...', got {weights!r}")
    try:
      weights = {name.strip(): float(w) for name, w in pairs}
    except ValueError as e:
      raise _error("weights", f"bad number in {cfg.weights!r}") from e
  if isinstance(weights, Mapping):
    unknown = set(weights) - set(names)
    if unknown:
      raise _error("weights", f"unknown tasks {sorted(unknown)}; tasks: {names}")
    out = np.array([float(weights.get(n, 0.0)) for n in names])
  elif isinstance(weights, (list, tuple)) and len(weights) == len(names):
    out = np.asarray(weights, dtype=np.float64)
  else:
    raise _error("weights", f"expected one weight per task {names}, got {cfg.weights!r}")
  if np.any(out < 0) or not np.isfinite(out).all() or out.sum() <= 0:
    raise _error("weights", f"need finite weights >= 0 with a positive sum, got {out.tolist()}")
  return out


def builtin_num_train(cfg: Any) -> dict[str, int]:
  """Train examples of every built-in task: ``num_train`` unless ``num_train_by_task`` says.

  Raises:
    ValueError: ``config.data.num_train_by_task`` malformed, naming a task that is not a
      built-in task of the config, or a size < 1.
  """
  names = builtin_task_names(cfg)
  out = {name: int(cfg.num_train) for name in names}
  text = cfg.get("num_train_by_task", "") or ""
  if not isinstance(text, str):
    raise _error("num_train_by_task", f"expected 'task:n,...', got {text!r}")
  for item in [i for i in text.split(",") if i.strip()]:
    name, _, n = item.partition(":")
    name = name.strip()
    if name not in out:
      raise _error("num_train_by_task", f"{name!r} is not a built-in task of {names}")
    try:
      out[name] = int(n)
    except ValueError:
      raise _error("num_train_by_task", f"expected 'task:n,...', got {text!r}") from None
    if out[name] < 1:
      raise _error("num_train_by_task", f"{name}: expected an int >= 1, got {out[name]}")
  return out


def _check_int(cfg: Any, key: str, low: int) -> None:
  value = cfg[key]
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
    raise _error(key, f"expected an int >= {low}, got {value!r}")


def prompt_width(cfg: Any) -> int:
  """The prompt field's width: 0 (no alignment), or the resolved width for -1."""
  if cfg.prompt_width != -1:
    return int(cfg.prompt_width)
  spec = task_spec(cfg)
  return max(tasks_lib.get_task(n).max_lengths(spec)[0] for n in builtin_task_names(cfg))


def validate_data_config(cfg: Any) -> None:
  """Checks a data config; every error names the offending key.

  Args:
    cfg: a ConfigDict (or any object with the fields of ``default_data_config``).

  Raises:
    ValueError: unknown or missing key, unknown task, bad sampling/batching,
      an alphabet too small for a task, or a ``seq_len`` too short for the
      longest example of a task (naming the task and the lengths).
  """
  expected = set(default_data_config().keys())
  present = set(cfg.keys())
  for key in sorted(present - expected):
    raise _error(key, f"unknown key; known keys: {sorted(expected)}")
  for key in sorted(expected - present):
    raise _error(key, "missing")

  for key, low in (("n_symbols", 2), ("min_len", 1), ("max_len", 1), ("seq_len", 2),
                   ("num_train", 1), ("num_eval", 1), ("seed", 0), ("data_seed", 0)):
    _check_int(cfg, key, low)
  share = cfg.val_share
  if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share <= 0.5:
    raise _error("val_share", f"expected a number in [0, 0.5], got {share!r}")
  if cfg.max_len < cfg.min_len:
    raise _error("max_len", f"max_len={cfg.max_len} < min_len={cfg.min_len}")
  if not isinstance(cfg.data_dir, str):
    raise _error("data_dir", f"expected a string, got {cfg.data_dir!r}")

  known = tasks_lib.TASKS.names()
  builtins = builtin_task_names(cfg)
  for name in builtins:
    if name not in known:
      raise _error("tasks", f"unknown task {name!r}; known: {', '.join(known)}")
  builtin_num_train(cfg)
  externals = external_tasks(cfg)
  names = builtins + [t.name for t in externals]
  classification_lib.validate(cfg, names)
  names += classification_lib.wordnet_task_names(cfg)
  if not names:
    raise _error("tasks", "no tasks: list built-in tasks or add external ones")
  if len(set(names)) != len(names):
    duplicates = sorted({n for n in names if names.count(n) > 1})
    key = "tasks" if len(set(builtins)) != len(builtins) else "external"
    raise _error(key, f"task names must be unique; repeated: {duplicates}")
  if len(names) > vocab.MAX_TASKS:
    raise _error("tasks", f"{len(names)} tasks exceed MAX_TASKS={vocab.MAX_TASKS}")

  spec = task_spec(cfg)
  if isinstance(cfg.prompt_width, bool) or not isinstance(cfg.prompt_width, int) \
      or cfg.prompt_width < -1:
    raise _error("prompt_width", f"expected an int >= -1, got {cfg.prompt_width!r}")
  width = prompt_width(cfg)
  for name in builtins:
    task = tasks_lib.get_task(name)
    need = task.min_symbols(spec)
    if cfg.n_symbols < need:
      raise _error("n_symbols", f"task {name!r} needs n_symbols >= {need} "
                   f"(max_len={cfg.max_len}), got {cfg.n_symbols}")
    prompt_len, answer_len = task.max_lengths(spec)
    if width and prompt_len > width:
      raise _error("prompt_width", f"task {name!r} has prompts of up to {prompt_len} "
                   f"symbols, more than prompt_width={width}")
    prompt_len = max(prompt_len, width)
    if 2 + prompt_len + answer_len > cfg.seq_len + 1:
      raise _error("seq_len", (
          f"seq_len={cfg.seq_len} is too short for task {name!r}: its longest example "
          f"has a prompt of {prompt_len} and an answer of {answer_len} symbols, so "
          f"task token + prompt + SEP + answer = {2 + prompt_len + answer_len} tokens "
          f"needs seq_len >= {1 + prompt_len + answer_len}"))

  if cfg.sampling not in SAMPLINGS:
    raise _error("sampling", f"unknown sampling {cfg.sampling!r}; known: {SAMPLINGS}")
  temperature = cfg.temperature
  if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or temperature <= 0:
    raise _error("temperature", f"expected a number > 0, got {temperature!r}")
  if cfg.sampling == "explicit":
    parse_weights(cfg)
  if cfg.batching not in BATCHINGS:
    raise _error("batching", f"unknown batching {cfg.batching!r}; known: {BATCHINGS}")
