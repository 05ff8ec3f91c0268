"""``ModularToyText``: a tiny offline sentiment set shaped like ``glue/sst2``.

It exists so the external-dataset path (``modular.data.external``) can be
exercised without a network: its features match GLUE SST-2 (``sentence``
text, ``label`` in {0: negative, 1: positive}, ``idx``) and its splits are
``train`` and ``validation``, so the same preprocessing function serves both::

  external=[{"name": "sentiment", "tfds_name": "modular_toy_text",
             "imports": "modular.data.builders.toy_text",
             "preprocess": "modular.data.external:sentence_label"}]

Sentences are made from templates: an opener, one adjective whose polarity is
the label, a subject. Generation is seeded and deterministic.
"""

from __future__ import annotations

from typing import Iterator

from etils import epath
import numpy as np
import tensorflow_datasets as tfds

_POSITIVE = ("good", "great", "lovely", "fun", "bright", "warm", "clever")
_NEGATIVE = ("bad", "dull", "awful", "boring", "grim", "cold", "clumsy")
_OPENERS = ("a", "such a", "truly a", "quite a", "what a")
_SUBJECTS = ("film", "story", "cast", "plot", "score", "ending")

_SPLITS = {"train": (0, 400), "validation": (1, 64)}  # split -> (seed, size)


def make_sentence(rng: np.random.Generator) -> tuple[str, int]:
  """Draws one templated sentence and its label (1 = positive)."""
  label = int(rng.integers(2))
  words = _POSITIVE if label else _NEGATIVE
  sentence = " ".join([_OPENERS[rng.integers(len(_OPENERS))],
                       words[rng.integers(len(words))],
                       _SUBJECTS[rng.integers(len(_SUBJECTS))]])
  return sentence, label


class ModularToyText(tfds.core.GeneratorBasedBuilder):
  """Templated two-class sentences with the GLUE SST-2 feature layout."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  # See algorithmic_tasks.py: avoids TFDS's `importlib_resources` lookup.
  code_path = epath.Path(__file__)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="Tiny templated sentiment sentences (offline stand-in for glue/sst2).",
        features=tfds.features.FeaturesDict({
            "sentence": tfds.features.Text(),
            "label": tfds.features.ClassLabel(names=["negative", "positive"]),
            "idx": np.int32,
        }),
        supervised_keys=("sentence", "label"),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download.
    return {split: self._generate_examples(*args) for split, args in _SPLITS.items()}

  def _generate_examples(self, seed: int, size: int) -> Iterator[tuple[int, dict]]:
    rng = np.random.default_rng(seed)
    for i in range(size):
      sentence, label = make_sentence(rng)
      yield i, {"sentence": sentence, "label": label, "idx": i}
