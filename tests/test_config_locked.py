"""Issue #10, input 5: typos fail everywhere; every bad file or value gets one line.

Kinds covered: an unknown key in a config file under any section or the top level (the
base config is locked), an unknown key in a config built in code or read from
``config.json`` (``validate``), and one ``error:`` line from ``modular-train`` for a
syntax error, a wrong type, a folder as ``--config``, a bad regex and a bad external-task
module. ``config.json`` files of older runs (without keys added since) still load.
"""

from __future__ import annotations

import json
import os

import ml_collections
import numpy as np
import pytest

from modular import cli
from modular import config as config_lib
from modular.overrides import load_config_file
from modular.train import checkpoint as ckpt_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _nodes(cfg, prefix=""):
  """Dotted paths of every ConfigDict in ``cfg`` ("" is the top level)."""
  yield prefix
  for k in cfg.keys():
    if isinstance(cfg[k], ml_collections.ConfigDict):
      yield from _nodes(cfg[k], f"{prefix}.{k}" if prefix else k)


def _write(tmp_path, body, name="cfg.py"):
  path = tmp_path / name
  path.write_text("from modular.config import get_base_config\n\n"
                  "def get_config(arg=None):\n  c = get_base_config()\n"
                  + "".join(f"  {line}\n" for line in body.splitlines()) + "  return c\n")
  return str(path)


@pytest.mark.parametrize("node", list(_nodes(config_lib.get_base_config())))
def test_typo_in_a_config_file_fails_in_every_section(tmp_path, node):
  target = f"c.{node}" if node else "c"
  path = _write(tmp_path, f"{target}.zz_typo = 16")
  full = f"config.{node}.zz_typo" if node else "config.zz_typo"
  with pytest.raises(ValueError, match=rf"^{full.replace('.', r'.')}: unknown key at .*cfg.py:5"):
    load_config_file(path)


def _checked_nodes(cfg, prefix=""):
  """Nodes whose keys ``validate`` compares (not slots, not free-form tables)."""
  yield prefix
  for k in cfg.keys():
    sub = cfg[k]
    if isinstance(sub, ml_collections.ConfigDict) and len(sub) and "name" not in sub:
      yield from _checked_nodes(sub, f"{prefix}.{k}" if prefix else k)


@pytest.mark.parametrize("node", list(_checked_nodes(config_lib.get_base_config())))
def test_typo_in_an_unlocked_config_is_caught_by_validate(node):
  """Configs built in code or read back from config.json are not locked."""
  cfg = ml_collections.ConfigDict(config_lib.get_base_config().to_dict())
  target = cfg
  for part in [p for p in node.split(".") if p]:
    target = target[part]
  target["zz_typo"] = 1
  full = f"config.{node}.zz_typo" if node else "config.zz_typo"
  with pytest.raises(ValueError, match=rf"^{full.replace('.', r'.')}: unknown key"):
    config_lib.validate(cfg)


def _cli_error(capsys, argv):
  with pytest.raises(SystemExit) as e:
    cli.train_main(argv)
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1, err  # one line, no traceback
  return err[0]


def test_cli_gives_one_line_for_every_bad_file_or_value(tmp_path, capsys):
  workdir = str(tmp_path / "run")
  quick = os.path.join(ROOT, "configs", "quickstart.py")
  syntax = tmp_path / "syntax.py"
  syntax.write_text("def get_config(arg=None)\n  return 1\n")
  cases = [
      ([str(syntax)], r"syntax\.py:1: syntax error"),
      ([_write(tmp_path, 'c.train.steps = "ten"', "wrong_type.py")],
       r"config\.train\.steps: wrong type"),
      ([_write(tmp_path, "c.model.d_modle = 16", "typo.py")],
       r"config\.model\.d_modle: unknown key"),
      ([os.path.join(ROOT, "configs")], r"configs is a folder"),
      ([quick, "--config.optim.frozen=['[']"], r"config\.optim\.frozen\[0\]: bad regex"),
      ([quick, "--config.model.d_modle=3"], r"config\.model\.d_modle: unknown key"),
      ([quick, "--config.optim.learning_rate=inf"],
       r"config\.optim\.learning_rate: must be finite"),
      ([_write(tmp_path, 'c.data.external = [{"name": "x", "tfds_name": "y", '
                         '"preprocess": "no_such_module_zz:fn"}]', "external.py")],
       r"config\.data\.external\[0\]\.preprocess: cannot import 'no_such_module_zz'"),
      ([_write(tmp_path, 'c.data.external = [{"name": "x", "tfds_name": "y", '
                         '"preprocess": "json:no_such_fn"}]', "external_fn.py")],
       r"config\.data\.external\[0\]\.preprocess: .*no function 'no_such_fn'"),
  ]
  import re
  for args, pattern in cases:
    line = _cli_error(capsys, ["--config", args[0], "--workdir", workdir] + args[1:])
    assert line.startswith("error: ") and re.search(pattern, line), (args, line)
  assert not os.path.exists(workdir)


def test_config_json_of_an_older_run_still_loads(tmp_path):
  saved = config_lib.get_base_config().to_dict()
  del saved["train"]["on_nonfinite"], saved["train"]["max_consecutive_skips"]
  (tmp_path / "config.json").write_text(json.dumps(saved, default=list))
  cfg = ckpt_lib.load_config(str(tmp_path))
  config_lib.validate(cfg)
  assert cfg.train.on_nonfinite == "halt" and cfg.train.max_consecutive_skips == 10


def test_shipped_mixture_ablation_has_tasks_of_different_sizes():
  """Its sampling axis changes the mixture: the three rates differ pairwise."""
  from modular.data import config as data_config
  from modular.data import mixture
  cfg = load_config_file(os.path.join(ROOT, "experiments", "mixture_ablation.py"))
  config_lib.validate(cfg)
  sizes = list(data_config.builtin_num_train(cfg.data).values())
  assert len(set(sizes)) > 1, sizes
  rates = [mixture.rates_from_sizes(sizes, s, cfg.data.temperature, None)
           for s in ("uniform", "proportional", "temperature")]
  for i in range(3):
    for j in range(i + 1, 3):
      assert not np.allclose(rates[i], rates[j])
