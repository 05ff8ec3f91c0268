"""AdaMerging: task-wise (or layer-wise) merging coefficients learned by entropy minimization.

The merged model is ``theta(lam) = theta_0 + sum_t lam_t tau_t`` (task-wise) or, per leaf
in layer ``l``, ``theta_0 + sum_t lam_{t,l} tau_t`` (layer-wise); the coefficients
minimize the mean Shannon entropy of the merged model's predictions on unlabeled test
inputs, ``min_lam E_x H(p(. | x; theta(lam)))``, with Adam (optax, learning rate 1e-3,
coefficients initialized at 0.3, the paper's settings; ``steps`` 500 in the paper).

Two parts, the same split as Fisher merging's: ``learn_coefficients`` runs the jitted
optax loop on a model function and returns, per task, ``{path: lam_t(path)}``; the method
consumes them as statistics (``statistics = "coefficients"``, one ``{path: scalar}`` per
task) and merges each leaf as ``sum_t lam_t tau_t``; a leaf without coefficients gets
``init``. ``merge_runs`` learns them on the first ``num_batches`` test batches of every
run (inputs only: each run's model with its own heads, the entropy over its answer
tokens or examples), or takes them as ``--statistics`` files (``statistics.save``).

References:
  Yang et al. 2024, "AdaMerging: Adaptive Model Merging for Multi-Task Learning", ICLR,
  Sec. 3.2 (Eqs. 4-6) and Sec. 4 (Adam, lr 1e-3, lambda init 0.3).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Sequence

import jax
import jax.numpy as jnp
import optax

from modular.merging.method import MergeMethod, at_least, option, per_task, register
from modular.merging.methods.lines import block_index

PyTree = Any


def entropy(logits: jax.Array, valid: jax.Array) -> jax.Array:
  """Mean Shannon entropy of ``softmax(logits [N, C])`` over the rows where ``valid [N]``."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  h = -jnp.sum(jnp.exp(logp) * logp, axis=-1)  # [N]
  return jnp.sum(h * valid) / jnp.maximum(jnp.sum(valid), 1.0)


def layer_key(path: str) -> str:
  """The coefficient group of a leaf in layer-wise mode: ``blocks/<i>`` or the top name."""
  i = block_index(path)
  return f"blocks/{i}" if i is not None else path.split("/", 1)[0]


def learn_coefficients(logits_fn: Callable[[dict, dict], tuple[jax.Array, jax.Array]],
                       base: dict[str, jax.Array], task_vectors: Sequence[dict[str, Any]],
                       batches: Iterable[dict], *, layer_wise: bool = False,
                       steps: int = 500, learning_rate: float = 1e-3,
                       init: float = 0.3) -> list[dict[str, jax.Array]]:
  """Learns the merging coefficients by entropy minimization on unlabeled batches.

  Args:
    logits_fn: ``f(flat params {path: array}, batch) -> (logits [N, C], valid [N])``
      (e.g. the framework's model on a batch, rows = examples or real tokens).
    base: flat base parameters ``{path: array}``.
    task_vectors: ``T`` flat task vectors on a subset of ``base``'s paths.
    batches: unlabeled batches, cycled over the ``steps``.
    layer_wise: one coefficient per task and layer (``layer_key``) instead of per task.
    steps: Adam steps.
    learning_rate: Adam's learning rate.
    init: the coefficients' initial value.

  Returns:
    ``T`` dicts ``{path: lam_t(path)}`` (float32 scalars) over the task vectors' paths.
  """
  paths = sorted(task_vectors[0])
  groups = sorted({layer_key(p) for p in paths}) if layer_wise else ["all"]
  group_of = {p: groups.index(layer_key(p)) if layer_wise else 0 for p in paths}
  taus = {p: jnp.stack([jnp.asarray(tv[p], jnp.float32) for tv in task_vectors])
          for p in paths}  # [T, *shape]
  lam = jnp.full((len(task_vectors), len(groups)), init, jnp.float32)  # [T, G]
  opt = optax.adam(learning_rate)

  def loss(lam, batch):
    flat = dict(base)
    for p in paths:
      flat[p] = base[p] + jnp.sum(taus[p] * per_task(lam[:, group_of[p]], taus[p]), axis=0)
    return entropy(*logits_fn(flat, batch))

  @jax.jit
  def step(lam, state, batch):
    grad = jax.grad(loss)(lam, batch)
    updates, state = opt.update(grad, state, lam)
    return optax.apply_updates(lam, updates), state

  batches = list(batches)
  state = opt.init(lam)
  for i in range(steps):
    lam, state = step(lam, state, batches[i % len(batches)])
  return [{p: lam[t, group_of[p]] for p in paths} for t in range(len(task_vectors))]


@register("adamerging")
@dataclasses.dataclass(eq=False)
class AdaMerging(MergeMethod):
  """Task arithmetic with learned coefficients (``learn_coefficients``).

  Attributes:
    init: the coefficients' start (and a leaf's without a learned one).
    layer_wise: one coefficient per task and layer (else per task).
    steps: Adam steps of ``learn_coefficients`` (``merge_runs``).
    learning_rate: Adam's learning rate.
    num_batches: test batches of each run that ``merge_runs`` learns on (unlabeled).
    scaling: lambda on top (1: the learned coefficients as they are).
  """

  statistics = "coefficients"
  init: float = option(0.3, at_least(0.0))
  layer_wise: bool = option(False)
  steps: int = option(500, at_least(1))
  learning_rate: float = option(1e-3, at_least(0.0))
  num_batches: int = option(1, at_least(1))
  scaling: float = option(1.0, at_least(0.0))

  def learn_options(self) -> dict:
    """The keyword arguments of ``learn_coefficients``."""
    return {"layer_wise": self.layer_wise, "steps": self.steps,
            "learning_rate": self.learning_rate, "init": self.init}

  def combine(self, tau: jax.Array, weights: jax.Array, *, stats: jax.Array | None = None,
              path: str = "", **unused) -> jax.Array:
    """``[T, *shape], [T], coefficients [T] -> [*shape]``: ``sum_t w_t lam_t tau_t``."""
    if stats is None:
      lam = jnp.full((tau.shape[0],), self.init, jnp.float32)
    elif stats.ndim != 1:
      raise ValueError(f"merging.statistics: the coefficients of {path!r} have shape "
                       f"{tuple(stats.shape[1:])}, not a scalar per task")
    else:
      lam = stats
    return jnp.sum(tau * per_task(weights * lam, tau), axis=0)
