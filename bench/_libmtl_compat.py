"""LibMTL 1.1.5 on torch 2, for the side-by-side benchmark (bench extra only).

Two workarounds, neither changing LibMTL's algorithms:

1. ``LibMTL/__init__.py`` imports ``LibMTL.model.resnet``, which imports
   ``torchvision.models.utils.load_state_dict_from_url`` (removed from torchvision,
   and torchvision is not a dependency here). We register a stub module with that
   one function (``torch.hub.load_state_dict_from_url``) before importing LibMTL.
2. ``AbsArchitecture.zero_grad_share_params`` calls ``self.encoder.zero_grad()``,
   which since torch 2.0 sets gradients to ``None``; ``_reset_grad`` then writes
   ``param.grad.data`` and fails. Our model class overrides it with
   ``zero_grad(set_to_none=False)``, the torch 1.x behaviour LibMTL was written for.

The model mirrors ``bench/mtl_step.py``'s JAX transformer (pre-LN, manual attention,
GELU MLP, final LN) with one linear head per task, assembled the way LibMTL's
``Trainer._prepare_model`` does (``class MTLmodel(architecture, weighting)``).

References:
  Lin & Zhang 2023, "LibMTL: A Python Library for Multi-Task Learning", JMLR;
  Yu et al. 2020, "Gradient Surgery for Multi-Task Learning" (the PCGrad compared).
"""

from __future__ import annotations

import sys
import types


def import_libmtl():
  """Imports LibMTL with the torchvision stub; returns ``(HPS, PCGrad)``."""
  import torch
  if "torchvision.models.utils" not in sys.modules:
    try:
      import torchvision.models.utils  # noqa: F401  (an old torchvision has it)
    except ImportError:
      tv = sys.modules.get("torchvision") or types.ModuleType("torchvision")
      models = types.ModuleType("torchvision.models")
      utils = types.ModuleType("torchvision.models.utils")
      utils.load_state_dict_from_url = torch.hub.load_state_dict_from_url
      models.utils = utils
      tv.models = models
      sys.modules.update({"torchvision": tv, "torchvision.models": models,
                          "torchvision.models.utils": utils})
  from LibMTL.architecture import HPS
  from LibMTL.weighting import PCGrad
  return HPS, PCGrad


# Our method -> (LibMTL 1.1.5 weighting, its backward kwargs), for the side-by-side step.
# GradDrop needs rep_grad=True in LibMTL (left out); LibMTL's CAGrad only runs at T = 3.
LIBMTL_METHODS = {
    "mean": ("EW", {}), "pcgrad": ("PCGrad", {}), "mgda": ("MGDA", {"mgda_gn": "none"}),
    "cagrad": ("CAGrad", {"calpha": 0.4, "rescale": 1}), "imtl": ("IMTL", {}),
    "gls": ("GLS", {}), "uncertainty": ("UW", {}), "dwa": ("DWA", {"T": 2.0}),
    "rlw": ("RLW", {"dist": "Normal"}), "gradnorm": ("GradNorm", {"alpha": 1.5}),
    "gradvac": ("GradVac", {"beta": 0.5, "GradVac_beta": 0.5, "GradVac_group_type": 0}),
}


def build_libmtl_pcgrad(num_tasks: int, vocab: int, seq: int, d_model: int, num_heads: int,
                        d_ff: int, num_layers: int, num_classes: int, lr: float = 1e-3,
                        weighting: str = "PCGrad", kwargs: dict | None = None):
  """Builds LibMTL's HPS + PCGrad model on our transformer trunk and an Adam optimizer.

  Args:
    num_tasks: T.
    vocab, seq, d_model, num_heads, d_ff, num_layers: trunk sizes.
    num_classes: classes of each per-token task head.
    lr: Adam learning rate.

  Returns:
    ``(model, optimizer, step)`` with ``step(tokens, labels) -> losses`` running one
    LibMTL training step (forward, ``model.backward`` = PCGrad, ``optimizer.step``).
  """
  import torch
  import torch.nn as nn
  import torch.nn.functional as F

  HPS, _ = import_libmtl()
  import LibMTL.weighting as weightings
  Weighting = getattr(weightings, weighting)
  kwargs = dict(kwargs or {})

  class Block(nn.Module):
    def __init__(self):
      super().__init__()
      self.ln1, self.ln2 = nn.LayerNorm(d_model), nn.LayerNorm(d_model)
      self.qkv, self.out = nn.Linear(d_model, 3 * d_model), nn.Linear(d_model, d_model)
      self.fc1, self.fc2 = nn.Linear(d_model, d_ff), nn.Linear(d_ff, d_model)

    def forward(self, x):                                       # [B, S, d]
      b, s, _ = x.shape
      q, k, v = self.qkv(self.ln1(x)).view(b, s, 3, num_heads, -1).permute(2, 0, 3, 1, 4)
      att = torch.softmax(q @ k.transpose(-1, -2) / (q.shape[-1] ** 0.5), dim=-1)
      x = x + self.out((att @ v).transpose(1, 2).reshape(b, s, d_model))
      return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))

  class Trunk(nn.Module):
    def __init__(self):
      super().__init__()
      self.embed = nn.Embedding(vocab, d_model)
      self.pos = nn.Parameter(torch.randn(seq, d_model) * 0.02)
      self.blocks = nn.ModuleList([Block() for _ in range(num_layers)])
      self.ln = nn.LayerNorm(d_model)

    def forward(self, tokens):                                  # [B, S] -> [B, S, d]
      x = self.embed(tokens) + self.pos
      for blk in self.blocks:
        x = blk(x)
      return self.ln(x)

  class MTLModel(HPS, Weighting):
    def __init__(self, task_name, decoders):
      super().__init__(task_name, Trunk, decoders, rep_grad=False, multi_input=False,
                       device=torch.device("cpu"))
      self.epoch, self.train_loss_buffer = 0, None            # read by DWA
      self.init_param()

    def zero_grad_share_params(self):
      self.encoder.zero_grad(set_to_none=False)                 # workaround 2

  names = [f"task{t}" for t in range(num_tasks)]
  decoders = nn.ModuleDict({n: nn.Linear(d_model, num_classes) for n in names})
  model = MTLModel(names, decoders)
  optimizer = torch.optim.Adam(model.parameters(), lr=lr)

  def step(tokens, labels):                                     # labels [B, S, T]
    preds = model(tokens)
    losses = torch.stack([F.cross_entropy(preds[n].reshape(-1, num_classes),
                                          labels[..., t].reshape(-1))
                          for t, n in enumerate(names)])
    optimizer.zero_grad()
    model.backward(losses, **kwargs)
    optimizer.step()
    return losses

  return model, optimizer, step
