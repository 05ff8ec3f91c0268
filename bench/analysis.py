"""Benchmark of the analysis: compiled head importance and ablation against plain loops.

  python bench/analysis.py [--out bench/results/analysis.json] [--quick]

For the model of ``configs/default.py`` (d_model 128, 4 layers x 8 heads, d_ff 512)
and the base config's model (2 layers x 4 heads), on the 8 default tasks (sequence
32; random weights: the cost does not depend on them), with the same evaluation data
cut into the same mixed batches of 64 for every contender, it times (each warm, the
minimum over repeats, interleaved so that machine load hits all contenders alike):

  forward              one jitted forward pass per batch
  forward + T backward one forward and T backward passes of the per-task loss vector
                       with respect to per-example gates, per batch (the textbook cost)
  gradient importance  ``head_importance.importance_sums``: all heads x all tasks
  head-task loop       one hooked forward pass per (head, task) over that task's own
                       examples with the head's gate off (a jitted forward taking the
                       gates as an argument: nothing recompiles; the strongest loop)
  ablation call        ``ablation.ablation_sums``: baseline + every head, one call per
                       batch (zero ablation; zero + mean; and without prefix sharing)
  head loop            NL x H separate forward passes per batch, one head off each:
                       the "L x H forward passes" the ablation target refers to

and writes the ratios the issue sets targets for. The gradient-vs-loop ratio is
bounded by about NL * H / 2.5 (the loop does NL * H forward passes' worth of work,
the gradient about 2.5), so it passes 10x only from about 25 heads on.

References:
  Michel et al. 2019, "Are Sixteen Heads Really Better than One?".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from modular import config as config_lib  # noqa: E402
from modular import data as data_lib  # noqa: E402
from modular.analysis import ablation as ablation_lib  # noqa: E402
from modular.analysis import head_importance as hi  # noqa: E402
from modular.analysis.batches import prepare_batches, synthetic_batches  # noqa: E402
from modular.models import build_model  # noqa: E402
from modular.objective import FunctionalModel, per_task_metrics  # noqa: E402
from modular.overrides import load_config_file  # noqa: E402

BATCH = 64


def _timer(fn):
  """Warms ``fn`` up (compiles), then returns a closure timing one run."""
  jax.block_until_ready(fn())

  def run():
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0

  return run


def model_configs() -> dict:
  """The two model configs measured, with the data sizes filled in."""
  out = {}
  for name, cfg in (("configs/default.py", load_config_file(
      os.path.join(ROOT, "configs", "default.py"))), ("base config", config_lib.get_base_config())):
    m = cfg.model
    m.vocab_size = data_lib.vocab_size(cfg.data)
    m.seq_len = cfg.data.seq_len
    m.num_tasks = len(data_lib.task_names(cfg.data))
    out[name] = m
  return out


def bench_model(name: str, cfg, examples_per_task: int, reps: int, quick: bool) -> dict:
  fm, params, _ = FunctionalModel.split(build_model(cfg, 0))
  t_n, vocab, seq = cfg.num_tasks, cfg.vocab_size, cfg.seq_len
  data = synthetic_batches(t_n, vocab, seq, examples_per_task, answer_len=8)
  batches = prepare_batches(data, BATCH)  # mixed batches of 64
  per_task = [b for d in data.values() for b in prepare_batches(d, BATCH, seed=None)]
  nl, nh = fm.num_layers, fm.num_heads

  fwd = jax.jit(lambda p, b, g: per_task_metrics(
      fm.apply(p, b, head_gates=g)[0], b, fm.num_tasks)["loss"])
  ones = jnp.ones((nl, nh))
  off = [ones.at[l, h].set(0.0) for l in range(nl) for h in range(nh)]
  zero = tuple(jnp.asarray(x) for x in ablation_lib.layer_patterns(
      nl, nh, fm.head_dim, None, ("zero",)))
  both = tuple(jnp.asarray(x) for x in ablation_lib.layer_patterns(
      nl, nh, fm.head_dim, np.zeros((nl, nh, fm.head_dim), np.float32), ("zero", "mean")))
  chunk = ablation_lib.default_chunk(BATCH)

  def over_batches(f):
    return lambda: [f(b) for b in batches]

  def head_task_loop():
    out = []
    for g in off:
      for b in per_task:
        t = int(b["task_id"][0])
        out.append(float(fwd(params, b, g)[t]))  # one hooked forward per (head, task)
    return out

  contenders = {
      "forward": over_batches(lambda b: fwd(params, b, ones)),
      "forward_plus_T_backward": over_batches(
          lambda b: hi.task_vector_gate_grads(fm, params, b)),
      "gradient_importance": over_batches(lambda b: hi.importance_sums(fm, params, b)),
      "head_task_loop": head_task_loop,
      "ablation_call_zero": over_batches(
          lambda b: ablation_lib.ablation_sums(fm, params, b, zero, chunk)),
      "ablation_call_zero_mean": over_batches(
          lambda b: ablation_lib.ablation_sums(fm, params, b, both, chunk)),
      "ablation_call_zero_no_prefix_sharing": over_batches(
          lambda b: ablation_lib.ablation_sums(fm, params, b, zero, chunk, False)),
      "head_loop": over_batches(lambda b: [fwd(params, b, g) for g in off]),
  }
  if quick:  # the variants the targets do not need
    del contenders["ablation_call_zero_mean"], contenders["ablation_call_zero_no_prefix_sharing"]
  t0 = time.perf_counter()
  timers = {k: _timer(f) for k, f in contenders.items()}
  warm_s = time.perf_counter() - t0
  times = {k: [] for k in timers}
  for _ in range(reps):  # interleaved
    for k, run in timers.items():
      times[k].append(run())
  best = {k: min(v) for k, v in times.items()}
  n_heads = nl * nh
  for k in ("ablation_call_zero_mean", "ablation_call_zero_no_prefix_sharing"):
    best.setdefault(k, float("nan"))  # not run in --quick mode
  ratios = {
      "gradient_vs_forward_plus_T_backward": best["gradient_importance"]
      / best["forward_plus_T_backward"],
      "head_task_loop_vs_gradient": best["head_task_loop"] / best["gradient_importance"],
      # the L x H forward passes, timed as they run (head_loop), and extrapolated from
      # the fastest single forward (more exposed to machine load: one short run)
      "ablation_zero_vs_LxH_forward_passes": best["ablation_call_zero"] / best["head_loop"],
      "ablation_zero_vs_LxH_times_one_forward": best["ablation_call_zero"]
      / (n_heads * best["forward"]),
      "ablation_zero_mean_vs_2LxH_forward_passes": best["ablation_call_zero_mean"]
      / (2 * best["head_loop"]),
      "ablation_no_prefix_sharing_vs_LxH_forward_passes":
          best["ablation_call_zero_no_prefix_sharing"] / best["head_loop"],
      "gradient_in_forwards": best["gradient_importance"] / best["forward"],
      "head_task_loop_in_forwards": best["head_task_loop"] / best["forward"],
  }
  return {
      "model": {"name": name, "d_model": cfg.d_model, "num_layers": nl, "num_heads": nh,
                "d_ff": cfg.d_ff, "num_tasks": t_n, "seq_len": seq,
                "examples": examples_per_task * t_n, "batch": BATCH, "ablation_chunk": chunk},
      "times_s": best, "all_times_s": times, "ratios": ratios, "warmup_and_compile_s": warm_s,
      "targets": {
          "gradient_le_1.5x_forward_plus_T_backward":
              ratios["gradient_vs_forward_plus_T_backward"] <= 1.5,
          "gradient_ge_10x_faster_than_head_task_loop":
              ratios["head_task_loop_vs_gradient"] >= 10,
          "ablation_le_1.2x_LxH_forward_passes":
              ratios["ablation_zero_vs_LxH_forward_passes"] <= 1.2,
      },
  }


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "analysis.json"))
  p.add_argument("--quick", action="store_true", help="16 examples per task, 2 repeats, fewer variants")
  args = p.parse_args()
  reps = 2 if args.quick else 5
  per_task = 16 if args.quick else 64
  t0 = time.perf_counter()
  results = {"device": str(jax.devices()[0]), "backend": jax.default_backend(),
             "cpu_count": os.cpu_count(), "machine": platform.machine(), "quick": args.quick,
             "runs": [bench_model(name, cfg, per_task, reps, args.quick)
                      for name, cfg in model_configs().items()]}
  results["total_s"] = time.perf_counter() - t0
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:  # NaN (not measured) -> null
    f.write(json.dumps(results, indent=2).replace("NaN", "null"))
  for r in results["runs"]:
    m = r["model"]
    print(f"\n{m['name']}: {m['num_layers']} layers x {m['num_heads']} heads, "
          f"{m['examples']} examples in batches of {m['batch']}, {m['num_tasks']} tasks")
    for k, v in r["times_s"].items():
      print(f"  {k:40s} {1e3 * v:9.1f} ms")
    for k, v in r["ratios"].items():
      print(f"  {k:40s} {v:9.2f}")
    for k, v in r["targets"].items():
      print(f"  target {k:40s} {'met' if v else 'NOT met'}")
  print(f"\nwrote {args.out} ({results['total_s']:.0f} s)")


if __name__ == "__main__":
  main()
