"""Merging this framework's runs: two tiny quickstart single-task runs, and the refusals.

The end-to-end test (slow: it trains two runs) checks the merged parameters against NumPy
(``base + lambda * sum_t (theta_t - base)`` over the checkpoints read independently), the
individual evaluation against each run's own final evaluation from training, and
``merge.json``; a second (slow) test folds two parameter-efficient LoRA runs: one run
merged alone at lambda 1 evaluates as the run itself. The refusals (a run named twice, a
folder that is no run, a run whose trainer holds its lock, runs of different bases) need
no trained run and are one line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from modular import filelock
from modular.merging import runs

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fake_run(path) -> str:
  os.makedirs(path, exist_ok=True)
  with open(os.path.join(path, "config.json"), "w") as f:
    f.write("{}")
  return str(path)


def test_refusals_are_one_line_and_write_nothing(tmp_path):
  a = _fake_run(tmp_path / "a")
  cases = [
      (lambda: runs.merge_runs([a, os.path.join(a, ".")]), f"merging: run {a}/. is named twice"),
      (lambda: runs.merge_runs([a, str(tmp_path / "nope")]),
       f"merging: {tmp_path / 'nope'} is not a run folder (no config.json)"),
      (lambda: runs.merge_runs([]), "merging: --runs names no run folder"),
      (lambda: runs.merge_runs([a], "ties", {"k": "2"}), "merging.options.k: must be in"),
  ]
  for fn, start in cases:
    with pytest.raises(ValueError) as e:
      fn()
    assert str(e.value).startswith(start), str(e.value)
    assert "\n" not in str(e.value)
  with filelock.FileLock(os.path.join(a, ".lock"), f"workdir {a}"):  # a trainer on run a
    with pytest.raises(ValueError) as e:
      runs.merge_runs([a], out=str(tmp_path / "out"))
  assert str(e.value).startswith(f"merging: run folder {a} is in use by pid {os.getpid()}")
  assert "\n" not in str(e.value)
  assert not os.path.exists(tmp_path / "out")


def test_different_bases_are_refused():
  emb = np.zeros((3, 2), np.float32)
  base = {"embed": emb, "blocks": {"0": {"w": np.ones((2,), np.float32)}}}
  other = {"embed": emb, "blocks": {"0": {"w": np.zeros((2,), np.float32)}}}
  runs.check_same_base([base, base], ["A", "B"])
  with pytest.raises(ValueError, match=r"^merging: runs A and B start from different bases "
                                       r"\(first different parameter: 'blocks/0/w'\)"):
    runs.check_same_base([base, other], ["A", "B"])
  wider = {**base, "embed": np.zeros((4, 2), np.float32)}
  with pytest.raises(ValueError, match=r"^merging: run B's base's 'embed' has shape \(4, 2\)"):
    runs.check_same_base([base, wider], ["A", "B"])


def test_cli_error_is_one_line(tmp_path):
  a = _fake_run(tmp_path / "a")
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", "from modular.cli import merge_main; merge_main()",
                         "--runs", a, a, "--method", "ties", "--options", "k=0.2"],
                        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
  assert proc.returncode == 2
  assert proc.stderr.strip() == f"error: merging: run {a} is named twice (also as {a})"


def _single_task_runs(root, config: str, arg: str) -> dict[str, tuple[str, dict]]:
  """Single-task runs (copy, reverse) of ``configs/<config>.py:<arg>``, 4 steps at lr 3e-2
  (a visible task vector), one base: {task: (run folder, final eval)}."""
  sys.path.insert(0, os.path.join(ROOT, "configs"))
  from modular.overrides import load_config_file
  from modular.train import loop
  out = {}
  for task in ("copy", "reverse"):
    cfg = load_config_file(os.path.join(ROOT, "configs", f"{config}.py"), arg)
    cfg.data.data_dir = str(root / "tfds")
    cfg.train.progress = False
    cfg.data.tasks = [task]
    cfg.train.steps = cfg.train.eval_every = cfg.train.checkpoint_every = 4
    cfg.optim.learning_rate = 3e-2
    summary = loop.train(cfg, str(root / task))
    out[task] = (str(root / task), summary["eval"])
  return out


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
  """Two single-task quickstart-tiny runs (copy, reverse) of 4 steps, from one base."""
  return _single_task_runs(tmp_path_factory.mktemp("merge_runs"), "quickstart", "tiny")


@pytest.mark.slow
def test_merge_two_runs_numbers(two_runs, tmp_path):
  from modular.paths import flat_paths
  from modular.train import checkpoint as ckpt_lib
  dirs = [two_runs[t][0] for t in ("copy", "reverse")]
  result = runs.merge_runs(dirs, "task_arithmetic", {"scaling": "0.5"}, out=str(tmp_path))
  base = flat_paths(ckpt_lib.load_for_analysis(dirs[0], 0)[2])
  tuned = [flat_paths(ckpt_lib.load_for_analysis(d)[2]) for d in dirs]
  got = flat_paths(result["params"])
  moved = 0.0
  for p, b in base.items():
    want = np.asarray(b) + 0.5 * sum(np.asarray(t[p]) - np.asarray(b) for t in tuned)
    np.testing.assert_allclose(np.asarray(got[p]), want, rtol=0, atol=1e-6, err_msg=p)
    moved = max(moved, float(np.max(np.abs(want - np.asarray(b)))))
  assert moved > 1e-3  # the runs did move away from the base
  flat = np.stack([np.concatenate([(np.asarray(t[p]) - np.asarray(base[p])).ravel()
                                   for p in sorted(base)]) for t in tuned]).astype(np.float64)
  unit = flat / np.linalg.norm(flat, axis=1, keepdims=True)
  np.testing.assert_allclose(result["cosine"], unit @ unit.T, atol=1e-5)
  assert set(result["sign_conflicts"]) >= {"blocks/0", "blocks/1", "embed", "all"}
  for task in ("copy", "reverse"):
    r = result["eval"][task]
    trained = two_runs[task][1]
    for metric in ("accuracy", "loss", "seq_accuracy"):  # the framework's own evaluation
      assert r["individual"][metric] == pytest.approx(trained[metric][task], abs=1e-6)
    assert 0.0 <= r["merged"]["accuracy"] <= 1.0 and np.isfinite(r["merged"]["loss"])
    assert r["normalized_accuracy"] == pytest.approx(
        r["merged"]["accuracy"] / r["individual"]["accuracy"])
  with open(tmp_path / "merge.json") as f:
    record = json.load(f)
  assert record["method"] == "task_arithmetic" and record["options"]["scaling"] == 0.5
  assert record["eval"]["copy"]["merged"] == result["eval"]["copy"]["merged"]
  assert "task_arithmetic" in runs.table(result) and "reverse" in runs.table(result)
  # DARE through the runs: seeded, so the same seed gives the same merged model.
  a = runs.merge_runs(dirs, "dare", {"p": 0.5}, seed=1, evaluate_tasks=False)["params"]
  b = runs.merge_runs(dirs, "dare", {"p": 0.5}, seed=1, evaluate_tasks=False)["params"]
  for x, y in zip(flat_paths(a).values(), flat_paths(b).values()):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


@pytest.mark.slow
def test_lora_runs_fold_and_merge(tmp_path_factory):
  """A LoRA run merged alone at lambda 1 is its folded self: the merged dense model's
  evaluation equals the LoRA run's own; two LoRA runs merge in the dense layout."""
  made = _single_task_runs(tmp_path_factory.mktemp("merge_lora"), "lora", "tiny,peft")
  dirs = [made[t][0] for t in ("copy", "reverse")]
  alone = runs.merge_runs(dirs[:1], "task_arithmetic", {"scaling": 1.0})
  r = alone["eval"]["copy"]
  assert alone["lora_runs"] == dirs[:1]
  for metric in ("accuracy", "loss", "seq_accuracy"):
    assert r["merged"][metric] == pytest.approx(r["individual"][metric], abs=1e-4)
  both = runs.merge_runs(dirs, "ties", {"k": 0.5})
  from modular.paths import flat_paths
  paths = set(flat_paths(both["params"]))
  assert "blocks/0/ffn/w_in" in paths and not any("lora_" in p for p in paths)
  assert set(both["eval"]) == {"copy", "reverse"}
  assert set(both["sign_conflicts"]) == {"blocks/0", "blocks/1", "all"}  # only FFNs moved


@pytest.mark.slow
def test_statistics_and_per_task_methods_through_runs(two_runs, tmp_path):
  """Fisher, RegMean and EMR of one run alone evaluate as the run itself; two runs: the
  computed statistics are saved and reload to the same merge; AdaMerging learns its
  coefficients on the runs' test inputs; EMR gives each run its own model; a wrong
  number of statistics files is one line and writes nothing."""
  from modular.merging import statistics
  from modular.paths import flat_paths
  dirs = [two_runs[t][0] for t in ("copy", "reverse")]
  for method, opts in (("fisher", {"num_examples": 16}), ("regmean", {"num_examples": 16}),
                       ("emr_merging", {})):
    r = runs.merge_runs(dirs[:1], method, opts)["eval"]["copy"]
    for metric in ("accuracy", "loss"):
      assert r["merged"][metric] == pytest.approx(r["individual"][metric], abs=1e-4), method
  out = tmp_path / "fisher"
  got = runs.merge_runs(dirs, "fisher", {"num_examples": 16}, out=str(out),
                        evaluate_tasks=False)
  loaded = [statistics.load(str(out / f"statistics_{i}.npz")) for i in (0, 1)]
  assert "blocks/0/ffn/w_in" in loaded[0]  # only the merged leaves' statistics are kept
  assert sorted(loaded[0]) == sorted(k for k in flat_paths(got["params"]) if k in loaded[1])
  again = runs.merge_runs(dirs, "fisher", statistics=loaded, evaluate_tasks=False)
  for p, x in flat_paths(got["params"]).items():
    np.testing.assert_allclose(np.asarray(flat_paths(again["params"])[p]), np.asarray(x),
                               rtol=1e-6, atol=1e-7, err_msg=p)
  ada = runs.merge_runs(dirs, "adamerging", {"steps": 3, "learning_rate": 0.05},
                        out=str(tmp_path / "ada"))
  lam = [statistics.load(str(tmp_path / "ada" / f"statistics_{i}.npz")) for i in (0, 1)]
  assert all(abs(float(x) - 0.3) > 1e-3 for c in lam for x in c.values())  # learned
  assert set(ada["eval"]) == {"copy", "reverse"}
  emr = runs.merge_runs(dirs, "emr_merging")
  a, b = (flat_paths(m) for m in emr["params_per_run"])
  assert any(not np.array_equal(np.asarray(a[p]), np.asarray(b[p])) for p in a)
  assert set(emr["eval"]) == {"copy", "reverse"}
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  proc = subprocess.run([sys.executable, "-c", "from modular.cli import merge_main; merge_main()",
                         "--runs", *dirs, "--method", "fisher", "--out", str(tmp_path / "bad"),
                         "--statistics", str(out / "statistics_0.npz")],
                        capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
  assert proc.returncode == 2
  assert proc.stderr.strip() == "error: merging.statistics: 1 statistics for 2 task vectors"
  assert not os.path.exists(tmp_path / "bad")
