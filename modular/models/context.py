"""Side inputs that travel with the residual stream through every slot.

A slot module (an FFN, an adapter, a head, a whole block) is called as
``module(x, ctx)``: one input plus a context carrying the task ids, the PRNG key,
the head gates and the collectors for auxiliary losses, routing statistics and
captured intermediates (penzai's side-input pattern). The loop never knows which
module it runs: it only reads ``ctx.losses`` (summed into the objective) and
``ctx.stats`` (logged).

The same context carries an intervention (write) hook for causal analysis:
``ctx.patches`` maps a site name (``block0/attn/attn_heads``, ``block1/resid_pre``,
``block0/ffn/out``, ...) to ``(weight, source)``, and ``ctx.tap(name, value)`` returns
``(1 - weight) * value + weight * source`` there (activation patching at weight 1,
its gradient at weight 0 is attribution patching). Off by default (None): ``tap``
then only captures, and the traced computation is the same as without the hook.

Shapes: B batch, L sequence, H heads, NL layers, T tasks.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Any

import jax
import jax.numpy as jnp


@dataclasses.dataclass
class Context:
  """Per-forward side inputs and collectors.

  Attributes:
    task_id: [B] int32 task index of every example.
    num_tasks: T, the number of tasks the model was built for.
    deterministic: True at evaluation: no dropout, no Gumbel noise.
    rng: a PRNG key for stochastic modules (None when deterministic).
    capture: record intermediates (per-head attention outputs, FFN activations).
    head_gates: [NL, H] or [B, NL, H] multipliers of each head's output (None: 1).
    head_means: [NL, H, dh] replacement for gated-off heads (mean ablation);
      None means zero ablation.
    token_mask: [B, L] bool, True on real (non-padding) tokens; None means every
      position is real. One field for the whole model: routers count only real
      tokens, and an encoder's attention masks padded keys with it.
    positions: [B, L] int32 position of every token for rotary embeddings (None:
      0..L-1); a decoder with ``model.padding_mask`` numbers the real tokens.
    layer: index of the block being run (-1 outside blocks).
    position: slot name inside the block ("attn", "ffn", "adapter_attn", ...).
    losses: name -> scalar auxiliary loss, already weighted; summed by the loop.
    stats: name -> array of routing/telemetry statistics for logging.
    intermediates: name -> captured activation (only when ``capture``).
    patches: site name -> (weight, source): the value written at that site is
      ``(1 - weight) * value + weight * source``; weight broadcasts against the
      value ([S, H, 1] or [B, S, H, 1] for heads [B, S, H, dh]). None: no writes.
  """

  task_id: jax.Array
  num_tasks: int
  deterministic: bool = True
  rng: jax.Array | None = None
  capture: bool = False
  head_gates: jax.Array | None = None
  head_means: jax.Array | None = None
  token_mask: jax.Array | None = None
  positions: jax.Array | None = None
  layer: int = -1
  position: str = ""
  losses: dict[str, jax.Array] = dataclasses.field(default_factory=dict)
  stats: dict[str, jax.Array] = dataclasses.field(default_factory=dict)
  intermediates: dict[str, jax.Array] = dataclasses.field(default_factory=dict)
  patches: dict[str, tuple[jax.Array, jax.Array]] | None = None

  def at(self, *, layer: int | None = None, position: str | None = None) -> "Context":
    """A view of this context at another layer/slot, sharing the collectors."""
    return dataclasses.replace(
        self,
        layer=self.layer if layer is None else layer,
        position=self.position if position is None else position)

  @property
  def prefix(self) -> str:
    parts = []
    if self.layer >= 0:
      parts.append(f"block{self.layer}")
    if self.position:
      parts.append(self.position)
    return "/".join(parts) + "/" if parts else ""

  def key(self, name: str) -> jax.Array:
    """A PRNG key unique to (layer, position, name); requires ``rng``."""
    if self.rng is None:
      raise ValueError(
          f"{self.prefix}{name} needs randomness but the context has no rng; "
          "pass rng=... or deterministic=True")
    salt = zlib.crc32(f"{self.prefix}{name}".encode()) & 0x7FFFFFFF
    return jax.random.fold_in(self.rng, salt)

  def add_loss(self, name: str, value: jax.Array) -> None:
    """Adds a (weighted) auxiliary loss to the objective."""
    self.losses[self.prefix + name] = jnp.asarray(value, jnp.float32)

  def record(self, name: str, value: Any) -> None:
    """Records a statistic (routing usage, entropy, load) for logging."""
    self.stats[self.prefix + name] = value

  def capture_activation(self, name: str, value: jax.Array) -> None:
    """Stores an intermediate when capturing is switched on."""
    if self.capture:
      self.intermediates[self.prefix + name] = value

  def intervene(self, name: str, value: jax.Array) -> jax.Array:
    """The value at site ``prefix + name`` after the patch written for it (if any).

    ``(1 - w) * value + w * source``: exactly ``value`` at w = 0 and exactly
    ``source`` at w = 1, and linear in w, so d/dw at 0 is (source - value) . d/dvalue.
    """
    if not self.patches:
      return value
    patch = self.patches.get(self.prefix + name)
    if patch is None:
      return value
    weight, source = patch
    weight = jnp.asarray(weight).astype(value.dtype)
    return (1.0 - weight) * value + weight * source.astype(value.dtype)

  def tap(self, name: str, value: jax.Array) -> jax.Array:
    """A site of the forward pass: applies its patch, then captures what flows on."""
    value = self.intervene(name, value)
    self.capture_activation(name, value)
    return value

  def gate_for_layer(self, layer: int) -> jax.Array | None:
    """Head gates of one layer: [H] or [B, H], or None."""
    if self.head_gates is None:
      return None
    return self.head_gates[..., layer, :]

  def task_one_hot(self, dtype=jnp.float32) -> jax.Array:
    """[B, T] one-hot of the task ids."""
    return jax.nn.one_hot(self.task_id, self.num_tasks, dtype=dtype)
