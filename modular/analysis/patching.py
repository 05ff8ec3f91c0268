"""Activation patching and attribution patching over every component in one call.

Two runs of the model on paired inputs (``modular.data.pairs``): the clean one and
the corrupted one (the answer changed by the task's declared rule). Patching a
component writes its output from the *source* run into the *target* run
(``Context.patches``; the write hook of ``Context.tap``) and measures a metric:

  denoise (default)   target = corrupted input, source = clean activations: which
                      components restore the clean behaviour;
  noise               target = clean input, source = corrupted activations: which
                      components break it.

Components (``site``): ``heads`` (each head's output [B, S, H, dh] of a layer, at all
positions or, with ``per_position``, at one position), ``neurons`` (each hidden unit
[B, S, F] of a dense FFN, likewise), ``resid`` (the residual stream entering each
layer, per position), ``attn`` and ``ffn`` (each layer's attention and FFN output
[B, S, d], whole or per position). Maps: [NL, H] for heads, [NL, F] for neurons,
[NL, S] for positions, [NL, S, H] for heads per position, per task.

Metrics, per task, over its examples' answer tokens (ratios of sums, so exact over
any batching): ``logit_diff`` = mean of logit[clean answer] - logit[corrupted answer]
over the answer positions where the two differ; ``loss`` = mean cross-entropy of the
clean answer. ``normalized`` = (patched - target) / (source - target): 1 where the
component alone carries the whole difference.

Every layer's components are vmapped (``lax.map`` chunks on CPU, as head ablation
does) in one jit-compiled call per batch; only the patched layer's weights are
batched, so the layers below it run once for all its components. Attribution
patching is one forward and one backward pass: per-example patch weights w = 0 at
every component, and dM/dw = (a_source - a_target) . dM/da, the first-order estimate
of every patch at once; ``agreement`` compares it with the exact effects. Path
patching (sender heads through receiver heads) is ``path_patching.py``.

References:
  Meng et al. 2022, "Locating and Editing Factual Associations in GPT" (causal
  tracing); Wang et al. 2023, "Interpretability in the Wild" (activation patching,
  logit difference); Nanda 2023, "Attribution Patching"; Syed et al. 2023,
  "Attribution Patching Outperforms Automated Circuit Discovery".
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

from modular.analysis.ablation import default_chunk
from modular.analysis.batches import split_batches
from modular.objective import FunctionalModel, Params, is_classification, token_losses

SITES = {"heads": "attn/attn_heads", "neurons": "ffn/ffn_act", "resid": "resid_pre",
         "attn": "attn/out", "ffn": "ffn/out"}
UNIT_SITES = ("heads", "neurons")  # sites with one component per head / neuron
METRICS = ("logit_diff", "loss")
DIRECTIONS = ("denoise", "noise")


def site_name(site: str, layer: int) -> str:
  """The ``Context.tap`` name of ``site`` in block ``layer`` ("block1/resid_pre")."""
  return f"block{layer}/{SITES[site]}"


def weight_patterns(site: str, seq_len: int, units: int, per_position: bool
                    ) -> np.ndarray:
  """One patch weight per component, broadcast against the site's activation.

  Component c of heads (neurons) is unit u (c = u), or position s of unit u
  (c = s * U + u) with ``per_position``; of the other sites position s (c = s), or
  the whole output (c = 0).

  Args:
    site: a key of ``SITES``.
    seq_len: S.
    units: U, heads H or FFN width F (unit sites only).
    per_position: one component per position.

  Returns:
    heads [C, 1, H, 1] / [C, S, H, 1] (against [B, S, H, dh]); neurons [C, 1, F] /
    [C, S, F]; other sites [C, S, 1] / [1, 1, 1] (against [B, S, d]).
  """
  if site in UNIT_SITES:
    if per_position:
      w = np.eye(seq_len * units, dtype=np.float32).reshape(-1, seq_len, units)
    else:
      w = np.eye(units, dtype=np.float32)[:, None, :]  # [U, 1, U]
    return w[..., None] if site == "heads" else w
  if not per_position:
    return np.ones((1, 1, 1), np.float32)
  return np.eye(seq_len, dtype=np.float32)[:, :, None]  # [S, S, 1]


def _weight_shape(site: str, shape: tuple[int, ...]) -> tuple[int, ...]:
  """Per-example weights of an activation: one per neuron, else per head / position."""
  return tuple(shape) if site == "neurons" else tuple(shape[:-1]) + (1,)


def example_metric(logits: jax.Array, clean: dict, alt_targets: jax.Array, metric: str
                   ) -> tuple[jax.Array, jax.Array]:
  """Each example's metric sum and count over its answer tokens.

  Args:
    logits: [B, S, V].
    clean: the clean batch (``targets``, ``mask`` [B, S]).
    alt_targets: [B, S] the corrupted run's targets (the distractor answers).
    metric: "logit_diff" or "loss".

  Returns:
    (sums [B], counts [B]); the metric of a set of examples is sum(sums) / sum(counts).
  """
  mask = clean["mask"].astype(jnp.float32)  # [B, S]
  targets = clean["targets"]
  if metric == "loss":
    return (token_losses(logits, targets) * mask).sum(-1), mask.sum(-1)
  logits = logits.astype(jnp.float32)
  right = jnp.take_along_axis(logits, targets[..., None], -1)[..., 0]  # [B, S]
  wrong = jnp.take_along_axis(logits, alt_targets[..., None], -1)[..., 0]
  where = mask * (targets != alt_targets)
  return ((right - wrong) * where).sum(-1), where.sum(-1)


def _per_task(values: jax.Array, task_id: jax.Array, num_tasks: int) -> jax.Array:
  return jax.nn.one_hot(task_id, num_tasks, dtype=jnp.float32).T @ values  # [T]


def _cache(fm: FunctionalModel, params: Params, source: dict, site: str):
  logits, ctx = fm.apply(params, source, capture=True)
  names = [site_name(site, l) for l in range(fm.num_layers)]
  missing = [n for n in names if n not in ctx.intermediates]
  if missing:
    raise ValueError(f"site {site!r}: the model writes no {missing[0]!r} (its blocks have "
                     "no such patching site)")
  return logits, [ctx.intermediates[n] for n in names]


@functools.partial(jax.jit, static_argnames=("fm", "site", "metric", "chunk"))
def patching_sums(fm: FunctionalModel, params: Params, target: dict, source: dict,
                  clean: dict, alt_targets: jax.Array, patterns: jax.Array, *, site: str,
                  metric: str, chunk: int | None = None):
  """Every component of every layer patched from ``source`` into ``target``, one batch.

  Args:
    fm, params: the model.
    target: the batch that runs (its inputs and task ids).
    source: the batch whose activations are written in.
    clean: the clean batch (targets and mask of the metric).
    alt_targets: [B, S] the corrupted batch's targets.
    patterns: [C, ...] patch weights (``weight_patterns``).
    site: a key of ``SITES``.
    metric: a name of ``METRICS``.
    chunk: components per vmapped step of ``lax.map`` (None: one vmap per layer).

  Returns:
    (target_sums [T], source_sums [T], patched_sums [NL, C, T], counts [T]).
  """
  nt = fm.num_tasks
  src_logits, cache = _cache(fm, params, source, site)

  def score(patches):
    logits, _ = fm.apply(params, target, capture=True, patches=patches)
    return _per_task(example_metric(logits, clean, alt_targets, metric)[0],
                     clean["task_id"], nt)

  sums = []
  for layer in range(fm.num_layers):
    def one(w, layer=layer):
      return score({site_name(site, layer): (w, cache[layer])})
    sums.append(jax.vmap(one)(patterns) if chunk is None
                else jax.lax.map(one, patterns, batch_size=chunk))
  src, counts = example_metric(src_logits, clean, alt_targets, metric)
  return (score(None), _per_task(src, clean["task_id"], nt), jnp.stack(sums),
          _per_task(counts, clean["task_id"], nt))


@functools.partial(jax.jit, static_argnames=("fm", "site", "metric"))
def attribution_sums(fm: FunctionalModel, params: Params, target: dict, source: dict,
                     clean: dict, alt_targets: jax.Array, *, site: str, metric: str
                     ) -> jax.Array:
  """Attribution patching: dM/dw at w = 0 for every example, layer and position.

  One forward and one backward pass. Per-example weights [B, S, (H,) 1] at every
  layer: example b's weights touch only example b's forward pass, so the gradient of
  the sum of example metrics is each example's own (a module coupling examples, a
  capacity-limited router, adds cross terms).

  Returns:
    [T, NL, S, U] (heads, neurons) or [T, NL, S] per-task sums of
    (a_source - a_target) . dM/da.
  """
  _, cache = _cache(fm, params, source, site)
  zeros = [jnp.zeros(_weight_shape(site, a.shape), jnp.float32) for a in cache]

  def total(weights):
    patches = {site_name(site, l): (w, a) for l, (w, a) in enumerate(zip(weights, cache))}
    logits, _ = fm.apply(params, target, capture=True, patches=patches)
    return example_metric(logits, clean, alt_targets, metric)[0].sum()

  grads = [g if site == "neurons" else g[..., 0] for g in jax.grad(total)(zeros)]
  grads = jnp.stack(grads, 1)  # [B, NL, S, (U)]
  onehot = jax.nn.one_hot(clean["task_id"], fm.num_tasks, dtype=jnp.float32)  # [B, T]
  return jnp.tensordot(onehot, grads, axes=((0,), (0,)))


@dataclasses.dataclass
class Agreement:
  """How well attribution patching estimates the exact effects (tasks with data).

  Attributes:
    pearson: linear correlation over every (layer, component, task) entry.
    spearman: rank correlation over the same entries.
    max_abs_diff: the largest |attribution - exact|.
    max_abs_exact: the largest |exact| (the scale of ``max_abs_diff``).
    entries: how many entries were compared.
  """

  pearson: float
  spearman: float
  max_abs_diff: float
  max_abs_exact: float
  entries: int


def agreement(exact: np.ndarray, approx: np.ndarray) -> Agreement:
  """Pearson, Spearman and max |difference| between two effect arrays."""
  x, y = np.ravel(exact).astype(np.float64), np.ravel(approx).astype(np.float64)
  keep = np.isfinite(x) & np.isfinite(y)
  x, y = x[keep], y[keep]
  constant = x.size < 2 or np.ptp(x) == 0 or np.ptp(y) == 0
  pearson = np.nan if constant else float(np.corrcoef(x, y)[0, 1])
  spearman = np.nan if constant else float(scipy.stats.spearmanr(x, y).statistic)
  diff = float(np.max(np.abs(x - y))) if x.size else np.nan
  return Agreement(pearson, spearman, diff, float(np.max(np.abs(x))) if x.size else np.nan,
                   int(x.size))


@dataclasses.dataclass
class PatchingResult:
  """Per-task effect of patching every component of one site.

  Attributes:
    site, metric, direction, per_position: what was patched and measured.
    effect: [NL, C, T] patched minus target metric (C as in ``weight_patterns``).
    normalized: [NL, C, T] effect / (source - target) (NaN where they are equal).
    target_metric: [T] the target run's metric; source_metric: [T] the source run's.
    counts: [T] answer tokens behind each task's metric (0: the task was not paired).
    attribution: [NL, C, T] the attribution-patching estimate of ``effect`` (or None).
    agreement: attribution against exact (or None).
    shape: the map of one task: (NL, H), (NL, F), (NL, S), (NL, S, H) or (NL, S, F).
  """

  site: str
  metric: str
  direction: str
  per_position: bool
  effect: np.ndarray
  normalized: np.ndarray
  target_metric: np.ndarray
  source_metric: np.ndarray
  counts: np.ndarray
  attribution: np.ndarray | None
  agreement: Agreement | None
  shape: tuple[int, ...]

  def task_map(self, task: int, which: str = "normalized") -> np.ndarray:
    """One task's map, [NL, H] / [NL, S] / [NL, S, H], of "normalized", "effect" or
    "attribution"."""
    return np.asarray(getattr(self, which))[..., task].reshape(self.shape)


def _check(site: str, metric: str, direction: str, clean: dict, corrupt: dict) -> None:
  if site not in SITES:
    raise ValueError(f"site: unknown {site!r}; known: {', '.join(SITES)}")
  if metric not in METRICS:
    raise ValueError(f"metric: unknown {metric!r}; known: {', '.join(METRICS)}")
  if direction not in DIRECTIONS:
    raise ValueError(f"direction: unknown {direction!r}; known: {', '.join(DIRECTIONS)}")
  if is_classification(clean):
    raise ValueError("patching needs next-token batches (targets, mask); got a "
                     "classification batch")
  for k in ("inputs", "targets", "mask", "task_id"):
    if np.shape(clean[k]) != np.shape(corrupt[k]):
      raise ValueError(f"clean and corrupted {k!r} differ in shape: "
                       f"{np.shape(clean[k])} vs {np.shape(corrupt[k])}")
  if not (np.array_equal(clean["mask"], corrupt["mask"])
          and np.array_equal(clean["task_id"], corrupt["task_id"])):
    raise ValueError("clean and corrupted examples must pair up: same mask and task ids")


def activation_patching(fm: FunctionalModel, params: Params, clean: dict, corrupt: dict, *,
                        site: str = "heads", metric: str = "logit_diff",
                        direction: str = "denoise", per_position: bool = False,
                        attribution: bool = True, batch_size: int = 64,
                        chunk: int | None | str = "auto", seed: int | None = 0
                        ) -> PatchingResult:
  """Exact (and attribution) patching of every component of ``site`` for every task.

  Args:
    fm, params: the model.
    clean, corrupt: paired pools of N examples (``data.pairs.corrupted_pairs``).
    site: "heads", "neurons", "resid", "attn" or "ffn".
    metric: "logit_diff" or "loss".
    direction: "denoise" (clean activations into the corrupted run) or "noise".
    per_position: one component per position (always for "resid").
    attribution: also run attribution patching and compare it with the exact maps.
    batch_size: pairs per batch.
    chunk: components per vmapped step ("auto": ``ablation.default_chunk``).
    seed: shuffles the pairs (the same permutation for both) so batches mix tasks.

  Returns:
    A ``PatchingResult``.
  """
  _check(site, metric, direction, clean, corrupt)
  per_position = per_position or site == "resid"
  n, seq = np.shape(clean["inputs"])
  if seed is not None:
    perm = np.random.default_rng(seed).permutation(n)
    clean = {k: np.asarray(v)[perm] for k, v in clean.items()}
    corrupt = {k: np.asarray(v)[perm] for k, v in corrupt.items()}
  pairs = list(zip(split_batches(clean, batch_size), split_batches(corrupt, batch_size)))
  if chunk == "auto":
    chunk = default_chunk(pairs[0][0]["inputs"].shape[0])
  units = fm.num_heads
  if site == "neurons":  # the FFN width, from the traced shapes
    units = jax.eval_shape(lambda q, b: _cache(fm, q, b, site)[1], params,
                           pairs[0][0])[0].shape[-1]
  patterns = jnp.asarray(weight_patterns(site, seq, units, per_position))
  nt = fm.num_tasks
  tgt, src, counts = np.zeros(nt), np.zeros(nt), np.zeros(nt)
  patched = np.zeros((fm.num_layers, patterns.shape[0], nt))
  attr = None
  for c, x in pairs:
    target, source = (x, c) if direction == "denoise" else (c, x)
    args = (fm, params, target, source, c, jnp.asarray(x["targets"]))
    t, s, p, k = jax.device_get(patching_sums(*args, patterns, site=site, metric=metric,
                                              chunk=chunk))
    tgt, src, patched, counts = tgt + t, src + s, patched + p, counts + k
    if attribution:
      a = np.asarray(jax.device_get(attribution_sums(*args, site=site, metric=metric)))
      attr = a if attr is None else attr + a
  denom = np.maximum(counts, 1.0)
  tgt, src, patched = tgt / denom, src / denom, patched / denom
  effect = patched - tgt  # [NL, C, T]
  with np.errstate(invalid="ignore", divide="ignore"):
    gap = src - tgt
    normalized = np.where(gap != 0, effect / np.where(gap != 0, gap, 1.0), np.nan)
  normalized[..., counts == 0] = np.nan
  unit_site = site in UNIT_SITES
  shape = ((fm.num_layers, units) if unit_site and not per_position else
           (fm.num_layers, seq, units) if unit_site else
           (fm.num_layers, seq) if per_position else (fm.num_layers, 1))
  agree = None
  if attr is not None:
    attr = np.moveaxis(attr / denom.reshape((-1,) + (1,) * (attr.ndim - 1)), 0, -1)
    if unit_site and not per_position:
      attr = attr.sum(1)  # [NL, U, T]: a head (neuron) patched at every position
    elif not per_position:
      attr = attr.sum(1, keepdims=True)  # [NL, 1, T]
    attr = attr.reshape(effect.shape)
    present = counts > 0
    agree = agreement(effect[..., present], attr[..., present])
  return PatchingResult(site, metric, direction, per_position, effect, normalized, tgt, src,
                        counts, attr, agree, shape)
