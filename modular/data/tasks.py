"""Built-in algorithmic sequence tasks.

Each task is a pure, seeded function ``(rng, spec) -> (prompt, answer)`` over
symbol indices in ``[0, spec.n_symbols)`` (``modular.data.vocab`` maps them to
token ids). The tasks share sub-skills on purpose, so that a modular model has
reuse to discover:

  copy          answer = x                          (position-wise read-out)
  reverse       answer = x[::-1]                    (read-out, reversed order)
  sort          answer = sorted(x)                  (counting + read-out)
  duplicate     answer = each symbol twice           (read-out at half speed)
  shift         answer = (x + 1) mod n_symbols       (read-out + successor map)
  mod_add       prompt = a ++ b, answer = (a + b) mod n_symbols, element-wise
                                                    (two read-outs + addition)
  parity        x in {0, 1}^n, answer = [sum(x) mod 2]
  assoc_recall  prompt = k1 v1 .. kn vn q, answer = [v_i where k_i = q]
                                                    (key match + copy next)
  induction     prompt = .. A B .. A, answer = [B]   (match + copy next)
  count         prompt = x ++ [q], answer = [#{i: x_i = q}]

``x`` has a length drawn uniformly from ``[spec.min_len, spec.max_len]``.
``Task.max_lengths(spec)`` gives the longest prompt and answer a task can
produce; the data config uses it to check that every example fits in
``seq_len``: ``2 + len(prompt) + len(answer) <= seq_len + 1``. With the defaults
(``max_len=8``) the longest are duplicate and mod_add (1 + 8 + 1 + 16 = 26 tokens),
which is why the default ``seq_len`` is 32.

Every built-in task also declares a corruption rule (``Task.corrupt``) for causal
analysis: ``(rng, spec, prompt, answer) -> (prompt', answer')`` with the same lengths
and an answer that differs, so a clean and a corrupted example align position by
position (activation patching, ``modular.data.pairs``):

  copy, reverse, sort, duplicate, shift, mod_add   one prompt symbol replaced
  parity        one bit flipped
  assoc_recall  the query swapped for another key (with another value)
  induction     the symbol after the trigger (B) replaced
  count         one more occurrence of the query (one fewer if all are the query)

Adding a task: write a function and decorate it with ``@_task(...)`` (``corrupt=`` its
rule, if it has one).
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from modular.registry import Registry

Example = tuple[np.ndarray, np.ndarray]  # (prompt [P], answer [A]) symbol indices
Corruption = Callable[[np.random.Generator, "TaskSpec", np.ndarray, np.ndarray], Example]


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """Generation parameters shared by all built-in tasks.

  Attributes:
    n_symbols: alphabet size; symbols are ``0..n_symbols-1``.
    min_len: shortest input sequence ``x`` (in symbols, >= 1).
    max_len: longest input sequence ``x``.
  """
  n_symbols: int
  min_len: int
  max_len: int


@dataclasses.dataclass(frozen=True)
class Task:
  """A registered task: its generator and its static properties.

  Attributes:
    name: registry name.
    generate: ``(rng, spec) -> (prompt, answer)`` int32 symbol arrays.
    max_lengths: ``spec -> (longest prompt, longest answer)``.
    min_symbols: ``spec -> smallest n_symbols the task needs``.
    corrupt: ``(rng, spec, prompt, answer) -> (prompt', answer')``, the declared
      corruption (same lengths, another answer), or None.
  """
  name: str
  generate: Callable[[np.random.Generator, TaskSpec], Example]
  max_lengths: Callable[[TaskSpec], tuple[int, int]]
  min_symbols: Callable[[TaskSpec], int]
  corrupt: Corruption | None = None

  def __call__(self, rng: np.random.Generator, spec: TaskSpec) -> Example:
    prompt, answer = self.generate(rng, spec)
    return np.asarray(prompt, np.int32), np.asarray(answer, np.int32)

  def corrupted(self, rng: np.random.Generator, spec: TaskSpec, prompt: np.ndarray,
                answer: np.ndarray) -> Example:
    """The corrupted twin of (prompt, answer): same lengths, a different answer.

    Raises:
      ValueError: if the task declares no corruption rule.
    """
    if self.corrupt is None:
      raise ValueError(f"task {self.name!r} declares no corruption rule (Task.corrupt)")
    p, a = self.corrupt(rng, spec, np.asarray(prompt).copy(), np.asarray(answer).copy())
    return np.asarray(p, np.int32), np.asarray(a, np.int32)


TASKS: Registry[Task] = Registry("task")

# The eight tasks a default data config trains on (shift and count are extra).
DEFAULT_TASKS = ("copy", "reverse", "sort", "duplicate", "mod_add", "parity",
                 "assoc_recall", "induction")

# Sub-skill families shared by design: the analysis tests whether a model's
# similarities are higher within a family than across (``analysis.groups``).
TASK_FAMILIES = {"copy": ("copy", "reverse", "duplicate"),
                 "recall": ("assoc_recall", "induction")}


def _task(name: str,
          max_lengths: Callable[[TaskSpec], tuple[int, int]],
          min_symbols: Callable[[TaskSpec], int] = lambda spec: 1,
          corrupt: Corruption | None = None):
  """Registers ``fn`` as task ``name`` (the registry entry is a ``Task``)."""

  def deco(fn):
    task = Task(name, fn, max_lengths, min_symbols, corrupt)
    TASKS.register(name)(task)
    return fn

  return deco


def get_task(name: str) -> Task:
  """Returns the registered task ``name`` (KeyError listing known names)."""
  return TASKS.get(name)


def _length(rng: np.random.Generator, spec: TaskSpec) -> int:
  return int(rng.integers(spec.min_len, spec.max_len + 1))


def _sequence(rng: np.random.Generator, spec: TaskSpec, n: int | None = None) -> np.ndarray:
  n = _length(rng, spec) if n is None else n
  return rng.integers(0, spec.n_symbols, size=n)  # [n]


def _same_len(spec: TaskSpec) -> tuple[int, int]:
  return spec.max_len, spec.max_len


def _other(rng: np.random.Generator, n_symbols: int, *avoid: int) -> int:
  """A symbol in [0, n_symbols) that is none of ``avoid`` (which must leave one)."""
  choices = np.setdiff1d(np.arange(n_symbols), np.asarray(avoid, np.int64))
  return int(rng.choice(choices))


def _resymbol(answer_of: Callable[[np.ndarray, TaskSpec], np.ndarray],
              positions: Callable[[np.ndarray], int] = len) -> Corruption:
  """Corruption: one of the first ``positions(prompt)`` prompt symbols replaced by
  another symbol, the answer recomputed by ``answer_of(prompt', spec)``."""

  def corrupt(rng, spec, prompt, answer):
    i = int(rng.integers(positions(prompt)))
    prompt[i] = _other(rng, spec.n_symbols, prompt[i])
    return prompt, answer_of(prompt, spec)

  return corrupt


@_task("copy", _same_len, corrupt=_resymbol(lambda x, spec: x.copy()))
def copy(rng: np.random.Generator, spec: TaskSpec) -> Example:
  """Copy: answer equals the prompt."""
  x = _sequence(rng, spec)
  return x, x.copy()


@_task("reverse", _same_len, corrupt=_resymbol(lambda x, spec: x[::-1].copy()))
def reverse(rng: np.random.Generator, spec: TaskSpec) -> Example:
  """Reverse: answer is the prompt read backwards."""
  x = _sequence(rng, spec)
  return x, x[::-1].copy()


@_task("sort", _same_len, corrupt=_resymbol(lambda x, spec: np.sort(x)))
def sort(rng: np.random.Generator, spec: TaskSpec) -> Example:
  """Sort: answer is the prompt in ascending order."""
  x = _sequence(rng, spec)
  return x, np.sort(x)


@_task("duplicate", lambda s: (s.max_len, 2 * s.max_len),
       corrupt=_resymbol(lambda x, spec: np.repeat(x, 2)))
def duplicate(rng: np.random.Generator, spec: TaskSpec) -> Example:
  """Duplicate: each symbol twice, ``abc -> aabbcc``."""
  x = _sequence(rng, spec)
  return x, np.repeat(x, 2)


@_task("shift", _same_len, corrupt=_resymbol(lambda x, spec: (x + 1) % spec.n_symbols))
def shift(rng: np.random.Generator, spec: TaskSpec) -> Example:
  """Shift: each symbol replaced by its successor modulo n_symbols."""
  x = _sequence(rng, spec)
  return x, (x + 1) % spec.n_symbols


def _mod_add_answer(x: np.ndarray, spec: TaskSpec) -> np.ndarray:
  n = len(x) // 2
  return (x[:n] + x[n:]) % spec.n_symbols


@_task("mod_add", lambda s: (2 * s.max_len, s.max_len),
       corrupt=_resymbol(_mod_add_answer, positions=lambda x: len(x) // 2))
def mod_add(rng: np.random.Generator, spec: TaskSpec) -> Example:
  """Element-wise addition modulo n_symbols.

  The prompt is ``a ++ b`` with ``len(a) == len(b) == n``, so the split point is
  the middle of the prompt; the answer is ``(a + b) mod n_symbols`` ([n]).
  """
  n = _length(rng, spec)
  a, b = _sequence(rng, spec, n), _sequence(rng, spec, n)
  return np.concatenate([a, b]), (a + b) % spec.n_symbols


def _flip_bit(rng, spec, prompt, answer):
  """Parity's corruption: one bit flipped (the answer flips)."""
  i = int(rng.integers(len(prompt)))
  prompt[i] = 1 - prompt[i]
  return prompt, np.array([prompt.sum() % 2])


@_task("parity", lambda s: (s.max_len, 1), lambda s: 2, corrupt=_flip_bit)
def parity(rng: np.random.Generator, spec: TaskSpec) -> Example:
  """Parity of a bit string written with symbols 0 and 1; answer one symbol."""
  x = rng.integers(0, 2, size=_length(rng, spec))
  return x, np.array([x.sum() % 2])


def _swap_query(rng, spec, prompt, answer):
  """assoc_recall's corruption: the query swapped for another key whose value
  differs from the answer; when every value is the answer (or there is one pair),
  the queried pair's value is replaced instead."""
  keys, values = prompt[:-1:2], prompt[1:-1:2]
  other = np.flatnonzero(values != answer[0])
  if other.size:
    j = int(rng.choice(other))
    prompt[-1] = keys[j]
    return prompt, values[j:j + 1].copy()
  q = int(np.flatnonzero(keys == prompt[-1])[0])
  prompt[2 * q + 1] = _other(rng, spec.n_symbols, answer[0])
  return prompt, prompt[2 * q + 1:2 * q + 2].copy()


@_task("assoc_recall", lambda s: (2 * min(s.max_len, s.n_symbols) + 1, 1),
       corrupt=_swap_query)
def assoc_recall(rng: np.random.Generator, spec: TaskSpec) -> Example:
  """Associative recall: ``k1 v1 .. kn vn q -> v`` with distinct keys.

  The number of pairs is drawn from ``[min_len, max_len]`` and capped at
  ``n_symbols`` (keys are distinct); the query is one of the keys.
  """
  n = min(_length(rng, spec), spec.n_symbols)
  keys = rng.permutation(spec.n_symbols)[:n]
  values = rng.integers(0, spec.n_symbols, size=n)
  q = int(rng.integers(n))
  pairs = np.stack([keys, values], axis=1).reshape(-1)  # [2n]
  return np.concatenate([pairs, keys[q:q + 1]]), values[q:q + 1]


def _replace_successor(rng, spec, prompt, answer):
  """induction's corruption: B, the symbol after the trigger A, replaced by a symbol
  that is neither A nor B (needs n_symbols >= 3)."""
  if spec.n_symbols < 3:
    raise ValueError(f"task 'induction': its corruption needs n_symbols >= 3 "
                     f"(config.data.n_symbols = {spec.n_symbols})")
  a = prompt[-1]
  i = int(np.flatnonzero(prompt[:-1] == a)[0])
  prompt[i + 1] = _other(rng, spec.n_symbols, a, answer[0])
  return prompt, prompt[i + 1:i + 2].copy()


@_task("induction", lambda s: (max(s.max_len, 2) + 1, 1), lambda s: 2,
       corrupt=_replace_successor)
def induction(rng: np.random.Generator, spec: TaskSpec) -> Example:
  """Induction head: ``.. A B .. A -> B``.

  A body of ``max(n, 2)`` symbols holds the trigger ``A`` exactly once, at a
  position followed by ``B != A``; the prompt is the body then ``A``, so the
  answer ``B`` is unique.
  """
  n = max(_length(rng, spec), 2)
  a = int(rng.integers(spec.n_symbols))
  others = np.delete(np.arange(spec.n_symbols), a)  # every symbol but A
  body = rng.choice(others, size=n)
  i = int(rng.integers(n - 1))
  body[i] = a
  return np.concatenate([body, [a]]), body[i + 1:i + 2].copy()


def _recount(rng, spec, prompt, answer):
  """count's corruption: one more symbol of x set to the query q (count + 1), or,
  when every symbol already is q, one set to another symbol (count - 1)."""
  x, q = prompt[:-1], prompt[-1]
  others = np.flatnonzero(x != q)
  if others.size:
    x[int(rng.choice(others))] = q
  else:
    x[int(rng.integers(len(x)))] = _other(rng, spec.n_symbols, q)
  return prompt, np.array([np.sum(x == q)])


@_task("count", lambda s: (s.max_len + 1, 1), lambda s: s.max_len + 1, corrupt=_recount)
def count(rng: np.random.Generator, spec: TaskSpec) -> Example:
  """Count: ``x ++ [q] -> [#{i: x_i = q}]`` with ``q`` drawn from ``x``.

  Needs ``n_symbols > max_len`` so that every count is a symbol.
  """
  x = _sequence(rng, spec)
  q = x[rng.integers(len(x))]
  return np.concatenate([x, [q]]), np.array([np.sum(x == q)])
