"""TFDS builder of the WordNet classification tasks (registers ``wordnet_tasks``).

``derive.py`` makes the shipped dataset (``data/``) from the WordNet 3.0 files;
``wordnet_tasks.py`` tokenizes it with a checkpoint's tokenizer into array_record.
"""

from modular.data.builders.wordnet.wordnet_tasks import WordnetConfig
from modular.data.builders.wordnet.wordnet_tasks import WordnetTasks
from modular.data.builders.wordnet.wordnet_tasks import make_config
from modular.data.builders.wordnet.wordnet_tasks import task_names

__all__ = ["WordnetConfig", "WordnetTasks", "make_config", "task_names"]
