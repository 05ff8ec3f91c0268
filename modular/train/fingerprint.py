"""Integrity fingerprints of a training state: catch checkpoint bytes changed on disk.

A checkpoint whose array data was overwritten in place (a bad disk block, a stray write)
can restore to finite but wrong values; the finite check at restore does not see it.
At save time every leaf gets a 64-bit fingerprint, stored in the checkpoint's metadata;
at restore the restored leaves are fingerprinted again and compared.

Per leaf, each element's bits are read as uint32 words ``w`` (float32/int32 bitcast; 16-
and 8-bit types widened; 64-bit types split into two words, ``[..., 2]``). Each word's
position ``i`` gets a pseudo-random key ``k = fmix(i ^ seed)`` and the word is hashed as
``h = fmix(w ^ k)``, with ``fmix`` the murmur3 finalizer (a bijection of uint32). The
fingerprint is two wrap-around sums, ``sum(h)`` and ``sum(h * (k | 1))``: a change to one
word always changes the first sum (``h`` is a bijection of ``w``); a change to many words
goes unnoticed only if both sums cancel, about 2^-64 for changes unrelated to the hash
(a heuristic figure: this is an error check, not a cryptographic hash).
Unlike a plain or a position-weighted sum of the raw words, no structured change (e.g. the
sign bits of two values flipped) cancels out.

Everything runs in one jitted function: elementwise ops fused into one pass and one
reduction per leaf; on a sharded ``jax.Array`` the reduction is a cross-device sum, and
every process gets the same (replicated) result. It runs at save and restore time only,
never inside the training step.

References: A. Appleby, MurmurHash3 (``fmix32``), 2011.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from modular.paths import flat_paths

_SEED = 0x9E3779B9  # the golden-ratio constant: any value


def _words(x: jax.Array) -> jax.Array:
  """uint32 [...] (or [..., 2] for 64-bit types): the bits of ``x``, one word per element.

  Raises:
    TypeError: for a dtype whose bits cannot be read (none in a training state).
  """
  if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
    x = jax.random.key_data(x)
  if x.dtype == jnp.bool_:
    return x.astype(jnp.uint32)
  size = jnp.dtype(x.dtype).itemsize
  if size == 4:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)
  if size == 8:
    return jax.lax.bitcast_convert_type(x, jnp.uint32)  # [..., 2]
  if size in (1, 2):
    narrow = jnp.uint8 if size == 1 else jnp.uint16
    return jax.lax.bitcast_convert_type(x, narrow).astype(jnp.uint32)
  raise TypeError(f"cannot fingerprint dtype {x.dtype}")


def _positions(shape: tuple[int, ...]) -> jax.Array:
  """uint32 [*shape]: each element's row-major flat index (mod 2^32), without a reshape.

  Built from per-axis iotas so a sharded leaf needs no resharding.
  """
  pos = jnp.zeros(shape, jnp.uint32)
  stride = 1
  for axis in reversed(range(len(shape))):
    pos = pos + jax.lax.broadcasted_iota(jnp.uint32, shape, axis) * jnp.uint32(stride % 2**32)
    stride *= shape[axis]
  return pos


def _fmix32(h: jax.Array) -> jax.Array:
  """MurmurHash3's finalizer: a bijection of uint32 with full avalanche."""
  h = h ^ (h >> 16)
  h = h * jnp.uint32(0x85EBCA6B)
  h = h ^ (h >> 13)
  h = h * jnp.uint32(0xC2B2AE35)
  return h ^ (h >> 16)


def _leaf(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Two uint32 []: the wrap-around sums of one leaf (scalars: replicated on every device)."""
  w = _words(x)
  if w.ndim == 0:
    w = w.reshape(1)
  key = _fmix32(_positions(w.shape) ^ jnp.uint32(_SEED))  # a pseudo-random word per position
  h = _fmix32(w ^ key)
  return (jnp.sum(h, dtype=jnp.uint32),
          jnp.sum(h * (key | jnp.uint32(1)), dtype=jnp.uint32))


@jax.jit
def _all(leaves: list[jax.Array]) -> list[tuple[jax.Array, jax.Array]]:
  return [_leaf(x) for x in leaves]


def fingerprints(tree: Any) -> dict[str, str]:
  """Per-leaf fingerprints of ``tree``: ``{"params/blocks/0/ffn/w_in": "1f0c...", ...}``.

  Args:
    tree: a pytree of arrays (``jax.Array``, sharded or not, or NumPy), any dtype of at
      most 64 bits (PRNG key arrays included).

  Returns:
    One 16-hex-digit string per leaf, keyed by ``modular.paths.flat_paths``. Equal on
    every process; equal for equal bits whatever the sharding.
  """
  named = flat_paths(tree)
  sums = _all(list(named.values()))
  # scalars, replicated on every device: any local copy holds the global value.
  local = jax.device_get([[s if s.is_fully_addressable else s.addressable_data(0)
                           for s in pair] for pair in sums])
  return {name: f"{int(a):08x}{int(b):08x}" for name, (a, b) in zip(named, local)}


def first_mismatch(saved: dict[str, str], restored: dict[str, str]) -> str | None:
  """The first path whose fingerprint differs: in ``restored``'s (tree) order, then paths
  saved but not restored.

  Args:
    saved: fingerprints written at save time.
    restored: fingerprints of the restored tree; paths not in ``saved`` are not checked.

  Returns:
    The path, or None when every saved fingerprint matches.
  """
  for name, value in restored.items():
    if name in saved and saved[name] != value:
      return name
  return next((name for name in saved if name not in restored), None)
