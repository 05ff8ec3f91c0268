"""Training on 8 simulated CPU devices gives the same losses as on 1 device.

Tolerance: per-step objectives agree to rtol 2e-4 over 12 steps (float32; sharded
reductions sum in another order, which moves the last bits and compounds slowly).
"""

from __future__ import annotations

import pytest

from conftest import run_with_devices

CODE = """
import json, os, sys, jax, numpy as np
sys.path.insert(0, "configs")
from modular.overrides import load_config_file
from modular.train import loop
cfg = load_config_file("configs/quickstart.py", "tiny")
cfg.data.data_dir = {data_dir!r}
cfg.train.progress = False
cfg.train.steps = 12
cfg.train.log_every = 1
cfg.train.batch_size = 16
{mesh}
out = {{}}
for name, devices in (("one", jax.devices()[:1]), ("many", jax.devices())):
  wd = os.path.join({tmp!r}, name)
  if name == "one":
    saved = (cfg.mesh.shape.data, cfg.mesh.shape.model, cfg.mesh.shape.fsdp)
    cfg.mesh.shape.data, cfg.mesh.shape.model, cfg.mesh.shape.fsdp = -1, 1, 1
  else:
    cfg.mesh.shape.data, cfg.mesh.shape.model, cfg.mesh.shape.fsdp = saved
  s = loop.train(cfg, wd, devices=devices)
  objs = [json.loads(l)["objective"] for l in open(os.path.join(wd, "telemetry.jsonl"))]
  specs = [str(x.sharding.spec) for x in jax.tree.leaves(s["state"]["params"])]
  out[name] = {{"objective": objs, "specs": specs, "n": len(jax.devices())}}
print(json.dumps(out))
"""


@pytest.mark.timeout(600)
@pytest.mark.parametrize("mesh", [
    "cfg.mesh.shape.data = 4; cfg.mesh.shape.model = 2",
    "cfg.mesh.shape.data = 2; cfg.mesh.shape.fsdp = 2; cfg.mesh.shape.model = 2",
])
def test_eight_devices_match_one(mesh, data_dir, tmp_path):
  out = run_with_devices(CODE.format(data_dir=data_dir, tmp=str(tmp_path), mesh=mesh))
  assert out["many"]["n"] == 8
  one, many = out["one"]["objective"], out["many"]["objective"]
  assert len(one) == len(many) == 12
  for a, b in zip(one, many):
    assert abs(a - b) <= 2e-4 * abs(a), (one, many)
  # The model axis really shards something (heads / mlp), not only the batch.
  assert any("model" in s for s in out["many"]["specs"])
