"""The noise floor of head scores: what counts as "no effect" before anything is ranked.

A head that no task uses still gets a gradient importance of 1e-8 and an ablation
loss change of 1e-7: float32 rounding of a loss near 1, not an effect. Ranking such
numbers (top-k) or normalizing them per layer turns them into "important heads" and
sharp heatmaps. Every head score is therefore compared with a floor first:

  floor = max(relative * max_{t, l, h} |s_t,l,h|,      (the largest effect in the model)
              ulps * eps_float32 * scale)             (float precision of the loss)

where ``scale`` is the size of the quantity the score is a difference or a derivative
of (the baseline loss, in nats). Scores at or below the floor are noise: never in a
task's set (a set can be empty), and zero before per-layer normalization, so a layer
whose heads are all noise stays 0 instead of becoming a pattern that sums to 1.

The floor is one number for the whole model, so a task that learned nothing (its
largest effect 0.003 against 2.5 for a learned task) gets no important heads.

References:
  Michel et al. 2019, "Are Sixteen Heads Really Better than One?" (head scores and
  their per-layer normalization).
"""

from __future__ import annotations

import numpy as np

# default share of the model's largest effect below which a head is noise
RELATIVE_FLOOR = 0.02
# float32 unit roundoff multiples of the loss scale below which a difference is noise
FLOAT_ULPS = 64.0
EPS32 = float(np.finfo(np.float32).eps)


def noise_floor(scores: np.ndarray, relative: float = RELATIVE_FLOOR,
                scale: float | None = None, ulps: float = FLOAT_ULPS) -> float:
  """The score at or below which a head has no measurable effect.

  Args:
    scores: [T, NL, H] (or any shape) head scores; signs are ignored.
    relative: share of the largest |score| in the model (0 disables this part).
    scale: magnitude of the loss behind the scores (nats; default the largest
      |score|, so that the float part is relative to the scores themselves).
    ulps: float32 unit-roundoff multiples of ``scale``.

  Returns:
    The floor (>= 0; 0 only when every score is 0 and ``scale`` is 0).

  Raises:
    ValueError: for a negative ``relative`` or ``ulps``.
  """
  if relative < 0 or ulps < 0:
    raise ValueError(f"noise floor: relative ({relative}) and ulps ({ulps}) must be >= 0")
  a = np.abs(np.asarray(scores, np.float64))
  top = float(np.nanmax(a)) if a.size and np.isfinite(a).any() else 0.0
  scale = top if scale is None else abs(float(scale))
  return max(relative * top, ulps * EPS32 * scale)


def above_floor(scores: np.ndarray, floor: float) -> np.ndarray:
  """[...] bool: scores strictly above the floor (signed: a loss decrease is no effect)."""
  return np.nan_to_num(np.asarray(scores, np.float64), nan=-np.inf) > floor


def floored(scores: np.ndarray, floor: float) -> np.ndarray:
  """Scores with everything at or below the floor set to 0 (same shape)."""
  scores = np.asarray(scores, np.float64)
  return np.where(above_floor(scores, floor), scores, 0.0)
