"""A run's JSON logs across resumes: no duplicate steps, strict JSON, a kept summary.

A run killed after step S's log line but before its next checkpoint resumes from an
earlier step C < S and logs S again. ``truncate_after(workdir, C)`` drops the records
of ``telemetry.jsonl`` and ``eval.jsonl`` past C (and a half-written last line) when
the resume starts, so every step appears once. ``prime`` hands the metrics writer what
was logged up to C, and ``write_summary`` keeps a finished run's timings when it is
launched again (it trains nothing; its final evaluation is reused or recomputed).

Records are strict JSON: NaN and inf are written as null (``strict``).
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

LOGS = ("telemetry.jsonl", "eval.jsonl")


def strict(value: Any) -> Any:
  """``value`` with every non-finite float replaced by None (JSON null), recursively."""
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, dict):
    return {k: strict(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [strict(v) for v in value]
  return value


def dumps(record: dict) -> str:
  """One strict-JSON line (``allow_nan=False`` guards against a missed NaN)."""
  return json.dumps(strict(record), allow_nan=False)


def read_records(path: str) -> list[dict]:
  """The parseable records of a JSON-lines file (a torn last line is skipped)."""
  if not os.path.exists(path):
    return []
  out = []
  with open(path) as f:
    for line in f:
      try:
        out.append(json.loads(line))
      except json.JSONDecodeError:
        continue
  return out


def truncate_after(workdir: str, step: int) -> None:
  """Rewrites the logs of ``workdir`` without records past ``step`` (atomically)."""
  for name in LOGS:
    path = os.path.join(workdir, name)
    if not os.path.exists(path):
      continue
    with open(path) as f:
      lines = f.readlines()
    records = read_records(path)
    kept = [r for r in records if r.get("step", 0) <= step]
    if len(kept) == len(lines):
      continue
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
      f.writelines(dumps(r) + "\n" for r in kept)
    os.replace(tmp, path)


def prime(writer: Any, workdir: str, step: int) -> None:
  """Sets ``writer.last_train``/``last_eval`` from the logs at ``step`` (on a resume).

  ``last_eval`` is set only from an evaluation at exactly ``step`` (else a re-launched
  finished run evaluates its final checkpoint).
  """
  if step <= 0:
    return
  evals = [r for r in read_records(os.path.join(workdir, "eval.jsonl")) if r["step"] == step]
  if evals:
    writer.last_eval = evals[-1]["eval"]
  train = [r for r in read_records(os.path.join(workdir, "telemetry.jsonl"))
           if r["step"] <= step]
  if train:
    last = train[-1]
    writer.last_train = {f"task/{k}": np.array([np.nan if x is None else x for x in v], float)
                         for k, v in last["train"].items()}


def write_summary(workdir: str, summary: dict, trained: bool) -> dict:
  """Writes ``workdir/summary.json`` atomically; returns what was written.

  Args:
    workdir: the run folder.
    summary: this launch's summary (JSON-able).
    trained: False when this launch took no step: the earlier summary's timings
      (steps/s, compile time, skipped steps) are kept.
  """
  path = os.path.join(workdir, "summary.json")
  if not trained and os.path.exists(path):
    with open(path) as f:
      previous = json.load(f)
    for key in ("steps_per_s", "compile_s", "nonfinite_steps"):
      if key in previous:
        summary[key] = previous[key]
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(json.dumps(strict(summary), indent=2, allow_nan=False))
  os.replace(tmp, path)
  return summary
