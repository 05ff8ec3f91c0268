"""Peak memory and time of surgery with ``mtl.gram`` materialized vs streaming vs the summed step.

  nice python bench/streaming_gram.py [--d_model 512] [--layers 8] [--tasks 4 8 16] [--reps 2]

Builds a decoder of about 26M parameters (d 512, 8 layers, d_ff 2048, vocab 1024; random
tokens, no data needed) and, for each task count T, compiles the full train step
(``modular.train.step.make_train_step`` with Adam, state donated as in the loop) for the
plain mean (the summed step: one backward pass), and for PCGrad and UPGrad with
``gram="materialize"`` and ``gram="streaming"``. It prints one JSON object: for every
(T, step) the parts of XLA's ``compiled.memory_analysis()`` and ``peak_bytes`` = arguments
+ outputs + temporaries - aliased (the donated state), the median wall time of ``--reps``
steps after one warm-up, and the ratios the issue sets goals for: streaming peak / summed
peak (goal <= 1.3 at T = 16) and streaming time / materialized time (goal <= 2.2).
Memory figures are XLA's plan on the backend it runs on, not a measured peak.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import optax

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from modular import models as models_lib  # noqa: E402
from modular import mtl  # noqa: E402
from modular.objective import FunctionalModel  # noqa: E402
from modular.train.step import init_state, make_train_step  # noqa: E402

# (label, method, gram)
STEPS = (("summed", "mean", "materialize"),
         ("pcgrad_materialize", "pcgrad", "materialize"),
         ("pcgrad_streaming", "pcgrad", "streaming"),
         ("upgrad_materialize", "upgrad", "materialize"),
         ("upgrad_streaming", "upgrad", "streaming"))


def build(args: argparse.Namespace, num_tasks: int):
  cfg = models_lib.default_model_config()
  cfg.update(d_model=args.d_model, num_heads=args.heads, num_layers=args.layers,
             d_ff=4 * args.d_model, vocab_size=args.vocab, seq_len=args.seq,
             num_tasks=num_tasks)
  fm, params, _ = FunctionalModel.split(models_lib.build_model(cfg, seed=0))
  key = jax.random.PRNGKey(0)
  inputs = jax.random.randint(key, (args.batch, args.seq), 1, args.vocab)
  batch = {"inputs": inputs, "targets": jnp.roll(inputs, -1, 1),
           "mask": jnp.ones((args.batch, args.seq), jnp.float32),
           "task_id": jnp.arange(args.batch, dtype=jnp.int32) % num_tasks}
  return fm, params, batch


def measure(fm, params, batch, method_name: str, gram: str, num_tasks: int,
            reps: int) -> dict:
  mcfg = mtl.default_mtl_config()
  mcfg.update(method=method_name, num_tasks=num_tasks, gram=gram)
  method = mtl.build(mcfg, params)
  tx = optax.adam(1e-4)
  step = jax.jit(make_train_step(fm, tx, method, gram=gram), donate_argnums=0)
  state = jax.jit(lambda: init_state(params, tx, method, 0))()
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  mem = compiled.memory_analysis()
  out = {"temp_bytes": int(mem.temp_size_in_bytes),
         "argument_bytes": int(mem.argument_size_in_bytes),
         "output_bytes": int(mem.output_size_in_bytes),
         "alias_bytes": int(mem.alias_size_in_bytes)}
  out["peak_bytes"] = (out["temp_bytes"] + out["argument_bytes"] + out["output_bytes"]
                       - out["alias_bytes"])
  state, metrics = compiled(state, batch)          # warm-up
  jax.block_until_ready(metrics)
  times = []
  for _ in range(reps):
    t0 = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready((state, metrics))
    times.append(time.perf_counter() - t0)
  out.update(time_s=round(statistics.median(times), 4), compile_s=round(compile_s, 1),
             finite=bool(jnp.isfinite(metrics["objective"])))
  return out


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--d_model", type=int, default=512)
  p.add_argument("--heads", type=int, default=8)
  p.add_argument("--layers", type=int, default=8)
  p.add_argument("--vocab", type=int, default=1024)
  p.add_argument("--batch", type=int, default=4)
  p.add_argument("--seq", type=int, default=64)
  p.add_argument("--tasks", type=int, nargs="+", default=[4, 8, 16])
  p.add_argument("--reps", type=int, default=2)
  args = p.parse_args()
  out = {"backend": jax.default_backend(), "devices": len(jax.devices()),
         "sizes": vars(args), "results": {}}
  for num_tasks in args.tasks:
    fm, params, batch = build(args, num_tasks)
    out["parameters"] = int(sum(x.size for x in jax.tree.leaves(params)))
    row = {}
    for label, method, gram in STEPS:
      row[label] = measure(fm, params, batch, method, gram, num_tasks, args.reps)
      print(f"T={num_tasks} {label}: {row[label]}", file=sys.stderr, flush=True)
    summed = row["summed"]
    for name in ("pcgrad", "upgrad"):
      mat, stream = row[f"{name}_materialize"], row[f"{name}_streaming"]
      row[f"{name}_ratios"] = {
          "streaming_peak_vs_summed": round(stream["peak_bytes"] / summed["peak_bytes"], 3),
          "materialized_peak_vs_summed": round(mat["peak_bytes"] / summed["peak_bytes"], 3),
          "streaming_time_vs_materialized": round(stream["time_s"] / mat["time_s"], 3),
          "streaming_time_vs_summed": round(stream["time_s"] / summed["time_s"], 3)}
    out["results"][f"T={num_tasks}"] = row
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  main()
