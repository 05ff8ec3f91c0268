"""Per-layer cost of the pluggable modules against their dense counterparts.

  python bench/modules.py [--quick] [--out bench/results/modules.json]

Every case is one layer, jit-compiled, timed forward + backward (the gradient of a
squared output with respect to the parameters and the input) and forward only, after
a warm-up; candidate and baseline are timed alternately and the median over repeats
is reported, with their ratio. Sizes are the quickstart's (batch 64, sequence 32,
d_model 64, d_ff 256, 8 tasks).

Cases:
  moe_top2_e8_{einsum,scatter}   top-2 of 8 experts (d_ff 128 each) vs the dense FFN
                                 (d_ff 256): equal active parameters per token
  task_moe_top2_*                task-level top-2 of 4 experts (d_ff 128 each, the config)
  task_moe_top1_*                task-level top-1 of 4 experts (d_ff 256 each); both vs the
                                 dense FFN: a mixed batch (expert-sorted chunks of 4
                                 examples; chunk 1 and 8 as variants), a single-task
                                 batch (shared route: inference, homogeneous batches),
                                 and the averaging stage
  task_moe_block                 4 whole blocks, top-1 per task, vs one standard block
                                 (training runs every expert block)
  block+{bottleneck,hyperformer,lora,polytropon,polytropon_mhr}  a block with the
                                 module vs the plain block (adapter overhead)
  head_{mmoe,ple}                multi-gate heads vs the shared linear head

Targets (issue): token MoE <= 1.5x dense, task-level MoE <= 1.1x dense.

References: Lepikhin et al. 2021 (GShard); Ye et al. 2022 (task-level MoE);
Karimi Mahabadi et al. 2021 (HyperFormer++); Ponti et al. 2022 (Polytropon).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import ml_collections  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402

from modular.models import Context, build_slot  # noqa: E402
from modular.models.transformer import slot_args  # noqa: E402
from modular.modules import testing as T  # noqa: E402
from modular.modules.peft import parameter_report  # noqa: E402
from modular.objective import FunctionalModel  # noqa: E402

B, L, D, F, TASKS, VOCAB = 64, 32, 64, 256, 8, 24


def _cfg(**slots):
  return T.model_config(TASKS, d_model=D, d_ff=F, num_heads=4, num_layers=2,
                        vocab_size=VOCAB, seq_len=L, **slots)


def _layer(kind: str, slot_cfg: dict, **slots) -> nnx.Module:
  """One layer: the filler ``slot_cfg`` of slot ``kind`` ("ffn", "head", "block");
  ``slots`` configure the other slots of the model config (a block's adapters)."""
  cfg = _cfg(**slots)
  args = slot_args(cfg, -1 if kind == "head" else 0, kind, nnx.Dict())
  return build_slot(kind, args, ml_collections.ConfigDict(slot_cfg), T.rngs(0))


def _timer(module: nnx.Module, x: jax.Array, task: jax.Array, train: bool):
  graphdef, params = nnx.split(module, nnx.Param)

  def forward(params, x):
    ctx = Context(task_id=task, num_tasks=TASKS, deterministic=not train,
                  rng=jax.random.PRNGKey(0) if train else None, layer=0)
    y = nnx.merge(graphdef, params)(x, ctx)
    return jnp.mean(y.astype(jnp.float32) ** 2) + sum(ctx.losses.values())

  fn = jax.jit(jax.value_and_grad(forward, argnums=(0, 1))) if train else jax.jit(forward)

  def run():
    t0 = time.perf_counter()
    jax.block_until_ready(fn(params, x))
    return time.perf_counter() - t0

  run()  # compile
  run()  # warm-up
  return run


def compare(name: str, candidate, baseline, x, task, repeats: int) -> dict:
  """Alternating timings of candidate and baseline (train and forward): medians in ms."""
  out = {"case": name}
  for mode, train in (("train", True), ("forward", False)):
    tc, tb = _timer(candidate, x, task, train), _timer(baseline, x, task, train)
    c, b = [], []
    for _ in range(repeats):
      c.append(tc())
      b.append(tb())
    mc, mb = statistics.median(c) * 1e3, statistics.median(b) * 1e3
    out[mode] = {"candidate_ms": mc, "baseline_ms": mb, "ratio": mc / mb}
  print(f"{name:32s} train {out['train']['candidate_ms']:7.2f} / {out['train']['baseline_ms']:7.2f}"
        f" ms = {out['train']['ratio']:5.2f}x   forward {out['forward']['candidate_ms']:6.2f} / "
        f"{out['forward']['baseline_ms']:6.2f} ms = {out['forward']['ratio']:5.2f}x", flush=True)
  return out


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--quick", action="store_true", help="fewer repeats and cases")
  p.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                               "results", "modules.json"))
  p.add_argument("--repeats", type=int, default=0, help="timed repeats (default 30; quick 8)")
  a = p.parse_args(argv)
  repeats = a.repeats or (8 if a.quick else 30)
  key = jax.random.PRNGKey(0)
  x = jax.random.normal(key, (B, L, D))
  mixed = jnp.arange(B, dtype=jnp.int32) % TASKS
  one_task = jnp.full((B,), 3, jnp.int32)
  dense = _layer("ffn", {"name": "dense"})
  block = _layer("block", {"name": "standard"})
  print(f"{'case':32s} {'candidate / baseline (train = fwd+bwd)':>40s}")
  results = []
  moe = {"name": "moe", "num_experts": 8, "top_k": 2, "capacity_factor": 1.25}
  for dispatch in ("einsum", "scatter"):
    results.append(compare(f"moe_top2_e8_{dispatch}", _layer("ffn", dict(moe, dispatch=dispatch)),
                           dense, x, mixed, repeats))
  tmoe = {"name": "task_moe", "num_experts": 4, "top_k": 2, "temperature": 0.5}  # config
  top1 = dict(tmoe, top_k=1, straight_through=True)
  for label, opts in (("top2", tmoe), ("top1", top1)):
    results.append(compare(f"task_moe_{label}_mixed", _layer("ffn", opts), dense, x, mixed,
                           repeats))
    results.append(compare(f"task_moe_{label}_one_task", _layer("ffn", opts), dense, x,
                           one_task, repeats))
  if not a.quick:
    for chunk in (1, 8):  # 1: per-example weight gather
      results.append(compare(f"task_moe_top2_mixed_chunk{chunk}",
                             _layer("ffn", dict(tmoe, chunk=chunk)), dense, x, mixed, repeats))
    results.append(compare("task_moe_average", _layer("ffn", dict(tmoe, route_mode="average")),
                           dense, x, mixed, repeats))
    results.append(compare("task_moe_block", _layer(
        "block", {"name": "task_moe_block", "num_experts": 4, "top_k": 1}), block, x, mixed,
        repeats))
  adapters = {
      "bottleneck": {"adapter_attn": {"name": "bottleneck"}, "adapter_ffn": {"name": "bottleneck"}},
      "hyperformer": {"adapter_attn": {"name": "hyperformer"},
                      "adapter_ffn": {"name": "hyperformer"}},
      "lora": {"ffn": {"name": "lora", "rank": 8}},
      "polytropon": {"ffn": {"name": "polytropon", "rank": 8}},
      "polytropon_mhr": {"ffn": {"name": "polytropon", "rank": 8, "heads": 4}},
  }
  params_added = {}
  for name, slots in adapters.items():
    if a.quick and name == "polytropon_mhr":
      continue
    blk = _layer("block", {"name": "standard"}, **slots)
    results.append(compare(f"block+{name}", blk, block, x, mixed, repeats))
    model = nnx.eval_shape(lambda: T.build(_cfg(**slots)))
    params_added[name] = parameter_report(FunctionalModel.split(model)[1], TASKS)
  for head in ("mmoe", "ple"):
    if a.quick and head == "ple":
      continue
    results.append(compare(f"head_{head}", _layer("head", {"name": head}),
                           _layer("head", {"name": "shared"}), x, mixed, repeats))
  print("\nparameters added (2-layer quickstart model, 8 tasks):")
  for name, r in params_added.items():
    print(f"  {name:16s} {r['added']:8d} added = {r['added_pct']:6.2f}% of the backbone, "
          f"{r['added_per_task_pct']:5.2f}% per task")
  report = {
      "sizes": {"batch": B, "seq": L, "d_model": D, "d_ff": F, "tasks": TASKS},
      "repeats": repeats, "quick": a.quick, "backend": jax.default_backend(),
      "device": str(jax.devices()[0]), "cpu_count": os.cpu_count(),
      "platform": platform.platform(), "results": results, "params_added": params_added,
      "targets": {"moe_vs_dense": 1.5, "task_moe_vs_dense": 1.1},
  }
  os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
  with open(a.out, "w") as f:
    json.dump(report, f, indent=2)
  print(f"wrote {a.out}")
  return report


if __name__ == "__main__":
  main()
