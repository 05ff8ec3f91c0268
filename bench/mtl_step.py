"""Benchmark: the cost of gradient surgery against its ideal and against LibMTL.

For each number of tasks T (default 2, 4, 8, 16) on a 2-layer transformer (d 128,
0.4M shared parameters, batch 64 x 32, one linear head per task) it times:

All configurations of one T are compiled ahead of time, then timed round-robin (min
and median over rounds), so background load on a shared machine hits them alike;
XLA's cost analysis (GFLOP, GB accessed) of every compiled program is recorded too,
a load-independent check of the same ratios. Timed:

* ``fwd`` one forward pass of the [T] loss vector, ``bwd`` one backward pass from
  saved residuals; ``ideal = fwd + T * bwd``;
* ``summed`` the plain summed-loss step (one backward);
* ``naive`` per-task gradients from T separate ``jax.grad`` calls (one dispatch
  each), then PCGrad;
* PCGrad's full step (per-task gradients in one pass, combine, Adam); at the T
  values of ``--methods-at`` (default 8) also every method's full step and PCGrad
  with the other pull-back strategy (``unroll``);
* representation-level PCGrad and MGDA (``rep_value_and_grad``);
* the Gram-space work alone (the T x T solve) and the combine (Gram + solve +
  weighted sum) from precomputed gradients;
* LibMTL's PCGrad step on the same architecture in PyTorch (if installed);
* with ``--all-methods``: every registered method's full step (loss weightings with
  one backward pass of ``scalarize``) and LibMTL 1.1.5's step of the same method where
  it has one (``_libmtl_compat.LIBMTL_METHODS``), side by side
  (``<m>_over_ideal``, ``<m>_over_libmtl``).

Writes JSON (default ``bench/results/mtl_step.json``) and prints a table. Run:
``python bench/mtl_step.py [--quick] [--tasks 2,4,8,16] [--reps 3] [--out PATH]``.

Reading the numbers on a shared 2-core machine: wall times swing 2-10x with other
processes (PyTorch's OpenMP threads suffer most: LibMTL's min and median differ up
to 10x), so compare min against min and check the GFLOP/GB ratios, which do not move.
Known gap: XLA's CPU backward pass of this model runs at about half PyTorch's speed
(single-threaded fwd+bwd 180-250 ms vs 124 ms); about a fifth of it is loop fusions
that recompute the residual-stream cotangent (``copy_bitcast_fusion`` in a profile).
The per-task gradients themselves match the ideal's FLOPs (ratio 1.01-1.03).

References:
  Yu et al. 2020, "Gradient Surgery for Multi-Task Learning"; Lin & Zhang 2023,
  "LibMTL: A Python Library for Multi-Task Learning".
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from modular import mtl  # noqa: E402
from modular.mtl import gram as gram_lib  # noqa: E402
from modular.mtl.task_grads import resolve_strategy  # noqa: E402

SIZES = dict(vocab=64, seq=32, batch=64, d_model=128, num_heads=4, d_ff=512, num_layers=2,
             num_classes=8)
METHODS = ("pcgrad", "mgda", "cagrad", "nashmtl", "imtl_g", "aligned_mtl", "gradnorm")
# --all-methods: every registered method once (aliases left out).
ALL_METHODS = tuple(n for n in mtl.METHODS.names() if n not in ("equal", "random", "sum"))


# ---------------------------------------------------------------- the model (pure JAX)
def init_params(key, num_tasks, vocab, seq, d_model, d_ff, num_layers, num_classes, **_):
  """Shared trunk + stacked per-task heads (``heads/*`` is task-specific)."""
  keys = iter(jax.random.split(key, 4 + 4 * num_layers))
  normal = lambda shape, scale=0.02: scale * jax.random.normal(next(keys), shape, jnp.float32)
  zeros, ones = (lambda n: jnp.zeros((n,), jnp.float32)), (lambda n: jnp.ones((n,), jnp.float32))
  blocks = [{"ln1_s": ones(d_model), "ln1_b": zeros(d_model),
             "qkv": normal((d_model, 3 * d_model)), "qkv_b": zeros(3 * d_model),
             "out": normal((d_model, d_model)), "out_b": zeros(d_model),
             "ln2_s": ones(d_model), "ln2_b": zeros(d_model),
             "fc1": normal((d_model, d_ff)), "fc1_b": zeros(d_ff),
             "fc2": normal((d_ff, d_model)), "fc2_b": zeros(d_model)} for _ in range(num_layers)]
  return {"trunk": {"embed": normal((vocab, d_model)), "pos": normal((seq, d_model)),
                    "blocks": blocks, "ln_s": ones(d_model), "ln_b": zeros(d_model)},
          "heads": {"w": normal((num_tasks, d_model, num_classes)),
                    "b": jnp.zeros((num_tasks, num_classes), jnp.float32)}}


def _ln(x, s, b):
  mu = x.mean(-1, keepdims=True)
  var = ((x - mu) ** 2).mean(-1, keepdims=True)
  return (x - mu) * jax.lax.rsqrt(var + 1e-5) * s + b


def trunk(p, tokens, labels, num_heads=SIZES["num_heads"]):
  """``tokens`` [B, S] -> representation ``z`` [B, S, d]."""
  del labels
  t = p["trunk"]
  # One-hot matmul instead of a gather: its backward is a dense matmul, not a scatter.
  x = jax.nn.one_hot(tokens, t["embed"].shape[0], dtype=jnp.float32) @ t["embed"] + t["pos"]
  bsz, seq, d = x.shape
  for blk in t["blocks"]:
    qkv = (_ln(x, blk["ln1_s"], blk["ln1_b"]) @ blk["qkv"] + blk["qkv_b"])
    q, k, v = qkv.reshape(bsz, seq, 3, num_heads, d // num_heads).transpose(2, 0, 3, 1, 4)
    att = jax.nn.softmax(q @ k.swapaxes(-1, -2) / np.sqrt(d // num_heads), axis=-1)
    x = x + (att @ v).transpose(0, 2, 1, 3).reshape(bsz, seq, d) @ blk["out"] + blk["out_b"]
    h = jax.nn.gelu(_ln(x, blk["ln2_s"], blk["ln2_b"]) @ blk["fc1"] + blk["fc1_b"],
                    approximate=False)
    x = x + h @ blk["fc2"] + blk["fc2_b"]
  return _ln(x, t["ln_s"], t["ln_b"])


def heads(p, z, tokens, labels):
  """Per-task token classification losses ``[T]`` (labels [B, S, T])."""
  del tokens
  logits = jnp.einsum("bsd,tdc->tbsc", z, p["heads"]["w"]) + p["heads"]["b"][:, None, None]
  logp = jax.nn.log_softmax(logits, axis=-1)                              # [T, B, S, C]
  onehot = jax.nn.one_hot(jnp.moveaxis(labels, -1, 0), logits.shape[-1], dtype=logp.dtype)
  return -jnp.mean(jnp.sum(logp * onehot, axis=-1), axis=(1, 2))           # [T]


def loss_vec(p, tokens, labels):
  return heads(p, trunk(p, tokens, labels), tokens, labels)


# ---------------------------------------------------------------- timing
def round_robin(fns, reps):
  """Times every ``name -> (fn, args)`` in turn, ``reps`` rounds after a warm-up call.

  Interleaving spreads background load evenly over the configurations, so their
  ratios stay meaningful on a shared machine.

  Returns:
    ``{name: (min_ms, median_ms)}``.
  """
  for fn, args in fns.values():
    _block(fn(*args))                                      # warm up
  times = {k: [] for k in fns}
  for _ in range(reps):
    for name, (fn, args) in fns.items():
      t0 = time.perf_counter()
      _block(fn(*args))
      times[name].append(1e3 * (time.perf_counter() - t0))
  return {k: (min(v), statistics.median(v)) for k, v in times.items()}


def _block(x):
  return jax.block_until_ready(x) if not hasattr(x, "detach") else x


def compile_all(fns):
  """Compiles every jitted entry ahead of time; returns the load-independent costs.

  XLA's cost analysis (FLOPs, bytes accessed) of each compiled program does not
  depend on what else runs on the machine, unlike its wall time.

  Returns:
    ``(fns with compiled executables, {name: {"gflop": .., "gbyte": ..}}, compile_s)``.
  """
  out, costs, t0 = {}, {}, time.perf_counter()
  for name, (fn, args) in fns.items():
    if hasattr(fn, "lower"):
      fn = fn.lower(*args).compile()
      c = fn.cost_analysis()
      c = c[0] if isinstance(c, list) else c
      costs[name] = {"gflop": c.get("flops", 0.0) / 1e9, "gbyte": c.get("bytes accessed", 0.0) / 1e9}
    out[name] = (fn, args)
  return out, costs, time.perf_counter() - t0


def make_step(method, tx, strategy="auto"):
  """A full training step with per-task gradients: grads, combine, Adam."""
  vg = mtl.per_task_value_and_grad(loss_vec, strategy=strategy)

  def step(params, opt_state, mstate, tokens, labels):
    losses, task_grads = vg(params, tokens, labels)
    grads, mstate, _ = method.combine(task_grads, mstate, losses=losses)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, mstate

  return jax.jit(step)


def make_weighting_step(method, tx):
  """A full step of a loss weighting: one backward of ``scalarize``, ``observe``, Adam."""

  def step(params, opt_state, mstate, tokens, labels):
    present = jnp.ones((labels.shape[-1],))
    grads, losses = jax.grad(
        lambda p: (lambda l: (method.scalarize(mstate, l, present), l))(
            loss_vec(p, tokens, labels)), has_aux=True)(params)
    mstate, _ = method.observe(mstate, losses, present)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, mstate

  return jax.jit(step)


def make_rep_step(method, tx):
  """A full step with surgery on the representation z."""
  vg = mtl.rep_value_and_grad(trunk, heads)

  def step(params, opt_state, mstate, tokens, labels):
    losses, z_grads, backprop = vg(params, tokens, labels)
    z_ct, mstate, _ = method.combine(z_grads, mstate, losses=losses, mask=None)
    updates, opt_state = tx.update(backprop(z_ct), opt_state, params)
    return optax.apply_updates(params, updates), opt_state, mstate

  return jax.jit(step)


def _with(cfg, **kw):
  c = cfg.copy_and_resolve_references()
  c.update(kw)
  return c


def build_fns(num_tasks, step_methods, libmtl, combine_methods=METHODS):
  """Every configuration timed for one T: ``name -> (callable, args)``."""
  params = init_params(jax.random.key(0), num_tasks, **SIZES)
  r = np.random.default_rng(num_tasks)
  tokens = jnp.asarray(r.integers(0, SIZES["vocab"], (SIZES["batch"], SIZES["seq"])), jnp.int32)
  labels = jnp.asarray(r.integers(0, SIZES["num_classes"],
                                  (SIZES["batch"], SIZES["seq"], num_tasks)), jnp.int32)
  tx = optax.adam(1e-3)
  opt_state = tx.init(params)
  cfg = mtl.default_mtl_config()
  cfg.num_tasks, cfg.task_specific = num_tasks, ["^heads/"]
  data = (tokens, labels)
  fns = {}

  fns["fwd"] = (jax.jit(loss_vec), (params, *data))
  _, vjp_fn = jax.jit(lambda p, x, y: jax.vjp(lambda q: loss_vec(q, x, y), p))(params, *data)
  fns["bwd"] = (jax.jit(lambda f, ct: f(ct)), (vjp_fn, jnp.ones((num_tasks,)) / num_tasks))

  def summed(params, opt_state, tokens, labels):
    grads = jax.grad(lambda p: jnp.sum(loss_vec(p, tokens, labels)))(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state

  fns["summed"] = (jax.jit(summed), (params, opt_state, *data))

  # Naive: T separate jax.grad calls (one compiled function, T dispatches), then PCGrad.
  pc = mtl.build(_with(cfg, method="pcgrad"), params)
  grad_t = jax.jit(jax.grad(lambda p, x, y, t: loss_vec(p, x, y)[t]))

  @jax.jit
  def finish(task_grads, params, opt_state, mstate):
    grads, mstate, _ = pc.combine(task_grads, mstate)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, mstate

  def naive(params, opt_state, mstate, tokens, labels):
    gs = [grad_t(params, tokens, labels, t) for t in range(num_tasks)]
    return finish(jax.tree.map(lambda *a: jnp.stack(a), *gs), params, opt_state, mstate)

  fns["naive_pcgrad"] = (naive, (params, opt_state, pc.init(params), *data))

  fns["pcgrad"] = (make_step(pc, tx), (params, opt_state, pc.init(params), *data))
  for name in step_methods:
    if name != "pcgrad":
      m = mtl.build(_with(cfg, method=name), params)
      make = make_step if m.needs_task_grads else make_weighting_step
      fns[name] = (make(m, tx), (params, opt_state, m.init(params), *data))
  if len(step_methods) > 1:  # the pull-back strategy "auto" did not pick, for comparison
    other = "vmap" if resolve_strategy("auto") == "unroll" else "unroll"
    fns[f"pcgrad_{other}"] = (make_step(pc, tx, other), (params, opt_state, pc.init(params), *data))
  for name in ("pcgrad", "mgda"):
    m = mtl.build(_with(cfg, method=name), params)
    fns[f"rep_{name}"] = (make_rep_step(m, tx), (params, opt_state, m.init(params), *data))

  # Combine (Gram + solve + weighted sum) and the Gram-space solve alone, every method.
  _, task_grads = jax.jit(mtl.per_task_value_and_grad(loss_vec))(params, *data)
  losses = fns["fwd"][0](params, *data)
  mask = gram_lib.task_specific_mask(task_grads, cfg.task_specific)
  gram = jax.jit(lambda g: gram_lib.gram_matrix(g, mask))(task_grads)
  present = jnp.ones((num_tasks,))
  for name in combine_methods:
    m = mtl.build(_with(cfg, method=name), params)
    fns[f"{name}_combine"] = (jax.jit(lambda g, s, l, m=m: m.combine(g, s, losses=l)[0]),
                              (task_grads, m.init(params), losses))
    fns[f"{name}_gram_space"] = (jax.jit(lambda g, s, l, m=m: m.solve(g, s, l, present)[0]),
                                 (gram, m.init(params), losses))
  if libmtl:
    try:
      import torch
      from _libmtl_compat import LIBMTL_METHODS, build_libmtl_pcgrad
      for name in ["pcgrad"] + [n for n in step_methods if n in LIBMTL_METHODS and n != "pcgrad"]:
        weighting, kwargs = LIBMTL_METHODS[name]
        if weighting == "CAGrad" and num_tasks != 3:
          continue                                   # LibMTL's CAGrad hard-codes T = 3
        torch.manual_seed(0)
        _, _, step = build_libmtl_pcgrad(num_tasks, **{k: SIZES[k] for k in (
            "vocab", "seq", "d_model", "num_heads", "d_ff", "num_layers", "num_classes")},
                                         weighting=weighting, kwargs=kwargs)
        fns[f"libmtl_{name}"] = (step, (torch.as_tensor(np.array(tokens), dtype=torch.long),
                                        torch.as_tensor(np.array(labels), dtype=torch.long)))
    except ImportError as e:
      fns["libmtl_error"] = f"{type(e).__name__}: {e}"
  return fns


def bench(num_tasks, reps, step_methods, libmtl, combine_methods=METHODS):
  """All timings for one T: ``<name>_ms`` (min over rounds) and ``<name>_median_ms``."""
  fns = build_fns(num_tasks, step_methods, libmtl, combine_methods)
  res = {"T": num_tasks}
  if isinstance(fns.get("libmtl_error"), str):
    res["libmtl_error"] = fns.pop("libmtl_error")
  fns, costs, res["compile_s"] = compile_all(fns)
  for name, (best, med) in round_robin(fns, reps).items():
    res[f"{name}_ms"], res[f"{name}_median_ms"] = best, med
  for name, c in costs.items():
    res[f"{name}_gflop"], res[f"{name}_gbyte"] = c["gflop"], c["gbyte"]
  res["ideal_ms"] = res["fwd_ms"] + num_tasks * res["bwd_ms"]
  res["ideal_median_ms"] = res["fwd_median_ms"] + num_tasks * res["bwd_median_ms"]
  res["ideal_gflop"] = res["fwd_gflop"] + num_tasks * res["bwd_gflop"]
  res["ideal_gbyte"] = res["fwd_gbyte"] + num_tasks * res["bwd_gbyte"]
  return res


def ratios(r):
  """Adds the ratios the issue's targets are stated in."""
  out = {"pcgrad_over_ideal": r["pcgrad_ms"] / r["ideal_ms"],
         "pcgrad_over_ideal_median": r["pcgrad_median_ms"] / r["ideal_median_ms"],
         "pcgrad_gflop_over_ideal": r["pcgrad_gflop"] / r["ideal_gflop"],
         "pcgrad_gbyte_over_ideal": r["pcgrad_gbyte"] / r["ideal_gbyte"],
         "pcgrad_over_summed": r["pcgrad_ms"] / r["summed_ms"],
         "naive_over_pcgrad": r["naive_pcgrad_ms"] / r["pcgrad_ms"],
         "rep_pcgrad_over_summed": r["rep_pcgrad_ms"] / r["summed_ms"],
         "rep_mgda_over_summed": r["rep_mgda_ms"] / r["summed_ms"],
         # Every method shares PCGrad's per-task gradient cost: fractions of that step.
         "gram_space_fraction_max": max(r[k] for k in r if k.endswith("_gram_space_ms"))
                                    / r["pcgrad_ms"],
         "combine_fraction_max": max(r[k] for k in r if k.endswith("_combine_ms"))
                                 / r["pcgrad_ms"]}
  for m in ALL_METHODS:
    if f"{m}_ms" in r:
      out[f"{m}_over_ideal"] = r[f"{m}_ms"] / r["ideal_ms"]
      out[f"{m}_over_summed"] = r[f"{m}_ms"] / r["summed_ms"]
    if f"{m}_ms" in r and f"libmtl_{m}_ms" in r:
      out[f"{m}_over_libmtl"] = r[f"{m}_ms"] / r[f"libmtl_{m}_ms"]
  if "libmtl_pcgrad_ms" in r:
    out["pcgrad_over_libmtl"] = r["pcgrad_ms"] / r["libmtl_pcgrad_ms"]
  return out


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--tasks", default="2,4,8,16", help="comma-separated T values")
  parser.add_argument("--reps", type=int, default=3, help="timed rounds (min and median kept)")
  parser.add_argument("--methods-at", default="8",
                      help="T values at which every method's full step is timed "
                           "(elsewhere PCGrad only; combine and Gram-space times always)")
  parser.add_argument("--quick", action="store_true",
                      help="T = 4 only, 2 rounds, PCGrad/MGDA only (a smoke run)")
  parser.add_argument("--no-libmtl", action="store_true", help="skip the PyTorch side")
  parser.add_argument("--methods", default="",
                      help="comma-separated methods for --all-methods (default: every one); "
                           "also limits the combine/Gram-space timings to them")
  parser.add_argument("--all-methods", action="store_true",
                      help="time every registered method's full step (and LibMTL's same "
                           "method) at the --methods-at T values")
  parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                    "results", "mtl_step.json"))
  args = parser.parse_args(argv)
  tasks = [4] if args.quick else [int(t) for t in args.tasks.split(",")]
  reps = 2 if args.quick else args.reps
  methods_at = set() if args.quick else {int(t) for t in args.methods_at.split(",") if t}
  rows, t_start = [], time.perf_counter()
  for num_tasks in tasks:
    chosen = tuple(m for m in args.methods.split(",") if m)
    listed = (chosen or ALL_METHODS) if args.all_methods else METHODS
    step_methods = listed if num_tasks in methods_at else ("pcgrad",)
    combine = ("pcgrad", "mgda") if args.quick else METHODS
    if chosen:
      combine = tuple(m for m in chosen if m in METHODS) or ("pcgrad",)
    r = bench(num_tasks, reps, step_methods, libmtl=not args.no_libmtl,
              combine_methods=combine)
    r.update(ratios(r))
    rows.append(r)
    print(f"T={num_tasks} done ({time.perf_counter() - t_start:.0f} s, "
          f"load {os.getloadavg()[0]:.1f})", flush=True)
  meta = {"sizes": SIZES, "jax": jax.__version__, "backend": jax.default_backend(),
          "cpus": os.cpu_count(), "machine": platform.machine(), "reps": reps,
          "pull_back_strategy": resolve_strategy("auto"),
          "load_avg_end": os.getloadavg(), "total_s": time.perf_counter() - t_start,
          "times": "ms; <name>_ms is the min over rounds, <name>_median_ms the median",
          "shared_params": int(sum(x.size for x in jax.tree.leaves(
              init_params(jax.random.key(0), 1, **SIZES)["trunk"])))}
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump({"meta": meta, "rows": rows}, f, indent=1)
  cols = ["T", "compile_s", "fwd_ms", "bwd_ms", "ideal_ms", "summed_ms", "pcgrad_ms",
          "pcgrad_vmap_ms", "pcgrad_unroll_ms", "naive_pcgrad_ms", "libmtl_pcgrad_ms",
          "rep_pcgrad_ms", "rep_mgda_ms", "pcgrad_over_ideal", "pcgrad_over_ideal_median",
          "pcgrad_gflop_over_ideal", "pcgrad_gbyte_over_ideal", "naive_over_pcgrad",
          "pcgrad_over_libmtl",
          "rep_pcgrad_over_summed", "rep_mgda_over_summed", "gram_space_fraction_max",
          "combine_fraction_max"] + [f"{m}_over_{ref}" for m in ALL_METHODS
                                     for ref in ("ideal", "libmtl") if m != "pcgrad"]
  print(json.dumps(meta))
  for c in cols:
    vals = [r.get(c) for r in rows]
    if all(v is None for v in vals):
      continue
    print(f"{c:26s}" + "".join(f"{v:>10.3g}" if isinstance(v, (int, float)) else f"{'-':>10s}"
                               for v in vals))
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
