"""``model.remat``: checkpointed blocks give the gradients of the plain ones.

For every config in ``configs/`` (its architecture and slot fillers at tiny sizes, the
pretrained import left out), the gradient of the summed per-task objective, auxiliary
losses included, with ``remat = "block"`` and ``"dots_saveable"`` equals ``"none"``'s to
1e-6 (float32), and the auxiliary losses a checkpointed block writes reach the context.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modular import config as config_lib
from modular import models as models_lib
from modular.objective import FunctionalModel, task_loss_vector
from modular.overrides import load_config_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every config; the decoder (quickstart) and the encoder (minilm) in the fast suite, the
# slot fillers' configs (about 20 s of compilation each on 2 cores) marked slow.
FAST = ("quickstart", "minilm")
CONFIGS = [n if n in FAST else pytest.param(n, marks=pytest.mark.slow)
           for n in sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "configs"))
                           if f.endswith(".py"))]
T, B, L, V = 3, 4, 6, 16


def _tiny(name):
  cfg = load_config_file(os.path.join(ROOT, "configs", f"{name}.py"), None)
  with cfg.unlocked():
    m = cfg.model
    m.pretrained = ""
    m.d_model, m.num_heads, m.d_ff = 16, 2, 32
    m.num_layers = min(m.num_layers, 2)
    m.vocab_size, m.seq_len, m.num_tasks = V, L, T
    if m.get("arch", "decoder") == "encoder" and "num_classes" not in m.head:
      m.head.num_classes = [2] * T
  return cfg.model


def _batch(model_cfg):
  r = np.random.default_rng(0)
  inputs = jnp.asarray(r.integers(1, V, size=(B, L)), jnp.int32)
  batch = {"inputs": inputs, "task_id": jnp.asarray([0, 1, 2, 1], jnp.int32)}
  if model_cfg.get("arch", "decoder") == "encoder" and model_cfg.head.name == "classify":
    batch["label"] = jnp.asarray([1, 0, 1, 1], jnp.int32)
  else:
    batch["targets"] = jnp.roll(inputs, -1, 1)
    batch["mask"] = jnp.ones((B, L), jnp.float32)
  return batch


@pytest.mark.parametrize("name", CONFIGS)
def test_remat_gradients_equal_the_plain_ones(name):
  model_cfg = _tiny(name)
  batch = _batch(model_cfg)
  fms = {}
  for remat in ("none", "block", "dots_saveable"):
    model_cfg.remat = remat
    fms[remat], params, _ = FunctionalModel.split(models_lib.build_model(model_cfg, seed=0))

  def grads(p):  # one compilation for the three policies
    out = {}
    for remat, fm in fms.items():
      def objective(q, fm=fm):
        lv, aux = task_loss_vector(fm, q, batch, rng=jax.random.PRNGKey(1), deterministic=False)
        return lv.sum(), aux["aux_losses"]
      out[remat] = jax.grad(objective, has_aux=True)(p)
    return out

  out = jax.jit(grads)(params)
  ref, ref_aux = out["none"]
  for remat in ("block", "dots_saveable"):
    g, aux = out[remat]
    assert sorted(aux) == sorted(ref_aux), (name, remat)
    diff = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
               for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(g)))
    assert diff <= 1e-6, (name, remat, diff)
    print(f"{name} {remat}: max |grad - grad(none)| = {diff:.1e}")


def test_an_unknown_policy_is_named():
  cfg = config_lib.get_base_config()
  cfg.model.remat = "everything"
  with pytest.raises(ValueError, match=r"config.model.remat: unknown 'everything'; known: none"):
    config_lib.validate(cfg)
