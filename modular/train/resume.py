"""A resumed run is the same run: the saved config against the new one.

``check_same_run(saved, new, workdir)`` runs before anything in the workdir changes.
Keys are compared as dotted paths (``data.tasks``, ``model.ffn.num_experts``); a key
that defines the run and differs stops the resume with one line naming the key and
the folder. What may change on a resume is ``MAY_CHANGE`` (prefixes): the length of
the run, cadences, where data lives, the device mesh, how the same update is computed
(``train.microbatches``, ``model.remat``, ``mtl.gram``), and the optimizer's scalar
hyperparameters (a learning-rate change is a deliberate intervention, watched by the
non-finite guard). Everything else (data, tasks and their order, sizes, sampling,
seeds, model, method, optimizer kind, frozen and multiplier rules) defines the run.
"""

from __future__ import annotations

import json
from typing import Any

import ml_collections

# Dotted prefixes of keys that may differ between a run and its resume.
MAY_CHANGE = (
    "name",
    "train.steps", "train.log_every", "train.eval_every", "train.checkpoint_every",
    "train.keep_checkpoints", "train.async_checkpoint", "train.progress",
    "train.block_every_step", "train.on_nonfinite", "train.max_consecutive_skips",
    "train.init_from", "train.keep_step0", "train.microbatches",
    "model.remat", "mtl.gram",
    "data.data_dir",
    "mesh.",
    "optim.learning_rate", "optim.schedule", "optim.warmup_steps", "optim.end_lr_factor",
    "optim.weight_decay", "optim.grad_clip", "optim.b1", "optim.b2",
)


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
  """``{"a.b": leaf}`` of a nested dict/ConfigDict; lists and tuples become JSON lists."""
  if isinstance(tree, ml_collections.ConfigDict):
    tree = tree.to_dict()
  if isinstance(tree, dict):
    out: dict[str, Any] = {}
    for k, v in tree.items():
      out.update(flatten(v, f"{prefix}{k}."))
    return out
  return {prefix[:-1]: json.loads(json.dumps(tree, default=str))}


def may_change(key: str) -> bool:
  """True for a key listed in ``MAY_CHANGE`` (exactly, or under a prefix ending in '.')."""
  return any(key == p or (p.endswith(".") and key.startswith(p)) or key.startswith(p + ".")
             for p in MAY_CHANGE)


def differences(saved: Any, new: Any) -> list[tuple[str, Any, Any]]:
  """(key, saved value, new value) for every defining key that differs, sorted by key."""
  a, b = flatten(saved), flatten(new)
  missing = object()
  out = []
  for key in sorted(set(a) | set(b)):
    va, vb = a.get(key, missing), b.get(key, missing)
    if vb is missing:  # a key this version no longer has cannot define the run
      continue
    if va != vb and not may_change(key):
      out.append((key, None if va is missing else va, None if vb is missing else vb))
  return out


def check_same_run(saved: Any, new: Any, workdir: str) -> None:
  """Raises if ``new`` is not the run saved in ``workdir``.

  Args:
    saved: the config read from ``workdir/config.json`` (keys added since filled with
      their defaults).
    new: the config of this launch, with derived sizes filled.
    workdir: the run folder, for the message.

  Raises:
    ValueError: ``config.<key>: ... differs from the run in <workdir> ...`` for the first
      differing key that defines the run.
  """
  diffs = differences(saved, new)
  if diffs:
    key, was, now = diffs[0]
    more = f" (and {len(diffs) - 1} more: {', '.join(d[0] for d in diffs[1:4])})" \
        if len(diffs) > 1 else ""
    raise ValueError(
        f"config.{key}: {now!r} differs from {was!r} of the run in {workdir}{more}; a resume "
        "must be the same run (only steps, cadences, data_dir, mesh and optimizer scalars "
        "may change): use a new --workdir")
