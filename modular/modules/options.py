"""Options of a slot filler: defaults merged with the config, unknown keys named.

Every filler in ``modular/modules`` reads its options the same way: a table of
defaults, overridden by the slot's config (``model.ffn = {"name": "moe", "top_k": 2}``),
with an error that names the full key when a key is unknown or has the wrong type,
before anything is built or compiled.

Example:
  opts = resolve(cfg, {"num_experts": 8, "top_k": 2}, where="model.ffn")
  opts.num_experts  # 8 unless the config says otherwise
"""

from __future__ import annotations

from typing import Any

import ml_collections


def slot_key(position: str) -> str:
  """The config key of a slot ("ffn" -> "model.ffn"; a head's position is "head")."""
  return f"model.{position}" if position else "model"


def resolve(cfg: ml_collections.ConfigDict | dict | None, defaults: dict[str, Any],
            where: str) -> ml_collections.FrozenConfigDict:
  """Merges a slot config over the filler's defaults.

  Args:
    cfg: the slot's config (its ``name`` key is ignored here); None for defaults only.
    defaults: option name -> default value (the type of the default is enforced;
      an int is accepted where a float is expected).
    where: the config path for error messages, e.g. "model.ffn".

  Returns:
    A FrozenConfigDict holding every option (hashable: modules keep it as static
    graph data).

  Raises:
    ValueError: naming ``where.key`` for an unknown key or a value of the wrong type.
  """
  out = dict(defaults)
  for key, value in (dict(cfg) if cfg is not None else {}).items():
    if key == "name":
      continue
    if key not in defaults:
      raise ValueError(f"config.{where}.{key}: unknown option; known: "
                       f"{', '.join(sorted(defaults))}")
    want = type(defaults[key])
    ok = isinstance(value, want) and not (want is int and isinstance(value, bool))
    if want is float and isinstance(value, int) and not isinstance(value, bool):
      value, ok = float(value), True
    if defaults[key] is None:
      ok = True
    if not ok:
      raise ValueError(f"config.{where}.{key}: expected {want.__name__}, "
                       f"got {type(value).__name__} {value!r}")
    out[key] = value
  return ml_collections.FrozenConfigDict(out)


def check_choice(value: str, choices: tuple[str, ...], key: str) -> str:
  """Returns ``value`` if it is one of ``choices``, else raises naming ``key``."""
  if value not in choices:
    raise ValueError(f"config.{key}: unknown {value!r}; known: {', '.join(choices)}")
  return value
