"""The training loop: one jit-compiled, sharded step, checkpoints, metrics, progress.

``train(cfg, workdir)`` validates the config, builds the mesh, the model, the
optimizer and the multi-task method named in the config, resumes from the newest
checkpoint in ``workdir`` if there is one, and trains with a progress bar
(steps/s, ETA), TensorBoard metrics, periodic per-task evaluation and asynchronous
checkpoints. It names no router and no surgery method: the config does. With
``data.val_share > 0`` the periodic evaluation is on validation, and the run ends by
measuring the test split once with its validation-best checkpoint, the only one it
keeps (``modular.train.selection``).

On simulated CPU devices every step's result is waited for (jax-ml/jax#25861:
back-to-back sharded steps can deadlock in CPU collectives on few cores).
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding

from modular import checkpoints
from modular import config as config_lib
from modular import filelock
from modular import data as data_lib
from modular import models as models_lib
from modular import mtl as mtl_lib
from modular.objective import FunctionalModel
from modular.train import checkpoint as ckpt_lib
from modular.train import logs as log_lib
from modular.train import resume as resume_lib
from modular.train import selection as selection_lib
from modular.train import sharding as sharding_lib
from modular.train.batches import to_global, validate_batch
from modular.train.metrics import MetricsWriter, eval_values
from modular.train.optimizer import make_optimizer
from modular.train.partition import Partition
from modular.train.step import (init_state, make_eval_step, make_predict_step, make_train_step,
                                with_nonfinite_guard)
from modular.train.warm_start import warm_start


@dataclasses.dataclass
class Run:
  """Everything built for one run, before any step is taken.

  Attributes:
    cfg: the validated config with derived sizes filled in.
    mesh: the device mesh.
    fm: the functional model.
    tx: the optax optimizer; schedule: its learning-rate schedule.
    method: the multi-task method.
    state_shardings: NamedShardings of the training state.
    abstract_state: ShapeDtypeStructs (with shardings) of the training state.
    init: jitted ``() -> state`` at step 0.
    train_step: jitted ``(state, batch) -> (state, metrics)``.
    eval_step: jitted ``(params, batch) -> per-task sums``.
    batch_sharding: sharding of a global batch.
    predict_step: jitted ``(params, batch) -> per-example outputs`` (the final test).
  """

  cfg: ml_collections.ConfigDict
  mesh: Mesh
  fm: FunctionalModel
  tx: optax.GradientTransformation
  schedule: Any
  method: Any
  state_shardings: Any
  abstract_state: Any
  init: Callable[[], Any]
  train_step: Callable
  eval_step: Callable
  batch_sharding: NamedSharding
  predict_step: Callable | None = None


def setup(cfg: ml_collections.ConfigDict, devices=None) -> Run:
  """Validates ``cfg`` and builds the mesh, model, optimizer and jitted functions."""
  devices = list(jax.devices() if devices is None else devices)
  config_lib.validate(cfg, num_devices=len(devices))
  cfg = config_lib.fill_derived(cfg)
  mesh = sharding_lib.make_mesh(cfg, devices)
  model = models_lib.build_model(cfg.model, seed=cfg.train.seed)
  fm, params, axes = FunctionalModel.split(model)
  params = checkpoints.prepare_run(cfg, params)  # model.pretrained's weights, frozen set
  part = Partition.from_patterns(cfg.optim.frozen, params)
  tx, schedule = make_optimizer(cfg.optim, part.trainable(params), cfg.train.steps)
  method = mtl_lib.build(cfg.mtl, params)
  repl = sharding_lib.replicated(mesh)
  param_sh = sharding_lib.param_shardings(params, axes, cfg, mesh)
  shapes = jax.eval_shape(lambda p: init_state(p, tx, method, cfg.train.seed, part), params)
  opt_sh = optax.tree_map_params(tx, lambda _, s: s, shapes["opt_state"],
                                 part.trainable(param_sh), transform_non_params=lambda _: repl)
  state_sh = {"params": param_sh, "opt_state": opt_sh,
              "mtl_state": jax.tree.map(lambda _: repl, shapes["mtl_state"]),
              "step": repl, "rng": repl}
  abstract = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          shapes, state_sh)
  params = jax.device_put(params, param_sh)
  seed = cfg.train.seed
  init = jax.jit(lambda: init_state(params, tx, method, seed, part), out_shardings=state_sh)
  batch_sh = sharding_lib.batch_sharding(cfg, mesh)
  step_fn = with_nonfinite_guard(make_train_step(fm, tx, method, schedule, param_sh, part,
                                                 cfg.train.microbatches,
                                                 cfg.mtl.get("gram", "materialize")),
                                 skip=cfg.train.on_nonfinite == "skip")
  train_step = jax.jit(step_fn,
                       in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, repl),
                       donate_argnums=0)
  eval_step = jax.jit(make_eval_step(fm), in_shardings=(param_sh, batch_sh),
                      out_shardings=repl)
  predict_step = jax.jit(make_predict_step(fm), in_shardings=(param_sh, batch_sh),
                         out_shardings=repl)
  return Run(cfg, mesh, fm, tx, schedule, method, state_sh, abstract, init, train_step,
             eval_step, batch_sh, predict_step)


def global_batch(run: Run, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """Checks the process-local batch, then assembles the global sharded batch."""
  m = run.cfg.model
  validate_batch(local, batch_size=run.cfg.train.batch_size // jax.process_count(),
                 seq_len=m.seq_len, num_tasks=m.num_tasks, vocab_size=m.vocab_size)
  return to_global(local, run.batch_sharding)


def evaluate(run: Run, params: Any, eval_batches: dict[str, list[dict]]) -> dict[str, np.ndarray]:
  """Sums the per-task evaluation counts over all held-out batches."""
  total = None
  n, i = jax.process_count(), jax.process_index()
  for batches in eval_batches.values():
    for b in batches:  # every process builds the same global batch and feeds its slice
      size = len(b["task_id"]) // n
      local = {k: v[i * size:(i + 1) * size] for k, v in b.items()} if n > 1 else b
      sums = run.eval_step(params, global_batch(run, local))
      total = sums if total is None else jax.tree.map(jnp.add, total, sums)
  return jax.device_get(total)


def _blocking(cfg: ml_collections.ConfigDict) -> bool:
  if cfg.train.block_every_step == "auto":
    return jax.default_backend() == "cpu"
  return bool(cfg.train.block_every_step)


class NonfiniteError(RuntimeError):
  """A step went non-finite (``train.on_nonfinite``); nothing non-finite was saved."""


class NonfiniteWatch:
  """Reads the steps' ``nonfinite`` flags on the host, a window at a time.

  Args:
    action: ``train.on_nonfinite``: "halt" raises at the first flagged step; "skip"
      counts (the step already dropped the update) and raises after ``max_skips``
      flagged steps in a row.
    max_skips: ``train.max_consecutive_skips``.
    workdir: the run folder, for the message.
  """

  def __init__(self, action: str, max_skips: int, workdir: str):
    self.action, self.max_skips, self.workdir = action, max_skips, workdir
    self.skipped = 0
    self.in_a_row = 0
    self.last_saved: int | None = None

  def observe(self, steps: list[int], flags: list[Any]) -> None:
    """Checks the flags of ``steps``; raises ``NonfiniteError`` naming the step."""
    for step, flag in zip(steps, flags):
      if not int(flag):
        self.in_a_row = 0
        continue
      kept = (f"the newest checkpoint (step {self.last_saved}) is untouched"
              if self.last_saved is not None else "no checkpoint was written")
      if self.action == "halt":
        raise NonfiniteError(
            f"step {step}: non-finite loss, gradient norm or parameters in {self.workdir} "
            f"(train.on_nonfinite=halt); nothing after it was saved and {kept}. Lower "
            "optim.learning_rate, or set train.on_nonfinite=skip to drop such updates")
      self.skipped += 1
      self.in_a_row += 1
      if self.in_a_row >= self.max_skips:
        raise NonfiniteError(
            f"step {step}: {self.in_a_row} non-finite steps in a row in {self.workdir} "
            f"(train.max_consecutive_skips={self.max_skips}); their updates were dropped "
            f"and {kept}")


def train(cfg: ml_collections.ConfigDict, workdir: str, *, stop_at: int | None = None,
          devices=None, on_eval: Callable[[int, dict], None] | None = None) -> dict[str, Any]:
  """Trains (or resumes) the run described by ``cfg`` in ``workdir``.

  Before anything in ``workdir`` changes, the resume is checked: the workdir lock is
  taken (process 0; ``filelock.LockHeldError`` if another trainer holds it), the saved
  config is compared with ``cfg`` (``resume.check_same_run``) and the newest checkpoint
  is restored (``CheckpointError`` if damaged). Only then is ``config.json`` written.

  Args:
    cfg: the full config (``modular.config.get_base_config`` plus changes).
    workdir: the run folder: checkpoints, TensorBoard, telemetry, summary.
    stop_at: stop after this step (as if interrupted) after checkpointing it;
      the run resumes from there when called again. None: train to the end.
    devices: the devices of the mesh (default: all).
    on_eval: called as ``on_eval(step, {metric: {task: value}})`` after each
      evaluation, on every process (a sweep engine reports trial progress with it).

  Returns:
    A summary: final per-task evaluation, steps, steps/s, compile time. A finished
    run launched again trains nothing and returns (and keeps) its final evaluation.

  Raises:
    ValueError: a config that is not the run saved in ``workdir``.
    NonfiniteError: a non-finite step (``train.on_nonfinite``).
  """
  cfg = ml_collections.ConfigDict(cfg.to_dict())  # never mutate the caller's config
  check_workdir(workdir)
  run = setup(cfg, devices)
  lock = None
  if jax.process_index() == 0 and filelock.is_local(workdir):
    os.makedirs(workdir, exist_ok=True)
    lock = filelock.FileLock(os.path.join(workdir, ".lock"), f"workdir {workdir}")
    lock.acquire(blocking=False)
  try:
    return _train(run, workdir, stop_at, on_eval)
  finally:
    if lock is not None:
      lock.release()


def check_workdir(workdir: str) -> None:
  """Checks that ``workdir`` can be a folder (``modular-sweep`` checks its folder too).

  Raises:
    ValueError: ``--workdir <workdir>: <path> is a file, not a folder`` if ``workdir``
      (or a folder above it) is an existing file.
  """
  if not filelock.is_local(workdir):
    return
  path = os.path.abspath(workdir)
  while not os.path.exists(path) and os.path.dirname(path) != path:
    path = os.path.dirname(path)
  if not os.path.isdir(path):
    raise ValueError(f"--workdir {workdir}: {path} is a file, not a folder")


def _train(run: Run, workdir: str, stop_at: int | None,
           on_eval: Callable[[int, dict], None] | None) -> dict[str, Any]:
  cfg = run.cfg
  lead = jax.process_index() == 0
  config_path = os.path.join(workdir, "config.json")
  if os.path.exists(config_path):
    resume_lib.check_same_run(ckpt_lib.load_config(workdir), cfg, workdir)
  tasks = data_lib.task_names(cfg.data)
  selecting = cfg.data.val_share > 0
  keep_steps = (0,) if cfg.train.keep_step0 else ()
  checkpointer = ckpt_lib.Checkpointer(workdir, cfg.train.keep_checkpoints,
                                       cfg.train.async_checkpoint, keep_steps, best=selecting)
  if selecting and (selection_lib.read(workdir) or {}).get("done"):
    checkpointer.close()
    return _finished(run, workdir, keep_steps)
  n_proc = jax.process_count()
  iterator = data_lib.make_train_iterator(cfg.data, cfg.train.batch_size // n_proc,
                                          shard_index=jax.process_index(), shard_count=n_proc)
  start = checkpointer.latest_step()
  if start is not None:
    state, data_state, _ = checkpointer.restore(start, run.abstract_state)
    try:  # nothing is written yet: a damaged data state stops the run here
      if int(data_state.get("step", -1)) != start:
        raise ValueError(f"its step {data_state.get('step')!r} is not the checkpoint's {start}")
      iterator.set_state(data_state)
    except (ValueError, TypeError, AttributeError) as e:
      raise ckpt_lib.CheckpointError(
          f"checkpoint {os.path.join(workdir, 'checkpoints', str(start))}: its data-iterator "
          f"state is damaged: {e}. Nothing was deleted or written") from e
  else:
    start, state = 0, run.init()
    if cfg.train.init_from:
      state = warm_start(run, state, cfg.train.init_from)
  if lead:  # the resume is checked: from here on the workdir may change
    ckpt_lib.save_config(workdir, cfg)
    log_lib.truncate_after(workdir, start)
  if start == 0 and cfg.train.keep_step0 and 0 not in checkpointer.all_steps():
    # the untrained control of modular-analyze
    checkpointer.save(0, state, iterator.get_state(), {"step": 0, "tasks": tasks})
  eval_batches = data_lib.make_eval_batches(cfg.data, cfg.train.batch_size,
                                            "val" if selecting else "test",
                                            None if selecting else -1)
  selection = selection_lib.Selection(workdir, cfg.train.select_metric, start) \
      if selecting else None
  if selection is not None and selection.history:
    checkpointer.best_step = selection.best()["step"]
  writer = MetricsWriter(workdir, tasks, enabled=lead)
  log_lib.prime(writer, workdir, start)
  watch = NonfiniteWatch(cfg.train.on_nonfinite, cfg.train.max_consecutive_skips, workdir)
  watch.last_saved = start if (start or cfg.train.keep_step0) else None  # step 0 kept
  block = _blocking(cfg)
  end = max(start, cfg.train.steps if stop_at is None else min(stop_at, cfg.train.steps))
  progress = _progress(cfg, start, end, lead)
  window: list[tuple[int, dict]] = []
  checked = 0
  t_compile = t_first = None
  t_start = time.perf_counter()
  try:
    for step in range(start + 1, end + 1):
      batch = global_batch(run, next(iterator))
      t0 = time.perf_counter()
      state, metrics = run.train_step(state, batch)
      if block or step == start + 1:
        jax.block_until_ready(state["step"])
      if t_compile is None:
        t_compile = time.perf_counter() - t0
        t_first = time.perf_counter()
      window.append((step, metrics))
      do_log = step % cfg.train.log_every == 0 or step == end
      do_eval = step % cfg.train.eval_every == 0 or step == cfg.train.steps
      do_save = step % cfg.train.checkpoint_every == 0 or step == end or (
          selecting and do_eval)
      if do_log or do_eval or do_save:  # read the flags before anything is written
        new = window[checked:]
        watch.observe([s for s, _ in new], jax.device_get([m["nonfinite"] for _, m in new]))
        checked = len(window)
      if do_log:
        mean = writer.write_train(step, jax.device_get([m for _, m in window]))
        window, checked = [], 0
        if lead:
          _report(progress, cfg, step, mean, t_first)
      if do_eval:
        result = writer.write_eval(step, evaluate(run, state["params"], eval_batches))
        if selection is not None:  # written before the checkpoint that it may keep
          checkpointer.best_step = selection.record(step, result)
          if lead:
            selection.write()
        if on_eval is not None:
          on_eval(step, result)
      if do_save:
        checkpointer.save(step, state, iterator.get_state(), {"step": step, "tasks": tasks})
        watch.last_saved = step
      if progress is not None:
        progress.update(1)
  finally:
    checkpointer.close()  # finishes pending saves (good ones) even when a step failed
    if progress is not None:
      progress.close()
  if start == end and start > 0 and not writer.last_eval and not selecting:
    result = writer.write_eval(start, evaluate(run, state["params"], eval_batches))
    if on_eval is not None:
      on_eval(start, result)
  steps_done = end - start
  elapsed = time.perf_counter() - (t_first or t_start)
  test = None
  if selecting and end == cfg.train.steps:  # the validation-best checkpoint on test, once
    test = _test_best(run, workdir, selection, keep_steps, lead)
    state = test.pop("state")
  summary = {
      "workdir": os.path.abspath(workdir),
      "start_step": start, "end_step": end, "tasks": tasks,
      "steps_per_s": (steps_done - 1) / elapsed if steps_done > 1 and elapsed > 0 else None,
      "compile_s": t_compile,
      "nonfinite_steps": watch.skipped,
      "eval": writer.last_eval,
      "train": {k: np.asarray(v).tolist() for k, v in writer.last_train.items()
                if k.startswith("task/")},
  }
  if test is not None:
    summary.update(test)
  if lead:
    summary = log_lib.write_summary(workdir, summary, trained=steps_done > 0)
    if stop_at is None or end == cfg.train.steps:
      print(writer.summary_table(), flush=True)
  writer.close()
  summary["state"] = state
  return summary


def _test_best(run: Run, workdir: str, selection: selection_lib.Selection,
               keep_steps: tuple[int, ...], lead: bool) -> dict[str, Any]:
  """Steps 1-4 of ``modular.train.selection``: the best checkpoint measured on test.

  Returns:
    ``{"eval": test metrics, "val": the best step's validation metrics, "best_step",
    "select_metric", "state": the best checkpoint's state}``.
  """
  cfg = run.cfg
  tasks = data_lib.task_names(cfg.data)
  best = selection.best()
  checkpointer = ckpt_lib.Checkpointer(workdir, keep_steps=keep_steps, async_save=False,
                                       best=True)
  checkpointer.best_step = best["step"]
  try:
    state, _, _ = checkpointer.restore(best["step"], run.abstract_state)
    batches = data_lib.make_eval_batches(cfg.data, cfg.train.batch_size, "test")
    arrays, sums = selection_lib.predict(run.predict_step, state["params"], batches,
                                         lambda b: global_batch(run, b))
    test = eval_values(sums, tasks)
    out = {"eval": test, "val": best["eval"], "best_step": best["step"],
           "select_metric": selection.metric}
    if lead:
      selection_lib.save_predictions(workdir, arrays, best["step"])
      selection.write(done=True, steps=cfg.train.steps, test=test)
      log_lib.write_summary(workdir, _json_summary(workdir, out), trained=True)
      selection_lib.prune(checkpointer, best["step"], keep_steps)
  finally:
    checkpointer.close()
  return {**out, "state": state}


def _json_summary(workdir: str, out: dict[str, Any]) -> dict[str, Any]:
  """The saved summary with the test result merged in (written before pruning)."""
  path = os.path.join(workdir, "summary.json")
  try:
    with open(path) as f:
      saved = json.load(f)
  except (OSError, ValueError):
    saved = {"workdir": os.path.abspath(workdir)}
  return {**saved, **out}


def _finished(run: Run, workdir: str, keep_steps: tuple[int, ...]) -> dict[str, Any]:
  """A finished selection run launched again: its saved summary and best state.

  Raises:
    ValueError: ``train.steps`` differs from the finished run's (its last checkpoint is
      gone: only the validation-best one is kept).
  """
  saved = selection_lib.read(workdir)
  if saved.get("steps") != run.cfg.train.steps:
    raise ValueError(f"config.train.steps: {run.cfg.train.steps} differs from the finished "
                     f"run in {workdir} ({saved.get('steps')} steps), which kept only its "
                     "validation-best checkpoint: use a new --workdir to train longer")
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  checkpointer = ckpt_lib.Checkpointer(workdir, keep_steps=keep_steps, async_save=False,
                                       best=True)
  checkpointer.best_step = saved["best_step"]
  try:
    if jax.process_index() == 0:
      selection_lib.prune(checkpointer, saved["best_step"], keep_steps)
    summary["state"], _, _ = checkpointer.restore(saved["best_step"], run.abstract_state)
  finally:
    checkpointer.close()
  return summary


def _report(progress, cfg: ml_collections.ConfigDict, step: int, mean: dict,
            t_first: float | None) -> None:
  """The progress bar's loss and accuracy, or one printed line per log step."""
  present = np.asarray(mean["task/present"]) > 0
  loss = float(mean["objective"])
  acc = float(np.asarray(mean["task/accuracy"])[present].mean()) if present.any() else 0.0
  if progress is not None:
    progress.set_postfix(loss=f"{loss:.3f}", acc=f"{acc:.3f}")
    return
  rate = ""
  if t_first is not None and step > 1:
    rate = f"  {time.perf_counter() - t_first:.1f}s"
  print(f"step {step}/{cfg.train.steps}  loss {loss:.4f}  acc {acc:.3f}{rate}", flush=True)


def _progress(cfg, start: int, end: int, lead: bool):
  if not (cfg.train.progress and lead):
    return None
  from tqdm.auto import tqdm
  return tqdm(total=end, initial=start, desc=cfg.get("name", "train"), unit="step",
              dynamic_ncols=True)
