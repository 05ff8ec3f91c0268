"""The metrics writer: presence-weighted window means, absent tasks, strict logs.

A task that no step of a logging window sampled has no training loss in that window:
it is NaN in memory, null in ``telemetry.jsonl``, left out of TensorBoard and "-" in
the summary table (it was printed as a loss of 0.0000). Non-finite values (a skipped
divergent step) never reach TensorBoard, so ``on_nonfinite=skip`` does not flood it
with tensorboardX's NaN warnings. The means are checked against NumPy.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np

from modular.train.metrics import MetricsWriter


class Recorder:
  """Stands in for tensorboardX's writer; records every scalar."""

  def __init__(self):
    self.scalars: list[tuple[str, float, int]] = []

  def add_scalar(self, tag, value, step):
    self.scalars.append((tag, value, step))

  def flush(self):
    pass

  def close(self):
    pass


def _window(rng, present: np.ndarray) -> list[dict]:
  """Step metrics of a window: present [steps, T] in {0, 1}."""
  steps, t = present.shape
  return [{"objective": np.float32(rng.normal()),
           "task/loss": rng.uniform(0.5, 2.0, t).astype(np.float32),
           "task/accuracy": rng.uniform(0, 1, t).astype(np.float32),
           "task/present": present[s].astype(np.float32),
           "task/tokens": (present[s] * 16).astype(np.float32),
           "aux/load_balance": np.float32(0.01),
           "nonfinite": np.bool_(False)} for s in range(steps)]


def test_window_means_match_numpy_and_absent_task_is_not_zero(tmp_path):
  rng = np.random.default_rng(0)
  present = np.array([[1, 0, 1], [1, 0, 0], [0, 0, 1], [1, 0, 1]])  # task 1 never sampled
  window = _window(rng, present)
  w = MetricsWriter(str(tmp_path), ["a", "b", "c"])
  w.tb.close()
  w.tb = Recorder()
  mean = w.write_train(10, window)

  loss = np.stack([m["task/loss"] for m in window])
  for t in (0, 2):  # NumPy: the loss averaged over the steps that sampled the task
    ref = loss[present[:, t] == 1, t].mean()
    np.testing.assert_allclose(mean["task/loss"][t], ref, rtol=1e-6)
  assert np.isnan(mean["task/loss"][1]) and np.isnan(mean["task/accuracy"][1])
  np.testing.assert_allclose(mean["objective"], np.mean([m["objective"] for m in window]),
                             rtol=1e-6)
  np.testing.assert_array_equal(mean["task/present"], present.mean(0))

  tags = {tag for tag, _, _ in w.tb.scalars}
  assert "train/loss/a" in tags and "train/loss/c" in tags
  assert "train/loss/b" not in tags and "train/accuracy/b" not in tags
  assert all(np.isfinite(v) for _, v, _ in w.tb.scalars)

  with open(os.path.join(tmp_path, "telemetry.jsonl")) as f:
    record = json.loads(f.readline())  # strict JSON: NaN would not parse as null
  assert record["train"]["loss"][1] is None
  assert record["train"]["loss"][0] == float(np.float32(mean["task/loss"][0]))

  table = w.summary_table().splitlines()
  row_b = next(r for r in table if r.startswith("b "))
  assert "0.0000" not in row_b and row_b.split()[1:3] == ["-", "-"]
  assert len({len(r) for r in table if r.split() and r.split()[0] in ("a", "c")}) == 1
  row_a = next(r for r in table if r.startswith("a "))
  assert float(row_a.split()[1]) == round(float(mean["task/loss"][0]), 4)
  w.close()


def test_non_finite_values_never_reach_tensorboard(tmp_path):
  rng = np.random.default_rng(1)
  window = _window(rng, np.ones((3, 2)))
  window[1]["objective"] = np.float32(np.nan)  # a skipped divergent step
  window[1]["task/loss"] = np.array([np.inf, 1.0], np.float32)
  window[1]["nonfinite"] = np.bool_(True)
  w = MetricsWriter(str(tmp_path), ["a", "b"])
  w.tb.close()
  w.tb = Recorder()
  with warnings.catch_warnings():
    warnings.simplefilter("error")  # tensorboardX warns on NaN; none may be written
    w.write_train(3, window)
    w.write_eval(3, {"tokens": np.array([4.0, 0.0]), "examples": np.array([2.0, 0.0]),
                     "loss_sum": np.array([np.nan, 0.0]), "correct": np.array([3.0, 0.0]),
                     "seq_right": np.array([1.0, 0.0])})
  assert w.tb.scalars and all(np.isfinite(v) for _, v, _ in w.tb.scalars)
  tags = {tag for tag, _, _ in w.tb.scalars}
  assert "train/objective" not in tags and "train/loss/a" not in tags
  assert "train/loss/b" in tags and "eval/accuracy/a" in tags and "eval/loss/a" not in tags
  with open(os.path.join(tmp_path, "telemetry.jsonl")) as f:
    record = json.loads(f.readline())
  assert record["objective"] is None and record["nonfinite_steps"] == 1
  w.close()


def test_summary_table_columns_line_up_with_long_task_names(tmp_path):
  names = ["def_pos", "example_supersense"]  # longer than the old 14-character column
  w = MetricsWriter(str(tmp_path), names, enabled=False)
  w.write_train(1, _window(np.random.default_rng(3), np.ones((2, 2))))
  w.write_eval(1, {"tokens": np.array([4.0, 4.0]), "examples": np.array([4.0, 4.0]),
                   "loss_sum": np.array([1.0, 2.0]), "correct": np.array([3.0, 2.0]),
                   "seq_right": np.array([3.0, 2.0])})
  lines = w.summary_table().splitlines()
  header, rows = lines[0], lines[2:]
  for name in ("train loss", "eval acc", "eval seq"):  # every value ends under its header
    end = header.index(name) + len(name)
    assert all(r[end - 1] != " " and (len(r) == end or r[end] == " ") for r in rows), name


def test_a_real_tensorboardx_writer_takes_a_window_with_an_absent_task(tmp_path):
  w = MetricsWriter(str(tmp_path), ["a", "b"])
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    w.write_train(1, _window(np.random.default_rng(2), np.array([[1, 0]])))
  w.close()
  events = os.listdir(os.path.join(tmp_path, "tensorboard"))
  assert len(events) == 1 and events[0].startswith("events.out.tfevents")
