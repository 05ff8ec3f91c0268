"""Bad configs and bad batches get one clear error that names the problem."""

from __future__ import annotations

import numpy as np
import pytest

from modular import config as config_lib
from modular.overrides import apply_override
from modular.train.batches import BatchError, validate_batch


def test_unknown_key_is_named():
  cfg = config_lib.get_base_config()
  with pytest.raises(ValueError, match=r"config.train.stepz: unknown key"):
    apply_override(cfg, "train.stepz", "10")
  with pytest.raises(ValueError, match=r"^config\.trian: unknown key; known here: .*\btrain\b"):
    apply_override(cfg, "trian.steps", "10")  # a typo in the section lists the sections


def test_wrong_type_is_named():
  cfg = config_lib.get_base_config()
  with pytest.raises(ValueError, match=r"config.train.steps: expected an int"):
    apply_override(cfg, "train.steps", "ten")
  cfg.train.batch_size = 0
  with pytest.raises(ValueError, match=r"config.train.batch_size"):
    config_lib.validate(cfg)


def test_unknown_slot_filler_is_named():
  cfg = config_lib.get_base_config()
  cfg.model.ffn.name = "no_such_ffn"
  with pytest.raises(ValueError, match=r"config.model.ffn.name: unknown 'no_such_ffn'"):
    config_lib.validate(cfg)


def test_unknown_optimizer_and_schedule():
  cfg = config_lib.get_base_config()
  cfg.optim.name = "adamx"
  with pytest.raises(ValueError, match=r"config.optim.name"):
    config_lib.validate(cfg)


def test_mesh_must_cover_devices_and_divide_batch():
  cfg = config_lib.get_base_config()
  cfg.mesh.shape.data = 3
  with pytest.raises(ValueError, match=r"config.mesh.shape"):
    config_lib.validate(cfg, num_devices=8)
  cfg.mesh.shape.data = -1
  cfg.mesh.shape.model = 3
  with pytest.raises(ValueError, match=r"config.mesh.shape.data"):
    config_lib.validate(cfg, num_devices=8)
  cfg.mesh.shape.model = 1
  cfg.train.batch_size = 12
  with pytest.raises(ValueError, match=r"config.train.batch_size: 12 is not divisible"):
    config_lib.validate(cfg, num_devices=8)


def test_mesh_rule_to_unknown_axis():
  cfg = config_lib.get_base_config()
  cfg.mesh.rules = [("batch", "dat")]
  with pytest.raises(ValueError, match=r"config.mesh.rules\[0\]"):
    config_lib.validate(cfg)


def _batch(b=4, L=8, T=3):
  return {"inputs": np.zeros((b, L), np.int32), "targets": np.zeros((b, L), np.int32),
          "mask": np.ones((b, L), np.float32), "task_id": np.arange(b, dtype=np.int32) % T}


def test_good_batch_passes():
  validate_batch(_batch(), batch_size=4, seq_len=8, num_tasks=3, vocab_size=10)


@pytest.mark.parametrize("mutate,message", [
    (lambda b: b.update(task_id=np.array([0, 1, 2, 3], np.int32)), r"task_id.*holds 3.*\[0, 3\)"),
    (lambda b: b.update(task_id=np.array([0, -1, 2, 1], np.int32)), r"task_id.*holds -1"),
    (lambda b: b.update(mask=np.ones((4, 7), np.float32)), r"mask.*shape \(4, 7\)"),
    (lambda b: b.update(inputs=np.zeros((4, 9), np.int32), targets=np.zeros((4, 9), np.int32),
                        mask=np.ones((4, 9), np.float32)), r"length 9 > model seq_len 8"),
    (lambda b: b.update(inputs=np.zeros((4, 8), np.float32)), r"inputs.*dtype float32"),
    (lambda b: b.pop("mask"), r"missing \['mask'\]"),
    (lambda b: b.update(inputs=np.full((4, 8), 10, np.int32)), r"token ids outside \[0, 10\)"),
])
def test_bad_batches(mutate, message):
  b = _batch()
  mutate(b)
  with pytest.raises(BatchError, match=message):
    validate_batch(b, batch_size=4, seq_len=8, num_tasks=3, vocab_size=10)


def test_bad_batch_reaches_the_loop_as_a_clear_error(tiny_config):
  from modular.train import loop
  run = loop.setup(tiny_config)
  b = _batch(b=run.cfg.train.batch_size, L=run.cfg.model.seq_len, T=run.cfg.model.num_tasks)
  b["task_id"][0] = run.cfg.model.num_tasks
  with pytest.raises(BatchError, match="task_id"):
    loop.global_batch(run, b)


def test_cli_reports_a_bad_override_in_one_line(tmp_path):
  import os
  import subprocess
  import sys
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  for bad, message in (("--config.train.stepz=3", "config.train.stepz: unknown key"),
                       ("--config.model.ffn.name=nope", "config.model.ffn.name: unknown 'nope'"),
                       ("--config.mesh.shape.model=3", "config.mesh.shape")):
    proc = subprocess.run(
        [sys.executable, "-m", "modular.cli", "--config", "configs/quickstart.py",
         "--workdir", str(tmp_path / "run"), bad], cwd=root, capture_output=True, text=True,
        timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr.strip().splitlines()[-1]
  assert not (tmp_path / "run").exists()  # nothing was created for a bad config
