"""Gradient accumulation: k micro-batches give the whole batch's update, every method.

One step of every registered method (``mtl.METHODS``, aliases once) on a tiny decoder:
the update, the losses and the method state after ``train.microbatches = 2`` and ``4``
equal the big batch's (k = 1, the unchanged step) to float32 tolerance. The batch is
built so that two tasks are absent from some micro-batches and the tasks' answer-token
counts differ between micro-batches (a plain mean over micro-batches would be wrong).
A batch size that k does not divide is one error line naming both numbers.
"""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from modular import config as config_lib
from modular import models, mtl
from modular.objective import FunctionalModel, task_loss_vector
from modular.train import microbatch
from modular.train.step import init_state, make_train_step

T, B, L, V = 3, 8, 6, 11
# Micro-batch m holds rows m::k. k = 2: tasks 1 and 2 only in micro-batch 0;
# k = 4: micro-batches 0, 1 and 3 hold task 0 only, 2 holds tasks 1 and 2.
TASK_ID = np.array([0, 0, 1, 0, 0, 0, 2, 0], np.int32)
ANSWER_LEN = np.array([1, 3, 2, 0, 4, 2, 3, 5])  # row 3 carries no loss


def _model():
  cfg = models.default_model_config()
  cfg.update(d_model=8, num_heads=2, num_layers=1, d_ff=16, vocab_size=V, seq_len=L,
             num_tasks=T)
  fm, params, _ = FunctionalModel.split(models.build_model(cfg, seed=0))
  return fm, params


def _batch():
  rng = np.random.default_rng(0)
  inputs = rng.integers(1, V, size=(B, L)).astype(np.int32)
  mask = (np.arange(L)[None, :] >= L - ANSWER_LEN[:, None]).astype(np.float32)
  return {"inputs": jnp.asarray(inputs), "targets": jnp.asarray(np.roll(inputs, -1, 1)),
          "mask": jnp.asarray(mask), "task_id": jnp.asarray(TASK_ID)}


def _method(name):
  c = mtl.default_mtl_config()
  c.method, c.num_tasks = name, T
  return mtl.build(c)


def _unique_names():
  seen, names = set(), []
  for name in mtl.METHODS.names():
    if mtl.METHODS.get(name) not in seen:
      seen.add(mtl.METHODS.get(name))
      names.append(name)
  return names


def test_split_takes_strided_rows():
  x = jnp.arange(8)
  np.testing.assert_array_equal(microbatch.split({"x": x}, 4)["x"],
                                [[0, 4], [1, 5], [2, 6], [3, 7]])


class _Bigram:
  """A one-layer bigram model with the ``FunctionalModel.apply`` signature.

  Cheap to compile, so that one program holds every method's steps. Its auxiliary loss
  (a weight prior) and statistic (mean activation) do not depend on how the batch is
  split, so they too must match the big batch's.
  """

  num_tasks = T

  def apply(self, params, batch, *, rng=None, deterministic=True):
    del rng, deterministic
    h = jnp.tanh(params["emb"][batch["inputs"]])  # [B, L, 4]
    ctx = types.SimpleNamespace(losses={"prior": 1e-2 * jnp.sum(params["out"] ** 2)},
                                stats={"h_mean": jnp.mean(h)})
    return h @ params["out"], ctx  # [B, L, V]


def test_every_method_accumulates_to_the_big_batch_update():
  r = np.random.default_rng(1)
  params = {"emb": jnp.asarray(r.normal(size=(V, 4)), jnp.float32),
            "out": jnp.asarray(r.normal(size=(4, V)), jnp.float32)}
  tx = optax.sgd(1.0)  # the update is minus the combined gradient
  methods = {name: _method(name) for name in _unique_names()}
  states = {n: init_state(params, tx, m, seed=0) for n, m in methods.items()}
  steps = {(n, k): make_train_step(_Bigram(), tx, m, microbatches=k)
           for n, m in methods.items() for k in (1, 2, 4)}

  def run(states, batch):
    out = {}
    for (n, k), step in steps.items():
      new, metrics = step(states[n], batch)
      out[n, k] = (jax.tree.map(jnp.subtract, new["params"], params), new["mtl_state"],
                   {key: metrics[key] for key in ("task/loss", "task/tokens", "objective",
                                                  "aux/prior", "stats/h_mean")})
    return out

  out = jax.jit(run)(states, _batch())
  worst = {}
  for n in methods:
    for k in (2, 4):
      pairs = list(zip(jax.tree.leaves(out[n, 1]), jax.tree.leaves(out[n, k])))
      for a, b in pairs:
        a, b = np.asarray(a), np.asarray(b)
        if np.issubdtype(a.dtype, np.inexact):
          np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5, err_msg=f"{n}, k={k}")
          worst[n, k] = max(worst.get((n, k), 0.0), float(np.max(np.abs(b - a), initial=0.0)))
        else:  # PRNG keys and flags: the same draws as the big batch
          np.testing.assert_array_equal(b, a, err_msg=f"{n}, k={k}")
  assert len(worst) == 2 * len(methods)
  print(f"{len(methods)} methods; max |update(k) - update(1)| = {max(worst.values()):.2e} "
        f"({max(worst, key=worst.get)})")


def test_the_accumulated_per_task_gradients_are_the_big_batch_ones():
  fm, params = _model()
  batch = _batch()

  def lv(p, frozen, b, rng):
    del frozen
    return task_loss_vector(fm, p, b, rng=rng, deterministic=True)

  key = jax.random.PRNGKey(0)

  def both(p, b):  # one compilation: the big batch and 4 micro-batches
    big = mtl.per_task_value_and_grad(lv, has_aux=True)(p, {}, b, key)
    return big, microbatch.task_grads(lv, p, {}, b, key, 4)

  ((losses, aux), grads), ((lk, auxk), gk) = jax.jit(both)(params, batch)
  assert float(aux["metrics"]["present"].sum()) == T
  np.testing.assert_allclose(lk, losses, rtol=1e-6, atol=1e-7)
  for name in ("accuracy", "seq_accuracy", "tokens", "examples", "present"):
    np.testing.assert_allclose(auxk["metrics"][name], aux["metrics"][name], rtol=1e-6)
  diff = 0.0
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(gk)):
    np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-7)
    diff = max(diff, float(np.max(np.abs(np.asarray(b) - np.asarray(a)))))
  print(f"transformer, k=4: max |per-task grad - big batch's| = {diff:.2e}")


def test_a_batch_size_k_does_not_divide_is_one_error_line():
  cfg = config_lib.get_base_config()
  cfg.train.batch_size, cfg.train.microbatches = 64, 3
  with pytest.raises(ValueError, match=r"^config.train.microbatches: batch_size 64 is not "
                                       r"divisible by microbatches 3$"):
    config_lib.validate(cfg)
  cfg.train.microbatches = 0
  with pytest.raises(ValueError, match=r"config.train.microbatches: must be a positive int"):
    config_lib.validate(cfg)
