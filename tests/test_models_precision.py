"""``model.dtype``: the bfloat16 policy computes in bfloat16 and keeps float32 where it matters.

Checked for every config in ``configs/`` (architecture and slot fillers at tiny sizes,
by tracing only): with ``model.dtype = "bfloat16"`` no matmul of the forward pass
(``dot_general``) mixes bfloat16 and float32 operands, float32 matmuls (the MoE
routers, by design, and routing statistics) are under 10% of its FLOPs, the logits are bfloat16, the loss is
float32 and the gradient with respect to the float32 master parameters is float32 and
finite. On the decoder and the encoder (compiled), the bfloat16 loss and gradient are
within bfloat16 rounding of float32's, and a short training run's loss curve tracks
float32's (the 200-step curves are ``bench/precision.py``). Every registered
multi-task method combines bfloat16 per-task gradients as it combines their float32
values.
"""

from __future__ import annotations

import os

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from modular import models as models_lib
from modular import mtl
from modular.models import precision
from modular.objective import FunctionalModel, task_loss_vector
from modular.train import loop
from test_models_remat import ROOT, _batch, _tiny

CONFIGS = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py"))


def _split(model_cfg, dtype):
  model_cfg.dtype = dtype
  return FunctionalModel.split(models_lib.build_model(model_cfg, seed=0))[:2]


def _objective(fm, batch):
  def objective(params):
    lv, aux = task_loss_vector(fm, params, batch, rng=jax.random.PRNGKey(1), deterministic=False)
    return lv.sum() + sum(aux["aux_losses"].values(), jnp.zeros((), jnp.float32))
  return objective


def _dots(jaxpr):
  """Every dot_general equation of a closed jaxpr, sub-jaxprs (remat, scan, cond) included."""
  for eqn in jaxpr.eqns:
    if eqn.primitive.name == "dot_general":
      yield eqn
    for sub in jax.extend.core.jaxprs_in_params(eqn.params):
      yield from _dots(sub)


def _flops(eqn) -> int:
  """2 x output size x contracted size of a dot_general equation."""
  (contract, _), _ = eqn.params["dimension_numbers"]
  lhs = eqn.invars[0].aval.shape
  return 2 * int(np.prod(eqn.outvars[0].aval.shape)) * int(np.prod([lhs[i] for i in contract]))


def test_cast_params_casts_floats_only():
  tree = {"w": jnp.ones((2, 3)), "ids": jnp.arange(3), "flag": jnp.array(True)}
  out = precision.cast_params(tree, "bfloat16")
  assert out["w"].dtype == jnp.bfloat16
  assert out["ids"].dtype == tree["ids"].dtype and out["flag"].dtype == jnp.bool_
  assert precision.cast_params(tree, "float32") is tree
  with pytest.raises(ValueError, match=r"^config.model.dtype: unknown 'float16'"):
    precision.check("float16")


@pytest.mark.parametrize("name", CONFIGS)
def test_every_config_computes_in_bfloat16(name):
  model_cfg = _tiny(name)
  batch = _batch(model_cfg)
  fm, params = _split(model_cfg, "bfloat16")
  assert {x.dtype for x in jax.tree.leaves(params)} == {jnp.dtype(jnp.float32)}  # master copy
  forward = jax.make_jaxpr(lambda p: fm.apply(p, batch, rng=jax.random.PRNGKey(1),
                                              deterministic=False)[0])(params)
  dots = list(_dots(forward.jaxpr))
  assert dots, name
  mixed = [[v.aval for v in e.invars] for e in dots
           if len({v.aval.dtype for v in e.invars}) > 1]
  assert not mixed, (name, mixed[:3])  # a float32 operand would promote the matmul
  flops = {jnp.dtype(jnp.bfloat16): 0, jnp.dtype(jnp.float32): 0}
  for e in dots:
    flops[e.invars[0].aval.dtype] += _flops(e)
  # float32 matmuls are the router logits (float32 by design) and routing statistics
  share = flops[jnp.dtype(jnp.float32)] / sum(flops.values())
  assert share < 0.1, (name, share)
  assert forward.out_avals[0].dtype == jnp.bfloat16
  loss, grads = jax.eval_shape(jax.value_and_grad(_objective(fm, batch)), params)
  assert loss.dtype == jnp.float32
  assert {g.dtype for g in jax.tree.leaves(grads)} == {jnp.dtype(jnp.float32)}


@pytest.mark.parametrize("name", ["quickstart", "minilm"])
def test_bfloat16_loss_and_gradient_are_float32_within_rounding(name):
  model_cfg = _tiny(name)
  batch = _batch(model_cfg)
  fm32, params = _split(model_cfg, "float32")
  fm16, _ = _split(model_cfg, "bfloat16")

  @jax.jit
  def both(p):
    return (jax.value_and_grad(_objective(fm32, batch))(p),
            jax.value_and_grad(_objective(fm16, batch))(p))

  (l32, g32), (l16, g16) = both(params)
  assert abs(float(l16) - float(l32)) <= 2e-2 * abs(float(l32)), (float(l16), float(l32))
  a = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g32)])
  b = np.concatenate([np.ravel(x) for x in jax.tree.leaves(g16)])
  assert np.isfinite(b).all()
  # bfloat16 keeps 8 mantissa bits (relative rounding 2^-9 per operation): the
  # gradient as a whole agrees to a few percent and points the same way.
  assert np.linalg.norm(b - a) <= 0.05 * np.linalg.norm(a), np.linalg.norm(b - a) / np.linalg.norm(a)
  assert a @ b / (np.linalg.norm(a) * np.linalg.norm(b)) > 0.998


@pytest.mark.slow
def test_bfloat16_training_tracks_float32(tiny_config, tmp_path):
  """20 quickstart steps: the bfloat16 run's per-task eval loss is float32's within 0.05."""
  finals = {}
  for dtype in ("float32", "bfloat16"):
    tiny_config.model.dtype = dtype
    summary = loop.train(tiny_config, str(tmp_path / dtype))
    finals[dtype] = {t: float(v) for t, v in summary["eval"]["loss"].items()}
  start = 3.9  # about log(vocab): the curve falls by more than 1.2 in these steps
  for task, ref in finals["float32"].items():
    assert ref < start - 1.0, (task, ref)
    assert abs(finals["bfloat16"][task] - ref) <= 0.05, (task, finals["bfloat16"][task], ref)


def _method_names():
  seen, names = set(), []
  for name in mtl.METHODS.names():
    if mtl.METHODS.get(name) not in seen:
      seen.add(mtl.METHODS.get(name))
      names.append(name)
  return names


def test_every_method_combines_bfloat16_gradients_as_float32():
  """combine(bf16 grads) == combine(the same values in float32), for every method.

  The Gram matrix and every solve run in float32 whatever the gradients' dtype; only
  the final weighted sum is formed in the gradients' dtype, so the two agree to
  bfloat16 rounding of the result (relative 1e-2 of its norm).
  """
  T = 3
  rng = np.random.default_rng(0)
  g32 = {"a": jnp.asarray(rng.normal(size=(T, 5, 4)), jnp.float32),
         "b": jnp.asarray(rng.normal(size=(T, 7)), jnp.float32)}
  g16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), g32)
  g32 = jax.tree.map(lambda x: x.astype(jnp.float32), g16)  # the same values
  losses = jnp.asarray([1.0, 2.0, 0.5], jnp.float32)
  for name in _method_names():
    c = mtl.default_mtl_config()
    c.method, c.num_tasks = name, T
    method = mtl.build(c)
    state = method.init(jax.tree.map(lambda x: x[0], g32))
    out32, _, _ = method.combine(g32, state, losses=losses)
    out16, _, _ = method.combine(g16, state, losses=losses)
    a = np.concatenate([np.ravel(np.asarray(x, np.float32)) for x in jax.tree.leaves(out32)])
    b = np.concatenate([np.ravel(np.asarray(x, np.float32)) for x in jax.tree.leaves(out16)])
    assert np.isfinite(b).all(), name
    assert np.linalg.norm(b - a) <= 1e-2 * np.linalg.norm(a) + 1e-6, (name, a[:4], b[:4])
