"""Command-line entry points: ``modular-train``, ``modular-analyze``, ``modular-sweep``.

  modular-train --config configs/quickstart.py --workdir runs/quickstart \
      [--config.train.steps=500 ...] [--distributed]
  modular-analyze --workdir runs/quickstart [--out runs/quickstart/report]
  modular-sweep --experiment experiments/mixture_ablation.py --workdir runs/sweep \
      [--engine ray [--address HOST:PORT] ...]

``--distributed`` calls ``jax.distributed.initialize()`` first (multi-host pods and
clusters; the coordinator is found from the environment, e.g. on Cloud TPU).
Errors in the config or its overrides are reported in one line naming the key.
"""

from __future__ import annotations

import argparse
import sys

from modular.overrides import apply_override, load_config_file, parse_overrides


def _fail(msg: str) -> None:
  print(f"error: {msg}", file=sys.stderr)
  raise SystemExit(2)


def train_main(argv: list[str] | None = None) -> None:
  """Entry point of ``modular-train``."""
  overrides, rest = parse_overrides(sys.argv[1:] if argv is None else argv)
  p = argparse.ArgumentParser(prog="modular-train", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--config", required=True, help="config file (configs/quickstart.py[:arg])")
  p.add_argument("--workdir", required=True, help="run folder (resumes if it has checkpoints)")
  p.add_argument("--distributed", action="store_true", help="jax.distributed.initialize()")
  args = p.parse_args(rest)
  if args.distributed:
    import jax
    jax.distributed.initialize()
  from modular import config as config_lib
  from modular.train import checkpoint as ckpt_lib
  from modular.train import loop
  try:
    cfg = load_config_file(args.config)
    for k, v in overrides.items():
      apply_override(cfg, k, v)
    config_lib.validate(cfg)
  except (ValueError, FileNotFoundError) as e:
    _fail(str(e))
  try:
    summary = loop.train(cfg, args.workdir)
  except (ValueError, ckpt_lib.CheckpointError) as e:
    _fail(str(e))
  print(f"done: {summary['end_step']} steps in {args.workdir} "
        f"({summary['steps_per_s'] or 0:.1f} steps/s)")


def analyze_main(argv: list[str] | None = None) -> None:
  """Entry point of ``modular-analyze``: writes the analysis report of a run."""
  p = argparse.ArgumentParser(prog="modular-analyze")
  p.add_argument("--workdir", required=True, help="a run folder written by modular-train")
  p.add_argument("--out", default=None, help="report folder (default WORKDIR/report)")
  args = p.parse_args(sys.argv[1:] if argv is None else argv)
  from modular.analysis import report
  out = report.write_report(args.workdir, out_dir=args.out)
  print(f"report written to {out}")


def sweep_main(argv: list[str] | None = None) -> None:
  """Entry point of ``modular-sweep``: runs an experiment's points, locally or on Ray.

  Every point is validated before any run; a rerun of the same command skips
  finished runs and resumes the others. Exits 1 if a run failed (the others still
  ran; the table lists the error), 2 on bad input.
  """
  overrides, rest = parse_overrides(sys.argv[1:] if argv is None else argv)
  p = argparse.ArgumentParser(prog="modular-sweep")
  p.add_argument("--experiment", required=True, help="experiments/<name>.py")
  p.add_argument("--workdir", required=True, help="sweep folder: one subfolder per run")
  p.add_argument("--arg", default=None, help="argument for get_config / get_hyper")
  p.add_argument("--engine", choices=("local", "ray"), default="local",
                 help="local: one run after another here; ray: Ray Tune trials")
  g = p.add_argument_group("ray engine")
  g.add_argument("--address", default=None,
                 help="Ray cluster to join (default: $RAY_ADDRESS, else a local cluster)")
  g.add_argument("--num-cpus", type=int, default=None, help="CPUs of a local Ray cluster")
  g.add_argument("--cpus-per-trial", type=float, default=1.0)
  g.add_argument("--gpus-per-trial", type=float, default=0.0)
  g.add_argument("--max-concurrent", type=int, default=0, help="0: as resources allow")
  g.add_argument("--max-failures", type=int, default=2,
                 help="restarts of a trial whose worker died")
  g.add_argument("--asha", action="store_true", help="stop bad trials early (ASHA)")
  g.add_argument("--metric", default="accuracy/mean", help="live table and ASHA metric")
  g.add_argument("--tpu-slice", default=None,
                 help="one trial per TPU slice of this type (v4-16), one process per host")
  args = p.parse_args(rest)
  from modular import experiments
  executor = None
  try:
    if args.engine == "ray":
      from modular.experiments.ray_engine import RayExecutor
      executor = RayExecutor(
          address=args.address, num_cpus=args.num_cpus, cpus_per_trial=args.cpus_per_trial,
          gpus_per_trial=args.gpus_per_trial, max_concurrent=args.max_concurrent,
          max_failures=args.max_failures, asha=args.asha, metric=args.metric,
          tpu_slice=args.tpu_slice)
    table = experiments.run_sweep(args.experiment, args.workdir, arg=args.arg,
                                  overrides=overrides, executor=executor)
  except (ValueError, FileNotFoundError) as e:
    _fail(str(e))
  print(table)
  failed = experiments.failed_runs(args.workdir)
  if failed:
    print(f"error: {len(failed)} run(s) failed: " +
          "; ".join(f"{name}: {err}" for name, err in failed), file=sys.stderr)
    raise SystemExit(1)


if __name__ == "__main__":  # pragma: no cover
  train_main()
