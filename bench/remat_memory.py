"""XLA's memory analysis of the gradient step under each ``model.remat`` policy.

  python bench/remat_memory.py [--d_model 256] [--layers 6] [--batch 16] [--seq 256]

Compiles ``jax.grad`` of the summed per-task objective of a decoder (random tokens, no
data needed) once per policy and prints one JSON object: for each policy the bytes of
``compiled.memory_analysis()`` (temporaries, arguments, outputs) and the temporaries'
ratio to ``none``'s, and the activations JAX saves for the backward pass
(``jax.ad_checkpoint.print_saved_residuals``, arguments left out). Sizes are XLA's plan
on the backend it runs on, not a measured peak. On CPU (jax 0.10.1) the temporaries are
the same for every policy: the CPU pipeline appears to merge the recomputation back
into the forward pass, so there the saved-activation bytes show the policy's effect.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import jax
import jax.numpy as jnp
from jax._src.ad_checkpoint import saved_residuals  # what print_saved_residuals prints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from modular import models as models_lib  # noqa: E402
from modular.objective import FunctionalModel, task_loss_vector  # noqa: E402

POLICIES = ("none", "block", "dots_saveable", "dots_with_no_batch_dims_saveable")


def analyse(args: argparse.Namespace, remat: str) -> dict:
  cfg = models_lib.default_model_config()
  cfg.update(d_model=args.d_model, num_heads=args.heads, num_layers=args.layers,
             d_ff=4 * args.d_model, vocab_size=args.vocab, seq_len=args.seq, num_tasks=4,
             remat=remat)
  model = models_lib.build_model(cfg, seed=0)
  fm, params, _ = FunctionalModel.split(model)
  key = jax.random.PRNGKey(0)
  inputs = jax.random.randint(key, (args.batch, args.seq), 1, args.vocab)
  batch = {"inputs": inputs, "targets": jnp.roll(inputs, -1, 1),
           "mask": jnp.ones((args.batch, args.seq), jnp.float32),
           "task_id": jnp.arange(args.batch, dtype=jnp.int32) % 4}

  def grad(p, b):
    return jax.grad(lambda q: task_loss_vector(fm, q, b)[0].sum())(p)

  mem = jax.jit(grad).lower(params, batch).compile().memory_analysis()
  saved = saved_residuals(lambda q: task_loss_vector(fm, q, batch)[0].sum(), params)
  activations = [aval for aval, why in saved if "argument" not in why]
  return {"saved_activation_bytes": int(sum(a.size * a.dtype.itemsize for a in activations)),
          "saved_activations": len(activations),
          "temp_bytes": int(mem.temp_size_in_bytes),
          "argument_bytes": int(mem.argument_size_in_bytes),
          "output_bytes": int(mem.output_size_in_bytes)}


def main() -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--d_model", type=int, default=256)
  p.add_argument("--heads", type=int, default=4)
  p.add_argument("--layers", type=int, default=6)
  p.add_argument("--batch", type=int, default=16)
  p.add_argument("--seq", type=int, default=256)
  p.add_argument("--vocab", type=int, default=512)
  args = p.parse_args()
  out = {"backend": jax.default_backend(), "sizes": vars(args), "policies": {}}
  for remat in POLICIES:
    out["policies"][remat] = analyse(args, remat)
  base = out["policies"]["none"]["temp_bytes"]
  saved = out["policies"]["none"]["saved_activation_bytes"]
  for v in out["policies"].values():
    v["temp_vs_none"] = round(v["temp_bytes"] / base, 3) if base else None
    v["saved_vs_none"] = round(v["saved_activation_bytes"] / saved, 3) if saved else None
  print(json.dumps(out, indent=1))


if __name__ == "__main__":
  main()
