"""Model selection on validation (``data.val_share``): one checkpoint kept, the val-best.

The validation scores are planted (``selection.score`` replaced in call order), so the
best step is known: the run must keep exactly that checkpoint, measure the test split
once with it (``predictions.npz``), survive an interruption before the best step, and
train nothing when launched again.
"""

import json
import os

import numpy as np
import pytest

from modular.train import loop
from modular.train import selection as selection_lib

PLANTED = [0.1, 0.9, 0.5, 0.9]  # validation scores at steps 2, 4, 6 (8: must not be asked)


@pytest.fixture
def planted(monkeypatch):
  calls = []

  def score(result, metric):
    assert metric == "accuracy" and set(result) >= {"accuracy", "loss"}
    calls.append(len(calls))
    if len(calls) > 3:
      raise AssertionError("a finished run was evaluated again")
    return PLANTED[len(calls) - 1]

  monkeypatch.setattr(selection_lib, "score", score)
  return calls


def _steps(workdir):
  return sorted(int(s) for s in os.listdir(os.path.join(workdir, "checkpoints")))


def test_keeps_only_the_validation_best_checkpoint(tiny_config, tmp_path, planted):
  cfg = tiny_config
  cfg.data.tasks = ["copy", "reverse"]
  cfg.data.val_share = 0.2
  cfg.train.update(steps=6, eval_every=2, checkpoint_every=3, log_every=2, keep_step0=False)
  workdir = str(tmp_path / "run")
  loop.train(cfg, workdir, stop_at=3)  # interrupted before the best step
  assert _steps(workdir) == [2, 3]  # the best so far and the newest (to resume from)
  summary = loop.train(cfg, workdir)
  assert _steps(workdir) == [4] and summary["best_step"] == 4
  assert int(np.asarray(summary["state"]["step"])) == 4  # the state measured on test
  saved = selection_lib.read(workdir)
  assert [h["step"] for h in saved["history"]] == [2, 4, 6]
  assert saved["best_step"] == 4 and saved["done"] and saved["test"] == summary["eval"]
  preds = selection_lib.load_predictions(workdir)
  assert int(preds["step"]) == 4
  for task in cfg.data.tasks:  # per-example outcomes agree with the summed test metrics
    n = min(cfg.data.num_eval, len(preds[f"{task}/correct"]))
    assert len(preds[f"{task}/correct"]) == n > 0
    assert preds[f"{task}/correct"].mean() == pytest.approx(
        summary["eval"]["seq_accuracy"][task], abs=1e-6)
  with open(os.path.join(workdir, "summary.json")) as f:
    assert json.load(f)["eval"] == summary["eval"]  # results tables read the test metrics
  again = loop.train(cfg, workdir)  # finished: nothing trained or evaluated
  assert again["eval"] == summary["eval"] and len(planted) == 3 and _steps(workdir) == [4]
  cfg.train.steps = 8
  with pytest.raises(ValueError, match=r"^config\.train\.steps: 8 differs from the finished"):
    loop.train(cfg, workdir)
