"""Clean and corrupted examples, paired position by position, for causal analysis.

Each built-in task declares a corruption rule (``tasks.Task.corrupt``): the same
prompt and answer lengths and a different answer. ``corrupted_pairs`` draws clean
examples of every task that has a rule, corrupts each, and encodes both with the
pipeline's ``encode_example``, so the two batches have the same task tokens, SEP
position and answer mask, and differ in the corrupted symbols and the answer:

  clean["inputs"], corrupt["inputs"]    int32 [N, L]
  clean["targets"], corrupt["targets"]  int32 [N, L] (equal off the changed answer)
  clean["mask"] == corrupt["mask"]      float32 [N, L]
  clean["task_id"] == corrupt["task_id"] int32 [N]

With ``length`` set, every prompt of a task has one length (``min_len = max_len``),
so a position means the same thing in every example of the task (what maps over
positions need).

References:
  Meng et al. 2022, "Locating and Editing Factual Associations in GPT" (clean and
  corrupted runs); Wang et al. 2023, "Interpretability in the Wild" (IOI pairs).
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from modular.data import tasks as tasks_lib
from modular.data.pipeline import encode_example


def has_rule(name: str) -> bool:
  """Whether ``name`` is a built-in task with a declared corruption rule."""
  return name in tasks_lib.TASKS.names() and tasks_lib.get_task(name).corrupt is not None


def corrupted_pairs(task_names: Sequence[str], spec: tasks_lib.TaskSpec, *, seq_len: int,
                    examples_per_task: int, seed: int = 0, prompt_width: int = 0,
                    length: int | None = None, tasks: Sequence[str] | None = None
                    ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """Clean and corrupted pools of examples of every task with a corruption rule.

  Args:
    task_names: the model's tasks in task-id order (``data.task_names(cfg)``).
    spec: the generation parameters (``data.config.task_spec(cfg)``).
    seq_len: the model's L.
    examples_per_task: pairs drawn per task.
    seed: NumPy seed.
    prompt_width: ``config.data.prompt_width`` (left-pads prompts to one width).
    length: fix every input sequence's length to this (None: the spec's range).
    tasks: the tasks to pair (default every task of ``task_names`` with a rule).

  Returns:
    (clean, corrupt) batch dicts of NumPy arrays with N = tasks x examples rows.

  Raises:
    ValueError: for a named task that is not in ``task_names`` or has no rule.
  """
  if length is not None:
    if not spec.min_len <= length <= spec.max_len:
      raise ValueError(f"length: {length} outside the tasks' [{spec.min_len}, "
                       f"{spec.max_len}] (config.data.min_len / max_len)")
    spec = dataclasses.replace(spec, min_len=length, max_len=length)
  names = list(task_names)
  chosen = [n for n in names if has_rule(n)] if tasks is None else list(tasks)
  for n in chosen:
    if n not in names:
      raise ValueError(f"task {n!r} is not one of the model's tasks {names}")
    if not has_rule(n):
      raise ValueError(f"task {n!r} declares no corruption rule (modular.data.tasks)")
  if not chosen:
    raise ValueError(f"none of the tasks {names} declares a corruption rule")
  rng = np.random.default_rng(seed)
  rows: tuple[list, list] = ([], [])
  for name in chosen:
    task, index = tasks_lib.get_task(name), names.index(name)
    for _ in range(examples_per_task):
      prompt, answer = task(rng, spec)
      pair = ((prompt, answer), task.corrupted(rng, spec, prompt, answer))
      for out, (p, a) in zip(rows, pair):
        out.append(encode_example(p, a, index, seq_len=seq_len, n_symbols=spec.n_symbols,
                                  task_name=name, prompt_width=prompt_width))
  clean, corrupt = ({k: np.stack([r[k] for r in out]) for k in out[0]} for out in rows)
  assert np.array_equal(clean["mask"], corrupt["mask"]), "corruption changed the lengths"
  return clean, corrupt
