"""The data layer: algorithmic tasks as TFDS datasets, mixtures, grain pipelines.

The training loop needs only these functions::

  cfg = default_data_config()          # fields: see modular/data/config.py
  validate_data_config(cfg)            # ValueError naming the bad key
  names = task_names(cfg)              # [T], task id = index
  V = vocab_size(cfg)
  rates = sampling_rates(cfg)          # [T]
  it = make_train_iterator(cfg, batch_size, shard_index=0, shard_count=1)
  batch = next(it)                     # inputs/targets int32 [B, L], mask float32 [B, L],
                                       # task_id int32 [B]  (see pipeline.py)
  state = it.get_state(); it.set_state(state)     # JSON-serializable
  evals = make_eval_batches(cfg, batch_size)      # {task: [batch, ...]}

Modules: ``vocab`` (token layout), ``tasks`` (built-in tasks), ``builders``
(TFDS builders), ``external`` (any TFDS dataset as a task, ``text_to_symbols``),
``classification`` (WordNet text tasks: classification batches, class counts),
``sources`` (``build_task_sources``), ``mixture`` (rates, mixing), ``pipeline``
(encoding, iterators). No TensorFlow is needed anywhere.
"""

from modular.data.classification import is_classification
from modular.data.classification import label_names
from modular.data.classification import num_classes
from modular.data.config import default_data_config
from modular.data.config import task_names
from modular.data.config import validate_data_config
from modular.data.config import vocab_size
from modular.data.external import text_to_symbols
from modular.data.mixture import sampling_rates
from modular.data.pipeline import encode_example
from modular.data.pipeline import make_eval_batches
from modular.data.pipeline import make_train_iterator
from modular.data.sources import build_task_sources
from modular.data.vocab import MAX_TASKS
from modular.data.vocab import PAD_ID
from modular.data.vocab import SEP_ID

__all__ = [
    "MAX_TASKS", "PAD_ID", "SEP_ID", "build_task_sources", "default_data_config",
    "encode_example", "is_classification", "label_names", "make_eval_batches",
    "make_train_iterator", "num_classes", "sampling_rates",
    "task_names", "text_to_symbols", "validate_data_config", "vocab_size",
]
