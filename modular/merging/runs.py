"""Merging this framework's own runs: checkpoints in, merged model and per-task evaluation out.

``merge_runs(["runs/copy", "runs/reverse"], "ties", {"k": 0.2})`` reads each run's latest
checkpoint and its step-0 checkpoint (the base: the model's initialization, with the
pretrained weights or ``train.init_from`` already in it, saved by ``train.keep_step0``),
checks that every run starts from the same base, merges the task vectors over the
shared trainable set (``optim.frozen`` leaves and per-task leaves stay out) and evaluates
the merged model on every run's tasks with the framework's evaluation step. A LoRA run
is folded into the dense layout (``lora.py``: ``W + (alpha / r) A B``) and its tasks are
evaluated on the merged dense model, so LoRA and fully fine-tuned runs of one base merge
together. Per-task leaves (``exclude``, by default the per-task classification heads
``per_task_*``) are each run's own: run ``r``'s tasks are evaluated with the merged trunk
and ``r``'s heads.

Refused in one line, before anything is written: a run named twice, a folder that is
not a run, a run folder whose trainer holds its lock (``workdir/.lock``; the locks are
held while the checkpoints are read), runs with different bases or architectures.

The result per task: the merged model's accuracy, loss and sequence accuracy beside the
individual fine-tuned run's, and the normalized accuracy (merged / individual, as
FusionBench reports); with the task vectors' cosine matrix and sign conflicts per layer.

Methods that consume statistics (Fisher merging, RegMean) get them from ``statistics``
(one ``{path: array}`` per run, e.g. ``statistics.load`` of a saved ``.npz``) or, when
None, compute them on each run's own model and training data (``statistics.for_run``
with the method's ``num_examples``; AdaMerging's coefficients are learned over all
runs together on their first test batches, inputs only); with ``out`` they are saved as
``statistics_<i>.npz`` for the next merge. Methods with one model per task (TALL masks,
EMR-merging) evaluate run ``r``'s tasks with run ``r``'s own model (the shared merged
vector under ``r``'s mask and rescaler, and ``r``'s heads); ``params_per_run`` holds
every run's model, ``params`` the first's.

References:
  Ilharco et al. 2023, "Editing Models with Task Arithmetic", ICLR; Tang et al. 2024,
  "FusionBench: A Comprehensive Benchmark of Deep Model Fusion" (normalized accuracy).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from modular import filelock
from modular.merging import diagnostics
from modular.merging import driver as merge_lib
from modular.merging import lora as lora_lib
from modular.merging import method as method_lib
from modular.merging import statistics as statistics_lib
from modular.merging.task_vectors import check_compatible, merged_partition
from modular.paths import flat_paths

PyTree = Any
DEFAULT_EXCLUDE = (r"(^|/)per_task_",)  # the per-task classification heads


def check_run_names(workdirs: Sequence[str]) -> list[str]:
  """The run folders as given; one line for none, a duplicate or a folder that is no run."""
  if not workdirs:
    raise ValueError("merging: --runs names no run folder")
  seen: dict[str, str] = {}
  for w in workdirs:
    real = os.path.realpath(w)
    if real in seen:
      raise ValueError(f"merging: run {w} is named twice (also as {seen[real]})")
    seen[real] = w
    if not os.path.isfile(os.path.join(w, "config.json")):
      raise ValueError(f"merging: {w} is not a run folder (no config.json)")
  return list(workdirs)


def check_same_base(bases: Sequence[PyTree], names: Sequence[str]) -> None:
  """One line when a run's base differs from the first run's in a path, shape or value."""
  for base, name in zip(bases[1:], names[1:]):
    check_compatible(bases[0], base, what=f"run {name}'s base")
    a, b = flat_paths(bases[0]), flat_paths(base)
    for p in sorted(a):
      if not np.array_equal(np.asarray(a[p]), np.asarray(b[p])):
        raise ValueError(f"merging: runs {names[0]} and {name} start from different bases "
                         f"(first different parameter: {p!r}); merge runs of one base")


@contextlib.contextmanager
def _hold_locks(workdirs: Sequence[str]):
  """Holds every run folder's trainer lock; a held one is refused in one line."""
  with contextlib.ExitStack() as stack:
    for w in workdirs:
      if not filelock.is_local(w):
        continue
      lock = filelock.FileLock(os.path.join(w, ".lock"), f"run folder {w}")
      try:
        lock.acquire(blocking=False)
      except filelock.LockHeldError as e:
        raise ValueError(f"merging: {e}") from None
      stack.callback(lock.release)
    yield


def _load(workdir: str, step: int | None):
  from modular.train import checkpoint as ckpt_lib
  try:
    return ckpt_lib.load_for_analysis(workdir, step)
  except ckpt_lib.CheckpointError as e:
    if step == 0:
      raise ValueError(f"merging: run {workdir} has no step-0 checkpoint (its base); "
                       "train it with train.keep_step0=True") from None
    raise ValueError(f"merging: {e}") from None


def evaluate(cfg, fm, params: PyTree, batches: dict | None = None,
             eval_step: Any = None) -> dict[str, dict[str, float]]:
  """The framework's evaluation of ``params`` on ``cfg``'s tasks: ``{metric: {task: v}}``.

  The same per-task sums and ratios as the training loop's evaluation
  (``step.make_eval_step``, ``metrics.MetricsWriter.write_eval``).
  """
  from modular import data as data_lib
  from modular.train.metrics import MetricsWriter
  from modular.train.step import make_eval_step
  if batches is None:
    batches = data_lib.make_eval_batches(cfg.data, cfg.train.batch_size)
  step = eval_step or jax.jit(make_eval_step(fm))
  total = None
  for task_batches in batches.values():
    for b in task_batches:
      sums = step(params, {k: jnp.asarray(v) for k, v in b.items()})
      total = sums if total is None else jax.tree.map(jnp.add, total, sums)
  writer = MetricsWriter("", data_lib.task_names(cfg.data), enabled=False)
  return writer.write_eval(0, jax.device_get(total))


class _View:
  """One run in the merged (dense) layout: flat parameters and base, its trained set.

  A LoRA run is folded (``lora.fold``) and evaluated merged as the dense model; other
  runs keep their own layout and model.
  """

  def __init__(self, workdir: str, cfg, fm, params: PyTree, base: PyTree):
    from modular import models as models_lib
    from modular.objective import FunctionalModel
    self.workdir, self.cfg, self.fm, self.params = workdir, cfg, fm, params
    self.lora = lora_lib.is_lora(cfg)
    frozen = tuple(cfg.optim.frozen)
    self.trained = lora_lib.trained_paths(params, frozen, self.lora)
    if self.lora:
      s = lora_lib.scale(cfg)
      self.flat, self.base = lora_lib.fold(params, s), lora_lib.fold(base, s)
      self.eval_cfg = lora_lib.dense_config(cfg)
      self.eval_fm, self.template, _ = FunctionalModel.split(
          models_lib.build_model(self.eval_cfg.model, cfg.train.seed))
    else:
      self.flat, self.base = flat_paths(params), flat_paths(base)
      self.eval_cfg, self.eval_fm, self.template = cfg, fm, params

  def own_params(self) -> PyTree:
    """The run's own parameters in its evaluation layout (a LoRA run folded)."""
    if not self.lora:
      return self.params
    return lora_lib.fill(self.template, self.flat, f"the folded model of run {self.workdir}")

  def params_of(self, merged: dict[str, Any], exclude: Sequence[str]) -> PyTree:
    """The merged flat parameters with this run's own per-task leaves, in its eval layout."""
    own = merged_partition((), exclude)
    flat = {p: (self.flat[p] if own.is_frozen(p) else x) for p, x in merged.items()}
    return lora_lib.fill(self.template, flat, f"the merged model of run {self.workdir}")


def _learn_coefficients(views: Sequence[_View], base: dict[str, Any], taus: list[dict],
                        exclude: Sequence[str], merger) -> list[dict[str, Any]]:
  """AdaMerging's coefficients on the first test batches of every run, inputs only."""
  from modular import data as data_lib
  from modular import objective
  from modular.merging.methods import adamerging
  batches = []
  for v in views:
    evals = data_lib.make_eval_batches(v.cfg.data, v.cfg.train.batch_size)
    batches.append([{k: jnp.asarray(x) for k, x in b.items()}
                    for bs in evals.values() for b in bs][:merger.num_batches])
  steps = [tuple(b[i % len(b)] for b in batches) for i in range(merger.num_batches)]

  def logits_fn(flat, per_view):  # every run's model with its own heads on its own inputs
    rows, valid = [], []
    for v, batch in zip(views, per_view):
      logits, _ = v.eval_fm.apply(v.params_of(flat, exclude), batch)
      if objective.is_classification(batch):
        keep = batch["label"] >= 0  # padding rows only; the labels are never read
      else:
        keep = batch["mask"] > 0  # the answer positions, not the answers
      rows.append(logits.reshape(-1, logits.shape[-1]))
      valid.append(keep.reshape(-1).astype(jnp.float32))
    return jnp.concatenate(rows), jnp.concatenate(valid)

  return adamerging.learn_coefficients(logits_fn, base, taus, steps, **merger.learn_options())


def merge_runs(workdirs: Sequence[str], method: str = "task_arithmetic",
               options: Mapping[str, Any] | None = None, *, step: int | None = None,
               exclude: Sequence[str] = DEFAULT_EXCLUDE, weights: Sequence[float] | None = None,
               seed: int = 0, out: str | None = None, evaluate_tasks: bool = True,
               statistics: Sequence[Mapping[str, Any]] | None = None) -> dict[str, Any]:
  """Merges the runs' task vectors into their common base and evaluates every task.

  Args:
    workdirs: ``T`` run folders written by ``modular-train``, all from one base.
    method: a registered merging method (``merging.METHODS.names()``).
    options: the method's options (``{"k": 0.2}``; strings are parsed).
    step: the checkpoint step of every run (default: each run's latest).
    exclude: regexes of per-task leaves, each run's own instead of merged.
    weights: ``[T]`` per-run weights (default ones).
    seed: the PRNG seed of random methods (DARE).
    out: a folder for ``merge.json`` (the options, the runs and the evaluation); None
      writes nothing.
    evaluate_tasks: evaluate the merged and the individual models.
    statistics: ``T`` ``{path: array}`` for methods that consume statistics (default:
      computed from each run's training data).

  Returns:
    ``{"method", "options", "runs", "params", "cosine", "sign_conflicts", "eval"}``:
    ``params`` the merged parameters (the first run's per-task leaves; with a method
    of one model per task also ``params_per_run``, every run's own); ``cosine`` the
    ``[T, T]`` task-vector cosines and ``sign_conflicts`` the per-layer share of
    coordinates the runs move in opposite directions (``diagnostics``); ``eval``
    ``{task: {"merged": {metric: v}, "individual": {...}, "normalized_accuracy":
    merged / individual}}``.

  Raises:
    ValueError: one line (see the module docstring); nothing is written.
  """
  workdirs = check_run_names(workdirs)
  merger = method_lib.build(method, options)  # a bad option fails before any reading
  with _hold_locks(workdirs):
    views = [_View(w, *_load(w, step), _load(w, 0)[2]) for w in workdirs]
  check_same_base([v.base for v in views], workdirs)
  own = merged_partition((), exclude)
  paths = sorted({p for v in views for p in v.trained if not own.is_frozen(p)})
  base = views[0].base
  taus = [{p: jnp.asarray(v.flat[p]) - jnp.asarray(base[p]) for p in paths} for v in views]
  computed = statistics is None and merger.statistics is not None
  if computed and merger.statistics == "coefficients":
    statistics = _learn_coefficients(views, base, taus, exclude, merger)
  elif computed:
    statistics = [statistics_lib.for_run(merger.statistics, v.cfg, v.eval_fm, v.own_params(),
                                         seed=seed, **merger.statistics_options())
                  for v in views]
  if statistics is not None:  # only the merged leaves' statistics matter
    statistics = [{p: x for p, x in flat_paths(s).items() if p in taus[0]} for s in statistics]
  models = merge_lib.merge_tasks(base, taus, merger, weights=weights, key=seed,
                                 statistics=statistics)
  result: dict[str, Any] = {
      "method": merger.name, "runs": [os.path.abspath(w) for w in workdirs],
      "options": {f.name: getattr(merger, f.name) for f in dataclasses.fields(merger)},
      "step": step, "lora_runs": [v.workdir for v in views if v.lora],
      "params": views[0].params_of(models[0], exclude),
      "cosine": diagnostics.cosine_matrix(taus).tolist(),
      "sign_conflicts": diagnostics.sign_conflicts(taus), "eval": {}}
  if merger.per_task_output:
    result["params_per_run"] = [v.params_of(m, exclude) for v, m in zip(views, models)]
  if evaluate_tasks:
    from modular import data as data_lib
    from modular.train.step import make_eval_step
    for v, merged in zip(views, models):
      batches = data_lib.make_eval_batches(v.cfg.data, v.cfg.train.batch_size)
      got = evaluate(v.eval_cfg, v.eval_fm, v.params_of(merged, exclude), batches,
                     jax.jit(make_eval_step(v.eval_fm)))
      ind = evaluate(v.cfg, v.fm, v.params, batches)  # the run's own model (LoRA unfolded)
      for task in got["accuracy"]:
        m = {k: x[task] for k, x in got.items()}
        i = {k: x[task] for k, x in ind.items()}
        norm = m["accuracy"] / i["accuracy"] if i["accuracy"] > 0 else None
        result["eval"][task] = {"run": os.path.abspath(v.workdir), "merged": m,
                                "individual": i, "normalized_accuracy": norm}
  if out is not None:
    os.makedirs(out, exist_ok=True)
    record = {k: v for k, v in result.items() if k not in ("params", "params_per_run")}
    if computed:
      for i, stats in enumerate(statistics):
        statistics_lib.save(os.path.join(out, f"statistics_{i}.npz"), stats)
    tmp = os.path.join(out, "merge.json.tmp")
    with open(tmp, "w") as f:
      json.dump(record, f, indent=2)
    os.replace(tmp, os.path.join(out, "merge.json"))
  return result


def table(result: Mapping[str, Any]) -> str:
  """A plain-text table of ``merge_runs``'s evaluation, one row per task."""
  header = f"{'task':<16}{'merged acc':>11}{'individual':>11}{'normalized':>11}"
  lines = [f"{result['method']} {result['options']}", header, "-" * len(header)]
  for task, r in result["eval"].items():
    norm = r["normalized_accuracy"]
    lines.append(f"{task:<16}{r['merged']['accuracy']:>11.3f}"
                 f"{r['individual']['accuracy']:>11.3f}"
                 f"{'n/a' if norm is None else f'{norm:.3f}':>11}")
  return "\n".join(lines)
