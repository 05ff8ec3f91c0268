"""Weight decay moves exactly the decayed leaves, by exactly lr * wd * p, for every config.

With a zero gradient the only update left is the decoupled decay, so after one step at
which the schedule is positive every leaf that ``optim.no_decay`` does not match moves
by ``-schedule(step) * lr_multiplier(path) * weight_decay * p`` and every other leaf
stays bit-identical. The no-decay set is checked independently of its regexes: every
parameter of a LayerNorm module (found by type in the module graph) and every bias
(a zero-initialized additive parameter, listed per module below) is skipped, and every
weight matrix and embedding is decayed. Run for every config in ``configs/`` and
every optax optimizer that decays; a nonzero decay with one that does not is an error.
"""

from __future__ import annotations

import inspect
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from modular import config as config_lib
from modular import models as models_lib
from modular.models.transformer import LayerNorm
from modular.objective import FunctionalModel
from modular.overrides import load_config_file
from modular.paths import path_str
from modular.train.optimizer import make_optimizer, path_factors
from modular.train.partition import Partition

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "configs")) if f.endswith(".py"))
VARIANTS = ["moe:task_aware", "task_moe:top1,block", "mmoe:ple", "hyperformer:peft",
            "polytropon:mhr,per_layer", "lora:peft", "minilm:hyperformer",
            "quickstart:gpt2_layout"]
# The last path component of every bias (an additive, zero-initialized parameter) of
# every module and filler: the decoder's and encoder's attention and FFN, the heads,
# adapters, HyperFormer's task projector, MMoE/PLE's experts and towers.
BIASES = {"bias", "b_in", "b_out", "bq", "bk", "bv", "bo", "per_task_bias", "down_b", "up_b",
          "proj_b1", "proj_b2", "shared_b", "task_b", "tower_b", "out_b"}


def _params(name: str):
  """(params, norm paths) of a config at tiny sizes, really initialized."""
  path, _, arg = name.partition(":")
  gpt2 = arg == "gpt2_layout"  # what the GPT-2 import sets: q/k/v/o biases, tied head
  cfg = load_config_file(os.path.join(ROOT, "configs", f"{path}.py"), None if gpt2 else arg or None)
  with cfg.unlocked():
    m = cfg.model
    if gpt2:
      m.attn_bias, m.tie_embeddings, m.head = True, True, {"name": "tied"}
    if m.get("pretrained"):  # the encoder's own paths, without reading the checkpoint
      m.pretrained = ""
      m.head.num_classes = 3
      cfg.optim.freeze_pretrained = False
    m.vocab_size, m.seq_len, m.num_tasks = 16, 8, 3
    m.d_model, m.num_heads, m.num_layers, m.d_ff = 16, 2, 1, 32
  model = nnx.eval_shape(lambda: models_lib.build_model(cfg.model, seed=0))
  norms = {"/".join(map(str, path + (leaf,))) for path, node in nnx.iter_graph(model)
           if isinstance(node, LayerNorm) for leaf in ("scale", "bias")}
  _, shapes, _ = FunctionalModel.split(model)
  shapes = Partition.from_patterns(cfg.optim.frozen, shapes).trainable(shapes)
  # values in [1, 2) everywhere (biases start at zero, where decay cannot show)
  rng = np.random.default_rng(1)
  params = jax.tree.map(lambda x: jnp.asarray(1.0 + rng.random(x.shape), x.dtype), shapes)
  return cfg, params, norms


def _one_step(cfg, params, name: str, wd: float):
  """Params after two zero-gradient updates (schedule 0 then > 0) and the lr at step 1."""
  with cfg.unlocked():
    cfg.optim.name, cfg.optim.weight_decay = name, wd
  tx, schedule = make_optimizer(cfg.optim, params, total_steps=100)

  @jax.jit
  def two_steps(p):
    state, zeros = tx.init(p), jax.tree.map(jnp.zeros_like, p)
    for _ in range(2):
      upd, state = tx.update(zeros, state, p)
      p = optax.apply_updates(p, upd)
    return p

  return two_steps(params), float(schedule(1))


def _flat(tree) -> dict[str, np.ndarray]:
  return {path_str(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(tree)}


@pytest.mark.parametrize("name", CONFIGS + VARIANTS)
def test_zero_gradient_step_moves_exactly_the_decayed_leaves(name):
  cfg, params, norms = _params(name)
  before = _flat(params)
  factors = _flat(path_factors(params, cfg.optim))
  wd = 0.01
  after, lr = _one_step(cfg, params, "adamw", wd)
  assert lr > 0 and cfg.optim.schedule == "warmup_cosine"  # step 0's lr is 0: step 1 counts
  skipped = set()
  for path, a in _flat(after).items():
    b, leaf = before[path], path.rsplit("/", 1)[-1]
    want = b - lr * float(factors[path]) * wd * b
    if np.array_equal(a, b):
      skipped.add(path)
    else:
      np.testing.assert_allclose(a, want, rtol=1e-6, atol=1e-9, err_msg=path)
    is_bias = leaf in BIASES and not leaf.startswith("gen_")
    if path in norms or is_bias:
      assert np.array_equal(a, b), f"{name}: {path} is a norm or bias and decayed"
  decayed = set(before) - skipped
  assert decayed, name
  for path in decayed:  # every weight matrix and embedding is decayed
    assert path not in norms and path.rsplit("/", 1)[-1] not in BIASES, path
  assert norms, f"{name}: no LayerNorm found"


def _optax_optimizers() -> list[str]:
  """Every optax factory that takes a learning rate (what ``optim.name`` accepts)."""
  names = []
  for n in dir(optax):
    f = getattr(optax, n)
    if n.startswith("_") or not inspect.isfunction(f):
      continue
    if "learning_rate" in inspect.signature(f).parameters:
      names.append(n)
  return names


DECAYING = [n for n in _optax_optimizers() if config_lib.optimizer_decay_args(n)]
NOT_DECAYING = [n for n in _optax_optimizers() if not config_lib.optimizer_decay_args(n)]


def test_the_decaying_optimizers_are_the_expected_ones():
  assert {"adamw", "lion", "adafactor"} <= set(DECAYING)
  assert {"adam", "sgd"} <= set(NOT_DECAYING)


@pytest.mark.parametrize("opt", DECAYING)
def test_every_decaying_optimizer_moves_decayed_leaves_by_lr_wd_p(opt):
  cfg, params, norms = _params("quickstart:tiny")
  with cfg.unlocked():  # a multiplier shows the path factor enters the decay too
    cfg.optim.lr_multipliers = [["blocks/0/ffn/", 3.0]]
  before = _flat(params)
  factors = _flat(path_factors(params, cfg.optim))
  after, lr = _one_step(cfg, params, opt, 0.05)
  moved = 0
  for path, a in _flat(after).items():
    b = before[path]
    if path in norms or path.rsplit("/", 1)[-1] in BIASES:
      assert np.array_equal(a, b), f"{opt}: {path}"
    else:
      # LAMB (You et al. 2020) scales each leaf's update, decay included, by its trust
      # ratio ||p|| / ||u||; with a zero gradient u = wd * p, so the decay moves lr * p
      rate = 1.0 if opt == "lamb" else 0.05
      np.testing.assert_allclose(a, b - lr * factors[path] * rate * b, rtol=1e-5,
                                 err_msg=f"{opt}: {path}")
      moved += 1
  assert moved >= 5 and any(f == 3.0 for f in factors.values())


@pytest.mark.parametrize("opt", ["adam", "sgd", "adagrad"])
def test_decay_with_an_optimizer_that_cannot_decay_is_one_line(opt):
  cfg = load_config_file(os.path.join(ROOT, "configs", "quickstart.py"), "tiny")
  cfg.optim.name = opt
  with pytest.raises(ValueError, match=rf"config.optim.weight_decay: 0.01 but optax.{opt}"):
    config_lib.validate(cfg)
  cfg.optim.weight_decay = 0.0
  config_lib.validate(cfg)


def test_unknown_optimizer_and_bad_no_decay_rule_are_named():
  cfg = load_config_file(os.path.join(ROOT, "configs", "quickstart.py"), "tiny")
  cfg.optim.name = "adamz"
  with pytest.raises(ValueError, match=r"config.optim.name: unknown 'adamz'"):
    config_lib.validate(cfg)
  cfg.optim.name = "adamw"
  cfg.optim.no_decay = ["ln_(", "bias"]
  with pytest.raises(ValueError, match=r"config.optim.no_decay\[0\]"):
    config_lib.validate(cfg)
