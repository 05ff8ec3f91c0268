"""The analysis on parameters sharded over a device mesh equals the unsharded one.

A trained model may come back from training still sharded (fsdp over the embedding,
model-parallel heads and FFN neurons). The analysis functions are plain jitted
functions of the parameter tree, so they must run on such a tree unchanged and give
the same numbers. Runs on 4 simulated CPU devices in a subprocess.

References:
  Michel et al. 2019 (head importance, ablation).
"""

from __future__ import annotations

from conftest import run_with_devices

CODE = r"""
import json
import jax
import numpy as np
from flax import nnx
from modular import config as config_lib
from modular.analysis import (ablation_matrices, gradient_head_importance, prepare_batches,
                              synthetic_batches)
from modular.models import build_model
from modular.objective import FunctionalModel
from modular.train.sharding import make_mesh, param_shardings

cfg = config_lib.get_base_config()
for k, v in dict(d_model=16, num_heads=2, num_layers=2, d_ff=32, vocab_size=24, seq_len=8,
                 num_tasks=3).items():
  cfg.model[k] = v
# the graph without eager initialization (seconds of op compilation), then random values
fm, shapes, axes = FunctionalModel.split(nnx.eval_shape(lambda: build_model(cfg.model, 0)))
rng = np.random.default_rng(0)
params = jax.tree.map(lambda s: (rng.normal(size=s.shape) / np.sqrt(s.shape[0])).astype(np.float32)
                      if len(s.shape) > 1 else np.ones(s.shape, np.float32), shapes)
cfg.mesh.shape.update({"data": 1, "fsdp": 2, "model": 2, "expert": 1})
mesh = make_mesh(cfg)  # the training loop's mesh (Auto axis types)
sharded = jax.device_put(params, param_shardings(params, axes, cfg, mesh))
specs = {str(s.spec) for s in jax.tree.leaves(jax.tree.map(lambda x: x.sharding, sharded))}
batches = prepare_batches(synthetic_batches(3, 24, 8, 6, answer_len=3), 12)

means = np.random.default_rng(0).normal(size=(2, 2, 8)).astype(np.float32)

def run(p):
  return gradient_head_importance(fm, p, batches), ablation_matrices(fm, p, batches, means)

i0, b0 = run(params)
i1, b1 = run(sharded)
print(json.dumps({
    "specs": sorted(specs),
    "importance": float(np.abs(i0.raw - i1.raw).max()),
    "ablation": float(max(np.abs(b0.delta_loss[m] - b1.delta_loss[m]).max()
                          for m in ("zero", "mean"))),
}))
"""


def test_sharded_parameters_give_the_same_analysis():
  out = run_with_devices(CODE, devices=4, timeout=300)
  assert any("model" in s for s in out["specs"]), out["specs"]  # really sharded
  assert out["importance"] < 1e-5
  assert out["ablation"] < 1e-5
