"""Every method's state checkpoints and resumes bit for bit; the config picks every method.

* Over the whole registry: the state is a pytree of arrays only (what the checkpoint
  saves; no Python-side state), and after 3 steps a round trip of the state through
  NumPy (as a checkpoint writes and reads it) continues with bit-identical updates and
  state (random methods included: their PRNG key is in the state).
* ``--config.mtl.method=<m> --config.mtl.options.<k>=<v>`` reaches every method's
  options, and a method with ``[T, ...]`` state (MoCo) resumes bit-exactly in the loop.
"""

from __future__ import annotations

import dataclasses
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modular import config as config_lib
from modular import mtl
from modular.overrides import apply_override

T = 3


def _build(name):
  cfg = mtl.default_mtl_config()
  cfg.method, cfg.num_tasks = name, T
  return mtl.build(cfg)


def _inputs(steps=6):
  rng = np.random.default_rng(0)
  grads = [{"a": jnp.asarray(rng.normal(size=(T, 4)), jnp.float32),
            "b": jnp.asarray(rng.normal(size=(T, 2, 2)), jnp.float32)} for _ in range(steps)]
  losses = [jnp.asarray(rng.uniform(0.2, 2.0, size=T), jnp.float32) for _ in range(steps)]
  present = [jnp.asarray([1.0, 1.0, 0.0 if k == 2 else 1.0]) for k in range(steps)]
  return grads, losses, present


def test_every_method_resumes_bit_for_bit():
  grads, losses, present = _inputs()
  stack = lambda xs: jax.tree.map(lambda *a: jnp.stack(a), *xs)
  first = (stack(grads[:3]), jnp.stack(losses[:3]), jnp.stack(present[:3]))
  second = (stack(grads[3:]), jnp.stack(losses[3:]), jnp.stack(present[3:]))
  params = {"a": jnp.zeros((4,)), "b": jnp.zeros((2, 2))}
  for name in mtl.METHODS.names():
    m = _build(name)

    def body(s, xs, m=m):
      g, l, p = xs
      u, s, _ = m.combine(g, s, losses=l, present=p)
      return s, u

    run = jax.jit(lambda s, xs, body=body: jax.lax.scan(body, s, xs))
    state = m.init(params)
    for leaf in jax.tree_util.tree_leaves(state):
      assert isinstance(leaf, jax.Array), (name, type(leaf))
    mid, out_a = run(state, first)
    restored = jax.tree.map(lambda x: jnp.asarray(np.asarray(x)), mid)   # as a checkpoint
    end, out_b = run(mid, second)
    end_r, out_r = run(restored, second)
    for x, y in zip(jax.tree_util.tree_leaves((end, out_b)), jax.tree_util.tree_leaves(
        (end_r, out_r))):
      assert np.array_equal(np.asarray(x), np.asarray(y)), name
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree_util.tree_leaves(out_a)), name


def test_every_option_is_settable_from_the_command_line():
  for name in mtl.METHODS.names():
    cls = mtl.METHODS.get(name)
    for key, default in mtl.method_options(name).items():
      cfg = config_lib.get_base_config()
      apply_override(cfg, "mtl.method", name)
      value = default if not isinstance(default, str) else repr(default)
      apply_override(cfg, f"mtl.options.{key}", str(value))
      cfg.mtl.num_tasks = T
      built = mtl.build(cfg.mtl)
      assert isinstance(built, cls) and getattr(built, key) == default, (name, key)
  cfg = config_lib.get_base_config()
  apply_override(cfg, "mtl.method", "upgrad")
  apply_override(cfg, "mtl.options.reg_eps", "1e-4")
  assert mtl.build(cfg.mtl).reg_eps == 1e-4
  apply_override(cfg, "mtl.options.c", "0.4")
  with pytest.raises(ValueError, match=r"config.mtl.options.c: unknown option of 'upgrad'; "
                                       r"known: reg_eps, sweeps"):
    mtl.validate_mtl_config(cfg.mtl)


def test_method_classes_are_their_own_options():
  """Defaults live once, on the class: the config's defaults are the class's."""
  for name in mtl.METHODS.names():
    cls = mtl.METHODS.get(name)
    fields = {f.name: f.default for f in dataclasses.fields(cls)}
    for key, default in mtl.method_options(name).items():
      assert fields[key] == default
    assert "References:" in sys.modules[cls.__module__].__doc__, name


def test_moco_resumes_bit_exactly_in_the_loop(tiny_config, tmp_path):
  from modular.train import loop
  tiny_config.mtl.method = "moco"
  tiny_config.train.steps = 8
  tiny_config.train.checkpoint_every = 4
  tiny_config.train.eval_every = 8
  full = loop.train(tiny_config, str(tmp_path / "full"))
  loop.train(tiny_config, str(tmp_path / "resumed"), stop_at=4)
  resumed = loop.train(tiny_config, str(tmp_path / "resumed"))
  assert resumed["start_step"] == 4
  for key in ("params", "opt_state", "mtl_state"):
    for a, b in zip(jax.tree_util.tree_leaves(full["state"][key]),
                    jax.tree_util.tree_leaves(resumed["state"][key])):
      assert np.array_equal(np.asarray(a), np.asarray(b)), key
