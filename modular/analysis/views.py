"""Task x task views of one model: every similarity the report tests against the groups.

Each view is a [T, T] similarity between tasks, thresholded (the IoU of sets, shown
beside the IoU random sets of the same sizes would have) or continuous (a cosine
between per-task vectors, which needs no k and no threshold):

  heads/gradient IoU      IoU of important-head sets from gradient importance
  heads/ablation IoU      IoU of important-head sets from the mean-ablation loss increase
  heads/gradient cosine   cosine of the tasks' raw importance vectors [NL * H]
  heads/ablation cosine   cosine of the tasks' ablation loss-increase vectors [NL * H]
  neurons IoU             specialized-neuron IoU, averaged over FFN layers
  neurons cosine          cosine of the tasks' firing-frequency vectors [NL * N]
  routes <name>           cosine of the tasks' routes (task x expert / skill rows)
  gradient cosine         training-averaged gradient cosine (telemetry of surgery runs)

References:
  Merullo et al. 2023 (head reuse); Michel et al. 2019 (scores); Tan et al. 2024
  (neurons); Ye et al. 2022 and Ponti et al. 2022 (routes); Yu et al. 2020 (gradient
  cosine).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from modular.analysis.analyze import Analysis
from modular.analysis.controls import expected_iou_matrix
from modular.analysis.routing import RoutingSummary


@dataclasses.dataclass
class View:
  """One task x task similarity.

  Attributes:
    name: the view's name ("heads/ablation IoU").
    matrix: [T, T] similarity.
    kind: "set" (IoU of thresholded sets) or "continuous" (cosine).
    expected: [T, T] IoU of random sets of the same sizes (set views) or None.
    note: what the sets were (k, threshold, floor, sizes) or None.
    entropy: [T] route entropy (route views) or None.
  """

  name: str
  matrix: np.ndarray
  kind: str
  expected: np.ndarray | None = None
  note: str | None = None
  entropy: np.ndarray | None = None


def cosine_matrix(vectors: np.ndarray) -> np.ndarray:
  """[T, T] cosine between rows of [T, M] (NaN where a row is all zero)."""
  v = np.asarray(vectors, np.float64).reshape(len(vectors), -1)
  n = np.linalg.norm(v, axis=-1)
  with np.errstate(invalid="ignore", divide="ignore"):
    out = (v @ v.T) / (n[:, None] * n[None, :])
  return np.where((n[:, None] > 0) & (n[None, :] > 0), out, np.nan)


def route_view(name: str, r: RoutingSummary) -> View:
  return View(f"routes {name}", cosine_matrix(r.routes), "continuous", entropy=r.entropy)


def model_views(a: Analysis) -> dict[str, View]:
  """Every task x task view of an ``Analysis``: {name: View}."""
  views = {}
  m_heads = a.importance.raw.shape[1] * a.importance.raw.shape[2]
  for source, r in a.reuse.items():
    sizes = r.sets.sum((1, 2))
    how = f"top-{r.top_k}" if r.top_k is not None else f"threshold {r.threshold:.3g}"
    views[f"heads/{source} IoU"] = View(
        f"heads/{source} IoU", r.iou, "set", expected_iou_matrix(sizes, m_heads),
        note=f"{how} of {m_heads} heads above the noise floor {r.floor:.2g}; "
             f"set sizes {sizes.tolist()}")
  views["heads/gradient cosine"] = View("heads/gradient cosine",
                                        cosine_matrix(a.importance.raw), "continuous")
  if a.ablation is not None:
    mode = "mean" if "mean" in a.ablation.delta_loss else next(iter(a.ablation.delta_loss))
    delta = np.transpose(a.ablation.delta_loss[mode], (2, 0, 1))  # [T, NL, H]
    views["heads/ablation cosine"] = View("heads/ablation cosine", cosine_matrix(delta),
                                          "continuous")
  if a.neurons is not None:
    n = a.neurons
    width = n.sets.shape[-1]
    expected = np.stack([expected_iou_matrix(n.set_sizes[:, l], width)
                         for l in range(n.sets.shape[1])])
    with np.errstate(invalid="ignore"):
      views["neurons IoU"] = View(
          "neurons IoU", np.nanmean(n.iou, 0) if np.isfinite(n.iou).any() else n.iou[0],
          "set", np.nanmean(expected, 0),
          note=f"cumulative k={n.k} of {width} neurons per layer, mean over "
               f"{len(n.layers)} layers")
    views["neurons cosine"] = View("neurons cosine", cosine_matrix(n.frequency), "continuous")
  for name, r in a.routing.items():
    views[f"routes {name}"] = route_view(name, r)
  return views


def telemetry_views(routing_final: dict[str, RoutingSummary], conflict: dict | None,
                    skip: set[str] = frozenset()) -> dict[str, View]:
  """Views from training telemetry: routes at the last logged step (those not seen on
  the evaluation data) and the training-averaged gradient cosine."""
  views = {}
  for name, r in routing_final.items():
    if f"routes {name}" not in skip:
      views[f"routes {name}"] = route_view(name, r)
  if conflict is not None:
    views["gradient cosine"] = View("gradient cosine",
                                    np.nanmean(conflict["cosine"], 0), "continuous")
  return views
