"""Warm start (``train.init_from``): a trained run's parameters into a new model.

Every parameter of the new model gets its value from the source run by one rule, in
this order:

  1. the same path with the same shape: copied (modules trained before, too);
  2. the dense path that feeds it (``modules.peft.dense_path``: a LoRA / Polytropon
     ``ffn/base/w_in`` from the dense ``ffn/w_in``, a block-level expert
     ``blocks/i/experts/e/...`` from ``blocks/i/...``) with the same shape: copied;
  3. a stacked expert leaf [E, ...] whose dense parameter has shape [...]: copied into
     every expert ("sparse upcycling"). The experts must have the dense width: for the
     token- and task-level MoE set ``model.ffn.expert_d_ff`` to ``model.d_ff``.

Source paths are read through the same map, so a LoRA run's ``ffn/base`` also feeds a
plain or an adapter model. Every backbone parameter of the new model
(``modules.peft.is_backbone`` of its dense path) must get a value; otherwise the run
stops with one line listing what did not match, rather than train modules on a random
(and, in the parameter-efficient mode, frozen) backbone. Module parameters without a
source keep their initialization, which for LoRA (B = 0), adapters (zero
up-projection) and identical upcycled experts whose gates sum to one makes the new model
compute the dense one's function at step 0.

References:
  Komatsuzaki et al. 2023, "Sparse Upcycling: Training Mixture-of-Experts from Dense
  Checkpoints" (ICLR; arXiv 2022).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from modular.modules import peft
from modular.paths import flat_paths, path_str

_SHOWN = 8  # mismatches named in the error line


def plan(target: dict[str, tuple[int, ...]], source: dict[str, Any]
         ) -> tuple[dict[str, tuple[str, str]], list[str]]:
  """Decides where every target parameter comes from.

  Args:
    target: ``{path: shape}`` of the new model.
    source: ``{path: array}`` of the source run.

  Returns:
    ``(sources, missing)``: ``sources[path] = (source_path, "copy" | "upcycle")`` for
    the parameters that get a value; ``missing`` describes each backbone parameter
    that gets none (``"path (wants [..], source has [..])"``).
  """
  by_dense: dict[str, str] = {}
  for k in source:
    by_dense.setdefault(peft.dense_path(k), k)
  sources: dict[str, tuple[str, str]] = {}
  missing: list[str] = []
  for path, shape in target.items():
    dense = peft.dense_path(path)
    found = [k for k in (path, dense) if k in source] or (
        [by_dense[dense]] if dense in by_dense else [])
    choice = None
    for k in found:
      src_shape = tuple(source[k].shape)
      if src_shape == tuple(shape):
        choice = (k, "copy")
      elif peft.is_backbone(dense) and tuple(shape[1:]) == src_shape and len(shape) > 1:
        choice = (k, "upcycle")
      if choice:
        break
    if choice:
      sources[path] = choice
    elif peft.is_backbone(dense):
      have = f"source has {list(source[found[0]].shape)}" if found else "not in the source"
      hint = ""
      if found and len(shape) == len(source[found[0]].shape) + 1:
        hint = "; experts need the dense width: set the MoE's expert_d_ff to model.d_ff"
      missing.append(f"{path} (wants {list(shape)}, {have}{hint})")
  return sources, missing


def load_params(target: Any, source: Any, where: str = "the source",
                shardings: Any = None) -> tuple[Any, dict[str, int]]:
  """The target parameter dict with values from ``source`` (see the module docstring).

  Args:
    target: the new model's parameter dict (initialized).
    source: the source run's parameter dict.
    where: the source, named in the error.
    shardings: optional NamedShardings of ``target`` (the loaded leaves are put there).

  Returns:
    ``(params, counts)``: counts of ``copied``, ``upcycled``, ``kept`` (module
    parameters left at init) and ``unused`` source parameters.

  Raises:
    ValueError: ``config.train.init_from: ...`` in one line when a backbone parameter
      gets no value, or when no parameter matches at all.
  """
  flat_src = {k: np.asarray(v) for k, v in flat_paths(source).items()}
  shapes = {k: tuple(v.shape) for k, v in flat_paths(target).items()}
  sources, missing = plan(shapes, flat_src)
  if missing:
    shown = ", ".join(missing[:_SHOWN]) + (" ..." if len(missing) > _SHOWN else "")
    raise ValueError(f"config.train.init_from: {len(missing)} backbone parameters of this "
                     f"model get no value from {where}: {shown}")
  if not sources:
    raise ValueError(f"config.train.init_from: no parameter of {where} matches this model "
                     "(paths or shapes differ)")
  if shardings is None:
    shardings = jax.tree.map(lambda _: None, target)

  def pick(path, leaf, sharding):
    name = path_str(path)
    if name not in sources:
      return leaf
    k, mode = sources[name]
    value = flat_src[k].astype(leaf.dtype)
    if mode == "upcycle":
      value = np.broadcast_to(value, leaf.shape)
    return jax.device_put(value, sharding) if sharding is not None else jax.numpy.asarray(value)

  params = jax.tree_util.tree_map_with_path(pick, target, shardings)
  used = {k for k, _ in sources.values()}
  counts = {"copied": sum(m == "copy" for _, m in sources.values()),
            "upcycled": sum(m == "upcycle" for _, m in sources.values()),
            "kept": len(shapes) - len(sources), "unused": len(set(flat_src) - used)}
  return params, counts


def warm_start(run: Any, state: dict, source_workdir: str) -> dict:
  """Loads the latest parameters of ``source_workdir`` into a fresh training state.

  Args:
    run: this run (``modular.train.loop.Run``: its parameter shardings are used).
    state: the fresh training state.
    source_workdir: a run folder with checkpoints (its latest step is used).

  Returns:
    The state with its parameters loaded; prints what was copied.

  Raises:
    ValueError: see ``load_params``.
  """
  from modular.train import checkpoint as ckpt_lib

  _, _, source = ckpt_lib.load_for_analysis(source_workdir)
  params, counts = load_params(state["params"], source, source_workdir,
                               run.state_shardings["params"])
  total = len(jax.tree.leaves(params))
  print(f"warm start from {source_workdir}: {counts['copied']} copied, "
        f"{counts['upcycled']} upcycled into experts, {counts['kept']} of {total} kept at "
        f"init; {counts['unused']} source parameters unused", flush=True)
  return {**state, "params": params}
