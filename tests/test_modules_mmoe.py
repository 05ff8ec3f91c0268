"""MMoE / PLE heads against a NumPy reference (loops over tasks, levels and experts)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modular.modules import testing as T


def _softmax(z):
  e = np.exp(z - z.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def _relu(z):
  return np.maximum(z, 0)


def _np_head(head, x, task):
  """Every task stream at every level, then the example's own task's tower."""
  lv = [{k: np.asarray(getattr(l, k)[...]) for k in vars(l)
         if k in ("shared_w", "shared_b", "task_w", "task_b", "gate", "shared_gate")}
        for l in head.levels]
  num_tasks = lv[0]["gate"].shape[0]
  out = []
  for b in range(x.shape[0]):
    streams = [x[b]] * num_tasks  # each [L, d]
    shared = x[b]
    for i, p in enumerate(lv):
      es = [_relu(shared @ w + c) for w, c in zip(p["shared_w"], p["shared_b"])]
      et = [[_relu(streams[t] @ w + c) for w, c in zip(p["task_w"][t], p["task_b"][t])]
            if "task_w" in p else [] for t in range(num_tasks)]
      new = []
      for t in range(num_tasks):
        g = _softmax(streams[t] @ p["gate"][t])  # [L, Et+Es]
        new.append(sum(g[:, j:j + 1] * e for j, e in enumerate(et[t] + es)))
      if i < len(lv) - 1:
        g = _softmax(shared @ p["shared_gate"])
        pool = [e for t in range(num_tasks) for e in et[t]] + es
        shared = sum(g[:, j:j + 1] * e for j, e in enumerate(pool))
      streams = new
    t = task[b]
    tower = _relu(streams[t] @ np.asarray(head.tower_w[...])[t] + np.asarray(head.tower_b[...])[t])
    out.append(tower @ np.asarray(head.out_w[...])[t] + np.asarray(head.out_b[...])[t])
  return np.stack(out)


@pytest.mark.parametrize("cfg", [
    {"name": "mmoe", "num_experts": 3},
    {"name": "ple", "num_experts": 2, "task_experts": 2, "levels": 2, "expert_dim": 6},
])
def test_multi_gate_head_matches_numpy(cfg):
  args = T.slot_args(d_model=8, num_tasks=3, vocab_size=5, layer=-1, position="head")
  head = T.build_filler("head", cfg, args)
  for lvl in head.levels:  # non-zero biases
    for name in ("shared_b", "task_b"):
      if hasattr(lvl, name):
        getattr(lvl, name)[...] = 0.3 * jax.random.normal(jax.random.PRNGKey(1),
                                                          getattr(lvl, name).shape)
  x = np.random.default_rng(0).normal(size=(4, 3, 8)).astype(np.float32)
  task = [0, 2, 1, 2]
  y, _, stats = T.call(head, jnp.asarray(x), task, 3, layer=-1, position="head")
  np.testing.assert_allclose(np.asarray(y), _np_head(head, x.astype(np.float64), task),
                             rtol=1e-4, atol=1e-5)
  usage = np.asarray(stats["head/task_expert_usage"])
  np.testing.assert_allclose(usage.sum(-1), 1.0, rtol=1e-5)


def test_every_task_gate_gets_a_gradient():
  from flax import nnx
  args = T.slot_args(d_model=8, num_tasks=3, vocab_size=5, layer=-1, position="head")
  head = T.build_filler("head", {"name": "ple", "num_experts": 2}, args)
  graphdef, params = nnx.split(head, nnx.Param)
  x = jax.random.normal(jax.random.PRNGKey(0), (3, 4, 8))

  def loss(params):
    ctx = T.context([0, 1, 2], 3, layer=-1, position="head")
    return jnp.mean(nnx.merge(graphdef, params)(x, ctx) ** 2)

  grads = jax.jit(jax.grad(loss))(params)
  gate = np.asarray(grads["levels"][0]["gate"][...])
  assert np.all(np.abs(gate).sum((1, 2)) > 0)
