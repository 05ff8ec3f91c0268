"""Expert parallelism: the MoE FFN sharded over an ``expert`` mesh axis of 8 simulated
CPU devices gives the same outputs and gradients as on one device, and stays causal:
with padded examples and tokens dropped, changing the inputs after position k leaves
every output up to k unchanged.

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
      args = slot_args(d_model=16, d_ff=32, num_tasks=2, seq_len=12)
      ffn = build_filler("ffn", {"name": "moe", "num_experts": 8, "top_k": 2,
                                 "capacity_factor": 1.0, "dispatch": dispatch}, args)
      graphdef, params = nnx.split(ffn, nnx.Param)
      params = nnx.to_pure_dict(params)
      x = jax.random.normal(jax.random.PRNGKey(0), (8, 12, 16))
      task = jnp.arange(8) % 2
      valid = jnp.arange(12)[None, :] < jnp.array([12, 9, 12, 5, 12, 12, 7, 12])[:, None]
      k = 5  # inputs after position k change (to other values, or become padding)
      x2 = x.at[:, k + 1:].set(jax.random.normal(jax.random.PRNGKey(1), (8, 12 - k - 1, 16)))
      valid2 = valid.at[4:, k + 1:].set(False)

      def loss(params, x, task, valid):
        ctx = Context(task_id=task, num_tasks=2, layer=0, position="ffn", token_mask=valid)
        y = nnx.merge(graphdef, params)(x, ctx)
        return jnp.mean(y ** 2) + sum(ctx.losses.values()), (y, ctx.stats)

      step = jax.jit(jax.value_and_grad(loss, has_aux=True))
      (l0, (y0, st0)), g0 = jax.block_until_ready(step(params, x, task, valid))  # one device
      assert float(st0["block0/ffn/dropped_fraction"]) > 0, st0  # capacity drops tokens

      mesh = jax.make_mesh((2, 4), ("data", "expert"),
                           axis_types=(jax.sharding.AxisType.Auto,) * 2)
      def place(path, v):
        name = path[-1].key
        spec = P("expert") if name in ("w_in", "b_in", "w_out", "b_out") else P()
        return jax.device_put(v, NamedSharding(mesh, spec))
      ps = jax.tree_util.tree_map_with_path(place, params)
      put = lambda a: jax.device_put(a, NamedSharding(mesh, P(("data", "expert"))))
      xs, ts, vs = put(x), put(task), put(valid)
      with jax.set_mesh(mesh):
        lowered = step.lower(ps, xs, ts, vs)
        (l1, (y1, _)), g1 = jax.block_until_ready(step(ps, xs, ts, vs))
        (_, (y2, _)), _ = jax.block_until_ready(step(ps, put(x2), ts, put(valid2)))
      # Causal: outputs up to position k do not see the later change (sharded run).
      np.testing.assert_allclose(np.asarray(y2)[:, :k + 1], np.asarray(y1)[:, :k + 1],
                                 rtol=0, atol=1e-6)
      assert not np.allclose(np.asarray(y2)[:, k + 1:], np.asarray(y1)[:, k + 1:])
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
