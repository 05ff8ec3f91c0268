"""The optax optimizer from the config: schedule, optimizer, clipping, and path rules.

The optimizer is any optax optimizer by name (``optax.<optim.name>``): its learning
rate is the schedule, ``optim.b1``/``b2`` go where it takes them (and ``b1`` is the
momentum of one that takes ``momentum`` but no ``b1``, e.g. sgd).

Path rules act on parameter paths such as ``blocks/0/ffn/w_in``:
  optim.frozen          regexes of frozen parameters (parameter-efficient mode:
                        freeze the backbone); applied by ``train.partition``, not here
  optim.lr_multipliers  [regex, factor] pairs; matching updates are scaled
                        (e.g. Polytropon's faster allocation logits); the first
                        matching rule wins
  optim.no_decay        regexes of parameters that weight decay skips (default: the
                        biases and LayerNorm gains/shifts of every architecture and
                        filler, the BERT / Hugging Face Trainer convention); applied
                        as optax's own ``mask`` of the decaying optimizer

Weight decay is decoupled (Loshchilov & Hutter 2019): with a zero gradient a decayed
leaf moves by exactly ``-schedule(step) * lr_multiplier(path) * weight_decay * p``. The
optimizers that decay are those whose optax factory takes ``weight_decay`` and ``mask``
(adamw, lion, lamb, nadamw, adan, adamaxw) and adafactor (its ``weight_decay_rate`` and
``weight_decay_mask``, with the learning rate applied after it so that its decay is
scaled by the schedule like adamw's). A nonzero ``optim.weight_decay`` with any other
(adam, sgd, ...) is a config error, not a silent no-op (``config.py``).

(big_vision's ``optax.py`` does the same with regexes over parameter names.)

Freezing: the optimizer is built on, and applied to, the trainable sub-dict only
(``Partition.trainable(params)``); the step differentiates that sub-dict alone. We chose
this over ``optax.multi_transform`` / ``optax.masked`` with ``set_to_zero`` because
those take gradients of the full parameter structure: the frozen gradients would be
computed (T times under gradient surgery) only to be dropped, and the surgery methods,
which run before the optimizer, would still see them in their Gram matrix. On the
sub-dict, a frozen leaf has no gradient, no state, no weight decay and no place in the
clip norm by construction, with no mask to keep in sync.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

import jax
import ml_collections
import optax

from modular.config import optimizer_decay_args
from modular.paths import path_str


def make_schedule(cfg: ml_collections.ConfigDict, total_steps: int) -> optax.Schedule:
  """The learning-rate schedule named by ``cfg.schedule``."""
  lr = float(cfg.learning_rate)
  end = lr * float(cfg.end_lr_factor)
  warmup = min(int(cfg.warmup_steps), max(total_steps - 1, 0))
  if cfg.schedule == "constant":
    return optax.constant_schedule(lr)
  if cfg.schedule == "linear":
    return optax.linear_schedule(lr, end, total_steps)
  if cfg.schedule == "cosine":
    return optax.cosine_decay_schedule(lr, total_steps, alpha=cfg.end_lr_factor)
  return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, max(total_steps, warmup + 1), end)


def path_factors(params: Any, cfg: ml_collections.ConfigDict) -> Any:
  """Per-leaf update factors: the multiplier where a rule matches, else 1.

  Raises:
    ValueError: if ``params`` holds a leaf that ``cfg.frozen`` freezes (the optimizer
      must be built on the trainable sub-dict).
  """
  frozen = [re.compile(r) for r in cfg.frozen]
  mults = [(re.compile(r), float(f)) for r, f in cfg.lr_multipliers]

  def factor(path, _):
    name = path_str(path)
    if any(r.search(name) for r in frozen):
      raise ValueError(f"make_optimizer: {name!r} is frozen by config.optim.frozen; build "
                       "the optimizer on Partition.trainable(params)")
    for r, f in mults:
      if r.search(name):
        return f
    return 1.0

  return jax.tree_util.tree_map_with_path(factor, params)


def scale_by_path(factors: Any) -> optax.GradientTransformation:
  """Multiplies each update leaf by a fixed per-path factor (no state)."""

  def update(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, f: u if f == 1.0 else u * f, updates, factors), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update)


def decay_mask(params: Any, cfg: ml_collections.ConfigDict) -> Any:
  """Per-leaf bools: True where weight decay applies (no ``optim.no_decay`` rule matches)."""
  rules = [re.compile(r) for r in cfg.no_decay]
  return jax.tree_util.tree_map_with_path(
      lambda path, _: not any(r.search(path_str(path)) for r in rules), params)


def _base_optimizer(cfg: ml_collections.ConfigDict, params: Any,
                    schedule: optax.Schedule) -> optax.GradientTransformation:
  """``optax.<cfg.name>`` on the schedule, with the decay mask where it decays."""
  factory = getattr(optax, cfg.name)
  sig = inspect.signature(factory).parameters
  kw: dict[str, Any] = {k: float(cfg[k]) for k in ("b1", "b2") if k in sig}
  if "momentum" in sig and "b1" not in sig and cfg.name != "adafactor":
    kw["momentum"] = float(cfg.b1)
  decay = optimizer_decay_args(cfg.name)
  wd = float(cfg.weight_decay)
  if decay is None or wd == 0:
    if "weight_decay" in sig:
      kw["weight_decay"] = 0.0  # its default is not 0 (adamw: 1e-4): no hidden decay
    return factory(schedule, **kw)
  rate_key, mask_key = decay
  kw[rate_key], kw[mask_key] = wd, decay_mask(params, cfg)
  if cfg.name == "adafactor":  # its decay comes after its lr: move the lr after the decay
    return optax.chain(factory(None, **kw), optax.scale_by_learning_rate(schedule,
                                                                         flip_sign=False))
  return factory(schedule, **kw)


def make_optimizer(cfg: ml_collections.ConfigDict, params: Any, total_steps: int
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Builds the optimizer chain: clip -> optimizer(schedule, decay mask) -> path factors.

  Args:
    cfg: ``config.optim``.
    params: the trainable parameter sub-dict (``Partition.trainable``; for the path
      rules): clipping, the optimizer state and weight decay cover exactly these.
    total_steps: the run's length (for the schedule).

  Returns:
    (transformation, schedule).

  Raises:
    ValueError: an optimizer name optax does not have, or a frozen leaf in ``params``.
  """
  schedule = make_schedule(cfg, total_steps)
  if not callable(getattr(optax, cfg.name, None)):
    raise ValueError(f"config.optim.name: unknown optimizer {cfg.name!r}")
  parts = []
  if cfg.grad_clip and cfg.grad_clip > 0:
    parts.append(optax.clip_by_global_norm(cfg.grad_clip))
  parts.append(_base_optimizer(cfg, params, schedule))
  factors = path_factors(params, cfg)
  if any(f != 1.0 for f in jax.tree.leaves(factors)):
    parts.append(scale_by_path(factors))
  return optax.chain(*parts), schedule
