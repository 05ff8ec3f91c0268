"""The protocol's statistics and its seed table, against plain-Python references.

References are written here without NumPy or SciPy: Student-t quantiles from a table,
McNemar's exact p-value by summing binomial coefficients (``math.comb``), Fisher's
combination by the closed form of the chi-square tail at even degrees of freedom, and
the bootstrap by replaying the same seeded index draws with Python means and the
linear-interpolation percentile.
"""

import json
import math
import os

import numpy as np
import pytest

from modular.experiments import hyper, protocol, stats
from modular.experiments.results import write_results
from modular.experiments.spec import _points
from modular.train import selection as selection_lib

T975 = {1: 12.706204736174698, 2: 4.302652729749464, 4: 2.7764451051977934}  # t tables


def _mean(xs):
  return sum(xs) / len(xs)


def _sd(xs):
  m = _mean(xs)
  return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _mcnemar(a, b):
  bb = sum(1 for x, y in zip(a, b) if x and not y)
  cc = sum(1 for x, y in zip(a, b) if y and not x)
  n = bb + cc
  if n == 0:
    return bb, cc, 1.0
  tail = sum(math.comb(n, k) for k in range(min(bb, cc) + 1)) / 2 ** n
  return bb, cc, min(1.0, 2 * tail)


def _fisher(ps):
  x = -2 * sum(math.log(p) for p in ps)
  return math.exp(-x / 2) * sum((x / 2) ** i / math.factorial(i) for i in range(len(ps)))


def _percentile(xs, q):
  xs = sorted(xs)
  pos = (len(xs) - 1) * q / 100
  lo = math.floor(pos)
  return xs[lo] + (xs[min(lo + 1, len(xs) - 1)] - xs[lo]) * (pos - lo)


@pytest.mark.parametrize("values", [[0.5, 0.6, 0.7], [0.1, 0.4], [1.0, 2.0, 4.0, 8.0, 3.0]])
def test_t_interval(values):
  mean, lo, hi, n = stats.t_interval(values)
  half = T975[len(values) - 1] * _sd(values) / math.sqrt(len(values))
  assert n == len(values)
  assert mean == pytest.approx(_mean(values), abs=1e-12)
  assert (lo, hi) == pytest.approx((_mean(values) - half, _mean(values) + half), abs=1e-9)
  assert math.isnan(stats.t_interval([0.3])[1]) and stats.t_interval([])[3] == 0


def test_mcnemar_exact_and_fisher():
  rng = np.random.default_rng(3)
  for n, flip in ((40, 0.1), (200, 0.3), (7, 0.5)):
    a = rng.random(n) < 0.6
    b = np.where(rng.random(n) < flip, ~a, a)
    assert stats.mcnemar_exact(a, b) == pytest.approx(_mcnemar(a.tolist(), b.tolist()))
  same = np.array([True, False, True])
  assert stats.mcnemar_exact(same, same) == (0, 0, 1.0)
  assert stats.mcnemar_exact([True] * 10, [False] * 10)[2] == pytest.approx(2 / 2 ** 10)
  with pytest.raises(ValueError, match="not the same test set"):
    stats.mcnemar_exact(same, same[:2])
  for ps in ([0.2], [0.04, 0.5, 0.9], [1e-5, 0.3]):
    assert stats.fisher_combine(ps) == pytest.approx(_fisher(ps), rel=1e-9)


def test_bootstrap_interval_replays_its_seeded_draws():
  rng = np.random.default_rng(0)
  correct = [rng.random((2, 30)) < 0.7, rng.random((2, 11)) < 0.4]  # [S, n_t] per task
  lo, hi = stats.bootstrap_interval(correct, reps=200, seed=5)
  draws = np.random.default_rng(5)
  reps = []
  for _ in range(200):
    accs = []
    for m in correct:
      idx = draws.integers(0, m.shape[1], m.shape[1]).tolist()
      accs += [_mean([float(m[s, i]) for i in idx]) for s in range(m.shape[0])]
    reps.append(_mean(accs))
  assert (lo, hi) == pytest.approx((_percentile(reps, 2.5), _percentile(reps, 97.5)), abs=1e-12)
  assert lo < _mean([float(x) for m in correct for x in m.mean(1)]) < hi


def test_seed_axis_names_groups_and_seeds():
  from modular.config import get_base_config
  raw = hyper.seeds([hyper.named("a", {"config.mtl.method": "mean"}),
                     {"config.data.sampling": "uniform"}], [0, 3])
  points = _points("exp", get_base_config(), raw, "get_hyper", "")
  assert [(p.name, p.group, p.seed) for p in points] == [
      ("a,seed=0", "a", 0), ("a,seed=3", "a", 3),
      ("sampling=uniform,seed=0", "sampling=uniform", 0),
      ("sampling=uniform,seed=3", "sampling=uniform", 3)]
  assert (points[1].cfg.train.seed, points[1].cfg.data.seed) == (3, 3)


def _run(tmp_path, name, acc):
  """A finished run folder (its summary)."""
  os.makedirs(tmp_path / name)
  (tmp_path / name / "summary.json").write_text(json.dumps({"end_step": 4, "eval": acc}))


def test_results_md_aggregates_seeds(tmp_path):
  """The seed table of ``results.md`` against the reference computed by hand."""
  rng = np.random.default_rng(1)
  tasks, seeds, n = ["x", "y"], [0, 1, 2], 40
  rows, outcomes = [], {}
  for group, p_right in (("ref", 0.5), ("arm", 0.8)):
    for s in seeds:
      name = f"{group},seed={s}"
      correct = {t: rng.random(n) < p_right for t in tasks}
      outcomes[name] = correct
      acc = {t: float(c.mean()) for t, c in correct.items()}
      _run(tmp_path, name, {"accuracy": acc})
      selection_lib.save_predictions(str(tmp_path / name),
                                     {f"{t}/correct": c for t, c in correct.items()}, 4)
      rows.append({"name": name, "group": group, "seed": s, "baseline": False,
                   "status": "finished", "eval": {"accuracy": acc}, "point": {}})
  base = {}
  for t in tasks:
    for s in seeds:
      base[(t, s)] = 0.6 + 0.01 * s
      name = f"single-{t},seed={s}"
      rows.append({"name": name, "group": f"single-{t}", "seed": s, "baseline": True,
                   "status": "finished", "eval": {"accuracy": {t: base[(t, s)]}},
                   "point": {}})
  text = write_results(str(tmp_path), rows, tasks, reference="ref")
  assert text == (tmp_path / "results.md").read_text().rstrip("\n")
  line = next(l for l in text.splitlines() if l.startswith("| arm |"))
  cells = [c.strip() for c in line.strip("|").split("|")]
  mean_acc = [_mean([float(outcomes[f"arm,seed={s}"][t].mean()) for t in tasks]) for s in seeds]
  m, half = _mean(mean_acc), T975[2] * _sd(mean_acc) / math.sqrt(3)
  assert cells[1] == "3"
  assert cells[4] == f"{m:.3f} [{m - half:.3f}, {m + half:.3f}]"
  dms = [100 * _mean([(float(outcomes[f"arm,seed={s}"][t].mean()) - base[(t, s)]) / base[(t, s)]
                      for t in tasks]) for s in seeds]
  dm, dhalf = _mean(dms), T975[2] * _sd(dms) / math.sqrt(3)
  assert cells[6] == f"{dm:.1f} [{dm - dhalf:.1f}, {dm + dhalf:.1f}]"
  ref_acc = [_mean([float(outcomes[f"ref,seed={s}"][t].mean()) for t in tasks]) for s in seeds]
  assert cells[7] == f"{100 * _mean([a - b for a, b in zip(mean_acc, ref_acc)]):+.1f}"
  ps = [_mcnemar(np.concatenate([outcomes[f"arm,seed={s}"][t] for t in tasks]).tolist(),
                 np.concatenate([outcomes[f"ref,seed={s}"][t] for t in tasks]).tolist())[2]
        for s in seeds]
  assert cells[8] == f"{_fisher(ps):.3g} ({2 * n} × 3)"
  lo, hi = stats.bootstrap_interval(
      [np.stack([outcomes[f"arm,seed={s}"][t] for s in seeds]) for t in tasks])
  assert cells[5] == f"[{lo:.3f}, {hi:.3f}]"
  ref_line = next(l for l in text.splitlines() if l.startswith("| ref |"))
  assert "(reference)" in ref_line
  assert "McNemar exact" in text and "Fisher's method" in text


def test_delta_m_seed_pairs_baselines_by_seed():
  single = {"x": {0: 0.5, 1: 0.4}, "y": {0: 0.8}}
  got = protocol.delta_m_seed({"x": 0.6, "y": 0.4}, 1, single)
  assert got == pytest.approx(100 * ((0.6 - 0.4) / 0.4 + (0.4 - 0.8) / 0.8) / 2)
