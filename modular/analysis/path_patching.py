"""Path patching: a sender head's effect on the metric through chosen receiver heads only.

For every sender head (l, h) below the receivers' layer R, three runs (Wang et al.
2023, §3.1), all on the target input (``patching.py``: denoise = corrupted input,
clean activations):

  1. the target and source runs, caching every head's output;
  2. the target run with the sender's output from the source run and every other
     head of the layers below R frozen to its target output, so the sender's change
     reaches layer R only directly (FFNs recompute); layer R's head outputs are kept;
  3. the target run with only the receivers' outputs replaced by those of run 2;

and the metric of run 3 minus the target's is the sender's effect through the
receivers. The receivers are heads of one layer R (a receiver below another would
open an indirect path between them). Every sender of a layer is one vmapped step; all
layers are one jit-compiled call per batch.

References:
  Wang et al. 2023, "Interpretability in the Wild: a Circuit for Indirect Object
  Identification in GPT-2 small" (path patching); Goldowsky-Dill et al. 2023,
  "Localizing Model Behavior with Path Patching".
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from modular.analysis.batches import split_batches
from modular.analysis.patching import _cache, _check, _per_task, example_metric, site_name
from modular.objective import FunctionalModel, Params


@functools.partial(jax.jit, static_argnames=("fm", "layer", "metric"))
def path_patching_sums(fm: FunctionalModel, params: Params, target: dict, source: dict,
                       clean: dict, alt_targets: jax.Array, receivers: jax.Array, *,
                       layer: int, metric: str):
  """Every sender below ``layer`` patched into the target through ``receivers``.

  Args:
    fm, params, target, source, clean, alt_targets: as ``patching.patching_sums``.
    receivers: [H] 1.0 on the receiver heads of layer ``layer``.
    layer: R, the receivers' layer (>= 1).
    metric: "logit_diff" or "loss" (``patching.example_metric``).

  Returns:
    (target_sums [T], source_sums [T], patched_sums [R, H, T], counts [T]).
  """
  nt, nh = fm.num_tasks, fm.num_heads
  src_logits, src = _cache(fm, params, source, "heads")
  _, tgt = _cache(fm, params, target, "heads")
  ones = jnp.ones((1, nh, 1), jnp.float32)
  recv = site_name("heads", layer)

  def score(patches):
    logits, _ = fm.apply(params, target, capture=True, patches=patches)
    return _per_task(example_metric(logits, clean, alt_targets, metric)[0],
                     clean["task_id"], nt)

  sums = []
  for l in range(layer):
    def one(sender, l=l):  # sender [H] one-hot
      mixed = tgt[l] + sender[:, None] * (src[l] - tgt[l])  # [B, S, H, dh]
      frozen = {site_name("heads", k): (ones, mixed if k == l else tgt[k])
                for k in range(layer)}
      _, ctx = fm.apply(params, target, capture=True, patches=frozen)
      return score({recv: (receivers[:, None], ctx.intermediates[recv])})
    sums.append(jax.vmap(one)(jnp.eye(nh, dtype=jnp.float32)))
  src_sum, counts = example_metric(src_logits, clean, alt_targets, metric)
  return (score(None), _per_task(src_sum, clean["task_id"], nt), jnp.stack(sums),
          _per_task(counts, clean["task_id"], nt))


@dataclasses.dataclass
class PathPatchingResult:
  """Per-task effect of every sender head through the receivers.

  Attributes:
    receivers: [(R, h), ...] the receiver heads.
    metric, direction: as ``patching.PatchingResult``.
    effect: [R, H, T] run-3 metric minus the target's, per sender (l, h), l < R.
    normalized: [R, H, T] effect / (source - target).
    counts: [T] answer tokens behind each task's metric.
  """

  receivers: list[tuple[int, int]]
  metric: str
  direction: str
  effect: np.ndarray
  normalized: np.ndarray
  counts: np.ndarray


def path_patching(fm: FunctionalModel, params: Params, clean: dict, corrupt: dict,
                  receivers: list[tuple[int, int]], *, metric: str = "logit_diff",
                  direction: str = "denoise", batch_size: int = 64) -> PathPatchingResult:
  """Path patching of every sender head into ``receivers`` (heads of one layer).

  Args:
    fm, params: the model.
    clean, corrupt: paired pools (``data.pairs.corrupted_pairs``).
    receivers: (layer, head) pairs, all in one layer R >= 1.
    metric: a name of ``patching.METRICS``.
    direction: "denoise" or "noise" (``patching.activation_patching``).
    batch_size: pairs per batch.

  Returns:
    A ``PathPatchingResult``.
  """
  _check("heads", metric, direction, clean, corrupt)
  layers = {l for l, _ in receivers}
  if len(layers) != 1 or not 1 <= min(layers) < fm.num_layers or any(
      not 0 <= h < fm.num_heads for _, h in receivers):
    raise ValueError(f"receivers: {receivers} must be heads (layer, head) of one layer in "
                     f"[1, {fm.num_layers}) with head in [0, {fm.num_heads})")
  layer = layers.pop()
  mask = np.zeros(fm.num_heads, np.float32)
  mask[[h for _, h in receivers]] = 1.0
  nt = fm.num_tasks
  tgt, src, counts = np.zeros(nt), np.zeros(nt), np.zeros(nt)
  patched = np.zeros((layer, fm.num_heads, nt))
  for c, x in zip(split_batches(clean, batch_size), split_batches(corrupt, batch_size)):
    target, source = (x, c) if direction == "denoise" else (c, x)
    t, s, p, k = jax.device_get(path_patching_sums(
        fm, params, target, source, c, jnp.asarray(x["targets"]), jnp.asarray(mask),
        layer=layer, metric=metric))
    tgt, src, patched, counts = tgt + t, src + s, patched + p, counts + k
  denom = np.maximum(counts, 1.0)
  tgt, src, patched = tgt / denom, src / denom, patched / denom
  effect = patched - tgt
  gap = src - tgt
  with np.errstate(invalid="ignore", divide="ignore"):
    normalized = np.where(gap != 0, effect / np.where(gap != 0, gap, 1.0), np.nan)
  return PathPatchingResult(sorted(receivers), metric, direction, effect, normalized, counts)
