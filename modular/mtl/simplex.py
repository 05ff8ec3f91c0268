"""Pairwise Frank-Wolfe on the probability simplex, for the small T x T problems.

MGDA (min-norm point of the convex hull) and CAGrad (its dual) minimise a convex
function of task weights ``w`` over the simplex of present tasks. Plain Frank-Wolfe
converges sublinearly when the optimum lies inside a face; the pairwise variant moves
weight from the worst task in the support to the best vertex and converges linearly
on polytopes, which makes a fixed, jit-friendly number of iterations accurate to
float32 precision for the sizes we use (T <= 32). Each iteration costs ``O(T^2)``.

References:
  Lacoste-Julien & Jaggi 2015, "On the Global Linear Convergence of Frank-Wolfe
  Optimization Variants", NeurIPS (pairwise FW); Sener & Koltun 2018 (Frank-Wolfe
  for the MGDA min-norm problem).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

# (w [T], direction [T], max_step []) -> step in [0, max_step]
LineSearch = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def uniform_weights(present: jax.Array) -> jax.Array:
  """Uniform weights over present tasks ``[T]`` (zeros when none is present)."""
  p = present > 0
  return jnp.where(p, 1.0, 0.0) / jnp.maximum(jnp.sum(p), 1)


def pairwise_frank_wolfe(grad_fn: Callable[[jax.Array], jax.Array],
                         line_search: LineSearch, present: jax.Array,
                         iters: int, w0: jax.Array | None = None) -> jax.Array:
  """Minimises a convex function over the simplex of present tasks.

  Args:
    grad_fn: ``w [T] -> gradient [T]`` of the objective.
    line_search: exact minimiser along ``w + gamma * d`` for ``gamma`` in
      ``[0, max_step]``.
    present: ``[T]`` float 0/1; absent tasks keep weight 0.
    iters: number of iterations (fixed, for jit).
    w0: start point on the simplex (default uniform over present tasks).

  Returns:
    ``w`` ``[T]`` on the simplex, zero on absent tasks.
  """
  p = present > 0
  num_tasks = present.shape[0]
  w = uniform_weights(present) if w0 is None else w0

  def step(_, w):
    grad = grad_fn(w)                                        # [T]
    best = jnp.argmin(jnp.where(p, grad, jnp.inf))           # vertex to move towards
    worst = jnp.argmax(jnp.where(w > 0, grad, -jnp.inf))     # support task to move away from
    d = jax.nn.one_hot(best, num_tasks, dtype=w.dtype) - jax.nn.one_hot(
        worst, num_tasks, dtype=w.dtype)
    max_step = w[worst]
    gamma = jnp.clip(line_search(w, d, max_step), 0.0, max_step)
    gamma = jnp.where(jnp.isfinite(gamma), gamma, 0.0)
    return jnp.maximum(w + gamma * d, 0.0)

  return jax.lax.fori_loop(0, iters, step, w)


def quadratic_line_search(gram: jax.Array) -> LineSearch:
  """Exact line search for ``w^T G w`` (MGDA)."""

  def search(w, d, max_step):
    gd = gram @ d
    curvature = d @ gd                                  # d^T G d
    slope = w @ gd                                      # w^T G d
    return jnp.where(curvature > 0, -slope / jnp.where(curvature > 0, curvature, 1.0),
                     max_step)

  return search


def linear_plus_norm_line_search(gram: jax.Array, a: jax.Array, r: jax.Array) -> LineSearch:
  """Exact line search for ``w^T a + r sqrt(w^T G w)`` (the CAGrad dual).

  Along ``w + t d`` the objective is ``t (d^T a) + const + r sqrt(A t^2 + 2 B t + C)``
  with ``A = d^T G d``, ``B = w^T G d``, ``C = w^T G w``; setting the derivative to
  zero gives ``u sqrt(A) / sqrt(u^2 + D) = k`` with ``u = A t + B``,
  ``D = A C - B^2 >= 0`` and ``k = -(d^T a) / r``, solved in closed form when
  ``k^2 < A``; otherwise the minimum is at an end of the segment.

  Args:
    gram: ``[T, T]``.
    a: ``[T]`` linear term.
    r: scalar ``>= 0`` weight of the norm term.

  Returns:
    The line search.
  """

  def search(w, d, max_step):
    gd = gram @ d
    big_a, big_b, big_c = d @ gd, w @ gd, jnp.maximum(w @ gram @ w, 0.0)
    slope = d @ a
    k = -slope / jnp.maximum(r, 1e-30)
    disc = jnp.maximum(big_a * big_c - big_b * big_b, 0.0)
    inside = (k * k < big_a) & (big_a > 0)
    u = jnp.sign(k) * jnp.sqrt(k * k * disc / jnp.where(inside, big_a - k * k, 1.0))
    t_inside = (u - big_b) / jnp.where(big_a > 0, big_a, 1.0)

    def value(t):
      return t * slope + r * jnp.sqrt(jnp.maximum(big_a * t * t + 2 * big_b * t + big_c, 0.0))

    t_end = jnp.where(value(max_step) < value(jnp.zeros_like(max_step)), max_step, 0.0)
    return jnp.where(inside, t_inside, t_end)

  return search
