"""TFDS builders of the data layer, one package per builder (TFDS needs packages).

  algorithmic  the built-in algorithmic tasks (``modular.data.tasks``), one config per task
  toy_text     a tiny offline text-classification set for the external-task path
"""
