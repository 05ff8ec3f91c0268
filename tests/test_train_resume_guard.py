"""Issue #10, inputs 2-4: a resume is checked before the workdir changes, and is the same run.

Kinds covered: a resume that fails leaves ``config.json`` (and everything else) as it was;
every config key either defines the run (a resume that changes it stops, naming the key and
the folder) or is listed as one that may change; a finished run launched again keeps its
summary (``eval`` never becomes ``{}``); the logs hold each step once, in strict JSON.
"""

from __future__ import annotations

import json
import os

import jax
import numpy as np
import pytest

from modular import config as config_lib
from modular.train import logs
from modular.train import loop
from modular.train import resume

pytestmark = pytest.mark.slow  # an integration test: CI runs it; -m "not slow" skips it


def _snapshot(workdir):
  out = {}
  for r, _, fs in os.walk(workdir):
    for f in fs:
      p = os.path.join(r, f)
      if f == ".lock":
        continue
      with open(p, "rb") as fh:
        out[os.path.relpath(p, workdir)] = fh.read()
  return out


# Input 3 (model.d_model) and input 4 (tasks in another order, sizes, sampling, seeds).
DIFFERENT_RUNS = [
    ("model.d_model", 64),
    ("data.tasks", ["reverse", "copy"]),
    ("data.num_train", 128),
    ("train.batch_size", 8),
    ("data.sampling", "proportional"),
    ("data.data_seed", 1),
    ("train.seed", 3),
    ("mtl.method", "pcgrad"),
]


def test_a_different_run_is_refused_and_nothing_changes(tiny_config, tmp_path):
  workdir = str(tmp_path / "run")
  tiny_config.train.steps = 10
  tiny_config.data.tasks = ["copy", "reverse"]
  loop.train(tiny_config, workdir)
  before = _snapshot(workdir)
  for key, value in DIFFERENT_RUNS:
    cfg = tiny_config.copy_and_resolve_references()
    section, _, leaf = key.rpartition(".")
    cfg[section][leaf] = value
    cfg.train.steps = 20
    with pytest.raises(ValueError, match=rf"^config\.{key}: .* differs from .* {workdir}"):
      loop.train(cfg, workdir)
    assert _snapshot(workdir) == before, key


def _set(cfg, key, value):
  node = cfg
  parts = key.split(".")
  for p in parts[:-1]:
    node = node[p]
  with node.ignore_type():
    node[parts[-1]] = value


def _changed(value):
  if isinstance(value, bool):
    return not value
  if isinstance(value, (int, float)):
    return value + 1
  if isinstance(value, str):
    return value + "_x"
  if isinstance(value, list):
    return value[::-1] + ["extra"]
  return "changed"


@pytest.mark.parametrize("key", sorted(resume.flatten(config_lib.get_base_config())))
def test_every_key_either_defines_the_run_or_is_listed(key):
  """Over the whole config: a change to a key stops a resume unless README lists it."""
  saved = config_lib.get_base_config()
  new = config_lib.get_base_config()
  _set(new, key, _changed(resume.flatten(saved)[key]))
  diffs = [d[0] for d in resume.differences(saved, new)]
  if resume.may_change(key):
    assert diffs == []
  else:
    assert diffs == [key]
    with pytest.raises(ValueError, match=rf"^config\.{key}: "):
      resume.check_same_run(saved, new, "runs/x")


def test_may_change_is_documented_in_readme():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with open(os.path.join(root, "README.md")) as f:
    readme = f.read()
  for key in resume.MAY_CHANGE:
    assert f"`{key.rstrip('.')}" in readme, key


def test_finished_run_launched_again_keeps_its_results(tiny_config, tmp_path, capsys):
  """Input 2 (run side): the summary of a finished run survives a second launch."""
  workdir = str(tmp_path)
  tiny_config.train.steps = 20
  first = loop.train(tiny_config, workdir)
  assert first["eval"]
  lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith("step ")]
  assert [l.split()[1] for l in lines] == ["5/20", "10/20", "15/20", "20/20"]  # progress=False
  again = loop.train(tiny_config, workdir)
  assert again["start_step"] == again["end_step"] == 20
  assert again["eval"] == first["eval"]
  with open(tmp_path / "summary.json") as f:
    saved = json.load(f)
  assert saved["eval"] == first["eval"] and saved["steps_per_s"] == first["steps_per_s"]
  # Without the logged evaluation, the final checkpoint is evaluated again: same numbers.
  os.remove(tmp_path / "eval.jsonl")
  third = loop.train(tiny_config, workdir)
  assert third["eval"] == first["eval"]
  # modular-analyze --step: an earlier checkpoint, or one line naming the saved steps.
  from modular.train import checkpoint as ckpt_lib
  early = ckpt_lib.load_for_analysis(workdir, 10)[2]
  final = ckpt_lib.load_for_analysis(workdir)[2]
  assert any(not np.array_equal(a, b) for a, b in
             zip(jax.tree.leaves(early), jax.tree.leaves(final)))
  from modular import cli
  with pytest.raises(SystemExit):
    cli.analyze_main(["--workdir", workdir, "--step", "15"])
  err = capsys.readouterr().err
  assert "--step 15: that step was not saved" in err and "10, 20]" in err


def test_logs_hold_each_step_once_in_strict_json(tiny_config, tmp_path):
  """A run killed after logging step 20 but before checkpoint 20 logs 15-20 once."""
  workdir = str(tmp_path)
  tiny_config.train.steps = 20
  tiny_config.train.checkpoint_every = 10
  loop.train(tiny_config, workdir)
  import shutil
  shutil.rmtree(tmp_path / "checkpoints" / "20")  # as if killed before saving step 20
  with open(tmp_path / "telemetry.jsonl", "a") as f:
    f.write('{"step": 21, "objective": Na')  # a torn last line
  loop.train(tiny_config, workdir)

  def strict(text):
    return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-strict JSON {c}"))

  steps = [strict(line)["step"] for line in open(tmp_path / "telemetry.jsonl")]
  assert steps == [5, 10, 15, 20]
  evals = [strict(line)["step"] for line in open(tmp_path / "eval.jsonl")]
  assert evals == [10, 20]
  assert logs.dumps({"x": float("nan"), "y": [1.0, float("inf")]}) == \
      '{"x": null, "y": [1.0, null]}'


def test_checkpoints_with_one_data_json_for_all_processes_still_restore(tmp_path):
  """Before per-process data state, orbax's JsonSave wrote ``data/metadata``."""
  import orbax.checkpoint as ocp
  import jax.numpy as jnp
  from modular.train import checkpoint as ckpt_lib
  manager = ocp.CheckpointManager(str(tmp_path), options=ocp.CheckpointManagerOptions(create=True))
  manager.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave({"a": jnp.ones(2)}),
                                          data=ocp.args.JsonSave({"position": 3}),
                                          meta=ocp.args.JsonSave({"step": 1})))
  manager.wait_until_finished()
  manager.close()
  assert ckpt_lib.read_data_state(str(tmp_path / "1" / "data")) == {"position": 3}
