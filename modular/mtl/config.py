"""The ``mtl`` section of the config: which method, its options, validation.

``--config.mtl.method=cagrad --config.mtl.options.c=0.4`` picks a method and sets
one of its options. A method's options and their defaults live in its own class
(``modular/mtl/<method>.py``, dataclass fields); ``mtl.options`` holds only what
the user changes, and ``method_options`` lists a method's options with defaults.

Keys:
  method: registry name (``mtl.METHODS.names()``): ``mean`` (default; alias
    ``equal``), the gradient methods (``pcgrad``, ``mgda``, ``cagrad``, ``upgrad``...)
    and the loss weightings (``uncertainty``, ``dwa``, ``rlw``, ``famo``...).
  options: the method's options, e.g. ``{"c": 0.4}`` for ``cagrad``; an unknown key is
    an error naming the known ones.
  num_tasks: T; required (> 0) by the methods with per-task state, whose ``init``
    raises otherwise; 0 means "not set" (the loop fills it from the data).
  seed: PRNG seed of the random methods (PCGrad's projection order, RLW's weights...).
  task_specific: regexes (``re.search``) over parameter paths such as
    ``"head/kernel"``; matching parameters are task-specific and keep their own task's
    gradient. Default empty: everything is shared. Typical: ``["^heads/", "adapter"]``.
  gram: ``"materialize"`` (default: the per-task gradients ``[T, ...]`` are formed, then
    combined) or ``"streaming"`` (the Gram matrix is accumulated inside the batched
    backward pass and the update is one more VJP: ``O(P + T^2)`` memory, ``streaming.py``);
    ``"streaming"`` needs a method with ``streams_gram`` and ``train.microbatches = 1``.
  rep_level: surgery on the shared representation instead of the shared parameters
    (``rep_value_and_grad``; read by the training loop, not by the methods).

Run folders written before ``mtl.options`` existed carry flat keys such as
``cagrad_c``; ``method_kwargs`` reads them for the configured method when
``mtl.options`` does not set the same option (``LEGACY_KEYS``).

References:
  Quinton & Rey 2024, "Jacobian Descent for Multi-Objective Optimization" (TorchJD:
  one class per aggregator, its hyperparameters on the class).
"""

from __future__ import annotations

import re
from typing import Any

import ml_collections

from modular.mtl import options as options_lib
from modular.mtl.method import METHODS
from modular.mtl.streaming import GRAM_MODES, check_streams

# Flat keys of older configs -> (method, option).
LEGACY_KEYS = {
    "mgda_iters": ("mgda", "iters"), "mgda_normalization": ("mgda", "normalization"),
    "cagrad_c": ("cagrad", "c"), "cagrad_iters": ("cagrad", "iters"),
    "cagrad_rescale": ("cagrad", "rescale"), "nashmtl_iters": ("nashmtl", "iters"),
    "nashmtl_eps": ("nashmtl", "eps"), "dwa_temperature": ("dwa", "temperature"),
    "gradnorm_alpha": ("gradnorm", "alpha"), "gradnorm_lr": ("gradnorm", "lr"),
    "uncertainty_lr": ("uncertainty", "lr"), "uncertainty_init": ("uncertainty", "init_value"),
}


def default_mtl_config() -> ml_collections.ConfigDict:
  """Returns the default ``mtl`` config (plain mean over present tasks)."""
  c = ml_collections.ConfigDict()
  c.method = "mean"
  c.options = ml_collections.ConfigDict()
  c.num_tasks = 0
  c.seed = 0
  c.task_specific = []
  c.gram = "materialize"
  return c


def _check(ok: bool, key: str, msg: str) -> None:
  if not ok:
    raise ValueError(f"config.mtl.{key}: {msg}")


def _as_dict(options: Any) -> dict[str, Any]:
  if options is None:
    return {}
  if isinstance(options, ml_collections.ConfigDict):
    return options.to_dict()
  return dict(options)


def method_kwargs(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
  """The keyword arguments of the configured method's class (options + common keys).

  Args:
    cfg: an ``mtl`` ConfigDict (or dict).

  Returns:
    ``{field: value}`` for ``METHODS.get(cfg.method)(**kwargs)``.

  Raises:
    ValueError: ``config.mtl.<key>: ...`` for the first bad key.
  """
  cls = METHODS.get(cfg["method"])
  options = _as_dict(cfg.get("options"))
  for old, (method, key) in LEGACY_KEYS.items():
    if old in cfg and cls.name == method and key not in options:
      options[key] = cfg[old]
  common = {k: cfg[k] for k in options_lib.COMMON_KEYS if k in cfg}
  return options_lib.resolve(cls, options, common)


def method_options(name: str) -> dict[str, Any]:
  """A method's options with their defaults (``{"c": 0.4, ...}`` for ``cagrad``)."""
  return options_lib.defaults(METHODS.get(name))


def validate_mtl_config(cfg: ml_collections.ConfigDict) -> None:
  """Checks an ``mtl`` config; raises ValueError naming the first bad key.

  Builds the method once (cheap: no arrays), so the method's own checks run too.

  Args:
    cfg: a ConfigDict shaped like ``default_mtl_config()``.
  """
  for key in ("method", "num_tasks", "seed", "task_specific"):
    _check(key in cfg, key, "missing key")
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
      raise ValueError(f"config.mtl.task_specific: bad regex {pattern!r}: {e}") from None
  _check(cfg.get("options") is None or isinstance(cfg.options, (dict, ml_collections.ConfigDict)),
         "options", f"must be a mapping of option -> value, got {cfg.get('options')!r}")
  gram = cfg.get("gram", "materialize")  # run folders from before the key: materialize
  _check(gram in GRAM_MODES, "gram", f"unknown {gram!r}; known: {', '.join(GRAM_MODES)}")
  method = METHODS.get(cfg.method)(**method_kwargs(cfg))
  if gram == "streaming":
    check_streams(method)
