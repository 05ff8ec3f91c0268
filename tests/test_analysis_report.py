"""The report of a run folder: a trained checkpoint, telemetry, PNGs, JSON, index page.

One tiny run is trained with the loop, then ``write_report`` (what
``modular-analyze --workdir`` calls) must write every figure the index page shows and
a metrics.json whose numbers agree with the in-memory analysis. A run folder without
a checkpoint, whose telemetry holds routing statistics and gradient cosines, gets its
telemetry figures, and an in-memory router model gets its routing figures.

References:
  Michel et al. 2019; Merullo et al. 2023; Tan et al. 2024; Yu et al. 2020.
"""

from __future__ import annotations

import json
import os
import re
import shutil

import numpy as np

from modular.analysis.controls import control_verdict
from modular.analysis.groups import GroupTest
import pytest

from modular.analysis import analyze_model, synthetic_batches, write_analysis, write_report
from modular.models import build_model, default_model_config
from modular.objective import FunctionalModel


def _images(out):
  page = open(os.path.join(out, "index.html")).read()
  shown = set(re.findall(r"<img src='([^']+)'", page))
  return page, shown


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, data_dir):
  import sys
  from modular.overrides import load_config_file
  from modular.train.loop import train
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  sys.path.insert(0, os.path.join(root, "configs"))
  cfg = load_config_file(os.path.join(root, "configs", "quickstart.py"), "tiny")
  cfg.data.data_dir = data_dir  # the session's TFDS folder (tests/conftest.py)
  cfg.data.tasks = ["copy", "reverse", "parity"]
  cfg.train.progress = False
  workdir = str(tmp_path_factory.mktemp("run"))
  train(cfg, workdir)
  return workdir


def test_write_report_from_run_folder(trained_run):
  out = write_report(trained_run, max_eval_batches=1)
  assert out == os.path.join(trained_run, "report")
  page, shown = _images(out)
  on_disk = {f for f in os.listdir(out) if f.endswith(".png")}
  assert shown == on_disk
  for name in ("head_importance_gradient.png", "head_ablation_zero_loss.png",
               "head_ablation_mean_loss.png", "head_reuse_iou_gradient.png",
               "head_reuse_overlap_ablation.png", "neuron_iou_per_layer.png",
               "overlap_by_layer.png"):
    assert name in on_disk, name
    assert os.path.getsize(os.path.join(out, name)) > 1000
  m = json.load(open(os.path.join(out, "metrics.json")))
  assert m["tasks"] == ["copy", "reverse", "parity"]
  imp = np.asarray(m["head_importance"]["normalized"])  # [T, NL, H]
  assert imp.shape == (3, 2, 4)
  norms = np.linalg.norm(imp, axis=-1)  # 1, or 0 in a layer that is all noise
  assert np.all(np.isclose(norms, 1.0, rtol=1e-6) | (norms == 0)), norms
  assert np.asarray(m["ablation"]["delta_loss"]["mean"]).shape == (2, 4, 3)
  assert np.asarray(m["neurons"]["iou"]).shape == (2, 3, 3)
  # one sentence per view on top, the step-0 control analyzed, gated tasks marked
  assert "What the data support" in page and m["summary"] and "control" in m
  assert len(m["summary"]) >= len(m["groups"]["views"])
  # every view's verdict is the one its control's own test gives, p-value included
  assert m["groups"]["views"]
  for view in m["groups"]["views"].values():
    tests = [None if t is None else GroupTest(**{k: (np.nan if t[k] is None else t[k])
                                                 for k in GroupTest.__dataclass_fields__})
             for t in (view["test"], view["control"])]
    assert view["verdict"] == control_verdict(*tests), view["name"]
    assert view["verdict"] == "no control" or f"p = {tests[1].p:.3g}" in view["verdict"]
  for name, ok in zip(m["tasks"], m["competence"]["competent"]):
    assert ok or any(name in s and "left out" in s for s in m["summary"])
  assert isinstance(m["step"], int) and m["step"] > 0  # the trained checkpoint, stated on top
  assert m["summary"][0] == f"checkpoint: step {m['step']}"
  timings = json.load(open(os.path.join(out, "timings.json")))
  assert timings["total"] > 0  # speed is measured in bench/analysis.py, not here


def test_report_numbers_match_in_memory_analysis(trained_run, tmp_path):
  from modular import data as data_lib
  from modular.train.checkpoint import load_for_analysis
  cfg, fm, params = load_for_analysis(trained_run)
  evals = data_lib.make_eval_batches(cfg.data, 256)
  a = analyze_model(fm, params, evals, max_batches_per_task=1)
  out = write_report(trained_run, out_dir=str(tmp_path / "r"), max_eval_batches=1)
  m = json.load(open(os.path.join(out, "metrics.json")))
  np.testing.assert_allclose(m["head_importance"]["raw"], a.importance.raw, rtol=1e-5)
  np.testing.assert_allclose(m["ablation"]["base_loss"], a.ablation.base_loss, rtol=1e-5)


def test_report_without_checkpoint_shows_telemetry(trained_run, tmp_path):
  work = tmp_path / "telemetry_only"
  work.mkdir()
  shutil.copy(os.path.join(trained_run, "config.json"), work / "config.json")
  cos = np.array([[1.0, -0.5, 0.2], [-0.5, 1.0, 0.1], [0.2, 0.1, 1.0]])
  with open(work / "telemetry.jsonl", "w") as f:
    for step in (10, 20, 30):
      usage = np.full((3, 4), 0.25)
      usage[0] = [0.7, 0.1, 0.1, 0.1]
      f.write(json.dumps({"step": step, "train": {}, "stats": {
          "block0/ffn/task_expert_usage": usage.tolist()}, "mtl": {
              "cosine": (cos * step / 30).tolist(), "conflict_fraction": 1 / 3}}) + "\n")
  out = write_report(str(work))
  _, shown = _images(out)
  assert shown == {"routing_train_block0_ffn_task_expert_usage.png",
                   "routing_entropy_block0_ffn_task_expert_usage.png",
                   "gradient_cosine.png", "gradient_cosine_mean.png"}
  m = json.load(open(os.path.join(out, "metrics.json")))
  r = m["routing_final_step"]["block0/ffn/task_expert_usage"]
  assert r["entropy"][1] == pytest.approx(np.log(4))
  np.testing.assert_allclose(m["conflict"]["mean_cosine"], cos * (10 + 20 + 30) / 90)
  assert m["conflict"]["most_conflicting"][0][:2] == [0, 1]
  assert m["conflict"]["steps"] == [10, 20, 30]


def test_in_memory_router_model_gets_routing_figures(tmp_path):
  cfg = default_model_config()
  for k, v in dict(d_model=16, num_heads=2, num_layers=1, d_ff=16, vocab_size=20, seq_len=6,
                   num_tasks=3).items():
    cfg[k] = v
  cfg.ffn = {"name": "task_moe", "num_experts": 4}
  fm, params, _ = FunctionalModel.split(build_model(cfg, 0))
  a = analyze_model(fm, params, synthetic_batches(3, 20, 6, 8, answer_len=2), modes=())
  assert a.neurons is None  # no dense FFN: no neuron analysis, nothing breaks
  assert "block0/ffn/task_expert_usage" in a.routing
  out = write_analysis(a, str(tmp_path / "mem"))
  _, shown = _images(out)
  assert "routing_eval_block0_ffn_task_expert_usage.png" in shown
  assert "neuron_iou_per_layer.png" not in shown
