"""Matplotlib figures of the analysis, saved as PNG.

Every function draws one figure from plain arrays, writes it to ``path`` and closes
it (the Agg backend, no display needed), so the report and the notebooks share the
same pictures: head-score heatmaps (tasks x heads), task x task matrices (IoU,
overlap, gradient cosine), per-layer curves (overlap against depth), routing usage
with its task dendrogram, and gradient cosines over training.

References:
  Michel et al. 2019 (head importance); Merullo et al. 2023 (head reuse); Tan et al.
  2024 (neuron overlap by depth); Ye et al. 2022 (task dendrograms from routes).
"""

from __future__ import annotations

import os
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position
from scipy.cluster import hierarchy  # pylint: disable=g-import-not-at-top,wrong-import-position


def _save(fig, path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=90, bbox_inches="tight")
  plt.close(fig)
  return path


def _annotate(ax, im, matrix: np.ndarray, fmt: str = "{:.2f}", max_cells: int = 144) -> None:
  """Writes each cell's value, white on dark cells and black on light ones."""
  if matrix.size > max_cells:
    return
  for (i, j), v in np.ndenumerate(matrix):
    if np.isfinite(v):
      r, g, b, _ = im.cmap(im.norm(v))
      color = "black" if 0.299 * r + 0.587 * g + 0.114 * b > 0.5 else "white"
      ax.text(j, i, fmt.format(v), ha="center", va="center", fontsize=7, color=color)


def head_heatmap(scores: np.ndarray, task_names: Sequence[str], title: str, path: str,
                 cmap: str = "viridis", center: bool = False) -> str:
  """Tasks x heads heatmap of a [T, NL, H] score (importance, ablation delta).

  Args:
    scores: [T, NL, H].
    task_names: T labels.
    title: figure title.
    path: output PNG.
    cmap: colormap (a diverging one with ``center``).
    center: symmetric color range around 0 (for signed deltas).

  Returns:
    ``path``.
  """
  t, nl, nh = scores.shape
  flat = scores.reshape(t, nl * nh)
  fig, ax = plt.subplots(figsize=(max(4, 0.45 * nl * nh + 2), max(2.5, 0.35 * t + 1.2)))
  kw = {}
  if center:
    lim = float(np.nanmax(np.abs(flat))) or 1.0
    kw = {"vmin": -lim, "vmax": lim}
  im = ax.imshow(flat, aspect="auto", cmap=cmap, **kw)
  ax.set_xticks(range(nl * nh), [f"L{l}H{h}" for l in range(nl) for h in range(nh)],
                rotation=90, fontsize=7)
  ax.set_yticks(range(t), task_names, fontsize=8)
  for l in range(1, nl):
    ax.axvline(l * nh - 0.5, color="white", lw=1.5)
  ax.set_title(title, fontsize=10)
  fig.colorbar(im, ax=ax, fraction=0.03)
  return _save(fig, path)


def task_matrix(matrix: np.ndarray, task_names: Sequence[str], title: str, path: str,
                vmin: float = 0.0, vmax: float = 1.0, cmap: str = "magma") -> str:
  """A task x task heatmap (IoU, overlap coefficient, cosine), values annotated."""
  t = matrix.shape[0]
  fig, ax = plt.subplots(figsize=(0.45 * t + 2.5, 0.45 * t + 2))
  im = ax.imshow(np.ma.masked_invalid(matrix), vmin=vmin, vmax=vmax, cmap=cmap)
  ax.set_xticks(range(t), task_names, rotation=90, fontsize=8)
  ax.set_yticks(range(t), task_names, fontsize=8)
  _annotate(ax, im, matrix)
  ax.set_title(title, fontsize=10)
  fig.colorbar(im, ax=ax, fraction=0.04)
  return _save(fig, path)


def layer_matrices(matrices: np.ndarray, task_names: Sequence[str], title: str, path: str,
                   layer_names: Sequence[str] | None = None, vmin: float = 0.0,
                   vmax: float = 1.0, cmap: str = "magma") -> str:
  """One task x task heatmap per layer, side by side: [NL, T, T]."""
  nl, t, _ = matrices.shape
  layer_names = layer_names or [f"layer {l}" for l in range(nl)]
  fig, axes = plt.subplots(1, nl, figsize=(nl * (0.4 * t + 2), 0.4 * t + 2.2), squeeze=False)
  for l, ax in enumerate(axes[0]):
    im = ax.imshow(np.ma.masked_invalid(matrices[l]), vmin=vmin, vmax=vmax, cmap=cmap)
    ax.set_xticks(range(t), task_names, rotation=90, fontsize=7)
    ax.set_yticks(range(t), task_names if l == 0 else [], fontsize=7)
    _annotate(ax, im, matrices[l])
    ax.set_title(layer_names[l], fontsize=9)
  fig.colorbar(im, ax=list(axes[0]), fraction=0.02)
  fig.suptitle(title, fontsize=10, y=min(0.99, axes[0][0].get_position().y1 + 0.12))
  return _save(fig, path)


def layer_curves(curves: Mapping[str, np.ndarray], title: str, path: str,
                 ylabel: str = "mean pairwise IoU") -> str:
  """Per-layer curves (e.g. mean task-pair overlap against depth): {label: [NL]}."""
  fig, ax = plt.subplots(figsize=(4.5, 3.2))
  for label, ys in curves.items():
    ys = np.asarray(ys, np.float64)
    ax.plot(np.arange(len(ys)), ys, marker="o", label=label)
  ax.set_xlabel("layer")
  ax.set_ylabel(ylabel)
  ax.set_ylim(-0.02, 1.02)
  n = max((len(v) for v in curves.values()), default=1)
  ax.set_xticks(range(n))
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  ax.set_title(title, fontsize=10)
  return _save(fig, path)


def routing_figure(matrix: np.ndarray, linkage: np.ndarray | None, task_names: Sequence[str],
                   title: str, path: str, xlabel: str = "expert") -> str:
  """Task x choice usage, rows in dendrogram order, with the dendrogram at the left.

  Args:
    matrix: [T, K] usage / allocation.
    linkage: scipy linkage of the tasks (None: no dendrogram).
    task_names: T labels.
    title: figure title.
    path: output PNG.
    xlabel: what the columns are ("expert", "skill").

  Returns:
    ``path``.
  """
  t, k = matrix.shape
  fig = plt.figure(figsize=(0.4 * k + 5, 0.35 * t + 1.8))
  order = np.arange(t)
  if linkage is not None:
    ax_d = fig.add_axes([0.02, 0.12, 0.2, 0.76])
    dend = hierarchy.dendrogram(linkage, orientation="left", no_labels=True, ax=ax_d,
                                color_threshold=0)
    order = np.asarray(dend["leaves"])[::-1]
    ax_d.axis("off")
  ax = fig.add_axes([0.3, 0.12, 0.55, 0.76])
  im = ax.imshow(matrix[order], aspect="auto", cmap="viridis")
  ax.set_yticks(range(t), [task_names[i] for i in order], fontsize=8)
  ax.set_xticks(range(k), range(k), fontsize=7)
  ax.set_xlabel(xlabel)
  ax.set_title(title, fontsize=10)
  fig.colorbar(im, cax=fig.add_axes([0.87, 0.12, 0.02, 0.76]))
  return _save(fig, path)


def cosine_over_training(steps: np.ndarray, cosine: np.ndarray, task_names: Sequence[str],
                         path: str, snapshots: int = 4,
                         conflict_fraction: np.ndarray | None = None) -> str:
  """Gradient cosine matrices at a few steps, and every pair's cosine over training.

  Args:
    steps: [S] logged steps.
    cosine: [S, T, T].
    task_names: T labels.
    path: output PNG.
    snapshots: number of evenly spaced steps shown as matrices.
    conflict_fraction: [S] optional, drawn on the curve panel.

  Returns:
    ``path``.
  """
  s, t, _ = cosine.shape
  idx = np.unique(np.linspace(0, s - 1, min(snapshots, s)).round().astype(int))
  n = len(idx)
  fig = plt.figure(figsize=(3.0 * n + 5.5, 3.4))
  grid = fig.add_gridspec(1, n + 3, width_ratios=[1] * n + [0.06, 0.3, 1.6], wspace=0.35)
  for k, i in enumerate(idx):
    ax = fig.add_subplot(grid[0, k])
    im = ax.imshow(cosine[i], vmin=-1, vmax=1, cmap="RdBu")
    ax.set_title(f"step {int(steps[i])}", fontsize=9)
    ax.set_xticks(range(t), task_names, rotation=90, fontsize=6)
    ax.set_yticks(range(t), task_names if k == 0 else [], fontsize=6)
  fig.colorbar(im, cax=fig.add_subplot(grid[0, n]))
  ax = fig.add_subplot(grid[0, n + 2])
  pairs = [(a, b) for a in range(t) for b in range(a + 1, t)]
  for a, b in pairs:
    ax.plot(steps, cosine[:, a, b], lw=0.9, alpha=0.8,
            label=f"{task_names[a]} / {task_names[b]}" if len(pairs) <= 10 else None)
  if conflict_fraction is not None and np.isfinite(conflict_fraction).any():
    ax.plot(steps, conflict_fraction, color="black", lw=2, label="conflict fraction")
  if ax.get_legend_handles_labels()[0]:
    ax.legend(fontsize=6, loc="center left", bbox_to_anchor=(1.01, 0.5))
  ax.axhline(0, color="gray", lw=0.5)
  ax.set_ylim(-1.05, 1.05)
  ax.set_xlabel("step")
  ax.set_title("pairwise gradient cosine", fontsize=9)
  return _save(fig, path)


def entropy_curves(steps: np.ndarray, entropy: np.ndarray, task_names: Sequence[str],
                   title: str, path: str) -> str:
  """Per-task routing entropy over training: steps [S], entropy [S, T]."""
  fig, ax = plt.subplots(figsize=(5, 3.2))
  for t, name in enumerate(task_names):
    ax.plot(steps, entropy[:, t], label=name, lw=1)
  ax.set_xlabel("step")
  ax.set_ylabel("routing entropy (nats)")
  ax.legend(fontsize=6, ncol=2)
  ax.set_title(title, fontsize=10)
  return _save(fig, path)
