"""Each built-in task against an independent pure-Python reference."""

import numpy as np
import pytest

from modular.data import tasks as tasks_lib
from modular.data import vocab

SPEC = tasks_lib.TaskSpec(n_symbols=10, min_len=3, max_len=8)
N_EXAMPLES = 300


def _reference(name, prompt, n):
  """The answer computed from the prompt alone, written without NumPy tricks."""
  p = [int(s) for s in prompt]
  if name == "copy":
    return p
  if name == "reverse":
    return p[::-1]
  if name == "sort":
    return sorted(p)
  if name == "duplicate":
    return [s for s in p for _ in range(2)]
  if name == "shift":
    return [(s + 1) % n for s in p]
  if name == "mod_add":
    assert len(p) % 2 == 0
    half = len(p) // 2
    return [(a + b) % n for a, b in zip(p[:half], p[half:])]
  if name == "parity":
    assert set(p) <= {0, 1}
    return [sum(p) % 2]
  if name == "assoc_recall":
    keys, values, query = p[0:-1:2], p[1:-1:2], p[-1]
    assert len(set(keys)) == len(keys), "keys must be distinct"
    return [dict(zip(keys, values))[query]]
  if name == "induction":
    body, trigger = p[:-1], p[-1]
    where = [i for i, s in enumerate(body) if s == trigger]
    assert len(where) == 1 and where[0] < len(body) - 1, "trigger once, not last"
    return [body[where[0] + 1]]
  if name == "count":
    body, query = p[:-1], p[-1]
    assert query in body
    return [body.count(query)]
  raise AssertionError(f"no reference for {name}")


def _input_length(name, prompt):
  """Length of the drawn input sequence x, recovered from the prompt."""
  if name == "mod_add":
    return len(prompt) // 2
  if name == "assoc_recall":
    return (len(prompt) - 1) // 2
  if name in ("induction", "count"):
    return len(prompt) - 1
  return len(prompt)


def test_registry_has_all_tasks():
  names = tasks_lib.TASKS.names()
  for name in tasks_lib.DEFAULT_TASKS + ("shift", "count"):
    assert name in names
  assert len(tasks_lib.DEFAULT_TASKS) == 8
  with pytest.raises(KeyError, match="unknown task 'nope'"):
    tasks_lib.get_task("nope")


@pytest.mark.parametrize("name", tasks_lib.TASKS.names())
def test_answers_match_reference(name):
  task = tasks_lib.get_task(name)
  rng = np.random.default_rng(123)
  max_prompt, max_answer = task.max_lengths(SPEC)
  lengths = set()
  for _ in range(N_EXAMPLES):
    prompt, answer = task(rng, SPEC)
    assert prompt.dtype == np.int32 and answer.dtype == np.int32
    assert prompt.ndim == answer.ndim == 1
    assert answer.tolist() == _reference(name, prompt, SPEC.n_symbols)
    assert 0 <= prompt.min() and prompt.max() < SPEC.n_symbols
    assert 0 <= answer.min() and answer.max() < SPEC.n_symbols
    assert len(prompt) <= max_prompt and len(answer) <= max_answer
    lengths.add(_input_length(name, prompt))
  # Every input length of [min_len, max_len] occurs (300 draws over 6 lengths).
  assert lengths == set(range(SPEC.min_len, SPEC.max_len + 1))


@pytest.mark.parametrize("name", tasks_lib.TASKS.names())
def test_tasks_are_deterministic(name):
  task = tasks_lib.get_task(name)
  a = [task(np.random.default_rng(7), SPEC) for _ in range(3)]
  b = [task(np.random.default_rng(7), SPEC) for _ in range(3)]
  for (pa, aa), (pb, ab) in zip(a, b):
    np.testing.assert_array_equal(pa, pb)
    np.testing.assert_array_equal(aa, ab)


def test_assoc_recall_caps_pairs_at_alphabet():
  spec = tasks_lib.TaskSpec(n_symbols=4, min_len=6, max_len=8)
  task = tasks_lib.get_task("assoc_recall")
  rng = np.random.default_rng(0)
  for _ in range(50):
    prompt, answer = task(rng, spec)
    assert len(prompt) == 2 * 4 + 1
    assert answer.tolist() == _reference("assoc_recall", prompt, 4)
  assert task.max_lengths(spec) == (9, 1)


def test_default_tasks_fit_default_seq_len():
  # 2 + prompt + answer <= seq_len + 1 with seq_len = 32 for every registered task.
  for name in tasks_lib.TASKS.names():
    p, a = tasks_lib.get_task(name).max_lengths(SPEC)
    assert 2 + p + a <= 33, name
  assert tasks_lib.get_task("duplicate").max_lengths(SPEC) == (8, 16)


def test_vocab_layout():
  assert (vocab.PAD_ID, vocab.SEP_ID, vocab.MAX_TASKS) == (0, 1, 16)
  assert vocab.task_token(0) == 2 and vocab.task_token(15) == 17
  assert vocab.symbol(0) == 18
  assert vocab.vocab_size(10) == 28
  np.testing.assert_array_equal(vocab.symbols_to_tokens(np.array([0, 9]), 10), [18, 27])
  with pytest.raises(ValueError):
    vocab.symbols_to_tokens(np.array([10]), 10)
  with pytest.raises(ValueError):
    vocab.task_token(16)
