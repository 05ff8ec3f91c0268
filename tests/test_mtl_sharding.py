"""Per-task gradients and surgery on 8 simulated devices equal the unsharded result."""

import pytest

from conftest import run_with_devices

CODE = r"""
import json
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P
from modular import mtl

T, B, D, H = 4, 16, 8, 32
mesh = jax.make_mesh((2, 4), ("data", "model"), axis_types=(AxisType.Auto, AxisType.Auto))
r = np.random.default_rng(0)
f = lambda *s: jnp.asarray(r.normal(size=s) * 0.5, jnp.float32)
params = {"w1": f(D, H), "ln": 1.0 + f(H), "w2": f(H, H), "heads": {"w": f(T, H)}}
specs = {"w1": P(None, "model"), "ln": P("model"), "w2": P("model", None),
         "heads": {"w": P(None, "model")}}
x, y = f(B, D), f(B, T)

def loss_vec(p, x, y):
  h = jnp.tanh(x @ p["w1"])
  h = (h - h.mean(-1, keepdims=True)) * jax.lax.rsqrt(h.var(-1, keepdims=True) + 1e-5) * p["ln"]
  z = jax.nn.gelu(h @ p["w2"])
  return jnp.mean((z @ p["heads"]["w"].T - y) ** 2, axis=0)          # [T]

def spec_of(a):
  spec = list(a.sharding.spec)
  return spec + [None] * (a.ndim - len(spec))

NAMES = ("pcgrad", "mgda", "cagrad", "nashmtl", "imtl_g", "aligned_mtl")
methods = []
for name in NAMES:
  cfg = mtl.default_mtl_config(); cfg.method = name; cfg.task_specific = ["^heads/"]
  methods.append(mtl.build(cfg, params))

def step(p, x, y):  # one program for every method: two compiles in all
  losses, g = mtl.per_task_value_and_grad(loss_vec)(p, x, y)
  return g, [m.combine(g, m.init(p), losses=losses, present=jnp.ones(T))[:3:2] for m in methods]

ref = jax.block_until_ready(jax.jit(step)(params, x, y))
shardings = jax.tree.map(lambda s: NamedSharding(mesh, s), specs)
sp = jax.block_until_ready(jax.device_put(params, shardings))
xs = jax.block_until_ready(jax.device_put(x, NamedSharding(mesh, P("data", None))))
ys = jax.block_until_ready(jax.device_put(y, NamedSharding(mesh, P("data", None))))
res = jax.block_until_ready(jax.jit(step)(sp, xs, ys))
out = {}
for i, name in enumerate(NAMES):
  pair = (res[0], res[1][i]), (ref[0], ref[1][i])
  diffs = jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))), *pair)
  scale = jax.tree.map(lambda a: float(np.max(np.abs(np.asarray(a)))), pair[1])
  out[name] = {"max_diff": max(jax.tree.leaves(diffs)), "scale": max(jax.tree.leaves(scale)),
               "task_axis_specs": [spec_of(v)[:1] for v in jax.tree.leaves(res[0])],
               "devices": len(res[0]["w1"].sharding.device_set)}

# Explicit pinning with shardings=: leading task axis unsharded, the rest as the parameter.
fn = jax.jit(mtl.per_task_value_and_grad(loss_vec, shardings=shardings))
_, g = jax.block_until_ready(fn(sp, xs, ys))
out["pinned"] = jax.tree.map(spec_of, g)
print(json.dumps(out))
"""


@pytest.mark.timeout(300)
def test_sharded_surgery_equals_unsharded():
  out = run_with_devices(CODE, devices=8, timeout=280)
  for name in ("pcgrad", "mgda", "cagrad", "nashmtl", "imtl_g", "aligned_mtl"):
    r = out[name]
    assert r["max_diff"] <= 1e-5 * max(r["scale"], 1.0), (name, r)
    assert r["devices"] == 8, r
    assert all(s == [None] for s in r["task_axis_specs"]), r  # the task axis is never sharded
  # With shardings= every [T, ...] leaf keeps its parameter's sharding exactly.
  assert out["pinned"] == {"w1": [None, None, "model"], "ln": [None, "model"],
                           "w2": [None, "model", None], "heads": {"w": [None, None, "model"]}}
