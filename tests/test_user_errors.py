"""Mistakes a new user made, each answered by one error naming the bad value.

Found by trying the README as a new user: a misspelt config argument started a
2000-step run, a --workdir that is a file gave a traceback, and analysis groups
naming a task the run lacks were dropped without a word.
"""

import os

import pytest

from modular.analysis.groups import declared_groups
from modular.overrides import load_config_file

HERE = os.path.dirname(os.path.abspath(__file__))
CONFIGS = os.path.join(os.path.dirname(HERE), "configs")


@pytest.mark.parametrize("name,arg", [("quickstart.py", "bogus"), ("quickstart.py", "Tiny"),
                                      ("default.py", "tiny")])
def test_unknown_config_argument_is_an_error(name, arg):
  with pytest.raises(ValueError, match=f"unknown argument '{arg}'"):
    load_config_file(os.path.join(CONFIGS, f"{name}:{arg}"))


def test_every_shipped_config_refuses_an_unknown_argument():
  for name in sorted(os.listdir(CONFIGS)):
    if name.endswith(".py"):
      with pytest.raises(ValueError, match="unknown argument 'nosuch'"):
        load_config_file(os.path.join(CONFIGS, f"{name}:nosuch"))


@pytest.mark.parametrize("sub", ["", "inner"])
def test_workdir_that_is_a_file_is_one_error(tmp_path, sub):
  from modular.train import loop
  afile = tmp_path / "afile"
  afile.write_text("keep me")
  cfg = load_config_file(os.path.join(CONFIGS, "quickstart.py:tiny"))
  workdir = str(afile / sub) if sub else str(afile)
  with pytest.raises(ValueError, match="is a file, not a folder"):
    loop.train(cfg, workdir)
  assert afile.read_text() == "keep me"


def test_declared_group_naming_an_unknown_task_is_an_error():
  names = ["copy", "reverse", "sort"]
  with pytest.raises(ValueError, match="no task named 'nosuch'.*copy, reverse, sort"):
    declared_groups(names, {"g0": ["copy", "reverse"], "g1": ["nosuch"]})
  assert declared_groups(names, {"g0": ["copy", "reverse"]}).tolist() == [0, 0, 1]


def test_sweep_names_the_missing_experiment_flag(capsys):
  from modular import cli
  with pytest.raises(SystemExit) as e:
    cli.sweep_main(["--experiment", "experiments/nosuch.py", "--workdir", "/tmp/unused_sweep"])
  assert e.value.code == 2
  assert "--experiment: no experiment file at experiments/nosuch.py" in capsys.readouterr().err
  assert not os.path.exists("/tmp/unused_sweep")


@pytest.mark.parametrize("text,argv,want", [
    ("def get_config(:\n", [], "syntax error"),
    (None, ["--arg", "nosuch"], "unknown argument 'nosuch'"),
])
def test_sweep_labels_experiment_file_errors_with_its_flag(tmp_path, capsys, text, argv, want):
  """modular-sweep names its own flag (--experiment), not modular-train's --config."""
  from modular import cli
  exp = os.path.join(os.path.dirname(HERE), "experiments", "mixture_ablation.py")
  if text is not None:
    exp = str(tmp_path / "bad.py")
    open(exp, "w").write(text)
  with pytest.raises(SystemExit) as e:
    cli.sweep_main(["--experiment", exp, "--workdir", str(tmp_path / "sweep")] + argv)
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith("error: --experiment: ") and want in err[0], err
  assert not (tmp_path / "sweep").exists()


def test_sweep_workdir_that_is_a_file_is_one_error(tmp_path, capsys):
  from modular import cli
  afile = tmp_path / "afile"
  afile.write_text("keep me")
  exp = os.path.join(os.path.dirname(HERE), "experiments", "mixture_ablation.py")
  with pytest.raises(SystemExit) as e:
    cli.sweep_main(["--experiment", exp, "--workdir", str(afile)])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == [f"error: --workdir {afile}: {afile} is a file, not a folder"], err
  assert afile.read_text() == "keep me"
