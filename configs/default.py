"""The larger default: d_model 128, 4 layers, 8 heads, on every built-in task.

  modular-train --config configs/default.py --workdir runs/default

About 0.18 s a step on an idle 2-core CPU (about 10 minutes); less on one GPU. For many devices, set the
mesh: ``--config.mesh.shape.data=4 --config.mesh.shape.model=2``.
"""

from modular.config import get_base_config


def get_config(arg=None):
  if arg not in (None, ""):
    raise ValueError(f"configs/default.py: unknown argument {arg!r}; it takes none")
  c = get_base_config()
  c.name = "default"
  c.data.num_train = 20000
  c.data.num_eval = 256
  c.data.sampling = "temperature"
  c.data.temperature = 2.0
  c.model.d_model = 128
  c.model.num_heads = 8
  c.model.num_layers = 4
  c.model.d_ff = 512
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 200
  c.train.steps = 3000
  c.train.batch_size = 64
  c.train.log_every = 100
  c.train.eval_every = 1000
  c.train.checkpoint_every = 1000
  return c
