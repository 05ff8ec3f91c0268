"""Per-task statistics that Fisher merging and RegMean consume, from a run's model and data.

* ``fisher_diagonal``: the diagonal Fisher of a model on a task's examples, the mean
  over examples of the squared per-example gradient of the log-likelihood,
  ``F = (1/N) sum_i (d log p(y_i | x_i) / d theta)^2`` (``[*shape]`` per leaf); the
  per-example gradients are a ``vmap`` of ``grad`` under ``jit``, ``chunk`` examples
  at a time. ``y_i`` is the data's label (``"empirical"``) or drawn from the model
  (``"sampled"``). A sequence example's log-likelihood sums its answer tokens.
* ``gram_matrices``: per linear layer, the Gram of its inputs over real tokens,
  ``G = X^T X / n`` (``[d_in, d_in]``), read from the capture switch
  (``FunctionalModel.apply(capture=True)``: ``attn_in`` for ``wq``/``wk``/``wv``,
  ``attn_heads`` for ``wo``, ``ffn_in`` for ``w_in``, ``ffn_act`` for ``w_out``,
  ``final`` for a shared head's ``kernel``; ``LINEAR_INPUTS``).
* ``for_run``: either of them on ``num_examples`` examples of a run's training data
  (``data.make_train_iterator``, the run's own data config and batch size).

Both return ``{path: array}`` keyed like the model's parameters, what
``merge(..., statistics=[...])`` takes (one dict per task vector); ``save``/``load``
keep them in an ``.npz``.

References:
  Matena & Raffel 2022, "Merging Models with Fisher-Weighted Averaging", NeurIPS,
  Sec. 2.2 (Eq. 5); Jin et al. 2023, "Dataless Knowledge Fusion by Merging Weights
  of Language Models", ICLR, Sec. 3.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

from modular.paths import flat_paths

PyTree = Any
KINDS = ("fisher", "gram")
# (weight path regex, capture key of its input with {i} the block index)
LINEAR_INPUTS = (
    (r"^blocks/(\d+)/attn/w[qkv]$", "block{i}/attn/attn_in"),
    (r"^blocks/(\d+)/attn/wo$", "block{i}/attn/attn_heads"),
    (r"^blocks/(\d+)/ffn/w_in$", "block{i}/ffn/ffn_in"),
    (r"^blocks/(\d+)/ffn/w_out$", "block{i}/ffn/ffn_act"),
    (r"^head/kernel$", "final"),
)


def model_log_likelihood(fm) -> Callable:
  """``f(params, batch, key) -> (log p(y|x) [B], valid [B])`` of a ``FunctionalModel``.

  ``key`` None: ``y`` is the batch's label (classification) or answer tokens; else
  ``y`` is drawn from the model's own distribution (no gradient through the draw).
  """
  from modular import objective

  def f(params, batch, key=None):
    logits, _ = fm.apply(params, batch)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    if objective.is_classification(batch):
      label = batch["label"].astype(jnp.int32)  # [B]
      valid = label >= 0
      if key is not None:
        label = jax.random.categorical(key, jax.lax.stop_gradient(logp))
      ll = jnp.take_along_axis(logp, jnp.maximum(label, 0)[:, None], axis=-1)[:, 0]
      return ll * valid, valid.astype(jnp.float32)
    mask = batch["mask"].astype(jnp.float32)  # [B, L]
    targets = batch["targets"]
    if key is not None:
      targets = jax.random.categorical(key, jax.lax.stop_gradient(logp))
    tok = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]  # [B, L]
    return (tok * mask).sum(-1), (mask.sum(-1) > 0).astype(jnp.float32)

  return f


@functools.partial(jax.jit, static_argnums=(0,))
def _fisher_sums(log_likelihood: Callable, params: PyTree, batch: dict,
                 key: jax.Array | None) -> tuple[PyTree, jax.Array]:
  """``sum_i valid_i g_i^2`` and ``sum_i valid_i`` over one chunk of examples."""

  def one(example, k):
    single = jax.tree.map(lambda x: x[None], example)  # a batch of one [1, ...]

    def ll(p):
      value, valid = log_likelihood(p, single, k)
      return value[0], valid[0]

    grad, valid = jax.grad(ll, has_aux=True)(params)
    return jax.tree.map(lambda g: valid * jnp.square(g.astype(jnp.float32)), grad), valid

  n = jax.tree.leaves(batch)[0].shape[0]
  keys = None if key is None else jax.random.split(key, n)
  squares, valid = jax.vmap(one, in_axes=(0, None if keys is None else 0))(batch, keys)
  return jax.tree.map(lambda s: s.sum(0), squares), valid.sum()


def fisher_diagonal(log_likelihood: Callable, params: PyTree, batches: Iterable[dict], *,
                    num_examples: int | None = None, chunk: int = 8,
                    key: jax.Array | None = None) -> dict[str, jax.Array]:
  """The diagonal (empirical or sampled) Fisher of ``params`` over ``batches``.

  Args:
    log_likelihood: ``f(params, batch, key) -> (log p [B], valid [B])`` (valid: 1 on
      examples that carry a label; ``model_log_likelihood`` for the framework's model).
    params: the parameter pytree.
    batches: batches of examples (dicts of ``[B, ...]`` arrays).
    num_examples: stop after this many valid examples (None: all batches).
    chunk: examples per ``vmap`` (per-example gradients in memory: ``chunk`` models).
    key: None for the data's labels; a PRNG key to draw labels from the model.

  Returns:
    ``{path: F [*shape]}`` float32, the mean over the valid examples.

  Raises:
    ValueError: no batch holds a valid example.
  """
  total, count = None, 0.0
  for b, batch in enumerate(batches):
    size = len(jax.tree.leaves(batch)[0])
    for start in range(0, size, chunk):
      part = {k: jnp.asarray(v[start:start + chunk]) for k, v in batch.items()}
      k = None if key is None else jax.random.fold_in(key, b * size + start)
      sums, n = _fisher_sums(log_likelihood, params, part, k)
      total = sums if total is None else jax.tree.map(jnp.add, total, sums)
      count += float(n)
    if num_examples is not None and count >= num_examples:
      break
  if not count:
    raise ValueError("merging.statistics: no labelled example to compute a Fisher on")
  return {p: v / count for p, v in flat_paths(total).items()}


def linear_inputs(params: PyTree) -> dict[str, str]:
  """``{weight path: capture key of its input}`` for the linear layers of ``params``."""
  out = {}
  for path in flat_paths(params):
    for pattern, capture in LINEAR_INPUTS:
      m = re.match(pattern, path)
      if m:
        out[path] = capture.format(i=m.group(1) if m.groups() else "")
  return out


@functools.partial(jax.jit, static_argnums=(0, 1))
def _gram_sums(fm, names: tuple[str, ...], params: PyTree,
               batch: dict) -> tuple[dict[str, jax.Array], jax.Array]:
  """``sum_r m_r x_r x_r^T`` of the captured inputs ``names`` [B, L, ...] over real tokens."""
  from modular import objective
  _, ctx = fm.apply(params, batch, capture=True)
  tok = objective.token_mask(batch).astype(jnp.float32).reshape(-1)  # [B L]
  grams = {}
  for name in names:
    if name in ctx.intermediates:
      x = ctx.intermediates[name]  # [B, L, ...]
      rows = x.reshape(tok.shape[0], -1).astype(jnp.float32)  # [B L, n]
      grams[name] = jnp.einsum("r,ri,rj->ij", tok, rows, rows)
  return grams, tok.sum()


def gram_matrices(fm, params: PyTree, batches: Iterable[dict], *,
                  num_examples: int | None = None) -> dict[str, jax.Array]:
  """The input Gram ``X^T X / n`` of every linear layer over the real tokens of ``batches``.

  Args:
    fm: a ``FunctionalModel``.
    params: its parameters.
    batches: batches (real tokens: ``objective.token_mask``).
    num_examples: stop after this many examples (None: all batches).

  Returns:
    ``{weight path: G [d_in, d_in]}`` float32 for the leaves in ``linear_inputs``
    whose input the model captures.

  Raises:
    ValueError: no real token in ``batches``.
  """
  inputs = linear_inputs(params)
  names = tuple(sorted(set(inputs.values())))
  total, tokens, examples = None, 0.0, 0
  for batch in batches:
    sums, n = _gram_sums(fm, names, params, {k: jnp.asarray(v) for k, v in batch.items()})
    total = sums if total is None else {k: total[k] + v for k, v in sums.items()}
    tokens += float(n)
    examples += len(jax.tree.leaves(batch)[0])
    if num_examples is not None and examples >= num_examples:
      break
  if not tokens:
    raise ValueError("merging.statistics: no real token to compute the Grams on")
  return {p: total[c] / tokens for p, c in inputs.items() if c in total}


def for_run(kind: str, cfg, fm, params: PyTree, *, num_examples: int = 256,
            fisher: str = "empirical", seed: int = 0) -> dict[str, jax.Array]:
  """``kind``'s statistics of a run's model on ``num_examples`` of its training data.

  Args:
    kind: ``"fisher"`` or ``"gram"``.
    cfg: the run's config (``cfg.data``, ``cfg.train.batch_size``).
    fm: the run's ``FunctionalModel`` (the dense one for a folded LoRA run).
    params: the run's parameters in ``fm``'s layout.
    num_examples: training examples read.
    fisher: ``"empirical"`` or ``"sampled"`` (Fisher only).
    seed: the key of the sampled labels.

  Returns:
    ``{path: array}`` (``fisher_diagonal`` or ``gram_matrices``).
  """
  from modular import data as data_lib
  if kind == "coefficients":
    raise ValueError("merging.statistics: adamerging's coefficients are learned over all "
                     "runs together (merge_runs, methods.adamerging.learn_coefficients)")
  if kind not in KINDS:
    raise ValueError(f"merging.statistics: unknown kind {kind!r}; known: {', '.join(KINDS)}")
  it = data_lib.make_train_iterator(cfg.data, cfg.train.batch_size)
  steps = -(-num_examples // cfg.train.batch_size)
  batches = [next(it) for _ in range(steps)]
  if kind == "gram":
    return gram_matrices(fm, params, batches, num_examples=num_examples)
  key = jax.random.key(seed) if fisher == "sampled" else None
  return fisher_diagonal(model_log_likelihood(fm), params, batches,
                         num_examples=num_examples, key=key)


def save(path: str, stats: dict[str, Any]) -> None:
  """Writes ``{path: array}`` to an ``.npz`` (keys are the parameter paths)."""
  np.savez(path, **{k: np.asarray(v) for k, v in stats.items()})


def load(path: str) -> dict[str, np.ndarray]:
  """Reads ``save``'s ``.npz``; one line when it is missing or not an ``.npz``."""
  try:
    with np.load(path) as z:
      return {k: z[k] for k in z.files}
  except (OSError, ValueError) as e:
    raise ValueError(f"merging.statistics: cannot read {path}: {e}") from None
