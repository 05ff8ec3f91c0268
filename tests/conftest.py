"""Shared test fixtures.

Tests run on one CPU device; tests that need 8 simulated devices start a subprocess
with XLA_FLAGS=--xla_force_host_platform_device_count=8 set before jax is imported
(``run_with_devices``), under a timeout (jax-ml/jax#25861 can deadlock CPU
collectives on few cores).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_with_devices(code: str, devices: int = 8, timeout: int = 400) -> dict:
  """Runs ``code`` in a fresh Python with ``devices`` CPU devices; returns its JSON.

  The code must print one JSON object on its last stdout line.
  """
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  env["JAX_PLATFORMS"] = "cpu"
  env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
  proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=ROOT,
                        capture_output=True, text=True, timeout=timeout)
  if proc.returncode != 0:
    raise AssertionError(f"subprocess failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
  return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory) -> str:
  """One TFDS data dir for the whole session (builders build once)."""
  return str(tmp_path_factory.mktemp("tfds"))


@pytest.fixture
def tiny_config(data_dir):
  """The quickstart's tiny variant, on the session data dir, without a progress bar."""
  sys.path.insert(0, os.path.join(ROOT, "configs"))
  from modular.overrides import load_config_file
  cfg = load_config_file(os.path.join(ROOT, "configs", "quickstart.py"), "tiny")
  cfg.data.data_dir = data_dir
  cfg.train.progress = False
  return cfg
