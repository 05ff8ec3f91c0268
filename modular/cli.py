"""Command-line entry points: ``modular-train``, ``-analyze``, ``-sweep`` and ``-merge``.

  modular-train --config configs/quickstart.py --workdir runs/quickstart \
      [--config.train.steps=500 ...] [--distributed]
  modular-analyze --workdir runs/quickstart [--out runs/quickstart/report] [--patching [PAIRS]]
  modular-sweep --experiment experiments/mixture_ablation.py --workdir runs/sweep \
      [--engine ray [--address HOST:PORT] ...]
  modular-merge --runs runs/copy runs/reverse --method ties --options k=0.2 [--out DIR]

``--distributed`` calls ``jax.distributed.initialize()`` first (multi-host pods and
clusters; the coordinator is found from the environment, e.g. on Cloud TPU).
Errors in the config or its overrides are reported in one line naming the key.
"""

from __future__ import annotations

import argparse
import os
import sys

from modular.overrides import apply_override, load_config_file, parse_overrides


def _fail(msg: str) -> None:
  print(f"error: {msg}", file=sys.stderr)
  raise SystemExit(2)


def load_and_override(path: str, overrides: dict[str, str]):
  """The config file's ConfigDict with ``--config.x=v`` applied; one line on any error.

  Overrides use ``modular.overrides`` rather than ml_collections' ``config_flags``:
  config_flags cannot override list fields (``optim.frozen``, ``data.tasks``,
  ``mtl.task_specific``: "Type list ... is not supported for overriding") and names an
  unknown key without its section ("'stepz' Did you mean steps"), while the sweep axes
  set the same dotted keys through the same ``apply_override``. The base config is
  locked as with ``config_flags(lock_config=True)``.
  """
  try:
    cfg = load_config_file(path)
    for k, v in overrides.items():
      apply_override(cfg, k, v)
  except (ValueError, FileNotFoundError) as e:
    _fail(str(e))
  return cfg


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
  from modular import filelock
  from modular.train import checkpoint as ckpt_lib
  from modular.train import loop
  cfg = load_and_override(args.config, overrides)
  try:
    config_lib.validate(cfg)
  except ValueError as e:
    _fail(str(e))
  try:
    summary = loop.train(cfg, args.workdir)
  except (ValueError, FileNotFoundError, ckpt_lib.CheckpointError, loop.NonfiniteError,
          filelock.LockHeldError) as e:
    _fail(str(e))
  if summary["end_step"] == summary["start_step"]:  # a finished run launched again
    print(f"done: {args.workdir} had already finished at step {summary['end_step']}; "
          "nothing was trained (its final evaluation is above)")
  else:
    print(f"done: steps {summary['start_step']}-{summary['end_step']} in {args.workdir} "
          f"({summary['steps_per_s'] or 0:.1f} steps/s)")


def analyze_main(argv: list[str] | None = None) -> None:
  """Entry point of ``modular-analyze``: writes the analysis report of a run.

  Several ``--workdir`` folders (one config at different seeds) also get an
  aggregate report over seeds (``--out``, default ``<parent>/report_seeds``).
  """
  p = argparse.ArgumentParser(prog="modular-analyze")
  p.add_argument("--workdir", required=True, nargs="+",
                 help="run folder(s) written by modular-train (several: seeds of one config)")
  p.add_argument("--out", default=None, help="report folder (default WORKDIR/report)")
  p.add_argument("--step", type=int, default=None,
                 help="analyze this checkpoint step (default: the latest)")
  p.add_argument("--top-k", type=int, default=None,
                 help="at most K important heads per task (default a quarter of the heads)")
  p.add_argument("--threshold", type=float, default=None,
                 help="important heads reach this share of the largest score, in (0, 1]")
  p.add_argument("--num-examples", type=int, default=64,
                 help="evaluation examples per task (default 64)")
  p.add_argument("--groups", default=None,
                 help="declared task groups, e.g. 'copy,reverse;assoc_recall,induction' "
                      "(default the run's analysis.groups or the built-in families)")
  p.add_argument("--no-control", action="store_true", help="skip the step-0 control")
  p.add_argument("--patching", type=int, nargs="?", const=32, default=0, metavar="PAIRS",
                 help="add the head patching map: PAIRS clean/corrupted pairs per task "
                      "(default 32)")
  args = p.parse_args(sys.argv[1:] if argv is None else argv)
  if args.top_k is not None and args.top_k < 1:
    _fail(f"--top-k: {args.top_k} must be >= 1")
  if args.threshold is not None and not 0.0 < args.threshold <= 1.0:
    _fail(f"--threshold: {args.threshold} must be a share of the largest score in (0, 1]")
  if args.num_examples < 1:
    _fail(f"--num-examples: {args.num_examples} must be >= 1")
  if args.patching < 0:
    _fail(f"--patching: {args.patching} pairs per task must be >= 1")
  groups = None
  if args.groups:
    groups = {f"group{i}": [t.strip() for t in g.split(",") if t.strip()]
              for i, g in enumerate(args.groups.split(";")) if g.strip()}
  kw = dict(step=args.step, top_k=args.top_k, threshold=args.threshold, max_eval_batches=1,
            eval_batch_size=args.num_examples, control=not args.no_control, groups=groups)
  if args.patching:
    if len(args.workdir) > 1:
      _fail("--patching: one --workdir at a time (not with a seed report)")
    kw["patching"] = args.patching
  from modular.analysis import report, seed_report
  from modular.train import checkpoint as ckpt_lib
  try:
    if len(args.workdir) == 1:
      out = report.write_report(args.workdir[0], out_dir=args.out, **kw)
    else:
      out = seed_report.write_seed_report(args.workdir, out_dir=args.out, **kw)
  except (ValueError, FileNotFoundError, ckpt_lib.CheckpointError) as e:
    _fail(str(e))
  print(f"report written to {out}")
  summary = os.path.join(out, "summary.txt")
  if os.path.exists(summary):
    print(open(summary).read())


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
  if not os.path.isfile(args.experiment.rsplit(":", 1)[0] if not os.path.exists(
      args.experiment) else args.experiment):
    _fail(f"--experiment: no experiment file at {args.experiment}")
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


def merge_main(argv: list[str] | None = None) -> None:
  """Entry point of ``modular-merge``: merges runs' task vectors and evaluates every task.

  modular-merge --runs runs/copy runs/reverse --method ties --options k=0.2 \
      [--weights 1 1] [--step N] [--seed 0] [--out runs/merged]
  """
  p = argparse.ArgumentParser(prog="modular-merge")
  p.add_argument("--runs", required=True, nargs="+",
                 help="run folders written by modular-train, all from one base")
  p.add_argument("--method", default="task_arithmetic",
                 help="merging method (task_arithmetic, average, ties, dare, dare_ties, "
                      "breadcrumbs, magnitude_prune, lines, tall_masks, emr_merging, fisher, "
                      "regmean, adamerging)")
  p.add_argument("--statistics", nargs="*", default=None,
                 help="one .npz of statistics per run (fisher, regmean: default computed "
                      "from each run's training data, saved under --out; adamerging: "
                      "its learned coefficients)")
  p.add_argument("--options", nargs="*", default=[], help="method options, e.g. k=0.2 scaling=1")
  p.add_argument("--weights", nargs="*", type=float, default=None, help="one weight per run")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: latest)")
  p.add_argument("--seed", type=int, default=0, help="seed of random methods (DARE)")
  p.add_argument("--out", default=None, help="folder for merge.json (default: none)")
  args = p.parse_args(sys.argv[1:] if argv is None else argv)
  options = {}
  for item in args.options:
    key, sep, value = item.partition("=")
    if not sep or not key:
      _fail(f"--options: {item!r} is not key=value")
    options[key] = value
  from modular.merging import runs
  from modular.merging import statistics as statistics_lib
  try:
    stats = (None if args.statistics is None
             else [statistics_lib.load(f) for f in args.statistics])
    result = runs.merge_runs(args.runs, args.method, options, step=args.step,
                             weights=args.weights, seed=args.seed, out=args.out,
                             statistics=stats)
  except (ValueError, FileNotFoundError) as e:
    _fail(str(e))
  print(runs.table(result))
  if args.out:
    print(f"written to {os.path.join(args.out, 'merge.json')}")


if __name__ == "__main__":  # pragma: no cover
  train_main()
