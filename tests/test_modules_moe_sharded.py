"""Expert parallelism: the MoE FFN sharded over an ``expert`` mesh axis of 8 simulated
CPU devices gives the same outputs and gradients as on one device.

Runs in a subprocess: the device count is fixed when jax starts.
"""

import os
import subprocess
import sys
import textwrap

import pytest

_SCRIPT = textwrap.dedent("""
    import os
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, jax.numpy as jnp, numpy as np
    from flax import nnx
    from jax.sharding import NamedSharding, PartitionSpec as P
    from modular.modules.testing import build_filler, slot_args
    from modular.models import Context
    assert jax.device_count() == 8, jax.devices()

    def run(dispatch):
      args = slot_args(d_model=16, d_ff=32, num_tasks=2)
      ffn = build_filler("ffn", {"name": "moe", "num_experts": 8, "top_k": 2,
                                 "capacity_factor": 1.0, "dispatch": dispatch}, args)
      graphdef, params = nnx.split(ffn, nnx.Param)
      params = nnx.to_pure_dict(params)
      x = jax.random.normal(jax.random.PRNGKey(0), (8, 12, 16))
      task = jnp.arange(8) % 2

      def loss(params, x, task):
        ctx = Context(task_id=task, num_tasks=2, layer=0, position="ffn")
        y = nnx.merge(graphdef, params)(x, ctx)
        return jnp.mean(y ** 2) + sum(ctx.losses.values()), y

      step = jax.jit(jax.value_and_grad(loss, has_aux=True))
      (l0, y0), g0 = jax.block_until_ready(step(params, x, task))  # one device

      mesh = jax.make_mesh((2, 4), ("data", "expert"),
                           axis_types=(jax.sharding.AxisType.Auto,) * 2)
      def place(path, v):
        name = path[-1].key
        spec = P("expert") if name in ("w_in", "b_in", "w_out", "b_out") else P()
        return jax.device_put(v, NamedSharding(mesh, spec))
      ps = jax.tree_util.tree_map_with_path(place, params)
      xs = jax.device_put(x, NamedSharding(mesh, P(("data", "expert"))))
      ts = jax.device_put(task, NamedSharding(mesh, P(("data", "expert"))))
      with jax.set_mesh(mesh):
        lowered = step.lower(ps, xs, ts)
        (l1, y1), g1 = jax.block_until_ready(step(ps, xs, ts))
      hlo = lowered.compile().as_text()
      assert g1["w_in"].sharding.spec[0] == "expert", g1["w_in"].sharding
      assert len(g1["w_in"].sharding.device_set) == 8
      np.testing.assert_allclose(np.asarray(y1), np.asarray(y0), rtol=1e-5, atol=1e-5)
      np.testing.assert_allclose(float(l1), float(l0), rtol=1e-5)
      for k in g0:
        np.testing.assert_allclose(np.asarray(g1[k]), np.asarray(g0[k]), rtol=1e-4,
                                   atol=1e-6, err_msg=k)
      comm = [c for c in ("all-to-all", "all-gather", "reduce-scatter", "all-reduce")
              if c in hlo]
      print(dispatch, "collectives:", comm)
      assert "all-to-all" in comm, comm  # tokens move to the expert shards

    run("einsum")
    run("scatter")
    print("OK")
""")


@pytest.mark.timeout(300)
def test_expert_sharded_equals_unsharded():
  env = dict(os.environ)
  env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
  env["PYTHONPATH"] = os.pathsep.join(
      [os.path.dirname(os.path.dirname(os.path.abspath(__file__)))]
      + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
  out = subprocess.run([sys.executable, "-c", _SCRIPT], env=env, capture_output=True,
                       text=True, timeout=280)
  assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
  assert "OK" in out.stdout
  print(out.stdout)
