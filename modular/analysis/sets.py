"""Overlap between tasks' sets of components: IoU and overlap-coefficient matrices.

Heads (Merullo et al.) and neurons (Tan et al.) are compared the same way: each task
has a set of important components, held as a boolean mask over the components, and
every pair of tasks gets

  IoU(A, B)     = |A n B| / |A u B|
  overlap(A, B) = |A n B| / min(|A|, |B|)

Undefined entries (both sets empty for IoU, either set empty for the overlap
coefficient) are NaN, so a plot shows them as missing instead of as "no overlap".

References:
  Merullo et al. 2023, "Circuit Component Reuse Across Tasks in Transformer Language
  Models"; Tan et al. 2024, "Neuron Specialization: Leveraging intrinsic task
  modularity for multilingual machine translation".
"""

from __future__ import annotations

import numpy as np


def _counts(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Pairwise intersections [..., T, T] and set sizes [..., T] of masks [..., T, M]."""
  m = np.asarray(masks, np.float64)
  inter = np.einsum("...im,...jm->...ij", m, m)
  return inter, m.sum(-1)


def iou_matrix(masks: np.ndarray) -> np.ndarray:
  """Intersection over union between every pair of sets.

  Args:
    masks: [..., T, M] boolean membership of M components in T sets.

  Returns:
    [..., T, T] IoU (NaN where both sets are empty).
  """
  inter, size = _counts(masks)
  union = size[..., :, None] + size[..., None, :] - inter
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(union > 0, inter / union, np.nan)


def overlap_matrix(masks: np.ndarray) -> np.ndarray:
  """Overlap coefficient |A n B| / min(|A|, |B|) between every pair of sets.

  Args:
    masks: [..., T, M] boolean membership.

  Returns:
    [..., T, T] overlap coefficients (NaN where either set is empty).
  """
  inter, size = _counts(masks)
  small = np.minimum(size[..., :, None], size[..., None, :])
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(small > 0, inter / small, np.nan)


def mean_off_diagonal(matrix: np.ndarray) -> np.ndarray:
  """Mean over pairs i != j of [..., T, T], ignoring NaN; [...] (NaN if none)."""
  matrix = np.asarray(matrix, np.float64)
  t = matrix.shape[-1]
  off = ~np.eye(t, dtype=bool)
  vals = matrix[..., off]  # [..., T * (T - 1)]
  with np.errstate(invalid="ignore"):
    count = np.sum(~np.isnan(vals), -1)
    total = np.nansum(vals, -1)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)
