"""Checkpoints with orbax: training state, data-iterator state and run metadata.

Layout of a run's workdir:
  config.json        the full config of the run
  checkpoints/<step>/state   params, opt_state, mtl_state, step, rng (sharded arrays)
  checkpoints/<step>/data    the data iterator's state: one JSON per process,
                             process_<i>-of-<n>.json (grain's orbax handler); every
                             host resumes from its own positions
  checkpoints/<step>/meta    the step, the task names, the last routing statistics (JSON)

Saving is asynchronous and keeps the last N steps (with ``best=True``: the latest
and ``best_step``, the validation-best step that ``modular.train.selection`` keeps
in ``selection.json``; the loop deletes all but the best once the run is done); orbax writes each step to a
temporary folder and renames it when complete, so a run killed mid-save leaves the
earlier checkpoints intact. A checkpoint that fails to restore, or whose parameters
are not finite, or whose arrays do not match the integrity fingerprints saved with
them (bytes changed on disk; ``modular.train.fingerprint``), raises ``CheckpointError``
in one line naming the step folder; nothing on disk is deleted. The loop never saves a
non-finite state, so rotation never removes the last finite checkpoint. Checkpoints
written before per-process data state (one ``data`` JSON for all hosts) and checkpoints
without fingerprints (saved before them: not checked) still restore.
"""

from __future__ import annotations

import json
import os
from typing import Any

import grain.checkpoint as grain_ckpt
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from etils import epath

from modular.train import fingerprint as fingerprint_lib

FINGERPRINT_FORMAT = "fmix32-2sum-v1"  # meta["fingerprint_format"]; another value: not checked
_CAUSE_CHARS = 300  # how much of an underlying error's first line a message keeps


class CheckpointError(RuntimeError):
  """A checkpoint could not be read (corrupt, partial or from another model)."""


class Checkpointer:
  """Saves and restores a run's state in ``workdir/checkpoints``.

  Args:
    workdir: the run folder.
    keep: how many recent checkpoints to keep.
    async_save: save in a background thread.
    keep_steps: steps never deleted (step 0: the untrained control for analysis).
    best: keep the newest checkpoint (to resume from) and ``best_step`` (set it before
      each save), instead of the last ``keep``.
  """

  def __init__(self, workdir: str, keep: int = 3, async_save: bool = True,
               keep_steps: tuple[int, ...] = (), best: bool = False):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    policies = [ocp.checkpoint_managers.LatestN(1 if best else keep),
                ocp.checkpoint_managers.CustomSteps(list(keep_steps))]
    self.best_step: int | None = None
    if best:
      policies.append(_KeepBest(self))
    policy = ocp.checkpoint_managers.AnyPreservationPolicy(policies)
    options = ocp.CheckpointManagerOptions(
        preservation_policy=policy, enable_async_checkpointing=async_save, create=True)
    self.manager = ocp.CheckpointManager(self.directory, options=options)

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def save(self, step: int, state: Any, data_state: Any, meta: dict) -> None:
    """Starts saving ``state`` (arrays), ``data_state`` and ``meta`` (JSON) at ``step``.

    Args:
      step: the step.
      state: the training state (must be finite: the loop checks before saving).
      data_state: this process's data-iterator state (``iterator.get_state()``), saved
        by every process to ``data/process_<i>-of-<n>.json``.
      meta: JSON metadata (written by the primary process). The state's integrity
        fingerprints are added to it (computed by every process: one jitted pass over the
        state and a fetch of 8 bytes per leaf, before the asynchronous write starts).
    """
    meta = dict(meta, fingerprints=fingerprint_lib.fingerprints(state),
                fingerprint_format=FINGERPRINT_FORMAT)
    self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state),
        data=grain_ckpt.CheckpointSave(_StateSnapshot(data_state)),
        meta=ocp.args.JsonSave(meta)))

  def delete(self, step: int) -> None:
    """Deletes the checkpoint of ``step`` (pending saves are finished first)."""
    self.manager.wait_until_finished()
    self.manager.delete(step)

  def restore(self, step: int, abstract_state: Any) -> tuple[Any, Any, dict]:
    """Restores (state, data_state, meta) at ``step``.

    Args:
      step: the checkpoint step.
      abstract_state: a tree of ``jax.ShapeDtypeStruct`` with shardings, the target
        structure (shapes must match the saved ones).

    Returns:
      The restored state, this process's data state and the metadata (without the
      fingerprints).

    Raises:
      CheckpointError: one line naming the folder and the cause, when the checkpoint is
        corrupt, partial, does not match the model, is not finite or does not match its
        fingerprints.
    """
    path = os.path.join(self.directory, str(step))
    try:
      out = self.manager.restore(step, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(abstract_state),
          meta=ocp.args.JsonRestore()))
      data_state = read_data_state(os.path.join(path, "data"))
    except Exception as e:  # orbax raises many kinds; report them in one place.
      raise CheckpointError(
          f"checkpoint {path} could not be restored ({_cause(e)}). "
          "It may be corrupt, partial, or saved from a different model config. Nothing was "
          "deleted: move that folder aside to resume from an earlier step, or use a new "
          "workdir.") from e
    _check_shapes(out.state, abstract_state, path)
    meta = dict(out.meta)
    check_fingerprints(out.state, meta, path)
    if not _finite(out.state["params"]):
      raise CheckpointError(
          f"checkpoint {path} holds non-finite parameters (NaN or inf): it is damaged. "
          "Nothing was deleted: move that folder aside to resume from an earlier step.")
    meta.pop("fingerprints", None)
    meta.pop("fingerprint_format", None)
    return out.state, data_state, meta

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


class _KeepBest:
  """An orbax preservation policy: keep the checkpoint of ``owner.best_step``."""

  def __init__(self, owner: Checkpointer):
    self.owner = owner

  def should_preserve(self, checkpoints, *, context) -> list[bool]:
    del context
    return [c.step == self.owner.best_step for c in checkpoints]


class _StateSnapshot:
  """The data state at save time, for grain's handler (which calls ``get_state()``).

  The iterator itself moves on while an asynchronous save runs; a snapshot does not.
  """

  def __init__(self, state: Any):
    self._text = json.dumps(state, indent=1)

  def get_state(self) -> bytes:
    return self._text.encode()


def read_data_state(data_dir: str) -> Any:
  """This process's data-iterator state from a checkpoint's ``data`` folder.

  Reads ``process_<i>-of-<n>.json`` (grain's layout); a checkpoint written before
  per-process state holds one JSON for all processes, read as a fallback.

  Raises:
    FileNotFoundError: when neither exists (e.g. a resume on a different process count).
  """
  folder = epath.Path(data_dir)
  index, count = jax.process_index(), jax.process_count()
  own = folder / f"process_{index}-of-{count}.json"
  if own.exists():
    return json.loads(own.read_text())
  legacy = folder / "metadata"  # orbax's JsonSave layout, one file for all processes
  if legacy.exists() and not list(folder.glob("process_*.json")):
    return json.loads(legacy.read_text())
  raise FileNotFoundError(f"{own} not found (saved by another number of processes?)")


def check_fingerprints(tree: Any, meta: dict, path: str, prefix: str = "") -> None:
  """Compares ``tree``'s fingerprints with those saved in ``meta`` (if any).

  Args:
    tree: the restored tree (the whole state, or a part of it).
    meta: the checkpoint's metadata; without ``fingerprints`` (older checkpoints) or with
      another ``fingerprint_format``, nothing is checked.
    path: the checkpoint folder, for the message.
    prefix: check only saved leaves whose path starts with it (a partial restore).

  Raises:
    CheckpointError: one line naming the folder and the first leaf that differs.
  """
  saved = meta.get("fingerprints")
  if not saved or meta.get("fingerprint_format") != FINGERPRINT_FORMAT:
    return
  saved = {k: v for k, v in saved.items() if k.startswith(prefix)}
  leaf = fingerprint_lib.first_mismatch(saved, fingerprint_lib.fingerprints(tree))
  if leaf is not None:
    raise CheckpointError(
        f"checkpoint {path} does not match the integrity fingerprint saved with it "
        f"(first at {leaf}): its bytes changed on disk after it was written. Nothing was "
        "deleted: move that folder aside to resume from an earlier step.")


def _cause(e: BaseException) -> str:
  """One line for an exception: the innermost cause's type and first line, cut short.

  orbax wraps TensorStore's error (which names the array and the failure, e.g.
  ``ZSTD_decompressStream() failed``) in one whose message holds TensorStore's whole spec
  (hundreds of lines); the innermost cause is the informative one.

  Returns:
    ``"<type>: <first line>"``, the line cut at ``_CAUSE_CHARS`` characters.
  """
  seen = {id(e)}
  while e.__cause__ is not None and id(e.__cause__) not in seen:
    e = e.__cause__
    seen.add(id(e))
  lines = str(e).strip().splitlines()
  first = lines[0].strip() if lines else ""
  if len(first) > _CAUSE_CHARS:
    first = first[:_CAUSE_CHARS] + "..."
  return f"{type(e).__name__}: {first}"


def _finite(tree: Any) -> bool:
  """True when every float leaf is finite (one reduction per leaf, one fetch)."""
  from modular.train.step import all_finite
  return bool(jax.jit(all_finite)(tree))


def _check_shapes(state: Any, abstract: Any, path: str) -> None:
  got = jax.tree.map(lambda x: tuple(x.shape), state)
  want = jax.tree.map(lambda x: tuple(x.shape), abstract)
  if got != want:
    raise CheckpointError(f"checkpoint {path} holds shapes that do not match the model")


def save_config(workdir: str, cfg: ml_collections.ConfigDict) -> None:
  """Writes ``workdir/config.json`` (atomically)."""
  os.makedirs(workdir, exist_ok=True)
  tmp = os.path.join(workdir, "config.json.tmp")
  with open(tmp, "w") as f:
    f.write(cfg.to_json_best_effort(indent=2))
  os.replace(tmp, os.path.join(workdir, "config.json"))


def load_config(workdir: str) -> ml_collections.ConfigDict:
  """Reads ``workdir/config.json`` back into a ConfigDict."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path} not found: is {workdir} a modular run folder?")
  with open(path) as f:
    saved = json.load(f)
  from modular import config as config_lib
  for (section, key), old in config_lib.OLD_RUN_DEFAULTS.items():
    if isinstance(saved.get(section), dict) and key not in saved[section]:
      saved[section][key] = old  # what the run trained with before the key existed
  return ml_collections.ConfigDict(_fill_missing(saved, config_lib.get_base_config().to_dict()))


def _fill_missing(saved: dict, defaults: dict) -> dict:
  """Adds keys that a newer version introduced, with their defaults (older run folders)."""
  for key, value in defaults.items():
    if key not in saved:
      saved[key] = value
    elif isinstance(value, dict) and isinstance(saved[key], dict) and "name" not in value:
      _fill_missing(saved[key], value)
  return saved


def load_for_analysis(workdir: str, step: int | None = None):
  """Restores a trained model for analysis, on whatever devices are here.

  Args:
    workdir: a run folder written by ``modular.train.loop.train``.
    step: the checkpoint step (default: the latest).

  Returns:
    (cfg, fm, params): the run's config, the ``FunctionalModel`` and its parameters
    (replicated on the local devices, whatever mesh the run was saved from).
  """
  from modular import config as config_lib
  from modular import models as models_lib
  from modular.objective import FunctionalModel

  cfg = load_config(workdir)
  config_lib.fill_derived(cfg)
  fm, params, _ = FunctionalModel.split(models_lib.build_model(cfg.model, cfg.train.seed))
  ckpt = Checkpointer(workdir, keep=cfg.train.keep_checkpoints, async_save=False)
  saved = ckpt.all_steps()
  step = ckpt.latest_step() if step is None else step
  if step is None:
    ckpt.close()
    raise CheckpointError(f"no checkpoint found in {ckpt.directory}")
  if step not in saved:
    ckpt.close()
    raise CheckpointError(f"--step {step}: that step was not saved in {ckpt.directory}; "
                          f"saved steps: {sorted(saved)}")
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding),
                          params)
  path = os.path.join(ckpt.directory, str(step))
  try:
    out = ckpt.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(
            item={"params": abstract},
            restore_args=jax.tree.map(lambda x: ocp.ArrayRestoreArgs(sharding=sharding),
                                      {"params": abstract}),
            partial_restore=True),
        meta=ocp.args.JsonRestore()))
    restored = out.state["params"]
  except Exception as e:
    raise CheckpointError(f"checkpoint {path} could not be restored for analysis "
                          f"({_cause(e)})") from e
  finally:
    ckpt.close()
  _check_shapes(restored, abstract, path)
  check_fingerprints({"params": restored}, dict(out.meta), path, prefix="params/")
  return cfg, fm, restored
