"""TFDS builder of a tiny offline text set (registers ``modular_toy_text``)."""

from modular.data.builders.toy_text.modular_toy_text import ModularToyText

__all__ = ["ModularToyText"]
