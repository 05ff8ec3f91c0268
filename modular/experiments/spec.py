"""An experiment file's points: ``get_hyper`` axes, single-task baselines, validation.

Every point is expanded and validated before any run starts, so a bad tenth point
stops the sweep with one line naming it instead of after nine runs. Against an
existing sweep folder, ``check_saved_configs`` also compares each point with the
config saved in its run folder (the trainer's resume check), so a sweep rerun with
another ``--arg`` or ``--config.x`` stops before it changes anything.
"""

from __future__ import annotations

import importlib.util
import inspect
import itertools
import os
import re
from typing import Any, NamedTuple

import ml_collections

from modular import config as config_lib
from modular import data as data_lib
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

  @staticmethod
  def seeds(points: list[dict[str, Any]], seeds: list[int]) -> list[dict[str, Any]]:
    """Every point once per seed: the sweep's seed axis, aggregated in ``results.md``.

    A seed sets ``config.train.seed`` (initialization, dropout) and ``config.data.seed``
    (shuffling and mixture sampling); the validation split does not move with it
    (``modular.data.splits``). A named point's name gets ``,seed=<s>``; the point
    without it is the row that ``results.md`` aggregates the seeds into.
    """
    out = []
    for point in points:
      for seed in seeds:
        q = {**point, SEED_KEY: seed, DATA_SEED_KEY: seed}
        if NAME_KEY in point:
          q[NAME_KEY] = f"{point[NAME_KEY]},seed={seed}"
        out.append(q)
    return out

  @staticmethod
  def named(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """One point that sets several keys under a short name (its folder and table row).

    Its table columns are the name and the scalar-valued keys; structured values
    (module dicts, frozen-path lists) are in the run's ``config.json``.
    """
    return {NAME_KEY: name, **overrides}


class Point(NamedTuple):
  """One run of a sweep.

  Attributes:
    name: its folder name under the sweep folder (unique within the sweep).
    cfg: its full config (validated).
    overrides: the sweep's ``{"config.<key>": value}`` for it (for a ``hyper.named``
      point: its name and scalar-valued keys, the table's columns).
  Properties ``group`` (the name without its seed: the row its seeds are aggregated
  into) and ``seed`` (the swept ``config.train.seed``, None without a seed axis).
  """

  name: str
  cfg: ml_collections.ConfigDict
  overrides: dict[str, Any]

  @property
  def seed(self) -> int | None:
    return self.overrides.get(SEED_KEY)

  @property
  def group(self) -> str:
    return re.sub(r"(^|,)seed=[^,]*", "", self.name).strip(",") or "base"


BASELINE_PREFIX = "single-"
# A point's optional short name (folder and table row): {"name": "lora", "config.x": ...}.
NAME_KEY = "name"
SEED_KEY = "config.train.seed"  # the seed axis (hyper.seeds)
DATA_SEED_KEY = "config.data.seed"


def run_name(overrides: dict[str, Any]) -> str:
  """A folder name from the overrides: "sampling=uniform,seed=0" (lists joined by '+')."""
  def text(v: Any) -> str:
    return "+".join(str(x) for x in v) if isinstance(v, (list, tuple)) else str(v)
  parts = [f"{k.split('.')[-1]}={text(v)}" for k, v in overrides.items()
           if not (k == DATA_SEED_KEY and overrides.get(SEED_KEY) == v)]  # hyper.seeds
  name = ",".join(parts) or "base"
  return re.sub(r"[^A-Za-z0-9_.,=+-]", "_", name)


def load_experiment(path: str):
  """Imports an experiment file (``path`` or ``path:arg``)."""
  path = path.split(":")[0]
  spec = importlib.util.spec_from_file_location("modular_experiment", path)
  if spec is None:
    raise ValueError(f"--experiment: cannot import {path}")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def _points(experiment: str, base: ml_collections.ConfigDict, raw: list[dict[str, Any]],
            source: str, prefix: str) -> list[Point]:
  points = []
  for i, overrides in enumerate(raw):
    overrides = dict(overrides)
    label = overrides.pop(NAME_KEY, None)  # a point that sets many keys names itself
    name = prefix + (re.sub(r"[^A-Za-z0-9_.,=+-]", "_", str(label)) if label is not None
                     else run_name(overrides))
    shown = overrides if label is None else {NAME_KEY: label, **{
        k: v for k, v in overrides.items() if isinstance(v, (str, int, float, bool))}}
    where = f"{experiment}: {source} point {i} ({name})"
    cfg = ml_collections.ConfigDict(base.to_dict())
    try:
      for key, value in overrides.items():
        if not key.startswith("config."):
          raise ValueError(f"sweep key {key!r} must start with 'config.'")
        apply_override(cfg, key[len("config."):], value)
      config_lib.validate(cfg)
    except ValueError as e:
      raise ValueError(f"{where}: {e}") from None
    points.append(Point(name, cfg, shown))
  return points


def expand(experiment: str, arg: str | None = None,
           overrides: dict[str, str] | None = None) -> list[Point]:
  """The sweep's points from ``get_hyper``, each validated.

  Args:
    experiment: path of the experiment file (``get_config`` + ``get_hyper``).
    arg: argument for ``get_config``.
    overrides: ``{"train.steps": "100"}`` applied to every point first.

  Returns:
    One ``Point`` per entry of ``get_hyper(hyper)``, in order.

  Raises:
    ValueError: one line naming the experiment, the point and the bad key, before
      anything runs; also for two points with the same folder name.
  """
  base = load_config_file(experiment, arg, flag="--experiment")
  for k, v in (overrides or {}).items():
    apply_override(base, k, v)
  module = load_experiment(experiment)
  if not hasattr(module, "get_hyper"):
    raise ValueError(f"{experiment} defines no get_hyper(hyper)")
  points = _points(experiment, base, _declared(module.get_hyper, arg), "get_hyper", "")
  _check_unique(experiment, points)
  return points


def expand_baselines(experiment: str, arg: str | None = None,
                     overrides: dict[str, str] | None = None) -> list[Point]:
  """The single-task baselines an experiment declares with ``get_baselines(hyper)``.

  Each returned point must train exactly one task (``config.data.tasks`` of length
  1); its folder is ``single-<name>``. An experiment without ``get_baselines`` has none.

  Raises:
    ValueError: naming the point if it does not train exactly one task.
  """
  module = load_experiment(experiment)
  if not hasattr(module, "get_baselines"):
    return []
  base = load_config_file(experiment, arg, flag="--experiment")
  for k, v in (overrides or {}).items():
    apply_override(base, k, v)
  points = _points(experiment, base, _declared(module.get_baselines, arg), "get_baselines",
                   BASELINE_PREFIX)
  for p in points:
    tasks = data_lib.task_names(p.cfg.data)
    if len(tasks) != 1:
      raise ValueError(f"{experiment}: get_baselines point {p.name}: config.data.tasks: "
                       f"a single-task baseline trains one task, not {len(tasks)} ({tasks})")
  _check_unique(experiment, points)
  return points


def _declared(fn, arg: str | None) -> list[dict[str, Any]]:
  """``fn(hyper)``, or ``fn(hyper, arg)`` for a ``get_hyper(h, arg)`` that takes the argument."""
  if len(inspect.signature(fn).parameters) >= 2:
    return fn(hyper, arg)
  return fn(hyper)


def _check_unique(experiment: str, points: list[Point]) -> None:
  seen: dict[str, int] = {}
  for i, p in enumerate(points):
    if p.name in seen:
      raise ValueError(f"{experiment}: points {seen[p.name]} and {i} share the folder name "
                       f"{p.name!r}: give them different swept values")
    seen[p.name] = i


def check_saved_configs(points: list[Point], workdir: str) -> None:
  """Checks every point whose run folder has a ``config.json`` against that config.

  The check is the trainer's own (``resume.check_same_run`` on the config with its
  derived sizes filled, as ``loop.train`` compares it), done for all points before
  any run starts: a sweep folder made with another experiment argument would
  otherwise fail every run and rewrite the results table as rows of "failed".
  Finished runs are checked too. Nothing is written.

  Args:
    points: the sweep's points and baselines.
    workdir: the sweep folder (run folders ``workdir/<point name>``).

  Raises:
    ValueError: one line naming the first differing run folder and key, and how many
      other points differ too.
  """
  from modular.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top
  from modular.train import resume as resume_lib  # pylint: disable=g-import-not-at-top
  errors = []
  for p in points:
    run_dir = os.path.join(workdir, p.name)
    if not os.path.exists(os.path.join(run_dir, "config.json")):
      continue
    try:
      saved = ckpt_lib.load_config(run_dir)
    except (OSError, ValueError) as e:
      errors.append(f"{run_dir}/config.json: unreadable ({e})")
      continue
    try:
      new = config_lib.fill_derived(ml_collections.ConfigDict(p.cfg.to_dict()))
    except Exception:  # noqa: BLE001 - sizes not derivable here: the run reports why
      continue
    try:
      resume_lib.check_same_run(saved, new, run_dir)
    except ValueError as e:
      errors.append(str(e))
  if errors:
    others = len(errors) - 1
    more = (f"; {others} other point{'s' if others > 1 else ''} of the sweep "
            f"differ{'' if others > 1 else 's'} too" if others else "")
    raise ValueError(f"{errors[0]}{more}; nothing was run or written (was the sweep "
                     "folder made with another --arg or --config.x?)")
