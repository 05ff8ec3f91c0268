"""modular: a JAX research framework for multi-task modular training.

Subpackages (one-way arrows: train composes the others; analysis only reads):
  data      built-in algorithmic tasks as TFDS builders, mixtures, grain pipelines
  models    the NNX transformer with slots (FFN, adapters, head) and head gates
  modules   pluggable slot fillers: MoE routers, adapters, hypernetworks, skills
  mtl       per-task gradients and gradient surgery / loss weighting
  train     sharding, train step, loop, checkpoints, metrics
  analysis  head reuse, neuron specialization, routing and conflict analysis
"""

__version__ = "0.1.0"
