"""Benchmark of the analysis: compiled head importance and ablation against plain loops.

  python bench/analysis.py [--out bench/results/analysis.json] [--quick]

On the default model (d_model 128, 2 layers x 4 heads, d_ff 512, the 8 default tasks,
sequence 32; random weights: the cost does not depend on them) with the same
evaluation data for every contender, it times (each warm, the minimum of repeated
runs, interleaved so that machine load hits all of them alike):

  forward              one jitted forward pass over all the data
  forward + T backward one forward and T backward passes of the per-task loss vector
                       with respect to per-example gates (the textbook cost)
  gradient importance  ``head_importance.importance_sums``: all heads x all tasks
  head-task loop       one hooked forward pass per (head, task) on that task's data,
                       the head's gate off (a jitted forward taking the gates as an
                       argument, so nothing recompiles: the strongest plain loop)
  ablation call        ``ablation.ablation_sums``: baseline + every head, one call
  head loop            NL x H separate forward passes over all the data, one head off

and writes the ratios the issue sets targets for. Without --quick a wider model
(4 layers x 8 heads) is measured too, to show how the gradient-vs-loop ratio grows
with the number of heads (it is bounded by about NL * H / 2: the loop runs NL * H
forward passes' worth of work, the gradient about two).

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

from modular.analysis import ablation as ablation_lib  # noqa: E402
from modular.analysis import head_importance as hi  # noqa: E402
from modular.analysis.batches import prepare_batches, synthetic_batches  # noqa: E402
from modular.models import build_model, default_model_config  # noqa: E402
from modular.objective import FunctionalModel, per_task_metrics  # noqa: E402

NUM_TASKS, VOCAB, SEQ = 8, 28, 32  # the default data config: 8 tasks, 2 + 16 + 10 tokens


def _timer(fn, reps: int):
  """Warm ``fn`` up (compile), then return a closure timing one run."""
  jax.block_until_ready(fn())

  def run():
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0

  return run


def bench_model(num_layers: int, num_heads: int, examples_per_task: int, reps: int) -> dict:
  cfg = default_model_config()
  cfg.num_layers, cfg.num_heads = num_layers, num_heads
  cfg.vocab_size, cfg.seq_len, cfg.num_tasks = VOCAB, SEQ, NUM_TASKS
  fm, params, _ = FunctionalModel.split(build_model(cfg, 0))
  data = synthetic_batches(NUM_TASKS, VOCAB, SEQ, examples_per_task, answer_len=8)
  batch = prepare_batches(data, NUM_TASKS * examples_per_task)[0]  # every example, one batch
  per_task = [d[0] for d in data.values()]  # each task's own examples
  nl, nh = num_layers, num_heads

  fwd = jax.jit(lambda p, b, g: per_task_metrics(
      fm.apply(p, b, head_gates=g)[0], b, fm.num_tasks)["loss"])
  ones = jnp.ones((nl, nh))
  off_patterns = [jnp.ones((nl, nh)).at[l, h].set(0.0) for l in range(nl) for h in range(nh)]
  zero_patterns = tuple(jnp.asarray(x) for x in ablation_lib.layer_patterns(
      nl, nh, fm.head_dim, None, ("zero",)))
  means = np.zeros((nl, nh, fm.head_dim), np.float32)
  both_patterns = tuple(jnp.asarray(x) for x in ablation_lib.layer_patterns(
      nl, nh, fm.head_dim, means, ("zero", "mean")))

  def head_task_loop():
    out = []
    for g in off_patterns:
      for t, b in enumerate(per_task):
        out.append(float(fwd(params, b, g)[t]))  # one hooked forward per (head, task)
    return out

  def head_loop():
    return [fwd(params, batch, g) for g in off_patterns]

  contenders = {
      "forward": lambda: fwd(params, batch, ones),
      "forward_plus_T_backward": lambda: hi.task_vector_gate_grads(fm, params, batch),
      "gradient_importance": lambda: hi.importance_sums(fm, params, batch),
      "head_task_loop": head_task_loop,
      "ablation_call_zero": lambda: ablation_lib.ablation_sums(fm, params, batch,
                                                                zero_patterns),
      "ablation_call_zero_mean": lambda: ablation_lib.ablation_sums(fm, params, batch,
                                                                     both_patterns),
      "ablation_call_zero_no_prefix_sharing": lambda: ablation_lib.ablation_sums(
          fm, params, batch, zero_patterns, None, False),
      "head_loop": head_loop,
  }
  t0 = time.perf_counter()
  timers = {k: _timer(f, reps) for k, f in contenders.items()}
  warm_s = time.perf_counter() - t0
  times = {k: [] for k in timers}
  for _ in range(reps):  # interleaved
    for k, run in timers.items():
      times[k].append(run())
  best = {k: min(v) for k, v in times.items()}
  n_heads = nl * nh
  ratios = {
      "gradient_vs_forward_plus_T_backward": best["gradient_importance"]
      / best["forward_plus_T_backward"],
      "head_task_loop_vs_gradient": best["head_task_loop"] / best["gradient_importance"],
      "ablation_zero_vs_LxH_forwards": best["ablation_call_zero"] / (n_heads * best["forward"]),
      "ablation_zero_vs_head_loop": best["ablation_call_zero"] / best["head_loop"],
      "ablation_zero_mean_vs_2LxH_forwards": best["ablation_call_zero_mean"]
      / (2 * n_heads * best["forward"]),
      "ablation_no_prefix_sharing_vs_LxH_forwards":
          best["ablation_call_zero_no_prefix_sharing"] / (n_heads * best["forward"]),
      "gradient_in_forwards": best["gradient_importance"] / best["forward"],
  }
  return {
      "model": {"d_model": cfg.d_model, "num_layers": nl, "num_heads": nh, "d_ff": cfg.d_ff,
                "num_tasks": NUM_TASKS, "seq_len": SEQ, "examples": int(batch["inputs"].shape[0])},
      "times_s": best, "ratios": ratios, "warmup_and_compile_s": warm_s,
      "targets": {
          "gradient_le_1.5x_forward_plus_T_backward":
              ratios["gradient_vs_forward_plus_T_backward"] <= 1.5,
          "gradient_ge_10x_faster_than_head_task_loop":
              ratios["head_task_loop_vs_gradient"] >= 10,
          "ablation_le_1.2x_LxH_forwards": ratios["ablation_zero_vs_LxH_forwards"] <= 1.2,
      },
  }


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "analysis.json"))
  p.add_argument("--quick", action="store_true", help="default model only, fewer repeats")
  args = p.parse_args()
  reps = 3 if args.quick else 5
  per_task = 32 if args.quick else 64
  shapes = [(2, 4)] if args.quick else [(2, 4), (4, 8)]
  t0 = time.perf_counter()
  results = {"device": str(jax.devices()[0]), "backend": jax.default_backend(),
             "cpu_count": os.cpu_count(), "machine": platform.machine(), "quick": args.quick,
             "runs": [bench_model(nl, nh, per_task, reps) for nl, nh in shapes]}
  results["total_s"] = time.perf_counter() - t0
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(results, f, indent=2)
  for r in results["runs"]:
    m = r["model"]
    print(f"\n{m['num_layers']} layers x {m['num_heads']} heads, {m['examples']} examples, "
          f"{m['num_tasks']} tasks")
    for k, v in r["times_s"].items():
      print(f"  {k:40s} {1e3 * v:9.1f} ms")
    for k, v in r["ratios"].items():
      print(f"  {k:40s} {v:9.2f}")
    for k, v in r["targets"].items():
      print(f"  target {k:40s} {'met' if v else 'NOT met'}")
  print(f"\nwrote {args.out} ({results['total_s']:.0f} s)")


if __name__ == "__main__":
  main()
