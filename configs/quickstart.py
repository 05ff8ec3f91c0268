"""Quickstart: a small multi-task decoder on the built-in tasks, ~2 minutes on a 2-core CPU.

  modular-train --config configs/quickstart.py --workdir runs/quickstart

Every built-in algorithmic task (generated offline into a local TFDS data dir on
first use), mixed batches with uniform task sampling, per-task evaluation every
250 steps, checkpoints every 250 steps.
"""

from modular.config import get_base_config


def get_config(arg=None):
  if arg not in (None, "", "tiny"):
    raise ValueError(f"configs/quickstart.py: unknown argument {arg!r}; known: ('tiny',)")
  c = get_base_config()
  c.name = "quickstart"
  c.data.num_train = 4000
  c.data.num_eval = 128
  c.data.sampling = "uniform"
  c.model.d_model = 64
  c.model.num_heads = 4
  c.model.num_layers = 2
  c.model.d_ff = 256
  c.optim.learning_rate = 3e-3
  c.optim.warmup_steps = 50
  c.train.steps = 2000
  c.train.batch_size = 64
  c.train.log_every = 50
  c.train.eval_every = 250
  c.train.checkpoint_every = 250
  if arg == "tiny":  # for tests and smoke runs
    c.data.num_train = 256
    c.data.num_eval = 32
    c.model.d_model = 32
    c.model.d_ff = 64
    c.train.steps = 20
    c.train.batch_size = 16
    c.train.log_every = 5
    c.train.eval_every = 10
    c.train.checkpoint_every = 10
  return c
