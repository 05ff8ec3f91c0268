"""Multi-task optimisation: per-task gradients, gradient surgery, loss weighting.

The training loop's API::

  from modular import mtl
  method = mtl.build(mtl_cfg, params)
  state = method.init(params)
  if method.needs_task_grads:
    losses, task_grads = mtl.per_task_value_and_grad(loss_vector_fn)(params, batch)
    grads, state, stats = method.combine(task_grads, state, params=params,
                                         losses=losses, present=present)
  else:
    w = method.loss_weights(state, present)   # loss = sum(stop_gradient(w) * L) + extra_loss
    state, stats = method.observe(state, losses, present)

Outside the loop every method is an optax transform over ``[T, ...]`` gradients::

  opt = optax.chain(mtl.pcgrad(seed=0), optax.adam(1e-3))

Methods work on the ``T x T`` Gram matrix (``gram.py``): the big gradients are read
twice (Gram, combination) and never flattened, so their sharding is kept; with
``mtl.gram="streaming"`` (``streaming.py``) they are never held at all. GradDrop,
TrimmedMean, ExcessMTL, DB-MTL and MoCo need the gradients per coordinate
(``leafwise.py``). Every method is one file, a dataclass whose fields are its options,
registered with ``@register(name)``; this package imports every module in its folder,
and every registered class is importable here by its class name (``mtl.UPGrad``).

References:
  Yu et al. 2020 (PCGrad); Sener & Koltun 2018 (MGDA); Liu et al. 2021 (CAGrad);
  Navon et al. 2022 (Nash-MTL); Liu et al. 2021 (IMTL); Senushkin et al. 2023
  (Aligned-MTL); Chen et al. 2018 (GradNorm); Kendall et al. 2018 (uncertainty
  weighting); Liu et al. 2019 (DWA); Quinton & Rey 2024 (UPGrad, DualProj); Liu et al.
  2024 (ConFIG); Blanchard et al. 2017 (Krum); Yin et al. 2018 (trimmed mean); Chen et
  al. 2020 (GradDrop); Wang et al. 2021 (GradVac); Lin et al. 2022 (RLW); Chennupati et
  al. 2019 (GLS); Lin et al. 2024 (STCH); Liu et al. 2023 (FAMO); Ban & Ji 2024
  (FairGrad); He et al. 2024 (ExcessMTL); Chen et al. 2023 (MoDo); Xiao et al. 2023
  (SDMGrad); Zhou et al. 2022 (CR-MOGM); Lin et al. 2023 (DB-MTL); Fernando et al. 2023
  (MoCo); PCD (TMLR 2026).
"""

from __future__ import annotations

import logging
from typing import Any

import ml_collections

from modular.mtl.aligned_mtl import AlignedMTL, aligned_mtl
from modular.mtl.cagrad import CAGrad, cagrad
from modular.mtl.config import (default_mtl_config, method_kwargs, method_options,
                                validate_mtl_config)
from modular.mtl.gradnorm import GradNorm, gradnorm
from modular.mtl.gram import (cosine_matrix, gram_matrix, task_specific_mask, telemetry,
                              unmatched_patterns, weighted_sum)
from modular.mtl.imtl import IMTLG, imtl_g
from modular.mtl.method import METHODS, Method, Weighting, register
from modular.mtl.mgda import MGDA, mgda
from modular.mtl.nashmtl import NashMTL, nash_mtl
from modular.mtl.pcgrad import PCGrad, pcgrad
from modular.mtl.rep_grads import rep_value_and_grad
from modular.mtl.streaming import (GRAM_MODES, check_streams, streaming_combine,
                                   streaming_value_and_gram)
from modular.mtl.task_grads import per_task_value_and_grad
from modular.mtl.weighting import DWA, Mean, Uncertainty, dwa, mean, uncertainty

__all__ = [
    "AlignedMTL", "CAGrad", "DWA", "GradNorm", "IMTLG", "MGDA", "METHODS", "Mean", "Method", "NashMTL",
    "PCGrad", "Uncertainty", "Weighting", "aligned_mtl", "build", "cagrad", "cosine_matrix",
    "default_mtl_config", "dwa", "gradnorm", "gram_matrix", "imtl_g", "mean", "mgda",
    "nash_mtl", "pcgrad", "per_task_value_and_grad", "rep_value_and_grad",
    "task_specific_mask", "telemetry", "uncertainty", "validate_mtl_config", "weighted_sum",
    "method_kwargs", "method_options", "register", "transform", "GRAM_MODES",
    "check_streams", "streaming_combine", "streaming_value_and_gram",
]

# Every registered method class is importable as ``mtl.<ClassName>`` without listing it
# here (adding a method is one file).
for _name in METHODS.names():
  _cls = METHODS.get(_name)
  globals().setdefault(_cls.__name__, _cls)
  if _cls.__name__ not in __all__:
    __all__.append(_cls.__name__)


def transform(name: str, **options: Any):
  """Any registered method as an optax transform over ``[T, ...]`` gradients.

  Args:
    name: registry name (``"upgrad"``).
    **options: the method's options and common keys (``num_tasks=3``, ``seed=0``).

  Returns:
    ``optax.GradientTransformationExtraArgs`` (see ``Method.as_optax``).
  """
  return METHODS.get(name)(**options).as_optax()


def build(mtl_cfg: ml_collections.ConfigDict, params: Any = None) -> Method:
  """Builds the configured method.

  Args:
    mtl_cfg: a ConfigDict from ``default_mtl_config()`` (validated here).
    params: the parameters (a nested dict of arrays); used to check that every
      ``task_specific`` regex matches at least one parameter path.

  Returns:
    The ``Method`` (``init``, ``combine``, ``loss_weights``, ``observe``,
    ``extra_loss``, ``needs_task_grads``, ``as_optax``).
  """
  validate_mtl_config(mtl_cfg)
  if params is not None:
    unused = unmatched_patterns(params, mtl_cfg.task_specific)
    if unused:
      logging.warning("mtl.task_specific patterns match no parameter: %s", unused)
  return METHODS.get(mtl_cfg.method)(**method_kwargs(mtl_cfg))
