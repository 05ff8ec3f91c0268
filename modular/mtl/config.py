"""The ``mtl`` section of the config: which method, its hyperparameters, validation.

``--config.mtl.method=pcgrad`` switches the method; every key below can be
overridden the same way. ``validate_mtl_config`` raises a ValueError naming the
offending key before anything is compiled.

Keys:
  method: registry name: ``mean`` (default; alias ``equal``), ``pcgrad``, ``mgda``,
    ``cagrad``, ``nashmtl``, ``imtl_g``, ``aligned_mtl``, ``gradnorm`` (these need per-task
    gradients), ``uncertainty``, ``dwa`` (loss weightings).
  num_tasks: T; required (> 0) by the methods with per-task state (``uncertainty``,
    ``dwa``, ``gradnorm``), whose ``init`` raises otherwise; 0 means "not set" (the
    loop fills it from the data, possibly after validation).
  seed: PRNG seed of PCGrad's projection order.
  task_specific: regexes (``re.search``) over parameter paths such as
    ``"head/kernel"`` or ``"blocks/0/adapter_ffn/down"``; matching parameters are
    task-specific and keep their own task's gradient. Default empty: everything is
    shared. Typical: ``["^heads/", "adapter"]``.
  rep_level: surgery on the shared representation instead of the shared
    parameters (``rep_value_and_grad``; needs a model split into trunk and heads;
    read by the training loop, not by the methods).
  mgda_iters, mgda_normalization, cagrad_c, cagrad_iters, cagrad_rescale,
  nashmtl_iters, nashmtl_eps, dwa_temperature, gradnorm_alpha, gradnorm_lr,
  uncertainty_lr, uncertainty_init: per-method hyperparameters (see each file).

References:
  Yu et al. 2020 (PCGrad); Sener & Koltun 2018 (MGDA); Liu et al. 2021 (CAGrad);
  Navon et al. 2022 (Nash-MTL); Liu et al. 2021 (IMTL); Senushkin et al.
  2023 (Aligned-MTL); Chen et al. 2018 (GradNorm);
  Kendall et al. 2018 (uncertainty); Liu et al. 2019 (DWA).
"""

from __future__ import annotations

import re

import ml_collections

from modular.mtl.mgda import NORMALIZATIONS
from modular.mtl.method import METHODS

def default_mtl_config() -> ml_collections.ConfigDict:
  """Returns the default ``mtl`` config (plain mean over present tasks)."""
  c = ml_collections.ConfigDict()
  c.method = "mean"
  c.num_tasks = 0
  c.seed = 0
  c.task_specific = []
  c.rep_level = False
  c.mgda_iters = 250
  c.mgda_normalization = "none"
  c.cagrad_c = 0.4
  c.cagrad_iters = 250
  c.cagrad_rescale = True
  c.nashmtl_iters = 20
  c.nashmtl_eps = 1e-6
  c.dwa_temperature = 2.0
  c.gradnorm_alpha = 1.5
  c.gradnorm_lr = 0.025
  c.uncertainty_lr = 0.01
  c.uncertainty_init = 0.0
  return c


def _check(ok: bool, key: str, msg: str) -> None:
  if not ok:
    raise ValueError(f"mtl.{key}: {msg}")


def validate_mtl_config(cfg: ml_collections.ConfigDict) -> None:
  """Checks an ``mtl`` config; raises ValueError naming the first bad key.

  Args:
    cfg: a ConfigDict shaped like ``default_mtl_config()``.
  """
  missing = sorted(set(default_mtl_config().keys()) - set(cfg.keys()))
  _check(not missing, missing[0] if missing else "", "missing key")
  _check(cfg.method in METHODS, "method",
         f"unknown method {cfg.method!r}; known: {', '.join(METHODS.names())}")
  _check(isinstance(cfg.num_tasks, int) and cfg.num_tasks >= 0, "num_tasks",
         f"must be an int >= 0, got {cfg.num_tasks!r}")
  _check(isinstance(cfg.seed, int), "seed", f"must be an int, got {cfg.seed!r}")
  _check(not isinstance(cfg.task_specific, str), "task_specific", "must be a list of regexes")
  for pattern in cfg.task_specific:
    try:
      re.compile(pattern)
    except (re.error, TypeError) as e:
      raise ValueError(f"mtl.task_specific: bad regex {pattern!r}: {e}") from None
  _check(isinstance(cfg.rep_level, bool), "rep_level", "must be a bool")
  for key in ("mgda_iters", "cagrad_iters", "nashmtl_iters"):
    _check(isinstance(cfg[key], int) and cfg[key] >= 1, key, f"must be an int >= 1, got {cfg[key]!r}")
  _check(cfg.mgda_normalization in NORMALIZATIONS, "mgda_normalization",
         f"must be one of {NORMALIZATIONS}")
  _check(cfg.cagrad_c >= 0, "cagrad_c", f"must be >= 0, got {cfg.cagrad_c}")
  _check(isinstance(cfg.cagrad_rescale, bool), "cagrad_rescale", "must be a bool")
  for key in ("nashmtl_eps", "dwa_temperature", "gradnorm_lr", "uncertainty_lr"):
    _check(cfg[key] > 0, key, f"must be > 0, got {cfg[key]}")
  _check(cfg.gradnorm_alpha >= 0, "gradnorm_alpha", f"must be >= 0, got {cfg.gradnorm_alpha}")
