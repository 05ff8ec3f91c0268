"""Slots of the transformer and their default fillers.

The model has five kinds of slot, each filled from the config by name:

  block         a whole transformer block (default "standard")
  ffn           the feed-forward sublayer inside a block (default "dense")
  adapter_attn  applied to the residual stream after attention (default "none")
  adapter_ffn   applied to the residual stream after the FFN (default "none")
  head          the output head, hidden -> logits (default "shared"; "per_task";
                "tied": x embed^T with ``model.tie_embeddings``)

A filler is registered in the slot's registry and built as
``builder(args: SlotArgs, cfg: ConfigDict, rngs: nnx.Rngs) -> nnx.Module``; the module
is called as ``module(x, ctx)`` (see ``context.Context``). New fillers live in
``modular/modules/``, one file each, registered with e.g. ``@FFN.register("moe")``.

Parameters carry logical axis names in their ``logical_axes`` metadata
(vocab, embed, mlp, heads, head_dim, tasks, expert, ...): the sharding rules table in the
config maps them to mesh axes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from modular.models.context import Context
from modular.registry import Registry

# Fillers outside this file register themselves when ``modular.modules`` is imported.
_MODULES = ("modular.modules",)
BLOCK: Registry = Registry("block", _MODULES)
FFN: Registry = Registry("ffn", _MODULES)
ADAPTER: Registry = Registry("adapter", _MODULES)
HEAD: Registry = Registry("head", _MODULES)
SLOT_REGISTRIES = {"block": BLOCK, "ffn": FFN, "adapter_attn": ADAPTER,
                   "adapter_ffn": ADAPTER, "head": HEAD}


@dataclasses.dataclass(frozen=True)
class SlotArgs:
  """What a slot builder knows of the model around it.

  Attributes:
    d_model, d_ff, num_heads, num_layers, num_tasks, vocab_size, seq_len: sizes.
    activation: FFN nonlinearity name ("relu", "gelu", "silu").
    layer: the block index the slot sits in (-1 for the head).
    position: the slot's name ("ffn", "adapter_attn", ...).
    shared: a model-level ``nnx.Dict`` where builders keep modules shared by all
      layers (e.g. HyperFormer's hypernetwork): create once, reuse by key.
    model_cfg: the whole model config (for fillers that build nested blocks).
  """

  d_model: int
  d_ff: int
  num_heads: int
  num_layers: int
  num_tasks: int
  vocab_size: int
  seq_len: int
  activation: str
  layer: int
  position: str
  shared: Any
  model_cfg: Any = None


# "gelu" is the tanh approximation; "gelu_exact" the erf form BERT checkpoints use.
ACTIVATIONS = {"relu": jax.nn.relu, "gelu": jax.nn.gelu, "silu": jax.nn.silu,
               "gelu_exact": lambda x: jax.nn.gelu(x, approximate=False)}


def activation_fn(name: str):
  """Returns the FFN nonlinearity called ``name`` (a key of ``ACTIVATIONS``)."""
  if name not in ACTIVATIONS:
    raise ValueError(f"model.activation: unknown {name!r}; known: {sorted(ACTIVATIONS)}")
  return ACTIVATIONS[name]


def param(rngs: nnx.Rngs, shape: tuple[int, ...], axes: tuple[str | None, ...],
          scale: float | None = None, init: str = "normal") -> nnx.Param:
  """A parameter with logical axis names.

  Args:
    rngs: key source.
    shape: the parameter's shape.
    axes: one logical axis name per dimension.
    scale: std of the normal init (default 1/sqrt(fan_in) over the first dim).
    init: "normal", "zeros" or "ones".

  Returns:
    An ``nnx.Param`` whose metadata holds ``logical_axes``.
  """
  assert len(shape) == len(axes), (shape, axes)
  if init == "zeros":
    value = jnp.zeros(shape, jnp.float32)
  elif init == "ones":
    value = jnp.ones(shape, jnp.float32)
  else:
    std = scale if scale is not None else shape[0] ** -0.5
    value = std * jax.random.normal(rngs.params(), shape, jnp.float32)
  return nnx.Param(value, logical_axes=tuple(axes))


def ffn_options(args: SlotArgs) -> tuple[bool, bool]:
  """(gated, bias) of the model's FFN: ``model.ffn_gated`` (False), ``model.ffn_bias`` (True)."""
  cfg = args.model_cfg
  if cfg is None:
    return False, True
  return bool(cfg.get("ffn_gated", False)), bool(cfg.get("ffn_bias", True))


class DenseFFN(nnx.Module):
  """The default FFN: act(x W_in + b) W_out + b, or gated (SwiGLU).

  With ``model.ffn_gated`` (Llama's SwiGLU, Shazeer 2020) the hidden layer is
  act(x W_gate) * (x W_in + b_in) with W_gate [d, d_ff] (``w_gate``): W_in is the
  up projection, W_out the down projection. ``model.ffn_bias = False`` drops both
  biases. Captures its input [B, L, d] as ``ffn_in`` and its hidden activations
  [B, L, d_ff] as ``ffn_act`` when the context captures (neuron specialization reads
  ``ffn_act``; RegMean's Grams read both); ``ffn_act`` is also a patching site
  (``Context.tap``: one component per neuron). ``hidden`` and ``output``
  take additive updates (LoRA's, Polytropon's) of the pre-activations and output.

  References:
    Shazeer 2020, "GLU Variants Improve Transformer" (SwiGLU).
  """

  def __init__(self, args: SlotArgs, cfg: ml_collections.ConfigDict, rngs: nnx.Rngs):
    self.act = activation_fn(args.activation)
    self.gated, self.use_bias = ffn_options(args)
    self.w_in = param(rngs, (args.d_model, args.d_ff), ("embed", "mlp"))
    if self.use_bias:
      self.b_in = param(rngs, (args.d_ff,), ("mlp",), init="zeros")
    self.w_out = param(rngs, (args.d_ff, args.d_model), ("mlp", "embed"))
    if self.use_bias:
      self.b_out = param(rngs, (args.d_model,), ("embed",), init="zeros")
    if self.gated:  # drawn last: a model without it initializes as before
      self.w_gate = param(rngs, (args.d_model, args.d_ff), ("embed", "mlp"))

  def hidden(self, x: jax.Array, up: jax.Array | None = None,
             gate: jax.Array | None = None) -> jax.Array:
    """[B, L, d] -> [B, L, d_ff]; ``up`` / ``gate`` are added to the pre-activations."""
    u = x @ self.w_in[...]
    if self.use_bias:
      u = u + self.b_in[...]
    if up is not None:
      u = u + up
    if not self.gated:
      return self.act(u)
    g = x @ self.w_gate[...]
    if gate is not None:
      g = g + gate
    return self.act(g) * u

  def output(self, h: jax.Array, down: jax.Array | None = None) -> jax.Array:
    """[B, L, d_ff] -> [B, L, d]; ``down`` is added to the output."""
    out = h @ self.w_out[...]
    if self.use_bias:
      out = out + self.b_out[...]
    return out if down is None else out + down

  def __call__(self, x: jax.Array, ctx: Context) -> jax.Array:  # [B, L, d] -> [B, L, d]
    ctx.capture_activation("ffn_in", x)
    h = ctx.tap("ffn_act", self.hidden(x))  # [B, L, d_ff]
    return self.output(h)


def refuse_gated(args: SlotArgs, name: str) -> None:
  """Raises for an FFN filler without a gated form on a ``model.ffn_gated`` model."""
  if ffn_options(args) != (False, True):
    raise ValueError(f"config.model.ffn.name: {name!r} has no gated (SwiGLU) or bias-free "
                     "form; a model with model.ffn_gated=True or model.ffn_bias=False "
                     "(a Llama-family checkpoint) takes 'dense', 'lora' or 'polytropon'")


@FFN.register("dense")
def _dense(args, cfg, rngs):
  return DenseFFN(args, cfg, rngs)


class Identity(nnx.Module):
  """An empty adapter slot: returns the stream unchanged."""

  def __call__(self, x: jax.Array, ctx: Context) -> jax.Array:
    return x


@ADAPTER.register("none")
def _none(args, cfg, rngs):
  return Identity()


class SharedHead(nnx.Module):
  """One linear map hidden -> vocabulary logits for all tasks.

  ``head.bias = False`` leaves out the bias (an untied ``lm_head`` of Llama has none).
  """

  def __init__(self, args: SlotArgs, cfg: ml_collections.ConfigDict, rngs: nnx.Rngs):
    self.kernel = param(rngs, (args.d_model, args.vocab_size), ("embed", "vocab"))
    self.use_bias = bool(cfg.get("bias", True))
    if self.use_bias:
      self.bias = param(rngs, (args.vocab_size,), ("vocab",), init="zeros")

  def __call__(self, x: jax.Array, ctx: Context) -> jax.Array:  # [B, L, d] -> [B, L, V]
    out = x @ self.kernel[...]
    return out + self.bias[...] if self.use_bias else out


class TiedHead(nnx.Module):
  """Logits against the input embedding, x E^T (GPT-2's LM head; no parameters of its own).

  ``E`` [V, d] is the model's ``embed`` itself (the same Param, published in
  ``args.shared`` by a decoder with ``model.tie_embeddings``), so its gradient sums the
  input and output uses, as in a tied ``transformers`` model.
  """

  def __init__(self, args: SlotArgs, cfg: ml_collections.ConfigDict, rngs: nnx.Rngs):
    if "embed" not in args.shared:
      raise ValueError("config.model.head.name: 'tied' needs config.model.tie_embeddings = "
                       "True (a decoder whose input embedding the head reuses)")
    self.embed = args.shared["embed"]

  def __call__(self, x: jax.Array, ctx: Context) -> jax.Array:  # [B, L, d] -> [B, L, V]
    return jnp.einsum("bld,vd->blv", x, self.embed[...])


class PerTaskHead(nnx.Module):
  """One linear head per task, chosen by the example's task id.

  The parameters have a leading ``tasks`` axis, so a task's gradient only reaches its
  own slice (a task-specific parameter for gradient surgery).
  """

  def __init__(self, args: SlotArgs, cfg: ml_collections.ConfigDict, rngs: nnx.Rngs):
    self.per_task_kernel = param(
        rngs, (args.num_tasks, args.d_model, args.vocab_size), ("tasks", "embed", "vocab"),
        scale=args.d_model ** -0.5)
    self.per_task_bias = param(rngs, (args.num_tasks, args.vocab_size), ("tasks", "vocab"),
                               init="zeros")

  def __call__(self, x: jax.Array, ctx: Context) -> jax.Array:
    kernel = self.per_task_kernel[...][ctx.task_id]  # [B, d, V]
    bias = self.per_task_bias[...][ctx.task_id]  # [B, V]
    return jnp.einsum("bld,bdv->blv", x, kernel) + bias[:, None, :]


@HEAD.register("shared")
def _shared_head(args, cfg, rngs):
  return SharedHead(args, cfg, rngs)


@HEAD.register("tied")
def _tied_head(args, cfg, rngs):
  return TiedHead(args, cfg, rngs)


@HEAD.register("per_task")
def _per_task_head(args, cfg, rngs):
  return PerTaskHead(args, cfg, rngs)


def build_slot(kind: str, args: SlotArgs, cfg: ml_collections.ConfigDict,
               rngs: nnx.Rngs) -> nnx.Module:
  """Builds the filler named ``cfg.name`` for slot ``kind``.

  Raises:
    ValueError: naming the config key when the filler is unknown.
  """
  registry = SLOT_REGISTRIES[kind]
  try:
    builder = registry.get(cfg.name)
  except KeyError as e:
    raise ValueError(f"model.{kind}.name: {e.args[0]}") from None
  return builder(args, cfg, rngs)
