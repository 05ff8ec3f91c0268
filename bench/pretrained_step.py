"""One training step of the imported all-MiniLM-L6-v2 against transformers + PyTorch.

  PYTHONPATH=. python bench/pretrained_step.py [--out bench/results/pretrained_step.json]
                                               [--rounds 5]

Two steps, each side by side with Hugging Face transformers (BertModel, eager
attention) + PyTorch doing the same work:

  peft  LoRA (rank 8, alpha 16, one update shared by the tasks) on both FFN linears
        of every layer, every imported tensor frozen (``optim.freeze_pretrained``);
        trainable: the LoRA matrices and the classification head.
  full  full fine-tuning: every parameter trains.

Both sides: batch 16, length 32 (real lengths 8..32, [PAD] after), cross-entropy of a
2-class linear head on [CLS], AdamW (lr 1e-4, weight decay 0.01), global-norm
clipping at 1.0, no dropout (PyTorch model in eval mode), float32, all CPU cores.
Ours is the loop's jitted step (``modular.train.loop.setup``), as a training run
compiles it. The rounds interleave the four measurements so that load on a shared
machine hits them alike; the median over rounds is reported with the ratio
ours / PyTorch (< 1: faster). Writes one JSON file and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from modular.checkpoints import hf_bert  # noqa: E402
from modular.config import get_base_config  # noqa: E402
from modular.paths import flat_paths  # noqa: E402
from modular.train import loop  # noqa: E402

BATCH, SEQ, RANK, ALPHA, LR = 16, 32, 8, 16.0, 1e-4


def batch(seed: int = 0) -> dict[str, np.ndarray]:
  """Random word-piece ids, [CLS] ... [SEP] then [PAD], real lengths 8..32."""
  rng = np.random.default_rng(seed)
  inputs = np.zeros((BATCH, SEQ), np.int32)
  for r, n in enumerate(rng.integers(8, SEQ + 1, BATCH)):
    inputs[r, :n] = rng.integers(1000, 30000, n)
    inputs[r, 0], inputs[r, n - 1] = 101, 102
  return {"inputs": inputs, "token_type": np.zeros_like(inputs),
          "label": rng.integers(0, 2, BATCH).astype(np.int32),
          "task_id": np.zeros(BATCH, np.int32)}


def ours(mode: str):
  """The loop's compiled step and state for ``mode``; returns a () -> seconds timer."""
  c = get_base_config()
  c.data.tasks = ["copy"]  # one task; the batches below are classification batches
  c.data.seq_len = SEQ
  c.model.pretrained = hf_bert.DEFAULT
  c.model.head = {"name": "classify", "num_classes": 2}
  c.optim.learning_rate = LR
  c.optim.schedule = "constant"
  c.train.batch_size = BATCH
  if mode == "peft":
    c.model.ffn = {"name": "lora", "rank": RANK, "alpha": ALPHA, "per_task": False}
    c.optim.freeze_pretrained = True
  run = loop.setup(c)
  state = {"s": run.init()}
  b = loop.global_batch(run, batch())
  t0 = time.perf_counter()
  step = run.train_step.lower(state["s"], b).compile()
  compile_s = time.perf_counter() - t0
  trainable = sum(int(np.prod(v.shape)) for p, v in flat_paths(state["s"]["params"]).items()
                  if not any(re.search(r, p) for r in run.cfg.optim.frozen))

  def timed() -> float:
    t = time.perf_counter()
    state["s"], metrics = step(state["s"], b)
    jax.block_until_ready((state["s"], metrics))
    return time.perf_counter() - t

  return timed, {"compile_s": compile_s, "trainable_params": trainable}


def torch_side(mode: str):
  """transformers' BertModel doing the same step; returns a () -> seconds timer."""
  import torch
  from transformers import BertModel

  torch.set_num_threads(os.cpu_count() or 1)
  torch.manual_seed(0)
  folder = hf_bert.checkpoint_dir(hf_bert.DEFAULT)
  model = BertModel.from_pretrained(folder, attn_implementation="eager", add_pooling_layer=False)
  model.eval()  # no dropout, as ours

  class LoRALinear(torch.nn.Module):
    def __init__(self, base: torch.nn.Linear):
      super().__init__()
      self.base = base
      self.a = torch.nn.Parameter(torch.randn(base.in_features, RANK) * base.in_features ** -0.5)
      self.b = torch.nn.Parameter(torch.zeros(RANK, base.out_features))

    def forward(self, x):
      return self.base(x) + (ALPHA / RANK) * (x @ self.a) @ self.b

  if mode == "peft":
    for p in model.parameters():
      p.requires_grad_(False)
    for layer in model.encoder.layer:
      layer.intermediate.dense = LoRALinear(layer.intermediate.dense)
      layer.output.dense = LoRALinear(layer.output.dense)
  head = torch.nn.Linear(model.config.hidden_size, 2)
  params = [p for p in list(model.parameters()) + list(head.parameters()) if p.requires_grad]
  opt = torch.optim.AdamW(params, lr=LR, weight_decay=0.01)
  b = batch()
  ids = torch.tensor(b["inputs"], dtype=torch.long)
  mask = torch.tensor(b["inputs"] != 0, dtype=torch.long)
  types = torch.tensor(b["token_type"], dtype=torch.long)
  labels = torch.tensor(b["label"], dtype=torch.long)

  def timed() -> float:
    t = time.perf_counter()
    hidden = model(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
    loss = torch.nn.functional.cross_entropy(head(hidden[:, 0]), labels)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    return time.perf_counter() - t

  return timed, {"trainable_params": sum(p.numel() for p in params)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results",
                                                    "pretrained_step.json"))
  parser.add_argument("--rounds", type=int, default=5)
  args = parser.parse_args()
  timers, info = {}, {}
  for mode in ("peft", "full"):
    timers[("ours", mode)], info[("ours", mode)] = ours(mode)
    timers[("torch", mode)], info[("torch", mode)] = torch_side(mode)
  for fn in timers.values():  # warm-up: first-call allocations, optimizer state
    fn()
  times = {k: [] for k in timers}
  for _ in range(args.rounds):
    for k, fn in timers.items():
      times[k].append(fn())
  result = {"batch": BATCH, "seq_len": SEQ, "rounds": args.rounds, "cpus": os.cpu_count(),
            "devices": str(jax.devices()), "steps": {}}
  for mode in ("peft", "full"):
    ms = {side: 1e3 * float(np.median(times[(side, mode)])) for side in ("ours", "torch")}
    result["steps"][mode] = {
        "ours_ms": ms["ours"], "torch_ms": ms["torch"], "ratio": ms["ours"] / ms["torch"],
        "ours_all_ms": [1e3 * t for t in times[("ours", mode)]],
        "torch_all_ms": [1e3 * t for t in times[("torch", mode)]],
        "ours": info[("ours", mode)], "torch": info[("torch", mode)]}
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, "w") as f:
    json.dump(result, f, indent=2)
  print(f"{'step':6} {'ours ms':>9} {'torch ms':>9} {'ratio':>6}  trainable (ours / torch)")
  for mode, r in result["steps"].items():
    print(f"{mode:6} {r['ours_ms']:9.1f} {r['torch_ms']:9.1f} {r['ratio']:6.2f}  "
          f"{r['ours']['trainable_params']} / {r['torch']['trainable_params']}")
  print(f"wrote {args.out}")


if __name__ == "__main__":
  main()
