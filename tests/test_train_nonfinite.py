"""Issue #10, input 1: divergence never saves NaN nor rotates out the good checkpoints.

Kinds covered: a non-finite step in ``halt`` mode (stop naming the step, nothing saved
after the newest good checkpoint), in ``skip`` mode (the update dropped inside the compiled
step, halted after ``max_consecutive_skips``), a checkpoint that restores non-finite, and
non-finite or out-of-range config values anywhere in the config.
"""

from __future__ import annotations

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from modular import config as config_lib
from modular.train import checkpoint as ckpt_lib
from modular.train import loop
from modular.train.resume import flatten
from modular.train.step import with_nonfinite_guard


def _toy_step(state, batch):
  """params <- params - lr * x; "loss" = sum(x) (NaN when x holds NaN)."""
  new = {"params": {"w": state["params"]["w"] - batch["x"]}, "opt_state": state["opt_state"] + 1,
         "mtl_state": state["mtl_state"], "step": state["step"] + 1, "rng": state["rng"] + 1}
  loss = jnp.sum(batch["x"])
  return new, {"objective": loss, "grad_norm": jnp.abs(loss), "task/loss": loss[None]}


@pytest.mark.parametrize("skip", [False, True])
def test_guard_flags_and_drops_exactly(skip):
  state = {"params": {"w": jnp.arange(3.0)}, "opt_state": jnp.zeros(()),
           "mtl_state": {}, "step": jnp.zeros((), jnp.int32), "rng": jnp.zeros((2,), jnp.uint32)}
  step = jax.jit(with_nonfinite_guard(_toy_step, skip=skip))
  good = {"x": jnp.ones(3)}
  bad = {"x": jnp.array([1.0, np.nan, 1.0])}
  s1, m1 = step(state, good)
  np.testing.assert_array_equal(np.asarray(s1["params"]["w"]), np.arange(3.0) - 1)
  assert int(m1["nonfinite"]) == 0
  s2, m2 = step(s1, bad)
  assert int(m2["nonfinite"]) == 1
  assert int(s2["step"]) == 2 and int(s2["rng"][0]) == 2  # the batch is consumed either way
  if skip:  # the update is dropped: params and optimizer state as before the step
    np.testing.assert_array_equal(np.asarray(s2["params"]["w"]), np.arange(3.0) - 1)
    assert float(s2["opt_state"]) == 1.0
  else:  # halt: the loop stops before saving this state
    assert np.isnan(np.asarray(s2["params"]["w"])[1])


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_skip_in_the_real_compiled_step(tiny_config, dtype):
  tiny_config.model.dtype = dtype  # the guard holds under either precision policy
  tiny_config.train.on_nonfinite = "skip"
  tiny_config.optim.learning_rate = 1e30  # finite, but overflows the parameters at once
  tiny_config.optim.warmup_steps = 0
  run = loop.setup(tiny_config)
  from modular import data as data_lib
  it = data_lib.make_train_iterator(run.cfg.data, run.cfg.train.batch_size)
  state = run.init()
  before = jax.device_get(state["params"])
  flags = []
  for _ in range(3):
    state, metrics = run.train_step(state, loop.global_batch(run, next(it)))
    flags.append(int(metrics["nonfinite"]))
  assert flags[1:] == [1, 1], flags  # step 1 may still be finite; then every step overflows
  after = jax.device_get(state["params"])
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(after))
  assert int(state["step"]) == 3
  if flags[0] == 0:
    assert not all(np.array_equal(a, b) for a, b in
                   zip(jax.tree.leaves(before), jax.tree.leaves(after)))


def _listing(workdir):
  root = os.path.join(workdir, "checkpoints")
  return {d: sorted(os.path.join(r, f) for r, _, fs in os.walk(os.path.join(root, d))
                    for f in fs) for d in os.listdir(root)}


@pytest.mark.parametrize("action", ["halt", "skip"])
def test_divergent_resume_keeps_every_good_checkpoint(tiny_config, tmp_path, action):
  """Issue input 1: train, then resume with a diverging learning rate."""
  workdir = str(tmp_path)
  tiny_config.train.steps = 20
  loop.train(tiny_config, workdir)
  before = _listing(workdir)
  assert sorted(before) == ["0", "10", "20"]  # 0: train.keep_step0
  tiny_config.train.steps = 40
  tiny_config.optim.learning_rate = 1e30
  tiny_config.train.on_nonfinite = action
  tiny_config.train.max_consecutive_skips = 3
  match = r"step 2[1-9]: non-finite" if action == "halt" else r"step 2\d: 3 non-finite steps"
  with pytest.raises(loop.NonfiniteError, match=match):
    loop.train(tiny_config, workdir)
  after = _listing(workdir)
  if action == "halt":
    assert after == before  # nothing saved after the newest good checkpoint
  _, _, params = ckpt_lib.load_for_analysis(workdir)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


def test_checkpoint_that_restores_non_finite_is_refused(tiny_config, tmp_path):
  """Damage that decodes to NaN (e.g. flipped exponent bits) is caught at restore."""
  workdir = str(tmp_path)
  tiny_config.train.steps = 10
  summary = loop.train(tiny_config, workdir)
  state = jax.tree.map(lambda x: x, summary["state"])
  state["params"] = jax.tree.map(lambda x: x * jnp.nan, state["params"])
  ckpt = ckpt_lib.Checkpointer(workdir, keep=3, async_save=False)
  ckpt.save(15, state, {"fake": 1}, {"step": 15})
  ckpt.close()
  tiny_config.train.steps = 20
  with pytest.raises(ckpt_lib.CheckpointError, match=r"checkpoints/15 holds non-finite"):
    loop.train(tiny_config, workdir)
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["0", "10", "15"]  # 0: keep_step0


def _float_keys():
  return [k for k, v in flatten(config_lib.get_base_config()).items() if isinstance(v, float)]


@pytest.mark.parametrize("key", _float_keys())
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_every_float_rejects_non_finite(key, bad):
  cfg = config_lib.get_base_config()
  section, _, leaf = key.rpartition(".")
  node = cfg
  for part in section.split("."):
    node = node[part]
  node[leaf] = bad
  with pytest.raises(ValueError, match=rf"^config\.{key.replace('.', r'.')}: must be finite"):
    config_lib.validate(cfg)


@pytest.mark.parametrize("key,value,message", [
    ("optim.learning_rate", 0.0, "must be > 0"),
    ("optim.end_lr_factor", -0.1, "must be >= 0"),
    ("optim.grad_clip", -1.0, "must be >= 0"),
    ("optim.weight_decay", -0.01, "must be >= 0"),
    ("optim.warmup_steps", -5, "must be >= 0"),
    ("optim.b1", 1.0, r"must be in \[0, 1\)"),
    ("optim.b2", -0.5, r"must be in \[0, 1\)"),
    ("optim.lr_multipliers", [["ffn", -2.0]], "factor must be a number >= 0"),
    ("optim.lr_multipliers", [["[", 2.0]], "bad regex"),
    ("optim.frozen", ["["], "bad regex"),
    ("train.on_nonfinite", "ignore", "unknown 'ignore'"),
    ("train.max_consecutive_skips", 0, "must be a positive int"),
])
def test_out_of_range_values_are_named(key, value, message):
  cfg = config_lib.get_base_config()
  section, _, leaf = key.rpartition(".")
  cfg[section][leaf] = value
  with pytest.raises(ValueError, match=rf"^config\.{key.replace('.', r'.')}(\[0\])?: {message}"):
    config_lib.validate(cfg)
