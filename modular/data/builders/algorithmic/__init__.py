"""TFDS builder of the built-in algorithmic tasks."""

from modular.data.builders.algorithmic.algorithmic_tasks import AlgorithmicConfig
from modular.data.builders.algorithmic.algorithmic_tasks import AlgorithmicTasks
from modular.data.builders.algorithmic.algorithmic_tasks import make_config

__all__ = ["AlgorithmicConfig", "AlgorithmicTasks", "make_config"]
