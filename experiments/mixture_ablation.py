"""Ablation: how the task mixture and the multi-task method change per-task accuracy.

  modular-sweep --experiment experiments/mixture_ablation.py --workdir runs/mixture_ablation

Axes (big_vision get_hyper style): sampling in {uniform, proportional, temperature}
x method in {mean, pcgrad}, over tasks of four sizes (num_train, /2, /4, /8): 6 runs of the quickstart model, one after another; the
final per-task evaluation of every run lands in results.csv / results.md.
Pass ``--config.train.steps=300`` to shorten every run.
"""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "configs"))
import quickstart  # noqa: E402  (configs/ is a folder of config files, not a package)


def get_config(arg=None):
  c = quickstart.get_config(arg)
  c.name = "mixture_ablation"
  c.train.progress = False
  # Tasks of different sizes (num_train, /2, /4, /8 in turn), so that proportional,
  # uniform and temperature sampling give different mixtures.
  c.data.num_train_by_task = ",".join(
      f"{task}:{max(c.data.num_train >> (i % 4), 1)}" for i, task in enumerate(c.data.tasks))
  return c


def get_hyper(h):
  return h.product([
      h.sweep("config.data.sampling", ["uniform", "proportional", "temperature"]),
      h.sweep("config.mtl.method", ["mean", "pcgrad"]),
  ])
