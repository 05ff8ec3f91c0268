"""A tiny string registry: a config names a choice by string, the registry builds it.

Adding a router, an adapter or a surgery method is one new file that registers itself
and one config entry; no other code in the tree changes.

Example:
  FFN = Registry("ffn")

  @FFN.register("dense")
  class DenseFFN(nnx.Module): ...

  layer = FFN.build("dense", d_model=64, ...)
"""

from __future__ import annotations

import importlib
from typing import Any, Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
  """Maps names to constructors, with a clear error for unknown names.

  Args:
    kind: what the registry holds, used in error messages ("ffn", "mtl method").
    lazy_modules: modules imported on the first lookup, so that their
      ``@register`` decorators run (keeps import order free of cycles).
  """

  def __init__(self, kind: str, lazy_modules: tuple[str, ...] = ()):
    self.kind = kind
    self._entries: dict[str, Callable[..., T]] = {}
    self._lazy_modules = list(lazy_modules)

  def add_lazy_module(self, module: str) -> None:
    """Registers a module to import before the next lookup."""
    self._lazy_modules.append(module)

  def _load(self) -> None:
    while self._lazy_modules:
      importlib.import_module(self._lazy_modules.pop(0))

  def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
    """Decorator that registers ``fn`` under ``name``."""

    def deco(fn: Callable[..., T]) -> Callable[..., T]:
      if name in self._entries and self._entries[name] is not fn:
        raise ValueError(f"{self.kind} {name!r} is registered twice")
      self._entries[name] = fn
      return fn

    return deco

  def register_class(self, *names: str) -> Callable[[type], type]:
    """Class decorator: registers ``cls`` under ``names``; the first becomes ``cls.name``
    (unless the class sets its own)."""

    def deco(cls: type) -> type:
      if "name" not in cls.__dict__:
        cls.name = names[0]
      for n in names:
        self.register(n)(cls)
      return cls

    return deco

  def names(self) -> list[str]:
    self._load()
    return sorted(self._entries)

  def get(self, name: str) -> Callable[..., T]:
    self._load()
    if name not in self._entries:
      raise KeyError(
          f"unknown {self.kind} {name!r}; known: {', '.join(sorted(self._entries))}")
    return self._entries[name]

  def build(self, name: str, *args: Any, **kwargs: Any) -> T:
    return self.get(name)(*args, **kwargs)

  def __contains__(self, name: str) -> bool:
    self._load()
    return name in self._entries
