"""One trial on many hosts: a TPU slice's layout, the per-host command and environment.

A trial on a multi-host TPU slice (``v4-16``: 2 hosts of 4 chips) runs one training
process per host, joined by ``jax.distributed``; they share the run folder. The Ray
engine does it as levanter and marin do:

1. The Tune trial reserves the slice's head: one bundle ``{"CPU": 1, "TPU-v4-16-head": 1}``
   (Ray's TPU nodes advertise that resource on worker 0 of every slice), so
   concurrent trials get distinct slices and at most one trial runs per slice.
2. On the head host, the trial reads the slice's name (``ray.util.tpu.get_current_pod_name``;
   every host of the slice advertises it as a resource) and starts one Ray task per host,
   each asking ``{<slice name>: 1, "TPU": chips_per_host}``; process 0 is pinned to
   the head host, whose address is the coordinator.
3. Each task runs ``host_command`` with ``host_env``: ``python -m modular.experiments.multihost``
   calls ``jax.distributed.initialize(coordinator, num_processes, process_id)`` and trains.
   Process 0 writes the run folder's metrics; the trial reports them from ``eval.jsonl``.

This file imports no Ray: it computes the layout and the commands (tested here
without a pod); ``ray_engine`` turns them into Ray requests.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys

COORDINATOR_PORT = 8476
# Pod-type suffixes that count TensorCores (2 per chip) rather than chips.
_CORE_COUNTED = {"v2", "v3", "v4", "v5p"}
_CHIP_COUNTED = {"v5litepod", "v5e", "v6e"}


@dataclasses.dataclass(frozen=True)
class SliceSpec:
  """A TPU slice type.

  Attributes:
    pod_type: the Cloud TPU name, e.g. "v4-16", "v5litepod-16", "v6e-8".
    version: the generation: "v4", "v5p", "v5litepod", "v6e", ...
    chips: chips in the slice.
    chips_per_host: chips attached to each host VM.
  """

  pod_type: str
  version: str
  chips: int
  chips_per_host: int

  @property
  def hosts(self) -> int:
    """Host VMs in the slice (= training processes of one trial)."""
    return max(1, self.chips // self.chips_per_host)

  @property
  def head_resource(self) -> str:
    """The Ray resource on worker 0 of each such slice."""
    return f"TPU-{self.pod_type}-head"

  @classmethod
  def parse(cls, pod_type: str) -> "SliceSpec":
    """Reads "v4-16" style names.

    Raises:
      ValueError: naming ``--tpu-slice`` for an unknown generation or size.
    """
    m = re.fullmatch(r"(v\d+[a-z]*)-(\d+)", pod_type.strip().lower())
    if not m or m.group(1) not in _CORE_COUNTED | _CHIP_COUNTED or int(m.group(2)) < 1:
      raise ValueError(f"--tpu-slice: {pod_type!r} is not a TPU type like v4-16, "
                       "v5p-32, v5litepod-16 or v6e-8")
    version, n = m.group(1), int(m.group(2))
    chips = n // 2 if version in _CORE_COUNTED else n
    if chips < 1:
      raise ValueError(f"--tpu-slice: {pod_type!r} has less than one chip")
    # v5e/v6e slices of up to 8 chips are one VM; larger ones are VMs of 4 chips.
    per_host = chips if version in _CHIP_COUNTED and chips <= 8 else min(4, chips)
    return cls(pod_type.strip().lower(), version, chips, per_host)


def trial_bundles(spec: SliceSpec, cpus: float = 1.0) -> list[dict[str, float]]:
  """The Tune trial's own placement request: one bundle on the slice's head host."""
  return [{"CPU": cpus, spec.head_resource: 1.0}]


def host_resources(spec: SliceSpec, slice_name: str) -> dict[str, float]:
  """The Ray resources of one host's training task (every host of the named slice)."""
  return {slice_name: 1.0, "TPU": float(spec.chips_per_host)}


def host_env(coordinator: str, num_processes: int, process_id: int,
             port: int = COORDINATOR_PORT) -> dict[str, str]:
  """Environment of one host's training process.

  Args:
    coordinator: IP address of process 0's host.
    num_processes: processes in the trial (one per host).
    process_id: this process's index, 0-based.
    port: the coordinator's port.

  Returns:
    ``JAX_COORDINATOR_ADDRESS`` (read by ``jax.distributed``) and
    ``JAX_NUM_PROCESSES`` / ``JAX_PROCESS_ID`` (read by ``main``).
  """
  if not 0 <= process_id < num_processes:
    raise ValueError(f"process_id {process_id} outside [0, {num_processes})")
  return {"JAX_COORDINATOR_ADDRESS": f"{coordinator}:{port}",
          "JAX_NUM_PROCESSES": str(num_processes), "JAX_PROCESS_ID": str(process_id)}


def host_command(config_json: str, workdir: str) -> list[str]:
  """The command every host runs for a trial: the same on all hosts."""
  return [sys.executable, "-m", "modular.experiments.multihost",
          "--config-json", config_json, "--workdir", workdir]


def write_point_config(path: str, cfg) -> str:
  """Writes a trial's full config as JSON for ``host_command`` (atomically)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path + ".tmp", "w") as f:
    f.write(cfg.to_json_best_effort(indent=2))
  os.replace(path + ".tmp", path)
  return path


def main(argv: list[str] | None = None) -> None:
  """One host's training process: ``jax.distributed`` from ``host_env``, then the loop."""
  p = argparse.ArgumentParser(prog="modular.experiments.multihost")
  p.add_argument("--config-json", required=True)
  p.add_argument("--workdir", required=True)
  args = p.parse_args(argv)
  import jax
  import ml_collections
  jax.distributed.initialize(os.environ["JAX_COORDINATOR_ADDRESS"],
                             int(os.environ["JAX_NUM_PROCESSES"]),
                             int(os.environ["JAX_PROCESS_ID"]))
  from modular.train import loop
  with open(args.config_json) as f:
    cfg = ml_collections.ConfigDict(json.load(f))
  summary = loop.train(cfg, args.workdir)
  print(f"done: step {summary['end_step']} on process {jax.process_index()}", flush=True)


if __name__ == "__main__":
  main()
