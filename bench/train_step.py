"""Benchmark of the training step: step time, tokens/s and compile time.

  python bench/train_step.py [--out bench/results/train_step.json] [--quick]

For the quickstart and the default model configs, on whatever devices are present:
compile time of the jitted step, the median step time over repeated steps (each
waited for), tokens/s (batch x sequence / step time), and the ratio of the default
model's step to the quickstart's. Writes one JSON file; prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "configs"))

from modular import data as data_lib  # noqa: E402
from modular.overrides import load_config_file  # noqa: E402
from modular.train import loop  # noqa: E402


def bench_config(name: str, steps: int, data_dir: str) -> dict:
  cfg = load_config_file(os.path.join(ROOT, "configs", f"{name}.py"))
  cfg.data.data_dir = data_dir
  cfg.data.num_train = 512
  cfg.data.num_eval = 16
  run = loop.setup(cfg)
  it = data_lib.make_train_iterator(run.cfg.data, run.cfg.train.batch_size)
  batches = [loop.global_batch(run, next(it)) for _ in range(min(steps, 8))]
  state = run.init()
  t0 = time.perf_counter()
  compiled = run.train_step.lower(state, batches[0]).compile()
  compile_s = time.perf_counter() - t0
  state, _ = compiled(state, batches[0])
  jax.block_until_ready(state)
  times = []
  for i in range(steps):
    t0 = time.perf_counter()
    state, _ = compiled(state, batches[i % len(batches)])
    jax.block_until_ready(state)
    times.append(time.perf_counter() - t0)
  step_s = float(np.median(times))
  n_params = sum(x.size for x in jax.tree.leaves(state["params"]))
  tokens = run.cfg.train.batch_size * run.cfg.model.seq_len
  return {"config": name, "params": int(n_params), "batch": run.cfg.train.batch_size,
          "seq_len": run.cfg.model.seq_len, "compile_s": compile_s, "step_ms": 1e3 * step_s,
          "step_ms_p90": 1e3 * float(np.percentile(times, 90)),
          "tokens_per_s": tokens / step_s, "steps": steps}


def main() -> None:
  p = argparse.ArgumentParser()
  p.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "train_step.json"))
  p.add_argument("--quick", action="store_true")
  args = p.parse_args()
  steps = 10 if args.quick else 40
  with tempfile.TemporaryDirectory() as data_dir:
    rows = [bench_config(n, steps, data_dir) for n in ("quickstart", "default")]
  result = {"device": str(jax.devices()[0].device_kind), "num_devices": jax.device_count(),
            "backend": jax.default_backend(), "rows": rows,
            "default_over_quickstart_step": rows[1]["step_ms"] / rows[0]["step_ms"]}
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"{'config':<12}{'params':>10}{'compile s':>10}{'step ms':>9}{'tokens/s':>11}")
  for r in rows:
    print(f"{r['config']:<12}{r['params']:>10}{r['compile_s']:>10.2f}{r['step_ms']:>9.2f}"
          f"{r['tokens_per_s']:>11.0f}")
  print(f"default/quickstart step ratio: {result['default_over_quickstart_step']:.2f}")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
