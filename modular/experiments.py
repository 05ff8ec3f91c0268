"""Ablation sweeps declared next to their config (big_vision's ``get_hyper`` style).

An experiment file defines ``get_config(arg=None)`` and ``get_hyper(hyper)``; the
latter returns a list of override dicts built from the axes below:

  def get_hyper(h):
    return h.product([
        h.sweep("config.data.sampling", ["uniform", "proportional"]),
        h.sweep("config.train.seed", [0, 1]),
    ])

``run_sweep`` runs one configuration after another through an ``Executor`` (local
now; a cluster executor only needs ``submit``/``results``) and collects each run's
final per-task evaluation into ``results.csv`` and ``results.md``.
"""

from __future__ import annotations

import csv
import itertools
import os
import re
from typing import Any, Protocol

import ml_collections

from modular.overrides import apply_override, load_config_file


class hyper:  # noqa: N801 - used as a namespace, like big_vision's
  """Sweep axes: each returns a list of {key: value} dicts."""

  @staticmethod
  def sweep(key: str, values: list[Any]) -> list[dict[str, Any]]:
    return [{key: v} for v in values]

  @staticmethod
  def fixed(key: str, value: Any) -> list[dict[str, Any]]:
    return [{key: value}]

  @staticmethod
  def product(axes: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    out = []
    for combo in itertools.product(*axes):
      merged: dict[str, Any] = {}
      for d in combo:
        merged.update(d)
      out.append(merged)
    return out

  @staticmethod
  def chain(*lists: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for lst in lists for d in lst]


def run_name(overrides: dict[str, Any]) -> str:
  """A folder name from the overrides: "sampling=uniform,seed=0"."""
  parts = [f"{k.split('.')[-1]}={v}" for k, v in overrides.items()]
  name = ",".join(parts) or "base"
  return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", name)


class Executor(Protocol):
  """Runs one configuration; a cluster executor submits and collects instead."""

  def run(self, name: str, cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    ...


class LocalExecutor:
  """Runs configurations one after another in this process."""

  def run(self, name: str, cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    from modular.train import loop
    summary = loop.train(cfg, workdir)
    summary.pop("state", None)
    return summary


def expand(experiment: str, arg: str | None = None,
           overrides: dict[str, str] | None = None
           ) -> list[tuple[str, ml_collections.ConfigDict, dict[str, Any]]]:
  """The sweep's runs: (name, config, the sweep's overrides) for each point."""
  base = load_config_file(experiment, arg)
  for k, v in (overrides or {}).items():
    apply_override(base, k, v)
  spec = _load_module(experiment)
  if not hasattr(spec, "get_hyper"):
    raise ValueError(f"{experiment} defines no get_hyper(hyper)")
  runs = []
  for point in spec.get_hyper(hyper):
    cfg = ml_collections.ConfigDict(base.to_dict())
    for key, value in point.items():
      if not key.startswith("config."):
        raise ValueError(f"sweep key {key!r} must start with 'config.'")
      apply_override(cfg, key[len("config."):], value)
    runs.append((run_name(point), cfg, point))
  return runs


def _load_module(path: str):
  import importlib.util
  path = path.split(":")[0]
  spec = importlib.util.spec_from_file_location("modular_experiment", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def results_table(rows: list[dict[str, Any]], tasks: list[str]) -> tuple[list[str], list[list]]:
  """Header and rows: run, swept values, per-task eval accuracy, seq accuracy, loss."""
  keys = sorted({k for r in rows for k in r["point"]})
  header = ["run"] + [k.split(".")[-1] for k in keys]
  for metric in ("accuracy", "seq_accuracy", "loss"):
    header += [f"{metric}/{t}" for t in tasks] + [f"{metric}/mean"]
  table = []
  for r in rows:
    line = [r["name"]] + [r["point"].get(k, "") for k in keys]
    for metric in ("accuracy", "seq_accuracy", "loss"):
      vals = [r["eval"].get(metric, {}).get(t, float("nan")) for t in tasks]
      line += [round(v, 4) for v in vals] + [round(sum(vals) / max(len(vals), 1), 4)]
    table.append(line)
  return header, table


def run_sweep(experiment: str, workdir: str, *, arg: str | None = None,
              overrides: dict[str, str] | None = None,
              executor: Executor | None = None) -> str:
  """Runs every point of the experiment's sweep and writes the results table.

  Args:
    experiment: path of the experiment file (get_config + get_hyper).
    workdir: the sweep folder; each run gets ``workdir/<run name>``.
    arg: argument for ``get_config``.
    overrides: ``{"train.steps": "100"}`` applied to every run.
    executor: how runs are executed (default: locally, one after another).

  Returns:
    The Markdown table (also written to ``results.md``; ``results.csv`` beside it).
  """
  executor = executor or LocalExecutor()
  runs = expand(experiment, arg, overrides)
  rows = []
  for name, cfg, point in runs:
    print(f"== run {name}", flush=True)
    summary = executor.run(name, cfg, os.path.join(workdir, name))
    rows.append({"name": name, "point": point, "eval": summary["eval"],
                 "tasks": summary["tasks"]})
  tasks = rows[0]["tasks"] if rows else []
  header, table = results_table(rows, tasks)
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "results.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(header)
    w.writerows(table)
  md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  md += ["| " + " | ".join(str(x) for x in line) + " |" for line in table]
  text = "\n".join(md)
  with open(os.path.join(workdir, "results.md"), "w") as f:
    f.write(text + "\n")
  return text
