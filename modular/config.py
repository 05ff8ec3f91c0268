"""The experiment config: schema, defaults and validation before anything compiles.

A config file in ``configs/`` defines ``get_config(arg=None)`` returning the
ConfigDict built here with its own changes; the command line overrides single
values (``--config.train.steps=500``). ``validate`` runs before any model is built
or compiled, and every error names the key at fault.

Sections:
  data    tasks, mixture and sequence sizes (``modular.data.default_data_config``)
  model   sizes and slot fillers (``modular.models.default_model_config``)
  mtl     per-task gradient method (``modular.mtl.default_mtl_config``)
  optim   optax optimizer, schedule, frozen paths and per-path learning-rate factors
  train   steps, batch, seed, logging, evaluation and checkpoint cadence
  mesh    device mesh shape and the logical-axis -> mesh-axis rules table
"""

from __future__ import annotations

import inspect
import math
import re
from typing import Any

import ml_collections
import optax

from modular import data as data_lib
from modular import models as models_lib
from modular import mtl as mtl_lib

OPTIMIZERS = ("adamw", "adam", "sgd", "lion", "adafactor")  # common; any optax name works
SCHEDULES = ("constant", "cosine", "linear", "warmup_cosine")
NONFINITE_ACTIONS = ("halt", "skip")


def default_mesh_config() -> ml_collections.ConfigDict:
  """A data x fsdp x model x expert mesh; -1 takes the remaining devices.

  ``rules`` maps each logical axis name (on parameters and on the batch) to a mesh
  axis, a tuple of mesh axes, or None (replicated). Parameters whose dimension is not
  divisible by its mesh axes are replicated on that dimension.
  """
  c = ml_collections.ConfigDict()
  c.shape = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "model": 1, "expert": 1})
  c.rules = [
      ("batch", ("data", "fsdp", "expert")),
      ("vocab", "model"),
      ("embed", "fsdp"),
      ("mlp", "model"),
      ("heads", "model"),
      ("kv_heads", "model"),  # grouped-query attention's key/value heads
      ("head_dim", None),
      ("tasks", None),
      ("expert", "expert"),
      ("skills", None),
      ("rank", None),
  ]
  return c


NO_DECAY = (r"(^|/)ln[^/]*/(scale|bias)$",
            r"(^|/)(?!gen_)(b_in|b_out|b[qkvo]|\w+_b\d?|(\w+_)?bias)$")


# Keys whose absence from an older run folder's config.json means something other than
# today's default: the behaviour those runs trained with (``checkpoint.load_config``).
# Before ``optim.no_decay`` existed every trainable leaf decayed.
OLD_RUN_DEFAULTS = {("optim", "no_decay"): []}


def optimizer_decay_args(name: str) -> tuple[str, str] | None:
  """How ``optax.<name>`` takes a masked decoupled weight decay.

  Returns:
    (rate keyword, mask keyword), e.g. ("weight_decay", "mask") for adamw and lion,
    ("weight_decay_rate", "weight_decay_mask") for adafactor; None for an optimizer
    that does not decay (adam, sgd) or cannot mask its decay.
  """
  if name == "adafactor":
    return "weight_decay_rate", "weight_decay_mask"
  sig = inspect.signature(getattr(optax, name)).parameters
  return ("weight_decay", "mask") if {"weight_decay", "mask"} <= set(sig) else None


def default_optim_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.name = "adamw"
  c.learning_rate = 1e-3
  c.schedule = "warmup_cosine"
  c.warmup_steps = 50
  c.end_lr_factor = 0.1
  c.weight_decay = 0.01
  c.b1 = 0.9
  c.b2 = 0.98
  c.grad_clip = 1.0  # global norm; 0 disables
  # Regexes over parameter paths ("blocks/0/ffn/w_in"): frozen parameters get no update
  # (parameter-efficient mode: freeze the backbone, train the modules).
  c.frozen = []
  # Regexes of the parameters weight decay skips: LayerNorm gains and shifts (ln_*),
  # and biases (bias, b_in/b_out, bq..bo, per_task_bias, down_b, proj_b1, ...), but not
  # the HyperFormer generators (gen_*), which are weight matrices.
  c.no_decay = list(NO_DECAY)
  # [regex, factor] pairs: learning-rate multipliers (e.g. Polytropon's two-speed logits).
  c.lr_multipliers = []
  # With model.pretrained: freeze every imported tensor (the parameter-efficient mode)
  # except the paths matching a regex of unfreeze_pretrained (e.g. ["ln_"]).
  c.freeze_pretrained = False
  c.unfreeze_pretrained = []
  return c


def default_train_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.steps = 1000
  c.batch_size = 64
  # Gradient accumulation: the step scans over this many micro-batches of
  # batch_size / microbatches rows and updates once with the whole batch's gradient
  # (per-task gradients kept for surgery methods; modular/train/microbatch.py).
  c.microbatches = 1
  c.seed = 0
  c.log_every = 50
  c.eval_every = 250
  c.checkpoint_every = 250
  c.keep_checkpoints = 3
  # With data.val_share > 0: the metric (mean over tasks, on validation) that picks the
  # checkpoint measured on test and kept ("accuracy", "seq_accuracy" or "loss";
  # modular/train/selection.py).
  c.select_metric = "accuracy"
  # Save the initial parameters as step 0 and never delete them: the untrained control
  # that modular-analyze reports beside the trained model.
  c.keep_step0 = True
  # A trained run's workdir: a fresh run starts from its parameters wherever path and
  # shape match (e.g. train adapters on a trained backbone with optim.frozen).
  c.init_from = ""
  c.async_checkpoint = True
  c.progress = True
  # Block on every step's result. Needed on simulated CPU devices (jax-ml/jax#25861:
  # back-to-back sharded steps can deadlock in CPU collectives); "auto" = on for CPU.
  c.block_every_step = "auto"
  # A step whose loss, gradient norm or new parameters are NaN/inf: "halt" stops the run
  # with an error naming the step (nothing non-finite is saved); "skip" drops that update
  # inside the compiled step and halts after max_consecutive_skips in a row.
  c.on_nonfinite = "halt"
  c.max_consecutive_skips = 10
  return c


def get_base_config() -> ml_collections.ConfigDict:
  """The full default config: every section with its defaults."""
  c = ml_collections.ConfigDict()
  c.name = "default"
  c.data = data_lib.default_data_config()
  c.model = models_lib.default_model_config()
  c.mtl = mtl_lib.default_mtl_config()
  c.optim = default_optim_config()
  c.train = default_train_config()
  c.mesh = default_mesh_config()
  c.lock()  # a typo in a config file (c.model.d_modle = 16) fails where it is written
  c.mtl.options.unlock()  # free-form: the method's class checks its options' names
  return c


def _require(cond: bool, key: str, msg: str) -> None:
  if not cond:
    raise ValueError(f"config.{key}: {msg}")


def fill_derived(cfg: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Fills model sizes that come from the data (vocab, sequence length, task count).

  Text tasks (``data.wordnet``) take their tokenizer from ``model.pretrained`` when
  ``data.tokenizer`` is empty, and give the head its per-task class counts.
  """
  with cfg.unlocked():
    if data_lib.is_classification(cfg.data):
      cfg.data.tokenizer = cfg.data.tokenizer or cfg.model.get("pretrained", "")
      cfg.model.head = ml_collections.ConfigDict(
          dict(cfg.model.head.to_dict(), num_classes=data_lib.num_classes(cfg.data)))
    cfg.model.vocab_size = data_lib.vocab_size(cfg.data)
    cfg.model.seq_len = cfg.data.seq_len
    cfg.model.num_tasks = len(data_lib.task_names(cfg.data))
    if "num_tasks" in cfg.mtl:
      cfg.mtl.num_tasks = cfg.model.num_tasks
  if cfg.model.get("pretrained", ""):  # the checkpoint fixes the sizes and the vocabulary
    from modular import checkpoints  # pylint: disable=g-import-not-at-top
    checkpoints.fill_model_config(cfg.model)
  return cfg


def mesh_shape(cfg: ml_collections.ConfigDict, num_devices: int) -> dict[str, int]:
  """Resolves -1 in the mesh shape and checks that it covers the devices."""
  shape = dict(cfg.mesh.shape.items())
  for k, v in shape.items():
    _require(isinstance(v, int) and (v == -1 or v >= 1), f"mesh.shape.{k}",
             f"must be a positive int or -1, got {v!r}")
  free = [k for k, v in shape.items() if v == -1]
  _require(len(free) <= 1, "mesh.shape", f"at most one axis may be -1, got {free}")
  fixed = math.prod(v for v in shape.values() if v != -1)
  if free:
    _require(num_devices % fixed == 0, f"mesh.shape.{free[0]}",
             f"the fixed axes ({fixed} devices) do not divide the {num_devices} devices")
    shape[free[0]] = num_devices // fixed
  _require(math.prod(shape.values()) == num_devices, "mesh.shape",
           f"{shape} covers {math.prod(shape.values())} devices, but {num_devices} are present")
  return shape


def validate(cfg: ml_collections.ConfigDict, num_devices: int | None = None) -> None:
  """Checks the config before anything is built; raises ValueError naming the key.

  Args:
    cfg: the full config.
    num_devices: the number of devices the mesh must cover (None: skip mesh checks).
  """
  base = get_base_config()
  for section in ("data", "model", "mtl", "optim", "train", "mesh"):
    _require(section in cfg, section, "missing section")
  check_known_keys(cfg, base)
  check_finite(cfg)
  _check_types(cfg.optim, base.optim, "optim")
  _check_types(cfg.train, base.train, "train")
  _check_types(cfg.model, base.model, "model")
  data_lib.validate_data_config(cfg.data)
  try:
    mtl_lib.validate_mtl_config(cfg.mtl)
  except ValueError as e:  # one format for every section: config.mtl.<key>: ...
    raise ValueError(f"config.{e}" if str(e).startswith("mtl.") else str(e)) from None
  m = cfg.model
  for key in ("d_model", "num_heads", "num_layers", "d_ff"):
    _require(isinstance(m[key], int) and m[key] > 0, f"model.{key}",
             f"must be a positive int, got {m[key]!r}")
  _require(m.d_model % m.num_heads == 0, "model.num_heads",
           f"d_model={m.d_model} is not divisible by num_heads={m.num_heads}")
  acts = models_lib.slots.ACTIVATIONS
  _require(m.activation in acts, "model.activation",
           f"unknown {m.activation!r}; known: {', '.join(acts)}")
  _require(m.get("arch", "decoder") in models_lib.ARCHS, "model.arch",
           f"unknown {m.get('arch')!r}; known: {', '.join(models_lib.ARCHS)}")
  _require(m.get("remat", "none") in models_lib.remat.NAMES, "model.remat",
           f"unknown {m.get('remat')!r}; known: {', '.join(models_lib.remat.NAMES)}")
  _require(m.get("dtype", "float32") in models_lib.precision.NAMES, "model.dtype",
           f"unknown {m.get('dtype')!r}; known: {', '.join(models_lib.precision.NAMES)}")
  _require(0.0 <= m.dropout < 1.0, "model.dropout", f"must be in [0, 1), got {m.dropout}")
  for slot, registry in models_lib.slots.SLOT_REGISTRIES.items():
    _require("name" in m[slot], f"model.{slot}.name", "missing")
    _require(m[slot].name in registry, f"model.{slot}.name",
             f"unknown {m[slot].name!r}; known: {', '.join(registry.names())}")
  _validate_optim(cfg.optim)
  t = cfg.train
  for key in ("steps", "batch_size", "log_every", "eval_every", "checkpoint_every",
              "keep_checkpoints"):
    _require(isinstance(t[key], int) and t[key] > 0, f"train.{key}",
             f"must be a positive int, got {t[key]!r}")
  _require(t.get("select_metric", "accuracy") in ("accuracy", "seq_accuracy", "loss"),
           "train.select_metric",
           f"unknown {t.get('select_metric')!r}; known: accuracy, seq_accuracy, loss")
  _require(isinstance(t.microbatches, int) and t.microbatches >= 1, "train.microbatches",
           f"must be a positive int, got {t.microbatches!r}")
  _require(t.batch_size % t.microbatches == 0, "train.microbatches",
           f"batch_size {t.batch_size} is not divisible by microbatches {t.microbatches}")
  _require(not (cfg.mtl.get("gram", "materialize") == "streaming" and t.microbatches > 1
               and mtl_lib.METHODS.get(cfg.mtl.method).needs_task_grads), "mtl.gram",
           f"'streaming' with train.microbatches={t.microbatches} is not supported (the Gram "
           "matrix of the whole batch needs the cross-micro-batch terms): set "
           "train.microbatches=1 or mtl.gram='materialize'")
  _require(t.block_every_step in ("auto", True, False), "train.block_every_step",
           f"must be 'auto', True or False, got {t.block_every_step!r}")
  _require(t.on_nonfinite in NONFINITE_ACTIONS, "train.on_nonfinite",
           f"unknown {t.on_nonfinite!r}; known: {', '.join(NONFINITE_ACTIONS)}")
  _require(t.max_consecutive_skips >= 1, "train.max_consecutive_skips",
           f"must be a positive int, got {t.max_consecutive_skips!r}")
  known_axes = {"data", "fsdp", "model", "expert"}
  for k in cfg.mesh.shape:
    _require(k in known_axes, f"mesh.shape.{k}", f"unknown mesh axis; known: {sorted(known_axes)}")
  for i, rule in enumerate(cfg.mesh.rules):
    _require(len(rule) == 2 and isinstance(rule[0], str), f"mesh.rules[{i}]",
             f"must be a (logical_axis, mesh_axes) pair, got {rule!r}")
    targets = rule[1] if isinstance(rule[1], (tuple, list)) else [rule[1]]
    for a in targets:
      _require(a is None or a in cfg.mesh.shape, f"mesh.rules[{i}]",
               f"mesh axis {a!r} is not in mesh.shape {list(cfg.mesh.shape)}")
  if num_devices is not None:
    shape = mesh_shape(cfg, num_devices)
    batch_axes = dict(cfg.mesh.rules).get("batch")
    batch_axes = batch_axes if isinstance(batch_axes, (tuple, list)) else [batch_axes]
    shards = math.prod(shape[a] for a in batch_axes if a is not None)
    _require(t.batch_size % shards == 0, "train.batch_size",
             f"{t.batch_size} is not divisible by the {shards} batch shards of mesh {shape}")


def _validate_optim(o: ml_collections.ConfigDict) -> None:
  """Names, ranges and regexes of the ``optim`` section (values are already finite)."""
  factory = getattr(optax, o.name, None) if isinstance(o.name, str) else None
  _require(callable(factory) and "learning_rate" in inspect.signature(factory).parameters,
           "optim.name", f"unknown {o.name!r}: not an optax optimizer; e.g. {OPTIMIZERS}")
  _require(o.schedule in SCHEDULES, "optim.schedule",
           f"unknown {o.schedule!r}; known: {SCHEDULES}")
  _require(o.learning_rate > 0, "optim.learning_rate", f"must be > 0, got {o.learning_rate}")
  _require(o.warmup_steps >= 0, "optim.warmup_steps", f"must be >= 0, got {o.warmup_steps}")
  for key in ("end_lr_factor", "weight_decay", "grad_clip"):
    _require(o[key] >= 0, f"optim.{key}", f"must be >= 0, got {o[key]}")
  for key in ("b1", "b2"):
    _require(0 <= o[key] < 1, f"optim.{key}", f"must be in [0, 1), got {o[key]}")
  _require(o.weight_decay == 0 or optimizer_decay_args(o.name) is not None,
           "optim.weight_decay", f"{o.weight_decay} but optax.{o.name} takes no masked "
           "weight decay; set optim.weight_decay=0 or use adamw, lion or adafactor")
  for key in ("frozen", "no_decay"):
    for i, pattern in enumerate(o[key]):
      _check_regex(pattern, f"optim.{key}[{i}]")
  for i, pair in enumerate(o.lr_multipliers):
    _require(isinstance(pair, (list, tuple)) and len(pair) == 2 and isinstance(pair[0], str),
             f"optim.lr_multipliers[{i}]", f"must be a [regex, factor] pair, got {pair!r}")
    _check_regex(pair[0], f"optim.lr_multipliers[{i}]")
    _require(isinstance(pair[1], (int, float)) and not isinstance(pair[1], bool)
             and pair[1] >= 0, f"optim.lr_multipliers[{i}]",
             f"factor must be a number >= 0, got {pair[1]!r}")


def _check_regex(pattern: Any, key: str) -> None:
  _require(isinstance(pattern, str), key, f"must be a regex string, got {pattern!r}")
  try:
    re.compile(pattern)
  except re.error as e:
    raise ValueError(f"config.{key}: bad regex {pattern!r} ({e})") from None


def check_known_keys(cfg: Any, base: Any, prefix: str = "") -> None:
  """Every key of ``cfg`` exists in ``base``, recursively; raises naming the first typo.

  A sub-dict is compared key by key when its default is a non-empty dict without a
  ``name``; a slot (``{"name": ..., options}``, whose options the filler checks) and an
  empty default (a free-form table such as ``mtl.options``) are not.

  Raises:
    ValueError: ``config.<path>: unknown key; known: ...``.
  """
  for key in cfg:
    path = f"{prefix}{key}"
    _require(key in base, path, f"unknown key; known: {', '.join(sorted(base))}")
    sub, default = cfg[key], base[key]
    if (isinstance(sub, (dict, ml_collections.ConfigDict))
        and isinstance(default, (dict, ml_collections.ConfigDict))
        and len(default) and "name" not in default):
      check_known_keys(sub, default, path + ".")


def check_finite(value: Any, path: str = "") -> None:
  """Every float anywhere in ``value`` (dicts, lists, tuples) is finite.

  Raises:
    ValueError: ``config.<path>: must be finite, got nan``.
  """
  if isinstance(value, float):
    _require(math.isfinite(value), path, f"must be finite, got {value}")
  elif isinstance(value, (dict, ml_collections.ConfigDict)):
    for k in value:
      check_finite(value[k], f"{path}.{k}" if path else str(k))
  elif isinstance(value, (list, tuple)):
    for i, v in enumerate(value):
      check_finite(v, f"{path}[{i}]")


def _check_types(cfg: ml_collections.ConfigDict, base: ml_collections.ConfigDict,
                 prefix: str) -> None:
  """Unknown keys and wrong types against the defaults (int may stand for float)."""
  for key in cfg:
    _require(key in base, f"{prefix}.{key}", f"unknown key; known: {', '.join(sorted(base))}")
    want: Any = type(base[key])
    got = cfg[key]
    if want is float and isinstance(got, int) and not isinstance(got, bool):
      continue
    if base[key] is None or want in (list, tuple):
      continue
    if want is str and key == "block_every_step":
      continue
    _require(isinstance(got, want) and not (want is int and isinstance(got, bool)),
             f"{prefix}.{key}", f"expected {want.__name__}, got {type(got).__name__} {got!r}")
