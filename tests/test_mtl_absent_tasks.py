"""A task absent from some batches: no method's state learns from its absence.

Small mixed batches often miss a task, the first batch included. Three properties over
the whole registry (``mtl_properties``), on a 12-step sequence in which task 2 is absent
for the first ``K`` steps, tasks 0 and 1 each miss a later step and no task is present
at step 6 (one compile per method, about 20 s for the file on 2 cores):

* A task absent for its first ``K`` steps trains once it appears: within ``WINDOW``
  steps, every present task (the late one and the others) gets a positive weight, and
  the update has a positive inner product with its gradient and with its own direction
  (the part no other task's gradient spans); updates stay finite, also at the step with
  no task. Before the fix ExcessMTL took its risk normaliser at step 0, where the late
  task's risk is 0, so the late task's weight went to 1 and every other task's to 0 for
  the rest of the run; TrimmedMean returned an ``inf`` update at the step with no task.
* A task absent at a step leaves the state's entries for that task bit-identical
  (``mtl_properties.task_entries``): no normaliser, EMA, baseline, simplex weight or
  first loss is written from an absent task's zero loss and gradient. Before the fix
  MoCo, MoDo and SDMGrad zeroed an absent task's simplex weight (it restarted from 0),
  CR-MOGM decayed its EMA towards 0 (and started a late task's EMA from 0), and GradNorm
  overwrote its first-loss entry with 0 before the task was ever present.
* Steps with no task present are no-ops: put in front of the sequence they change no
  later update (bit for bit). Before the fix ExcessMTL set every normaliser at such a
  step, MoCo and DB-MTL advanced the step counts of their schedules, and TrimmedMean's
  update at such a step was ``inf``.

Plus the first-present-step rule where no generic property sees it: PCD's EMA bias
correction counts the task's own steps (at a task's first present step
``v_t = ||g_t||^2``, however late), and CR-MOGM's average of a late task starts at the
base's weight (``lambda_t = lambda_hat_t``), checked against a stateless MGDA.
"""

from __future__ import annotations

import functools

import numpy as np
import pytest

import mtl_properties as props
from modular import mtl

K = 3        # task 2 is absent for the first K steps
WINDOW = 2   # steps a present task may take to be trained after task 2 appears
LATE = 2

PRESENT = np.ones((12, props.T), np.float32)
PRESENT[:K, LATE] = 0.0
PRESENT[[2, 7], 0] = 0.0
PRESENT[[1, 8], 1] = 0.0
PRESENT[9, LATE] = 0.0
PRESENT[6] = 0.0            # a batch with no task at all

# Narrow exemptions from parts of "every present task trains", each with its reason.
NO_WEIGHT_CHECK = {
    "krum": "a selection rule: Krum averages the n_selected = 1 lowest-score gradients, "
            "so by definition the other tasks get weight 0",
    "pcd": "a priority rule: a secondary task's multiplier is 0 whenever the primary's "
           "step already gives it tau-progress; its guarantee is the inner product",
}
NO_OWN_DIRECTION_CHECK = {
    "krum": "a selection rule (see above): the update is one task's gradient",
    "pcd": "a priority rule (see above): secondary tasks are guaranteed progress, not "
           "their own direction",
    "trimmed_mean": "a robust aggregator: with T = 3 and trim = 1 it is the coordinate-wise "
                    "median, which drops a direction that only one task asks for",
}


EMPTY = 2    # steps with no task, put in front of (or after) the sequence


@functools.lru_cache(maxsize=None)
def _method(name: str) -> mtl.Method:
  return props.build(name)  # one instance per name: its jitted scan is reused


@functools.lru_cache(maxsize=None)
def _trajectory(name: str):
  """The sequence, then EMPTY steps with no task (the length the no-op test runs)."""
  present = np.concatenate([PRESENT, np.zeros((EMPTY, props.T), np.float32)])
  grads, losses = props.synthetic_sequence(present)
  return grads, present, props.run(_method(name), grads, losses, present)


@pytest.mark.parametrize("name", props.registry_names())
def test_a_late_task_trains_within_a_few_steps(name):
  grads, present, traj = _trajectory(name)
  assert np.all(np.isfinite(traj.updates)), name
  props.assert_present_tasks_train(
      name, traj, grads, present, from_step=K + WINDOW,
      check_weights=name not in NO_WEIGHT_CHECK, check_own=name not in NO_OWN_DIRECTION_CHECK)


@pytest.mark.parametrize("name", props.registry_names())
def test_an_absent_task_leaves_its_state_entries_unchanged(name):
  _, present, traj = _trajectory(name)
  props.assert_absent_entries_unchanged(name, traj, present)


RANDOM_DRAWS = {
    "rlw": "its weights are fresh random draws; the PRNG key advances at every step (so a "
           "resumed run draws the same numbers), empty steps included",
}


@pytest.mark.parametrize("name", props.registry_names())
def test_steps_with_no_task_change_nothing(name):
  if name in RANDOM_DRAWS:
    pytest.skip(RANDOM_DRAWS[name])
  grads, losses = props.synthetic_sequence(PRESENT)
  props.assert_empty_steps_are_no_ops(name, _method(name), grads, losses, PRESENT, EMPTY)


def test_exemptions_name_registered_methods():
  for name in (*NO_WEIGHT_CHECK, *NO_OWN_DIRECTION_CHECK, *RANDOM_DRAWS):
    assert name in props.registry_names(), name


def test_task_entries_of_state_leaves():
  """Rows and columns of ``[T, T]`` leaves, the slice of ``[T, ...]``, none for globals."""
  np.testing.assert_array_equal(props.task_entries((3,), 1), [False, True, False])
  m = props.task_entries((3, 3), 0)
  np.testing.assert_array_equal(m, [[1, 1, 1], [1, 0, 0], [1, 0, 0]])
  assert props.task_entries((3, 4), 2)[2].all() and not props.task_entries((3, 4), 2)[:2].any()
  assert props.task_entries((), 0) is None and props.task_entries((2,), 0) is None


def test_pcd_bias_correction_counts_a_tasks_own_steps():
  """At a task's first present step (step 5 here) its EMA, corrected, is ``||g||^2``."""
  method = mtl.PCD(num_tasks=3)
  present = np.ones((6, 3), np.float32)
  present[:5, 2] = 0.0
  grads, losses = props.synthetic_sequence(present)
  traj = props.run(method, grads, losses, present)
  state = traj.after[5]
  count = np.broadcast_to(state.steps, (3,))[2]     # the steps its correction counts
  v = float(state.sq_norm_ema[2]) / (1.0 - method.beta ** count)
  np.testing.assert_allclose(v, float(np.sum(grads[5, 2].astype(np.float64) ** 2)), rtol=1e-4)


def test_cr_mogm_starts_a_late_tasks_average_at_its_first_present_step():
  """``lambda_t = lambda_hat_t`` at task 2's first present step (not ``0.1 lambda_hat_t``)."""
  grads, losses = props.synthetic_sequence(PRESENT)
  ema = props.run(mtl.CRMOGM(num_tasks=3, base="mgda"), grads, losses, PRESENT).weights
  base = props.run(mtl.MGDA(), grads, losses, PRESENT).weights   # stateless: lambda_hat
  np.testing.assert_allclose(ema[K, LATE], base[K, LATE], rtol=1e-6)
  np.testing.assert_allclose(ema[K + 1, LATE], 0.9 * base[K, LATE] + 0.1 * base[K + 1, LATE],
                             rtol=1e-5)
