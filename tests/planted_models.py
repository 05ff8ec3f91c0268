"""Planted models for the analysis tests: weights that make known heads and neurons matter.

Task t's signal lives only in an "indicator" dimension t of the residual stream
(written by its task token 2 + t, never by a layer, and zero-mean elsewhere so layer
norm keeps it 0 for the other tasks):

  head (l, h) reads values only from the indicator dims of its planted tasks, so its
    output is (up to float32 rounding) zero on every other task's examples;
  FFN neuron (l, n) reads only its tasks' indicator dims with a negative bias, so it
    fires only on its tasks' task tokens; unplanted neurons never fire.

``teacher_batches`` makes evaluation data whose targets are the model's own argmax
predictions (a task the model has "learned", accuracy 1) except for the tasks named
``unlearned``, whose targets are random (accuracy at chance).

References:
  Michel et al. 2019; Merullo et al. 2023; Tan et al. 2024.
"""

from __future__ import annotations

import jax
import numpy as np

from modular.analysis import prepare_batches, synthetic_batches
from modular.models import build_model, default_model_config
from modular.objective import FunctionalModel


def _free(rng, shape, num_tasks, d):
  """Random rows, zero on the indicator dims [0, T) and zero-mean over D."""
  x = rng.normal(size=shape)
  x[..., :num_tasks] = 0.0
  x[..., num_tasks:] -= x[..., num_tasks:].sum(-1, keepdims=True) / (d - num_tasks)
  return x


def planted_model(num_tasks, num_layers, num_heads, d_model, d_ff, vocab, seq_len,
                  heads, neurons, seed=0, value_scale=1.0, neuron_scale=1.0):
  """A model whose head (l, h) matters only for heads[(l, h)] and neuron n of layer l
  fires only for neurons[l][n] (``value_scale`` sizes the planted heads' values, so
  that ablating one changes predictions; ``neuron_scale`` the planted neurons' input
  weights, so they still fire when strong heads shrink the indicator under layer
  norm). Returns (fm, params)."""
  t_, d = num_tasks, d_model
  cfg = default_model_config()
  for k, v in dict(d_model=d, num_heads=num_heads, num_layers=num_layers, d_ff=d_ff,
                   vocab_size=vocab, seq_len=seq_len, num_tasks=t_).items():
    cfg[k] = v
  fm, params, _ = FunctionalModel.split(build_model(cfg, 0))
  p = jax.tree.map(lambda x: np.array(x, np.float64), params)
  rng = np.random.default_rng(seed)
  dh = d // num_heads
  p["embed"] = _free(rng, (vocab, d), t_, d)
  for t in range(t_):
    p["embed"][2 + t, t] = 3.0
    p["embed"][2 + t, t_:] -= 3.0 / (d - t_)
  p["pos_embed"] = 0.3 * _free(rng, (seq_len, d), t_, d)
  for l in range(num_layers):
    a, f = p["blocks"][l]["attn"], p["blocks"][l]["ffn"]
    a["wv"] = np.zeros((d, num_heads, dh))
    for h in range(num_heads):
      for t in heads.get((l, h), ()):
        a["wv"][t, h] = value_scale * rng.normal(size=dh)
    a["wo"] = _free(rng, (num_heads, dh, d), t_, d)
    f["w_in"] = np.zeros((d, d_ff))
    f["b_in"] = -np.ones(d_ff)
    for n, tasks in neurons.get(l, {}).items():
      f["w_in"][list(tasks), n] = neuron_scale
      f["b_in"][n] = -0.1
    f["w_out"] = 0.3 * _free(rng, (d_ff, d), t_, d)
    f["b_out"] = np.zeros(d)
  return fm, jax.tree.map(lambda x: np.asarray(x, np.float32), p)


def teacher_batches(fm, params, num_tasks, vocab, seq_len, per_task, answer_len=3,
                    unlearned=(), batch_size=64, seed=3):
  """Evaluation batches whose targets are the model's predictions (random for
  ``unlearned`` tasks), so accuracy is 1 for learned tasks and at chance otherwise."""
  batches = prepare_batches(synthetic_batches(num_tasks, vocab, seq_len, per_task,
                                              answer_len=answer_len, seed=seed), batch_size)
  rng = np.random.default_rng(seed + 1)
  out = []
  for b in batches:
    logits, _ = fm.apply(params, b)
    pred = np.asarray(np.argmax(logits, -1), np.int32)
    random = rng.integers(2 + num_tasks, vocab, size=pred.shape).astype(np.int32)
    bad = np.isin(b["task_id"], list(unlearned))[:, None]
    out.append(dict(b, targets=np.where(bad, random, pred)))
  return out
