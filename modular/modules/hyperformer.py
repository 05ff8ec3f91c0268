"""HyperFormer++: adapters whose weights one shared hypernetwork generates.

One hypernetwork serves every adapter of the model. For task t, layer l and adapter
position p (after attention or after the FFN) it embeds

  z = MLP([task_embed[t]; layer_embed[l]; position_embed[p]])      # [proj_dim]

and generates the adapter's down-projection D (d x r) and up-projection U (r x d)
with their biases, and the scale and bias of a conditional layer norm. The adapter is

  y = x + LN_{gamma(z), beta(z)}(U gelu(D x))

with r = d / reduction_factor. The hypernetwork is created once in ``args.shared``
and referenced by every adapter slot (put "hyperformer" in both ``adapter_attn`` and
``adapter_ffn``); its parameter paths are those of the first adapter that holds it
(``blocks/0/adapter_attn/hyper/...``). ``peft.parameter_report`` gives the parameters
added per task (the paper reports 0.29% per task on T5-base).

Config (``model.adapter_attn`` / ``model.adapter_ffn``, name "hyperformer"):
  task_embed_dim (32), hidden_dim (64), proj_dim (16; 64 in the paper),
  reduction_factor (8; 32 in the paper), init_std (0.01: generators of the biases and
  of the layer norm's scale and bias).

References:
  Karimi Mahabadi et al. 2021, "Parameter-efficient Multi-task Fine-tuning for
    Transformers via Shared Hypernetworks" (HyperFormer++).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from modular.models import precision
from modular.models.context import Context
from modular.models.slots import ADAPTER, SlotArgs, param
from modular.modules.options import resolve, slot_key

DEFAULTS = {"task_embed_dim": 32, "hidden_dim": 64, "proj_dim": 16, "reduction_factor": 8,
            "init_std": 0.01}
POSITIONS = ("adapter_attn", "adapter_ffn")
SHARED_KEY = "hyperformer"


class HyperNetwork(nnx.Module):
  """Task, layer-id and position embeddings -> the weights of one adapter.

  Args:
    num_tasks, num_layers: T and the number of blocks.
    d_model: d.
    opts: the options (see the module docstring).
    rngs: key source.
  """

  def __init__(self, num_tasks: int, num_layers: int, d_model: int, opts, rngs: nnx.Rngs):
    de, hd, pd, std = opts.task_embed_dim, opts.hidden_dim, opts.proj_dim, opts.init_std
    self.d = d_model
    self.rank = max(1, d_model // opts.reduction_factor)
    r = self.rank
    self.task_embed = param(rngs, (num_tasks, de), ("tasks", None), scale=1.0)
    self.layer_embed = param(rngs, (num_layers, de), (None, None), scale=1.0)
    self.position_embed = param(rngs, (len(POSITIONS), de), (None, None), scale=1.0)
    self.proj_w1 = param(rngs, (3 * de, hd), (None, None))
    self.proj_b1 = param(rngs, (hd,), (None,), init="zeros")
    self.proj_w2 = param(rngs, (hd, pd), (None, None))
    self.proj_b2 = param(rngs, (pd,), (None,), init="zeros")
    # Generators: proj_dim -> flattened adapter weights. D and U start at the scale of
    # a fan-in init (z has O(1) entries), so U gelu(D x) is O(1) and the layer norm
    # after it is well conditioned; the norm's generated scale and bias start near 0,
    # so the adapter starts near the identity.
    self.gen_down = param(rngs, (pd, d_model * r), (None, None), scale=(pd * d_model) ** -0.5)
    self.gen_down_b = param(rngs, (pd, r), (None, None), scale=std)
    self.gen_up = param(rngs, (pd, r * d_model), (None, None), scale=(pd * r) ** -0.5)
    self.gen_up_b = param(rngs, (pd, d_model), (None, None), scale=std)
    self.gen_scale = param(rngs, (pd, d_model), (None, None), scale=std)
    self.gen_bias = param(rngs, (pd, d_model), (None, None), scale=std)

  def embed(self, layer: int, position: int) -> jax.Array:
    """z for every task at (layer, position): [T, proj_dim]."""
    t = self.task_embed.shape[0]
    src = jnp.concatenate([
        self.task_embed[...],
        jnp.broadcast_to(self.layer_embed[...][layer], (t, self.layer_embed.shape[1])),
        jnp.broadcast_to(self.position_embed[...][position], (t, self.position_embed.shape[1])),
    ], axis=-1)  # [T, 3 * de]
    h = jax.nn.relu(src @ self.proj_w1[...] + self.proj_b1[...])
    return h @ self.proj_w2[...] + self.proj_b2[...]

  def __call__(self, layer: int, position: int) -> dict[str, jax.Array]:
    """The generated adapter of every task at (layer, position).

    Returns:
      dict with down [T, d, r], down_b [T, r], up [T, r, d], up_b [T, d],
      scale [T, d], bias [T, d].
    """
    z = self.embed(layer, position)  # [T, pd]
    t, d, r = z.shape[0], self.d, self.rank
    return {
        "down": (z @ self.gen_down[...]).reshape(t, d, r),
        "down_b": z @ self.gen_down_b[...],
        "up": (z @ self.gen_up[...]).reshape(t, r, d),
        "up_b": z @ self.gen_up_b[...],
        "scale": z @ self.gen_scale[...],
        "bias": z @ self.gen_bias[...],
    }


class HyperAdapter(nnx.Module):
  """An adapter slot whose weights the shared hypernetwork generates per task.

  Args:
    args: slot sizes; ``args.shared`` holds the hypernetwork.
    cfg: the options (the first adapter built fixes them for all).
    rngs: key source.
  """

  def __init__(self, args: SlotArgs, cfg: ml_collections.ConfigDict, rngs: nnx.Rngs):
    opts = resolve(cfg, DEFAULTS, slot_key(args.position))
    if args.position not in POSITIONS:
      raise ValueError(f"config.{slot_key(args.position)}.name: hyperformer fills "
                       f"{POSITIONS}, not {args.position!r}")
    if SHARED_KEY not in args.shared:
      args.shared[SHARED_KEY] = HyperNetwork(args.num_tasks, args.num_layers, args.d_model,
                                             opts, rngs)
    self.hyper = args.shared[SHARED_KEY]
    self.layer = args.layer
    self.position = POSITIONS.index(args.position)

  def __call__(self, x: jax.Array, ctx: Context) -> jax.Array:  # [B, L, d] -> [B, L, d]
    w = {k: v[ctx.task_id] for k, v in self.hyper(self.layer, self.position).items()}
    h = jax.nn.gelu(jnp.einsum("bld,bdr->blr", x, w["down"]) + w["down_b"][:, None])
    u = jnp.einsum("blr,brd->bld", h, w["up"]) + w["up_b"][:, None]  # [B, L, d]
    normed = precision.norm_in_float32(u, jnp.ones((), u.dtype), None, 1e-5)  # float32 stats
    return x + normed * w["scale"][:, None] + w["bias"][:, None]


@ADAPTER.register("hyperformer")
def _hyperformer(args: SlotArgs, cfg, rngs):
  return HyperAdapter(args, cfg, rngs)
