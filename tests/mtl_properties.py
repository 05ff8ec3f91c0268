"""Properties every multi-task method must have, as reusable asserts over the registry.

In the style of TorchJD's ``tests/unit/aggregation/_asserts.py``: each ``assert_*``
states one property of a method with an explicit tolerance, so that a test runs it over
``mtl.METHODS`` and a method added later is covered without editing the test. The
inputs are tiny synthetic sequences whose numbers are known in NumPy:

* ``synthetic_sequence``: per-step ``[T, D]`` gradients and ``[T]`` losses. Task ``t``
  has a block of ``BLOCK`` coordinates of its own and shares ``SHARED`` coordinates with
  every task; every coordinate is >= 0, so no pair of tasks conflicts and a method that
  is not a selection rule gives every present task a positive weight.
* ``run``: the sequence as the training loop hands it to a method (``combine`` with
  ``present``; an absent task's loss and gradient are 0, as ``train/step.py`` makes
  them), under one ``jax.lax.scan``; returns per-step updates, weights and the state
  before and after each step.

How a state's entries belong to tasks: a state leaf is per-task along every axis of
size ``T`` (``[T]`` weights, ``[T, ...]`` tracked gradients, ``[T, T]`` cosine
targets: row and column ``t`` are task ``t``'s); leaves with no such axis (step counts,
PRNG keys) are global. ``D`` and ``T`` are chosen so no parameter axis has size ``T``.

References:
  Quinton & Rey 2024, "Jacobian Descent for Multi-Objective Optimization" (TorchJD's
  property tests of aggregators).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from modular import mtl

T = 3                       # tasks (no parameter axis below has this size)
BLOCK, SHARED = 3, 5        # coordinates per task, coordinates every task shares
D = T * BLOCK + SHARED      # 14 = 4 + 2 * 5: the parameter pytree below
WEIGHT_RTOL = 1e-3          # a "positive" weight: above this share of the present sum
COS_TOL = 1e-3              # a "positive" inner product: cosine above this


def registry_names() -> list[str]:
  """Every registered method once (aliases such as ``equal`` of ``mean`` dropped)."""
  return [n for n in mtl.METHODS.names() if mtl.METHODS.get(n).name == n]


def build(name: str, num_tasks: int = T) -> mtl.Method:
  """The method as the config builds it, with its default options."""
  cfg = mtl.default_mtl_config()
  cfg.method, cfg.num_tasks = name, num_tasks
  return mtl.build(cfg)


def params_template() -> dict:
  """Zeros shaped like the parameters: ``{"a": [4], "b": [2, 5]}`` (D = 14 in all)."""
  return {"a": jnp.zeros((4,), jnp.float32), "b": jnp.zeros((2, 5), jnp.float32)}


def to_tree(flat: np.ndarray) -> dict:
  """``[..., D]`` -> ``{"a": [..., 4], "b": [..., 2, 5]}``."""
  flat = jnp.asarray(flat, jnp.float32)
  lead = flat.shape[:-1]
  return {"a": flat[..., :4], "b": flat[..., 4:].reshape(lead + (2, 5))}


def to_flat(tree: dict) -> np.ndarray:
  """Inverse of ``to_tree``."""
  a, b = np.asarray(tree["a"]), np.asarray(tree["b"])
  return np.concatenate([a, b.reshape(b.shape[:-2] + (-1,))], axis=-1).astype(np.float64)


def synthetic_sequence(present: np.ndarray, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
  """Gradients ``[N, T, D]`` and losses ``[N, T]`` for a presence pattern ``[N, T]``.

  Task ``t``'s gradient is ``s_t`` on its own block and ``c`` on the shared
  coordinates, each coordinate times ``1 + 0.1 u`` (``u`` uniform in [-1, 1]): all
  entries >= 0. A task's loss decays by 3% per step it is present (starting from
  ``L0_t``); absent tasks have loss 0 and gradient 0, as the train step gives them.
  """
  present = np.asarray(present, np.float32)
  n = present.shape[0]
  rng = np.random.default_rng(seed)
  scale = np.array([1.0, 1.3, 0.8])[:T]
  base = np.zeros((T, D))
  for t in range(T):
    base[t, t * BLOCK:(t + 1) * BLOCK] = scale[t]
    base[t, T * BLOCK:] = 0.3
  grads = base[None] * (1.0 + 0.1 * rng.uniform(-1.0, 1.0, size=(n, T, D)))
  seen = np.cumsum(present, axis=0) - present                       # present steps before
  losses = np.array([1.0, 0.7, 1.4])[:T] * 0.97 ** seen * (1.0 + 0.02 * rng.uniform(
      -1.0, 1.0, size=(n, T)))
  grads = grads * present[:, :, None]
  losses = losses * present
  return grads.astype(np.float32), losses.astype(np.float32)


@dataclasses.dataclass
class Trajectory:
  """What a method did over a sequence (NumPy arrays; ``N`` steps)."""
  updates: np.ndarray          # [N, D]
  weights: np.ndarray | None   # [N, T] (None: the method reports no weights)
  before: list                 # N states (pytrees of NumPy arrays) before each step
  after: list                  # N states after each step


def run(method: mtl.Method, grads: np.ndarray, losses: np.ndarray,
        present: np.ndarray) -> Trajectory:
  """Drives ``method.combine`` over the sequence under one ``jax.lax.scan``.

  The jitted scan is kept on the method instance: sequences of the same length run on
  one compile.
  """
  if "_props_scan" not in method.__dict__:
    reports = []  # whether the stats carry "weights" (known when tracing)

    def step(state, xs):
      g, l, p = xs
      update, new, stats = method.combine(to_tree(g), state, losses=l, present=p)
      reports.append("weights" in stats)
      w = stats.get("weights", jnp.zeros((T,), jnp.float32))
      flat = jnp.concatenate([update["a"].reshape(-1), update["b"].reshape(-1)])
      return new, (flat, w, state, new)

    method._props_scan = (jax.jit(lambda s, xs: jax.lax.scan(step, s, xs)[1]), reports)
  scan, reports = method._props_scan
  updates, weights, before, after = scan(
      method.init(params_template()),
      (jnp.asarray(grads), jnp.asarray(losses), jnp.asarray(present, jnp.float32)))
  unstack = lambda tree: [jax.tree.map(lambda x, k=k: np.asarray(x[k]), tree)
                          for k in range(grads.shape[0])]
  return Trajectory(np.asarray(updates, np.float64),
                    np.asarray(weights, np.float64) if reports[0] else None,
                    unstack(before), unstack(after))


# ------------------------------------------------------------------- state entries
def task_entries(shape: tuple, task: int, num_tasks: int = T) -> np.ndarray | None:
  """Bool mask over a state leaf of ``shape``: the entries that belong to ``task``.

  Every axis of size ``num_tasks`` is a task axis; an entry belongs to ``task`` when its
  index on some task axis is ``task``. None for a leaf without a task axis (global).
  """
  axes = [i for i, s in enumerate(shape) if s == num_tasks]
  if not axes:
    return None
  mask = np.zeros(shape, bool)
  for i in axes:
    index = [slice(None)] * len(shape)
    index[i] = task
    mask[tuple(index)] = True
  return mask


def assert_absent_entries_unchanged(name: str, traj: Trajectory, present: np.ndarray):
  """Property: at a step where task ``t`` is absent, its state entries keep their bits.

  Args:
    name: the method (for messages).
    traj: ``run``'s result.
    present: ``[N, T]`` 0/1 pattern the trajectory ran on.
  """
  for k, (before, after) in enumerate(zip(traj.before, traj.after)):
    paths = jax.tree_util.tree_flatten_with_path(before)[0]
    for (path, old), new in zip(paths, jax.tree_util.tree_leaves(after)):
      for t in np.flatnonzero(np.asarray(present[k]) == 0):
        mask = task_entries(np.shape(old), int(t))
        if mask is None:
          continue
        same = np.asarray(old)[mask].tobytes() == np.asarray(new)[mask].tobytes()
        assert same, (f"{name}: step {k}: task {t} is absent but its entries of state leaf "
                      f"{jax.tree_util.keystr(path)} changed: {np.asarray(old)[mask]} -> "
                      f"{np.asarray(new)[mask]}")


# ------------------------------------------------------------------- late tasks train
def own_direction(grads: np.ndarray, task: int, present: np.ndarray) -> np.ndarray:
  """``[D]``: the part of task ``task``'s gradient orthogonal to the other present ones."""
  g = grads[task].astype(np.float64)
  others = grads[[i for i in range(grads.shape[0]) if i != task and present[i] > 0]]
  if len(others) == 0:
    return g
  q, _ = np.linalg.qr(others.astype(np.float64).T)
  return g - q @ (q.T @ g)


def assert_present_tasks_train(name: str, traj: Trajectory, grads: np.ndarray,
                               present: np.ndarray, from_step: int, *,
                               check_weights: bool = True, check_own: bool = True):
  """Property: from ``from_step`` on, every present task is trained by the update.

  At each such step and present task ``t``: (1) its weight is positive (above
  ``WEIGHT_RTOL`` of the present weights' sum; methods that report weights), (2) the
  update has a positive inner product with ``g_t`` (cosine above ``COS_TOL``), and
  (3) with the part of ``g_t`` that no other present task's gradient spans (its own
  direction; cosine above ``COS_TOL``).

  Args:
    name: the method.
    traj: ``run``'s result.
    grads: ``[N, T, D]`` the gradients it ran on.
    present: ``[N, T]``.
    from_step: the first step checked.
    check_weights: False for a documented exemption of (1).
    check_own: False for a documented exemption of (3).
  """
  for k in range(from_step, grads.shape[0]):
    u = traj.updates[k]
    on = np.flatnonzero(present[k] > 0)
    if traj.weights is not None and check_weights and len(on):
      w = traj.weights[k]
      total = np.sum(np.abs(w[on]))
      for t in on:
        assert w[t] > WEIGHT_RTOL * total, (
            f"{name}: step {k}: present task {t} gets weight {w[t]:.3g} "
            f"(weights {np.round(w, 4)}): it is not trained")
    for t in on:
      g = grads[k, t].astype(np.float64)
      cos = u @ g / (np.linalg.norm(u) * np.linalg.norm(g) + 1e-30)
      assert cos > COS_TOL, f"{name}: step {k}: cos(update, g_{t}) = {cos:.3g}"
      if check_own:
        r = own_direction(grads[k], int(t), present[k])
        cos = u @ r / (np.linalg.norm(u) * np.linalg.norm(r) + 1e-30)
        assert cos > COS_TOL, (f"{name}: step {k}: the update has no component along task "
                               f"{t}'s own direction (cos {cos:.3g})")


# ------------------------------------------------------------ steps with no task
def assert_empty_steps_are_no_ops(name: str, method: mtl.Method, grads: np.ndarray,
                                  losses: np.ndarray, present: np.ndarray, empty: int = 2):
  """Property: ``empty`` steps with no task present in front of a sequence change nothing.

  No task's state may learn from a step where it is absent, and a count that schedules
  step sizes or bias corrections may count only steps where its task (or some task) is
  present; then the updates after the empty steps are bit-identical to those without
  them, and the empty steps' updates are 0. The sequence runs once with the empty steps
  in front and once with them at the end (one compile: same length).

  Args:
    name: the method (for messages).
    method: the method (each run starts from ``init``).
    grads, losses, present: the sequence (``[N, T, D]``, ``[N, T]``, ``[N, T]``).
    empty: how many steps with no task.
  """
  present = np.asarray(present, np.float32)
  zeros = lambda x: np.zeros((empty,) + x.shape[1:], x.dtype)
  front = run(method, *(np.concatenate([zeros(x), x]) for x in (grads, losses, present)))
  back = run(method, *(np.concatenate([x, zeros(x)]) for x in (grads, losses, present)))
  np.testing.assert_array_equal(front.updates[:empty], 0.0,
                                err_msg=f"{name}: a step with no task present updates")
  np.testing.assert_array_equal(
      front.updates[empty:], back.updates[:-empty],
      err_msg=f"{name}: {empty} steps with no task present change the later updates")
