"""HyperFormer++: generated shapes, parameter counts, sharing across layers, NumPy forward."""

import jax
import jax.numpy as jnp
import numpy as np

from modular.modules import testing as T
from modular.modules.hyperformer import HyperAdapter
from modular.modules.peft import parameter_report
from modular.objective import FunctionalModel

SLOTS = {"adapter_attn": {"name": "hyperformer", "reduction_factor": 4, "proj_dim": 6,
                          "task_embed_dim": 5, "hidden_dim": 7},
         "adapter_ffn": {"name": "hyperformer"}}


def _model(num_tasks=3):
  return T.build(T.model_config(num_tasks, d_model=16, **SLOTS))


def test_one_hypernetwork_shared_by_all_adapters():
  model = _model()
  adapters = [getattr(b, pos) for b in model.blocks for pos in ("adapter_attn", "adapter_ffn")]
  assert all(isinstance(a, HyperAdapter) for a in adapters)
  assert all(a.hyper is adapters[0].hyper for a in adapters)
  assert [(a.layer, a.position) for a in adapters] == [(0, 0), (0, 1), (1, 0), (1, 1)]


def test_generated_shapes_and_parameter_count():
  model = _model()
  hyper = model.blocks[0].adapter_attn.hyper
  d, r, t, nl, de, hd, pd = 16, 4, 3, 2, 5, 7, 6  # r = d / reduction_factor
  gen = hyper(1, 1)
  assert {k: v.shape for k, v in gen.items()} == {
      "down": (t, d, r), "down_b": (t, r), "up": (t, r, d), "up_b": (t, d),
      "scale": (t, d), "bias": (t, d)}
  expected = (t * de + nl * de + 2 * de            # task, layer, position embeddings
              + 3 * de * hd + hd + hd * pd + pd    # projector MLP
              + pd * (d * r + r + r * d + d + d + d))  # generators
  _, params, _ = FunctionalModel.split(model)
  hyper_params = params["blocks"][0]["adapter_attn"]["hyper"]
  assert sum(x.size for x in jax.tree.leaves(hyper_params)) == expected
  report = parameter_report(params, num_tasks=t)
  assert report["added"] == expected  # the hypernetwork is all that is added
  np.testing.assert_allclose(report["added_per_task"], expected / t)
  print(f"hyperformer: {report['added']} added, {report['added_per_task_pct']:.2f}% "
        f"of the backbone per task")


def test_adapter_matches_numpy_and_depends_on_task_layer_position():
  model = _model()
  adapter = model.blocks[1].adapter_ffn
  x = np.random.default_rng(0).normal(size=(3, 4, 16)).astype(np.float32)
  task = [2, 0, 1]
  y, _, _ = T.call(adapter, jnp.asarray(x), task, 3, layer=1, position="adapter_ffn")
  h = adapter.hyper
  p = {k: np.asarray(getattr(h, k)[...], np.float64) for k in vars(h)
       if k.startswith(("gen", "proj", "task", "layer", "position"))}
  gelu = lambda v: np.asarray(jax.nn.gelu(jnp.asarray(v)))
  for b, t in enumerate(task):
    src = np.concatenate([p["task_embed"][t], p["layer_embed"][1], p["position_embed"][1]])
    z = np.maximum(src @ p["proj_w1"] + p["proj_b1"], 0) @ p["proj_w2"] + p["proj_b2"]
    down = (z @ p["gen_down"]).reshape(16, 4)
    up = (z @ p["gen_up"]).reshape(4, 16)
    u = gelu(x[b] @ down + z @ p["gen_down_b"]) @ up + z @ p["gen_up_b"]
    ln = (u - u.mean(-1, keepdims=True)) / np.sqrt(u.var(-1, keepdims=True) + 1e-5)
    ref = x[b] + ln * (z @ p["gen_scale"]) + z @ p["gen_bias"]
    np.testing.assert_allclose(np.asarray(y[b]), ref, rtol=1e-4, atol=1e-5)
  other = h(0, 1)["down"]
  assert not np.allclose(np.asarray(h(1, 1)["down"]), np.asarray(other))  # layer-id matters
  assert not np.allclose(np.asarray(h(1, 0)["down"]), np.asarray(h(1, 1)["down"]))  # position
