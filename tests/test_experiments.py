"""Sweeps (local engine): axes expand to validated points, runs train, the table collects them."""

from __future__ import annotations

import csv
import hashlib
import os

import numpy as np
import pytest

from modular import cli
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


def write_experiment(path, data_dir: str, hyper: str, extra: str = "") -> str:
  path.write_text(f'''
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
  return {hyper}
{extra}
''')
  return str(path)


def read_csv(path) -> list[dict[str, str]]:
  with open(path) as f:
    return list(csv.DictReader(f))


def test_sweep_rerun_keeps_results_and_reports_failure(tmp_path, data_dir):
  """#10 item 2: a rerun keeps finished runs' results; a run failing at run time is a row."""
  exp = write_experiment(tmp_path / "exp.py", data_dir, (
      'h.chain(h.sweep("config.optim.learning_rate", [1e-3, 3e-3]), '
      'h.fixed("config.train.init_from", "/nonexistent/run"))'))
  sweep = tmp_path / "sweep"
  table = experiments.run_sweep(exp, str(sweep))
  first = (sweep / "results.csv").read_text()
  rows = read_csv(sweep / "results.csv")
  assert [r["run"] for r in rows] == ["learning_rate=0.001", "learning_rate=0.003",
                                      "init_from=_nonexistent_run"]
  assert [r["status"] for r in rows] == ["finished", "finished", "failed"]
  assert "/nonexistent/run" in rows[2]["error"] and "init_from=_nonexistent_run:" in table
  for r in rows[:2]:
    acc = [float(r[f"accuracy/{t}"]) for t in ("copy", "reverse")]
    assert all(0.0 <= a <= 1.0 for a in acc)
    assert abs(float(r["accuracy/mean"]) - sum(acc) / 2) < 1e-4
  stamps = {r["run"]: os.stat(sweep / r["run"] / "summary.json").st_mtime_ns for r in rows[:2]}

  experiments.run_sweep(exp, str(sweep))  # the same command again
  assert (sweep / "results.csv").read_text() == first  # complete, same numbers
  assert "nan" not in first.lower()
  for name, stamp in stamps.items():  # finished runs were not rerun
    assert os.stat(sweep / name / "summary.json").st_mtime_ns == stamp


def test_bad_second_point_fails_before_any_run(tmp_path, data_dir, capsys):
  """#10 item 8: every point is validated first; the error is one line naming the point."""
  exp = write_experiment(tmp_path / "exp.py", data_dir,
                         'h.sweep("config.mtl.method", ["mean", "no_such_method"])')
  sweep = tmp_path / "sweep"
  with pytest.raises(SystemExit) as e:
    cli.sweep_main(["--experiment", exp, "--workdir", str(sweep)])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1, err
  assert "get_hyper point 1 (method=no_such_method)" in err[0] and "mtl.method" in err[0]
  assert not sweep.exists()  # nothing ran, nothing was written


def _hashes(folder) -> dict[str, str]:
  """sha256 of every file under ``folder``, by relative path."""
  out = {}
  for root, _, files in os.walk(folder):
    for name in files:
      path = os.path.join(root, name)
      with open(path, "rb") as f:
        out[os.path.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
  return out


def test_rerun_with_another_config_stops_before_writing(tmp_path, data_dir, capsys):
  """A sweep folder rerun with another config (as with another --arg) is one error.

  Two points, one of them a baseline: both run folders hold the other config, so the
  error names the first and counts the baseline as one more. Every file of the sweep
  folder, results.csv and results.md included, stays byte-identical.
  """
  exp = write_experiment(tmp_path / "exp.py", data_dir, 'h.fixed("config.train.seed", 0)',
                         'def get_baselines(h):\n'
                         '  return h.sweep("config.data.tasks", [["copy"]])')
  sweep = tmp_path / "sweep"
  experiments.run_sweep(exp, str(sweep))
  assert [r["status"] for r in read_csv(sweep / "results.csv")] == ["finished", "finished"]
  before = _hashes(sweep)
  assert {"results.csv", "results.md", "seed=0/config.json",
          "single-tasks=copy/config.json"} <= set(before)
  capsys.readouterr()

  with pytest.raises(SystemExit) as e:
    cli.sweep_main(["--experiment", exp, "--workdir", str(sweep),
                    "--config.data.num_eval=16", "--config.train.steps=8"])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1, err
  assert err[0].startswith("error: config.data.num_eval: 16 differs from 32 ")
  assert str(sweep / "seed=0") in err[0] and "1 other point of the sweep differs" in err[0]
  assert _hashes(sweep) == before

  experiments.run_sweep(exp, str(sweep))  # the sweep's own command: finished, not rerun
  assert capsys.readouterr().out.count(", not rerun") == 2
  assert _hashes(sweep) == before


def test_baselines_must_train_one_task(tmp_path, data_dir):
  exp = write_experiment(tmp_path / "exp.py", data_dir, 'h.fixed("config.train.seed", 0)',
                         'def get_baselines(h):\n'
                         '  return h.sweep("config.data.tasks", [["copy"], ["copy", "reverse"]])')
  assert [p.name for p in experiments.expand(exp)] == ["seed=0"]
  with pytest.raises(ValueError, match=r"get_baselines point single-tasks=copy\+reverse: "
                                       r"config.data.tasks"):
    experiments.expand_baselines(exp)


def _delta_m_numpy(mt: dict, single: dict) -> float:
  """Maninis et al.: mean over (task, metric) of (-1)^l (M - M_b) / M_b, in percent."""
  lower_is_better = {"accuracy": 0, "loss": 1}
  terms = [(-1.0) ** lower_is_better[m] * (mt[m][t] - single[m][t]) / single[m][t]
           for m in ("accuracy", "loss") for t in mt[m] if t in single.get(m, {})]
  return float(np.mean(terms) * 100.0)


def test_delta_m_column_matches_numpy_reference():
  rng = np.random.default_rng(0)
  tasks = ["copy", "reverse", "sort"]

  def evals(ts):
    return {m: {t: float(rng.uniform(0.1, 2.0)) for t in ts}
            for m in ("accuracy", "seq_accuracy", "loss")}

  multi = [{"name": f"m{i}", "point": {"config.train.seed": i}, "status": "finished",
            "eval": evals(tasks), "baseline": False} for i in range(3)]
  # Two baselines of copy (their mean is the reference), one of reverse, none of sort.
  base = [{"name": f"single-{t}{i}", "point": {"config.data.tasks": [t]},
           "status": "finished", "eval": evals([t]), "baseline": True}
          for i, t in enumerate(["copy", "copy", "reverse"])]
  single = {m: {"copy": np.mean([b["eval"][m]["copy"] for b in base[:2]]),
                "reverse": base[2]["eval"][m]["reverse"]} for m in ("accuracy", "loss")}
  header, table = experiments.results_table(multi + base, tasks)
  col = header.index("delta_m")
  for r, line in zip(multi, table):
    want = _delta_m_numpy(r["eval"], single)
    assert abs(line[col] - want) < 1e-4, (line[col], want)
    assert line[col] == round(experiments.delta_m(r["eval"], single), 4)
  assert all(line[col] == "" for line in table[3:])  # no Δm for the baselines themselves
  header, _ = experiments.results_table(multi, tasks)
  assert "delta_m" not in header  # only when baselines are declared
