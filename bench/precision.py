"""bfloat16 against float32: the loss curves of real runs, and the step's memory plan.

  python bench/precision.py [--steps 200] [--out bench/precision.json] [--configs quickstart minilm:lora]

For each config, trains the same run twice (``model.dtype = "float32"`` and
``"bfloat16"``; same seed, data and schedule) for ``--steps`` steps with the training
loss logged every 10 steps, and prints one JSON object: both curves (the mean training
objective per logged step, from ``telemetry.jsonl``), the largest gap between them and
the largest gap relative to the float32 loss, the final per-task evaluation losses,
wall time of each run and its ratio, and XLA's memory plan of one compiled gradient step
(``compiled.memory_analysis()``: temporaries and arguments) in each dtype. On CPU,
bfloat16 matmuls are emulated, so the time ratio is not what an accelerator shows;
the curves and memory are the point here.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "configs"))

import jax  # noqa: E402

from modular.overrides import load_config_file  # noqa: E402
from modular.train import loop  # noqa: E402


def _config(name: str, dtype: str, steps: int, data_dir: str):
  path, _, arg = name.partition(":")
  cfg = load_config_file(os.path.join(ROOT, "configs", f"{path}.py"), arg or None)
  cfg.model.dtype = dtype
  cfg.train.steps = steps
  cfg.train.log_every = 10
  cfg.train.eval_every = steps
  cfg.train.checkpoint_every = steps
  cfg.train.progress = False
  cfg.data.data_dir = data_dir
  return cfg


def _curve(workdir: str) -> dict[int, float]:
  out = {}
  with open(os.path.join(workdir, "telemetry.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      out[int(row["step"])] = float(row["objective"])
  return out


def _memory(cfg) -> dict[str, int]:
  run = loop.setup(cfg)
  state = run.init()
  from modular import data as data_lib
  batch = loop.global_batch(run, next(data_lib.make_train_iterator(run.cfg.data,
                                                                   run.cfg.train.batch_size)))
  mem = run.train_step.lower(state, batch).compile().memory_analysis()
  return {"temp_bytes": int(mem.temp_size_in_bytes),
          "argument_bytes": int(mem.argument_size_in_bytes)}


def compare(name: str, steps: int, data_dir: str) -> dict:
  runs = {}
  for dtype in ("float32", "bfloat16"):
    cfg = _config(name, dtype, steps, data_dir)
    workdir = tempfile.mkdtemp(prefix=f"precision_{dtype}_")
    start = time.perf_counter()
    summary = loop.train(cfg, workdir)
    wall = time.perf_counter() - start
    runs[dtype] = {"curve": _curve(workdir), "wall_s": round(wall, 2),
                   "eval_loss": {t: round(float(v), 4) for t, v in summary["eval"]["loss"].items()},
                   "memory": _memory(_config(name, dtype, steps, data_dir))}
  f32, b16 = runs["float32"]["curve"], runs["bfloat16"]["curve"]
  gaps = {s: abs(b16[s] - f32[s]) for s in f32 if s in b16}
  return {
      "config": name, "steps": steps,
      "max_abs_gap": round(max(gaps.values()), 5),
      "max_rel_gap": round(max(g / abs(f32[s]) for s, g in gaps.items()), 5),
      "final_loss": {d: round(runs[d]["curve"][max(runs[d]["curve"])], 5) for d in runs},
      "time_ratio_bf16_over_f32": round(runs["bfloat16"]["wall_s"] / runs["float32"]["wall_s"], 3),
      "temp_bytes_ratio_bf16_over_f32": round(
          runs["bfloat16"]["memory"]["temp_bytes"] / max(runs["float32"]["memory"]["temp_bytes"], 1), 3),
      "runs": {d: {k: v for k, v in r.items()} for d, r in runs.items()},
  }


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--steps", type=int, default=200)
  p.add_argument("--configs", nargs="+", default=["quickstart", "minilm:lora"])
  p.add_argument("--data_dir", default=os.path.join(tempfile.gettempdir(), "modular_bench_tfds"))
  p.add_argument("--out", default="")
  args = p.parse_args()
  result = {"backend": jax.default_backend(), "device": str(jax.devices()[0]),
            "results": [compare(n, args.steps, args.data_dir) for n in args.configs]}
  text = json.dumps(result, indent=1)
  print(text)
  if args.out:
    with open(args.out, "w") as f:
      f.write(text + "\n")


if __name__ == "__main__":
  main()
