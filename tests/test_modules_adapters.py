"""LoRA and bottleneck adapters per task, and the parameter-efficient mode."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from modular.modules import testing as T
from modular.modules.peft import flat_paths, frozen_backbone, is_frozen, parameter_report
from modular.objective import FunctionalModel


def test_lora_matches_numpy_per_task():
  ffn = T.build_filler("ffn", {"name": "lora", "rank": 2, "alpha": 4.0},
                       T.slot_args(d_model=8, d_ff=12, num_tasks=3))
  for name in ("lora_b_in", "lora_b_out"):
    getattr(ffn, name)[...] = jax.random.normal(jax.random.PRNGKey(3), getattr(ffn, name).shape)
  x = np.random.default_rng(0).normal(size=(3, 4, 8)).astype(np.float32)
  task = [2, 0, 1]
  y, _, _ = T.call(ffn, jnp.asarray(x), task, 3)
  g = lambda v: np.asarray(v[...], np.float64)
  base = ffn.base
  for b, t in enumerate(task):
    h = np.maximum(x[b] @ g(base.w_in) + g(base.b_in)
                   + 2.0 * x[b] @ g(ffn.lora_a_in)[t] @ g(ffn.lora_b_in)[t], 0)
    ref = h @ g(base.w_out) + g(base.b_out) + 2.0 * h @ g(ffn.lora_a_out)[t] @ g(ffn.lora_b_out)[t]
    np.testing.assert_allclose(np.asarray(y[b]), ref, rtol=1e-4, atol=1e-5)


def test_bottleneck_matches_numpy_and_starts_as_identity():
  args = T.slot_args(d_model=8, num_tasks=3, position="adapter_ffn")
  ad = T.build_filler("adapter_ffn", {"name": "bottleneck", "reduction_factor": 4}, args)
  x = np.random.default_rng(1).normal(size=(3, 4, 8)).astype(np.float32)
  y0, _, _ = T.call(ad, jnp.asarray(x), [0, 1, 2], 3, position="adapter_ffn")
  np.testing.assert_allclose(np.asarray(y0), x)
  ad.up[...] = jax.random.normal(jax.random.PRNGKey(0), ad.up.shape)
  ad.up_b[...] = jax.random.normal(jax.random.PRNGKey(1), ad.up_b.shape)
  y, _, _ = T.call(ad, jnp.asarray(x), [0, 1, 2], 3, position="adapter_ffn")
  g = lambda v: np.asarray(v[...], np.float64)
  for b, t in enumerate([0, 1, 2]):
    h = np.maximum(x[b] @ g(ad.down)[t] + g(ad.down_b)[t], 0)
    np.testing.assert_allclose(np.asarray(y[b]), x[b] + h @ g(ad.up)[t] + g(ad.up_b)[t],
                               rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("slots,trainable", [
    ({"ffn": {"name": "lora"}}, r"/ffn/lora_(a|b)_(in|out)$"),
    ({"adapter_attn": {"name": "bottleneck"}, "adapter_ffn": {"name": "bottleneck"}},
     r"/adapter_(attn|ffn)/"),
    ({"ffn": {"name": "polytropon"}}, r"/ffn/(skills_in|skills_out|allocation)/"),
    ({"adapter_attn": {"name": "hyperformer"}, "adapter_ffn": {"name": "hyperformer"}},
     r"/adapter_attn/hyper/"),
])
def test_parameter_efficient_mode_trains_only_the_modules(slots, trainable):
  model = T.build(T.model_config(3, **slots))
  _, params, _ = FunctionalModel.split(model)
  frozen = frozen_backbone()
  paths = flat_paths(params)
  train = [p for p in paths if not is_frozen(p, frozen)]
  assert train and all(re.search(trainable, p) for p in train), train
  dense = T.build(T.model_config(3))
  _, dense_params, _ = FunctionalModel.split(dense)
  # Every parameter of the plain model is backbone, so its report adds nothing.
  assert parameter_report(dense_params, 3)["added"] == 0
  report = parameter_report(params, 3)
  assert report["added"] == sum(paths[p].size for p in train)


def test_frozen_patterns_agree_under_search_match_and_fullmatch():
  for path in ("embed", "blocks/0/attn/wq", "blocks/1/ffn/base/w_in", "blocks/1/ffn/w_out",
               "head/kernel", "ln_final/scale"):
    for f in (re.search, re.match, re.fullmatch):
      assert any(f(p, path) for p in frozen_backbone()), (f, path)
  for path in ("blocks/0/ffn/lora_a_in", "blocks/0/ffn/lora_b_in", "blocks/0/adapter_ffn/up",
               "head/per_task_kernel"):
    for f in (re.search, re.match, re.fullmatch):
      assert not any(f(p, path) for p in frozen_backbone()), (f, path)
