"""Writes tests/golden/merging.npz: peft's and mergekit's merges of fixed random tensors.

  /work/refvenv/bin/python tests/golden/make_merging_golden.py

The reference is ``peft.utils.merge_utils`` on PyTorch CPU (a separate venv with torch and
peft; the test suite has no torch). For each leaf of ``SHAPES`` it draws ``T`` task
tensors (NumPy, seeded) and records peft's ``task_arithmetic``, ``magnitude_prune``,
``ties`` (sign ``total`` and ``frequency``), ``dare_linear`` and ``dare_ties`` with
``WEIGHTS``. peft trims per tensor: our ``trim_scope="tensor"``; ``density`` is our
``k`` (DARE: ``p = 1 - density``).

DARE draws its keep mask inside peft (``torch.bernoulli``). The mask is replayed: the
torch seed is reset and the same ``bernoulli`` calls are made in the same order, and the
replayed mask is checked to reproduce peft's output before it is stored, so the test
feeds our function peft's own mask.

Model Breadcrumbs (peft has none) comes from mergekit 0.1.5's ``breadcrumbs`` merge
(``GeneralizedTaskArithmeticMerge.merge_group`` on a zero base, its ``density`` = our
``k``, ``gamma``, ``WEIGHTS``, lambda 1), and mergekit's ``ties`` with unit weights (its
weighted mean divides by the agreeing weights, peft's by their count: equal for unit
weights) cross-checks peft's. Install mergekit with ``pip install --no-deps mergekit``
into the reference venv.
"""

from __future__ import annotations

import os

import numpy as np

SHAPES = {"a": (6, 5), "b": (7,), "c": (4, 3, 2), "d": (16, 8)}
NUM_TASKS = 3
WEIGHTS = np.array([0.7, 1.2, 0.5], np.float32)
DENSITY = 0.4        # ties, magnitude_prune
DARE_DENSITY = 0.6   # dare_linear, dare_ties: p = 0.4
CRUMBS_DENSITY, CRUMBS_GAMMA = 0.6, 0.1  # mergekit breadcrumbs
GOLDEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "merging.npz")


def task_tensors(seed: int = 0) -> dict[str, np.ndarray]:
  """``{leaf: [T, *shape] float32}``; normal draws, so magnitudes never tie."""
  rng = np.random.default_rng(seed)
  return {k: rng.normal(0.0, 1.0, (NUM_TASKS,) + s).astype(np.float32)
          for k, s in SHAPES.items()}


def _mergekit(name: str, tau: np.ndarray, weights: np.ndarray, **params) -> np.ndarray:
  """mergekit's merge ``name`` of the rows of ``tau`` on a zero base (the delta)."""
  import types

  import torch
  from mergekit.merge_methods import registry

  method = next(m for m in registry.registered_methods()
                if getattr(m, "method_name", None) == name)
  ids = range(len(tau))
  group = types.SimpleNamespace(
      base=types.SimpleNamespace(tensor=torch.zeros(tau.shape[1:])),
      non_base=[types.SimpleNamespace(tensor=torch.tensor(t), id=i) for i, t in enumerate(tau)])
  per = {k: {i: v for i in ids} for k, v in params.items()}
  out = method.merge_group(group, weight={i: float(weights[i]) for i in ids}, rescale=False,
                           int8_mask=False, **{"lambda": 1.0}, **per,
                           normalize=name == "ties")
  return out.numpy()


def main() -> None:
  import peft
  import torch
  from peft.utils import merge_utils as mu

  torch.set_default_dtype(torch.float32)
  out: dict[str, np.ndarray] = {"weights": WEIGHTS, "density": np.float32(DENSITY),
                                "dare_density": np.float32(DARE_DENSITY)}
  w = torch.tensor(WEIGHTS)
  for i, (leaf, tau) in enumerate(task_tensors().items()):
    ts = [torch.tensor(t) for t in tau]
    out[f"{leaf}/tau"] = tau
    out[f"{leaf}/task_arithmetic"] = mu.task_arithmetic(ts, w).numpy()
    out[f"{leaf}/magnitude_prune"] = mu.magnitude_prune(ts, w, DENSITY).numpy()
    out[f"{leaf}/ties_total"] = mu.ties(ts, w, DENSITY, "total").numpy()
    out[f"{leaf}/ties_frequency"] = mu.ties(ts, w, DENSITY, "frequency").numpy()
    for name, fn in (("dare_linear", mu.dare_linear), ("dare_ties", mu.dare_ties)):
      seed = 1000 * i + (0 if name == "dare_linear" else 1)
      torch.manual_seed(seed)
      got = fn(ts, w, DARE_DENSITY).numpy()
      torch.manual_seed(seed)  # replay: the same bernoulli calls in the same order
      masks = [torch.bernoulli(torch.full_like(t, DARE_DENSITY)) for t in ts]
      dropped = [t * m / DARE_DENSITY for t, m in zip(ts, masks)]
      replay = (mu.task_arithmetic(dropped, w) if name == "dare_linear" else
                mu.disjoint_merge(torch.stack(dropped) * w.view(-1, *[1] * tau[0].ndim),
                                  mu.calculate_majority_sign_mask(torch.stack(dropped))))
      assert np.array_equal(replay.numpy(), got), f"{leaf}/{name}: mask replay differs"
      out[f"{leaf}/{name}"] = got
      out[f"{leaf}/{name}_mask"] = np.stack([m.numpy() for m in masks]).astype(bool)
    out[f"{leaf}/mergekit_breadcrumbs"] = _mergekit(
        "breadcrumbs", tau, WEIGHTS, density=CRUMBS_DENSITY, gamma=CRUMBS_GAMMA)
    out[f"{leaf}/mergekit_ties_unit"] = _mergekit("ties", tau, np.ones(NUM_TASKS), density=DENSITY)
  from importlib import metadata
  out["crumbs"] = np.array([CRUMBS_DENSITY, CRUMBS_GAMMA], np.float32)
  out["versions"] = np.array([f"torch {torch.__version__}", f"peft {peft.__version__}",
                              f"mergekit {metadata.version('mergekit')}"])
  np.savez_compressed(GOLDEN, **out)
  print(f"wrote {GOLDEN} ({os.path.getsize(GOLDEN)} bytes), torch {torch.__version__}, "
        f"peft {peft.__version__}")


if __name__ == "__main__":
  main()
