"""The training loop: one jit-compiled, sharded step, checkpoints, metrics, progress.

``train(cfg, workdir)`` validates the config, builds the mesh, the model, the
optimizer and the multi-task method named in the config, resumes from the newest
checkpoint in ``workdir`` if there is one, and trains with a progress bar
(steps/s, ETA), TensorBoard metrics, periodic per-task evaluation and asynchronous
checkpoints. It names no router and no surgery method: the config does.

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

from modular import config as config_lib
from modular import data as data_lib
from modular import models as models_lib
from modular import mtl as mtl_lib
from modular.objective import FunctionalModel
from modular.train import checkpoint as ckpt_lib
from modular.train import sharding as sharding_lib
from modular.train.batches import to_global, validate_batch
from modular.train.metrics import MetricsWriter
from modular.train.optimizer import make_optimizer
from modular.train.partition import Partition
from modular.train.step import init_state, make_eval_step, make_train_step
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


def setup(cfg: ml_collections.ConfigDict, devices=None) -> Run:
  """Validates ``cfg`` and builds the mesh, model, optimizer and jitted functions."""
  devices = list(jax.devices() if devices is None else devices)
  config_lib.validate(cfg, num_devices=len(devices))
  cfg = config_lib.fill_derived(cfg)
  mesh = sharding_lib.make_mesh(cfg, devices)
  model = models_lib.build_model(cfg.model, seed=cfg.train.seed)
  fm, params, axes = FunctionalModel.split(model)
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
  train_step = jax.jit(make_train_step(fm, tx, method, schedule, param_sh, part),
                       in_shardings=(state_sh, batch_sh), out_shardings=(state_sh, repl),
                       donate_argnums=0)
  eval_step = jax.jit(make_eval_step(fm), in_shardings=(param_sh, batch_sh),
                      out_shardings=repl)
  return Run(cfg, mesh, fm, tx, schedule, method, state_sh, abstract, init, train_step,
             eval_step, batch_sh)


def global_batch(run: Run, local: dict[str, np.ndarray]) -> dict[str, jax.Array]:
  """Checks the process-local batch, then assembles the global sharded batch."""
  m = run.cfg.model
  validate_batch(local, batch_size=run.cfg.train.batch_size // jax.process_count(),
                 seq_len=m.seq_len, num_tasks=m.num_tasks, vocab_size=m.vocab_size)
  return to_global(local, run.batch_sharding)


def evaluate(run: Run, params: Any, eval_batches: dict[str, list[dict]]) -> dict[str, np.ndarray]:
  """Sums the per-task evaluation counts over all held-out batches."""
  total = None
  for batches in eval_batches.values():
    for b in batches:
      sums = run.eval_step(params, global_batch(run, b))
      total = sums if total is None else jax.tree.map(jnp.add, total, sums)
  return jax.device_get(total)


def _blocking(cfg: ml_collections.ConfigDict) -> bool:
  if cfg.train.block_every_step == "auto":
    return jax.default_backend() == "cpu"
  return bool(cfg.train.block_every_step)


def train(cfg: ml_collections.ConfigDict, workdir: str, *, stop_at: int | None = None,
          devices=None) -> dict[str, Any]:
  """Trains (or resumes) the run described by ``cfg`` in ``workdir``.

  Args:
    cfg: the full config (``modular.config.get_base_config`` plus changes).
    workdir: the run folder: checkpoints, TensorBoard, telemetry, summary.
    stop_at: stop after this step (as if interrupted) after checkpointing it;
      the run resumes from there when called again. None: train to the end.
    devices: the devices of the mesh (default: all).

  Returns:
    A summary: final per-task evaluation, steps, steps/s, compile time.
  """
  cfg = ml_collections.ConfigDict(cfg.to_dict())  # never mutate the caller's config
  run = setup(cfg, devices)
  cfg = run.cfg
  lead = jax.process_index() == 0
  if lead:
    ckpt_lib.save_config(workdir, cfg)
  tasks = data_lib.task_names(cfg.data)
  checkpointer = ckpt_lib.Checkpointer(workdir, cfg.train.keep_checkpoints,
                                       cfg.train.async_checkpoint)
  n_proc = jax.process_count()
  iterator = data_lib.make_train_iterator(cfg.data, cfg.train.batch_size // n_proc,
                                          shard_index=jax.process_index(), shard_count=n_proc)
  start = checkpointer.latest_step()
  if start is not None:
    state, data_state, _ = checkpointer.restore(start, run.abstract_state)
    iterator.set_state(data_state)
  else:
    start, state = 0, run.init()
    if cfg.train.init_from:
      state = warm_start(run, state, cfg.train.init_from)
  eval_batches = data_lib.make_eval_batches(cfg.data, cfg.train.batch_size)
  writer = MetricsWriter(workdir, tasks, enabled=lead)
  block = _blocking(cfg)
  end = cfg.train.steps if stop_at is None else min(stop_at, cfg.train.steps)
  progress = _progress(cfg, start, end, lead)
  window: list[dict] = []
  t_compile = t_first = None
  t_start = time.perf_counter()
  for step in range(start + 1, end + 1):
    batch = global_batch(run, next(iterator))
    t0 = time.perf_counter()
    state, metrics = run.train_step(state, batch)
    if block or step == start + 1:
      jax.block_until_ready(state["step"])
    if t_compile is None:
      t_compile = time.perf_counter() - t0
      t_first = time.perf_counter()
    window.append(metrics)
    if step % cfg.train.log_every == 0 or step == end:
      mean = writer.write_train(step, jax.device_get(window))
      window = []
      if progress is not None:
        present = mean["task/present"] > 0
        progress.set_postfix(loss=f"{float(mean['objective']):.3f}",
                             acc=f"{float(mean['task/accuracy'][present].mean()):.3f}")
    if step % cfg.train.eval_every == 0 or step == cfg.train.steps:
      writer.write_eval(step, evaluate(run, state["params"], eval_batches))
    if step % cfg.train.checkpoint_every == 0 or step == end:
      checkpointer.save(step, state, iterator.get_state(),
                        {"step": step, "tasks": tasks})
    if progress is not None:
      progress.update(1)
  checkpointer.close()
  if progress is not None:
    progress.close()
  steps_done = end - start
  elapsed = time.perf_counter() - (t_first or t_start)
  summary = {
      "workdir": os.path.abspath(workdir),
      "start_step": start, "end_step": end, "tasks": tasks,
      "steps_per_s": (steps_done - 1) / elapsed if steps_done > 1 and elapsed > 0 else None,
      "compile_s": t_compile,
      "eval": writer.last_eval,
      "train": {k: np.asarray(v).tolist() for k, v in writer.last_train.items()
                if k.startswith("task/")},
  }
  if lead:
    with open(os.path.join(workdir, "summary.json"), "w") as f:
      json.dump(summary, f, indent=2)
    if stop_at is None or end == cfg.train.steps:
      print(writer.summary_table(), flush=True)
  writer.close()
  summary["state"] = state
  return summary


def _progress(cfg, start: int, end: int, lead: bool):
  if not (cfg.train.progress and lead):
    return None
  from tqdm.auto import tqdm
  return tqdm(total=end, initial=start, desc=cfg.get("name", "train"), unit="step",
              dynamic_ncols=True)
