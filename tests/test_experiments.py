"""Sweeps: axes expand to runs, each run trains, the results table collects them."""

from __future__ import annotations

import csv
import os

from modular import experiments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_hyper_product_and_chain():
  h = experiments.hyper
  points = h.product([h.sweep("config.a", [1, 2]), h.sweep("config.b", ["x", "y", "z"])])
  assert len(points) == 6 and points[0] == {"config.a": 1, "config.b": "x"}
  assert h.chain(h.fixed("config.a", 1), h.sweep("config.a", [2])) == [
      {"config.a": 1}, {"config.a": 2}]


def test_shipped_experiment_expands(data_dir):
  runs = experiments.expand(os.path.join(ROOT, "experiments", "mixture_ablation.py"), "tiny")
  assert len(runs) == 6
  names = {n for n, _, _ in runs}
  assert "sampling=uniform,method=pcgrad" in names
  cfg = dict((n, c) for n, c, _ in runs)["sampling=temperature,method=mean"]
  assert cfg.data.sampling == "temperature" and cfg.mtl.method == "mean"


def test_sweep_runs_and_writes_table(tmp_path, data_dir):
  exp = tmp_path / "exp.py"
  exp.write_text(f'''
import sys
sys.path.insert(0, {os.path.join(ROOT, "configs")!r})
import quickstart
def get_config(arg=None):
  c = quickstart.get_config("tiny")
  c.data.data_dir = {data_dir!r}
  c.data.tasks = ["copy", "reverse"]
  c.train.steps = 6
  c.train.progress = False
  return c
def get_hyper(h):
  return h.sweep("config.optim.learning_rate", [1e-3, 3e-3])
''')
  table = experiments.run_sweep(str(exp), str(tmp_path / "sweep"))
  rows = list(csv.reader(open(tmp_path / "sweep" / "results.csv")))
  assert rows[0][:2] == ["run", "learning_rate"]
  assert [r[0] for r in rows[1:]] == ["learning_rate=0.001", "learning_rate=0.003"]
  acc = [float(v) for v in rows[1][2:4]]
  assert all(0.0 <= a <= 1.0 for a in acc)
  assert "accuracy/copy" in rows[0] and "| learning_rate=0.003 |" in table
