"""Config files and command-line overrides: ``--config.train.steps=500``.

``load_config_file("configs/quickstart.py", arg)`` runs the file's ``get_config(arg)``
(big_vision style; ``configs/x.py:arg`` also works). ``apply_override`` sets one
dotted key, parsing the value by the type of the value it replaces, and raises a
ValueError naming the key for an unknown key or a value of the wrong type.
"""

from __future__ import annotations

import ast
import contextlib
import importlib.util
import os
import traceback
from typing import Any

import ml_collections


def load_config_file(path: str, arg: str | None = None, *,
                     flag: str = "--config") -> ml_collections.ConfigDict:
  """Loads ``get_config(arg)`` from a Python config file.

  The base config (``modular.config.get_base_config``) is locked, so a typo in a config
  file (``c.model.d_modle = 16``) fails where it is written.

  Args:
    path: "configs/quickstart.py" or "configs/quickstart.py:arg".
    arg: the argument for ``get_config`` (overrides one given after a colon).
    flag: the command-line flag that named the file, which labels the errors
      (``modular-sweep`` loads its experiment file with "--experiment").

  Returns:
    The ConfigDict the file builds.

  Raises:
    FileNotFoundError: ``<flag>: no config file at <path>``.
    ValueError: one line for a folder, a syntax error, an unknown key or
      a wrong type in the file (``config.<section>.<key>: ...``), or any other error
      raised by the file (its line is named).
  """
  if ":" in path and not os.path.exists(path):
    path, file_arg = path.rsplit(":", 1)
    arg = arg if arg is not None else file_arg
  if not os.path.exists(path):
    raise FileNotFoundError(f"{flag}: no config file at {path}")
  if os.path.isdir(path):
    raise ValueError(f"{flag}: {path} is a folder; give a config file such as "
                     "configs/quickstart.py")
  name = "modular_config_" + os.path.splitext(os.path.basename(path))[0]
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  try:
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
      raise ValueError(f"{flag}: {path} defines no get_config()")
    return module.get_config(arg) if arg is not None else module.get_config()
  except SyntaxError as e:
    raise ValueError(f"{flag}: {e.filename}:{e.lineno}: syntax error: {e.msg}") from None
  except Exception as e:  # a config file may raise anything: one line naming where
    raise ValueError(_config_file_error(e, path, flag)) from None


def _config_file_error(e: Exception, path: str, flag: str) -> str:
  """One line for an exception raised while a config file ran, labelled ``flag``."""
  if str(e).startswith(("config.", flag)):
    return str(e)
  frames = list(traceback.walk_tb(e.__traceback__))
  if isinstance(e, AttributeError) and e.__context__ is not None:  # ConfigDict.__setattr__
    frames += list(traceback.walk_tb(e.__context__.__traceback__))
  where = path
  package = os.path.dirname(os.path.abspath(__file__))
  for frame, lineno in frames:
    filename = os.path.abspath(frame.f_code.co_filename)
    if not filename.startswith(package) and "site-packages" not in filename:
      where = f"{frame.f_code.co_filename}:{lineno}"
  setter = [f for f, _ in frames if f.f_code.co_name == "__setitem__"
            and isinstance(f.f_locals.get("self"), ml_collections.ConfigDict)]
  if setter and isinstance(e, (AttributeError, KeyError, TypeError)):
    node, key = setter[-1].f_locals["self"], setter[-1].f_locals.get("key")
    prefix = _node_path(node, [f for f, _ in frames if f.f_code.co_name != "__setitem__"])
    prefix = "<section>" if prefix is None else prefix
    full = f"config.{prefix}.{key}" if prefix else f"config.{key}"
    if isinstance(e, TypeError):
      return f"{full}: wrong type ({str(e).splitlines()[0]}) at {where}"
    return f"{full}: unknown key at {where}; known: {', '.join(sorted(node.keys()))}"
  message = str(e).splitlines()[0] if str(e) else ""
  return f"{flag}: {where}: {type(e).__name__}: {message}"


def _node_path(node: ml_collections.ConfigDict, frames: list) -> str | None:
  """The dotted path of ``node`` inside a ConfigDict held by one of ``frames``."""

  def find(tree: Any, prefix: str) -> str | None:
    if tree is node:
      return prefix
    if isinstance(tree, ml_collections.ConfigDict):
      for k in tree.keys():
        sub = tree._fields.get(k)  # pylint: disable=protected-access
        if isinstance(sub, ml_collections.ConfigDict):
          got = find(sub, f"{prefix}.{k}" if prefix else str(k))
          if got is not None:
            return got
    return None

  for frame in frames:
    for value in frame.f_locals.values():
      if isinstance(value, ml_collections.ConfigDict):
        got = find(value, "")
        if got is not None:
          return got
  return None


def _parse(key: str, text: str, current: Any) -> Any:
  """Parses ``text`` into the type of ``current``; errors name ``key``."""
  if isinstance(current, bool):
    if text.lower() in ("true", "1", "yes"):
      return True
    if text.lower() in ("false", "0", "no"):
      return False
    raise ValueError(f"config.{key}: expected a bool (true/false), got {text!r}")
  if isinstance(current, int):
    try:
      return int(text)
    except ValueError:
      raise ValueError(f"config.{key}: expected an int, got {text!r}") from None
  if isinstance(current, float):
    try:
      return float(text)
    except ValueError:
      raise ValueError(f"config.{key}: expected a float, got {text!r}") from None
  if isinstance(current, (list, tuple)):
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = [v.strip() for v in text.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)):
      value = [value]
    return type(current)(value)
  if current is None:
    try:
      return ast.literal_eval(text)
    except (ValueError, SyntaxError):
      return text
  return text


def apply_override(cfg: ml_collections.ConfigDict, key: str, value: Any) -> None:
  """Sets ``cfg.<key> = value`` (a string is parsed by the existing value's type).

  Raises:
    ValueError: naming the key, if it does not exist or the value has the wrong type.
  """
  parts = key.split(".")
  node = cfg
  for i, part in enumerate(parts[:-1]):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      known = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else ""
      raise ValueError(f"config.{'.'.join(parts[:i + 1])}: unknown key; known here: {known}")
    node = node[part]
  leaf = parts[-1]
  if isinstance(node, ml_collections.ConfigDict) and leaf not in node and parts[-2:-1] == ["options"]:
    # A registry choice's free-form options (mtl.options.c): the chosen class checks the keys.
    if isinstance(value, str):
      try:
        value = ast.literal_eval(value)
      except (ValueError, SyntaxError):
        pass
    with node.unlocked():
      node[leaf] = value
    return
  if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
    known = ", ".join(sorted(node.keys())) if isinstance(node, ml_collections.ConfigDict) else ""
    raise ValueError(f"config.{key}: unknown key; known here: {known}")
  current = node[leaf]
  if isinstance(value, str) and not isinstance(current, str):
    value = _parse(key, value, current)
  try:
    with node.ignore_type() if current is None else contextlib.nullcontext():
      node[leaf] = value
  except TypeError as e:
    raise ValueError(f"config.{key}: {e}") from None


def parse_overrides(argv: list[str]) -> tuple[dict[str, str], list[str]]:
  """Splits ``--config.a.b=v`` arguments from the rest of argv."""
  overrides, rest = {}, []
  for a in argv:
    if a.startswith("--config.") and "=" in a:
      k, v = a[len("--config."):].split("=", 1)
      overrides[k] = v
    else:
      rest.append(a)
  return overrides, rest
