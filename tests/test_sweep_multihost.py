"""One trial on a multi-host TPU slice: the layout, placement request, per-host command and env.

No pod is here: the layout is checked against Ray's own TPU arithmetic
(``ray.util.tpu``) for every generation Ray knows, and the per-host process is
checked for what it would run. What stays untested is listed in the README.
"""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from modular.experiments import multihost

# (topology, generation) per Cloud TPU generation: single- and multi-host slices.
TOPOLOGIES = [("2x2x1", "v4"), ("2x2x2", "v4"), ("2x2x4", "v4"), ("4x4x4", "v4"),
              ("2x2x1", "v5p"), ("2x2x4", "v5p"), ("2x2", "v5litepod"), ("2x4", "v5litepod"),
              ("4x4", "v5litepod"), ("8x8", "v5litepod"), ("2x2", "v6e"), ("2x4", "v6e"),
              ("4x4", "v6e"), ("8x16", "v6e")]


@pytest.mark.parametrize("topology,version", TOPOLOGIES)
def test_slice_layout_matches_ray(topology, version):
  ray_tpu = pytest.importorskip("ray.util.tpu")
  pod_type = ray_tpu.infer_tpu_pod_type_from_topology(topology, version)
  hosts, per_host = ray_tpu.get_tpu_worker_resources(topology, version)
  spec = multihost.SliceSpec.parse(pod_type)
  assert (spec.hosts, spec.chips_per_host) == (hosts, per_host["TPU"]), pod_type
  assert spec.chips == ray_tpu.get_num_chips_from_topology(topology)


def test_placement_request_and_host_resources():
  spec = multihost.SliceSpec.parse("v4-16")
  assert (spec.chips, spec.hosts, spec.chips_per_host) == (8, 2, 4)
  # The trial holds the slice's head (at most one trial per slice) ...
  assert multihost.trial_bundles(spec) == [{"CPU": 1.0, "TPU-v4-16-head": 1.0}]
  # ... and starts one task per host on that slice, each with the host's chips.
  assert multihost.host_resources(spec, "my-slice-7") == {"my-slice-7": 1.0, "TPU": 4.0}
  for bad in ("v4", "v9-16", "tpu-16", "v4-1", "v5p-0"):
    with pytest.raises(ValueError, match="--tpu-slice"):
      multihost.SliceSpec.parse(bad)


def test_per_host_command_and_env(tmp_path, tiny_config, capsys):
  spec = multihost.SliceSpec.parse("v5litepod-16")
  envs = [multihost.host_env("10.0.0.2", spec.hosts, i) for i in range(spec.hosts)]
  assert [e["JAX_PROCESS_ID"] for e in envs] == ["0", "1", "2", "3"]
  assert {e["JAX_COORDINATOR_ADDRESS"] for e in envs} == {"10.0.0.2:8476"}
  assert {e["JAX_NUM_PROCESSES"] for e in envs} == {"4"}
  with pytest.raises(ValueError):
    multihost.host_env("10.0.0.2", 4, 4)
  path = multihost.write_point_config(str(tmp_path / "_points" / "a.json"), tiny_config)
  cmd = multihost.host_command(path, str(tmp_path / "run"))
  assert cmd[:3] == [sys.executable, "-m", "modular.experiments.multihost"]
  # Every host reads back exactly the trial's config.
  assert json.load(open(path)) == json.loads(tiny_config.to_json_best_effort())
  # The command names this module's entry point, which parses that command line.
  assert importlib.util.find_spec(cmd[2]).origin == multihost.__file__
  with pytest.raises(SystemExit) as e:
    multihost.main(["--help"])
  assert e.value.code == 0 and "--config-json" in capsys.readouterr().out
