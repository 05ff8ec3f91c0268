"""The Executor protocol and the local engine (one run after another, in this process).

An executor gets the sweep's unfinished trials at once and runs them its own way:
``LocalExecutor`` one after another here, ``modular.experiments.ray_engine.RayExecutor``
as Ray Tune trials on a cluster. Each finished, failed or stopped trial is handed
to ``on_outcome`` as soon as it ends, so the sweep writes partial results.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Protocol

import ml_collections


@dataclasses.dataclass
class Trial:
  """One run to execute.

  Attributes:
    name: the run's name (its folder name in the sweep).
    cfg: its full, validated config.
    workdir: its run folder; deterministic per point, so running the trial again
      resumes from its newest checkpoint.
  """

  name: str
  cfg: ml_collections.ConfigDict
  workdir: str


@dataclasses.dataclass
class Outcome:
  """How a trial ended.

  Attributes:
    name: the trial's name.
    status: "finished", "failed" (error set) or "stopped" (early-stopped by a
      scheduler such as ASHA; summary holds its last evaluation).
    summary: the loop's summary (``eval`` = {metric: {task: value}}, ``tasks``,
      ``start_step``, ``end_step``, ...) without the state; None if it failed.
    error: one line: the exception type and message.
  """

  name: str
  status: str
  summary: dict[str, Any] | None = None
  error: str | None = None


class Executor(Protocol):
  """Runs a batch of trials; reports each as it ends; returns all outcomes."""

  def run(self, trials: list[Trial], on_outcome: Callable[[Outcome], None]
          ) -> list[Outcome]:
    """Runs ``trials`` (in any order, possibly concurrently).

    Args:
      trials: the trials to run; each resumes from its workdir's checkpoints.
      on_outcome: called in the driver once per trial, as soon as it ends.

    Returns:
      One outcome per trial. A trial that raises is a "failed" outcome; it never
      stops the other trials.
    """
    ...


def error_line(e: BaseException) -> str:
  """``"ValueError: config.x: ..."``: the exception's type and its first line."""
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0] if text else ''}".rstrip(": ")


def train_trial(trial: Trial, on_eval: Callable[[int, dict], None] | None = None
                ) -> dict[str, Any]:
  """Trains (or resumes) one trial here; returns the loop's summary without the state."""
  from modular.train import loop
  summary = loop.train(trial.cfg, trial.workdir, on_eval=on_eval)
  summary.pop("state", None)
  return summary


class LocalExecutor:
  """Runs trials one after another in this process."""

  def run(self, trials: list[Trial], on_outcome: Callable[[Outcome], None]
          ) -> list[Outcome]:
    outcomes = []
    for trial in trials:
      print(f"== run {trial.name}", flush=True)
      try:
        outcome = Outcome(trial.name, "finished", summary=train_trial(trial))
      except Exception as e:  # noqa: BLE001 - reported per trial; the sweep goes on
        outcome = Outcome(trial.name, "failed", error=error_line(e))
        print(f"== run {trial.name} failed: {outcome.error}", flush=True)
      on_outcome(outcome)
      outcomes.append(outcome)
    return outcomes
