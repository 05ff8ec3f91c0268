"""Small builders shared by the module tests and the benchmark.

A slot filler can be built alone from a ``SlotArgs`` (no model around it), or inside
a tiny transformer whose sizes are filled in without the data pipeline; both are
what ``tests/test_modules_*.py`` and ``bench/modules.py`` need.

Example:
  ffn = build_filler("ffn", {"name": "moe", "num_experts": 4}, slot_args())
  y = ffn(x, context(task_id))
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from modular.models import Context, Transformer, build_slot, default_model_config
from modular.models.slots import SlotArgs


def slot_args(d_model: int = 16, d_ff: int = 32, num_tasks: int = 3, *, num_heads: int = 2,
              num_layers: int = 2, vocab_size: int = 11, seq_len: int = 8,
              activation: str = "relu", layer: int = 0, position: str = "ffn",
              shared=None, model_cfg=None) -> SlotArgs:
  """SlotArgs for a filler built outside a model (a fresh ``shared`` dict by default)."""
  return SlotArgs(d_model=d_model, d_ff=d_ff, num_heads=num_heads, num_layers=num_layers,
                  num_tasks=num_tasks, vocab_size=vocab_size, seq_len=seq_len,
                  activation=activation, layer=layer, position=position,
                  shared=nnx.Dict() if shared is None else shared, model_cfg=model_cfg)


def rngs(seed: int = 0) -> nnx.Rngs:
  """Init keys of the "rbg" generator: its samplers compile about 3x faster than
  threefry's on CPU, which dominates building many small test models. The choice is
  local to these keys (no global config change)."""
  return nnx.Rngs(params=jax.random.key(seed, impl="rbg"))


def build_filler(kind: str, cfg: dict, args: SlotArgs, seed: int = 0) -> nnx.Module:
  """Builds the filler ``cfg["name"]`` of slot ``kind`` ("ffn", "adapter_ffn", ...)."""
  return build_slot(kind, args, ml_collections.ConfigDict(cfg), rngs(seed))


def context(task_id, num_tasks: int, *, rng: jax.Array | None = None,
            layer: int = 0, position: str = "ffn") -> Context:
  """A context for a direct call; ``rng`` given means training (stochastic) mode."""
  return Context(task_id=jnp.asarray(task_id, jnp.int32), num_tasks=num_tasks,
                 deterministic=rng is None, rng=rng, layer=layer, position=position)


def model_config(num_tasks: int = 3, *, d_model: int = 16, d_ff: int = 32,
                 num_heads: int = 2, num_layers: int = 2, vocab_size: int = 11,
                 seq_len: int = 8, **slots) -> ml_collections.ConfigDict:
  """A tiny model config with its data-derived sizes filled in.

  Args:
    num_tasks, d_model, d_ff, num_heads, num_layers, vocab_size, seq_len: sizes.
    **slots: slot configs by slot name, e.g. ``ffn={"name": "moe"}``.

  Returns:
    ``config.model`` ready for ``Transformer``.
  """
  c = default_model_config()
  c.update(dict(d_model=d_model, d_ff=d_ff, num_heads=num_heads, num_layers=num_layers,
                vocab_size=vocab_size, seq_len=seq_len, num_tasks=num_tasks))
  for slot, value in slots.items():
    c[slot] = ml_collections.ConfigDict(value)
  return c


def build(cfg: ml_collections.ConfigDict, seed: int = 0) -> Transformer:
  """The transformer of ``cfg`` (test-speed init keys, see ``rngs``)."""
  return Transformer(cfg, rngs(seed))


def batch(num_tasks: int, batch_size: int = 6, seq_len: int = 8, vocab_size: int = 11,
          seed: int = 0) -> dict:
  """Random tokens with task ids cycling over all tasks."""
  key = jax.random.PRNGKey(seed)
  return {"inputs": jax.random.randint(key, (batch_size, seq_len), 0, vocab_size),
          "task_id": jnp.arange(batch_size, dtype=jnp.int32) % num_tasks}


def call(module: nnx.Module, x: jax.Array, task_id, num_tasks: int, *,
         rng: jax.Array | None = None, layer: int = 0, position: str = "ffn",
         params=None, token_mask=None) -> tuple[jax.Array, dict, dict]:
  """Runs ``module(x, ctx)`` under jit (eager op-by-op dispatch is slow on CPU).

  Args:
    module: a slot filler.
    x: its input.
    task_id: [B] task ids.
    num_tasks: T.
    rng: PRNG key for training mode (None: deterministic).
    layer, position: where the context says the module sits.
    params: parameters to use instead of the module's own (an ``nnx.State``).
    token_mask: [B, L] bool real tokens (None: all real).

  Returns:
    (output, ctx.losses, ctx.stats).
  """
  graphdef, own = nnx.split(module, nnx.Param)
  return _jit_call(graphdef, own if params is None else params, x,
                   jnp.asarray(task_id, jnp.int32), rng, num_tasks, layer, position,
                   None if token_mask is None else jnp.asarray(token_mask, bool))


@jax.jit(static_argnums=(0, 5, 6, 7))
def _jit_call(graphdef, params, x, task_id, rng, num_tasks, layer, position, token_mask):
  ctx = Context(task_id=task_id, num_tasks=num_tasks, deterministic=rng is None, rng=rng,
                layer=layer, position=position, token_mask=token_mask)
  y = nnx.merge(graphdef, params)(x, ctx)
  return y, dict(ctx.losses), dict(ctx.stats)
