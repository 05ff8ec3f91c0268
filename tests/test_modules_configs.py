"""Every module config validates, builds and traces a training step (abstractly: no compile)."""

import os

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from modular import config as config_lib
from modular import models as models_lib
from modular.objective import FunctionalModel, task_loss_vector
from modular.overrides import load_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = ["moe", "moe:task_aware", "task_moe", "task_moe:average,gumbel", "task_moe:top1,block",
           "mmoe", "mmoe:ple", "hyperformer", "hyperformer:peft", "polytropon",
           "polytropon:mhr,per_layer", "lora:peft", "adapters"]


@pytest.mark.parametrize("name", CONFIGS)
def test_config_traces_a_training_step(name):
  path, _, arg = name.partition(":")
  cfg = load_config_file(os.path.join(ROOT, "configs", f"{path}.py"), arg or None)
  config_lib.validate(cfg)
  with cfg.unlocked():  # sizes the data would fill in, without generating it
    cfg.model.vocab_size, cfg.model.seq_len, cfg.model.num_tasks = 16, cfg.data.seq_len, 8
  model = nnx.eval_shape(lambda: models_lib.build_model(cfg.model))
  fm, params, axes = FunctionalModel.split(model)
  batch = {"inputs": jax.ShapeDtypeStruct((4, cfg.data.seq_len), jnp.int32),
           "targets": jax.ShapeDtypeStruct((4, cfg.data.seq_len), jnp.int32),
           "mask": jax.ShapeDtypeStruct((4, cfg.data.seq_len), jnp.float32),
           "task_id": jax.ShapeDtypeStruct((4,), jnp.int32)}

  def step(params, batch):
    loss = lambda p: task_loss_vector(fm, p, batch, rng=jax.random.PRNGKey(0),
                                      deterministic=False)[0].sum()
    return jax.grad(loss)(params)

  grads = jax.eval_shape(step, params, batch)
  assert jax.tree.structure(grads) == jax.tree.structure(params)


def test_unknown_argument_is_named():
  with pytest.raises(ValueError, match="nope"):
    load_config_file(os.path.join(ROOT, "configs", "moe.py"), "nope")
