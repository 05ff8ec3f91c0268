"""Which parameter-efficient module and which multi-task method help which WordNet task.

  modular-sweep --experiment experiments/wordnet_peft.py --workdir runs/wordnet_peft
  modular-sweep --experiment experiments/wordnet_peft.py:ci --workdir /tmp/wordnet_ci
  python experiments/wordnet_peft.py runs/wordnet_peft      # the results table
  python experiments/wordnet_peft.py /tmp/wordnet_ci ci     # that of the :ci sweep

MiniLM (all-MiniLM-L6-v2, imported from its wheel) on the four WordNet tasks
(``modular.data.builders.wordnet``: definition -> supersense, definition -> part of
speech, (lemma, example) -> supersense, word pair -> relation), mean-pooled per-task
classification heads. Six ways to adapt the model:

  full         full fine-tuning (every imported tensor trains, at 0.05x the heads' rate)
  lora         per-task LoRA (rank 8) on both FFN linears; backbone frozen
  adapters     per-task bottleneck adapters (reduction 8) after attention and FFN
  hyperformer  HyperFormer++: adapters generated per task and layer by a shared
               hypernetwork; backbone frozen except its LayerNorms
  polytropon   Polytropon: 8 LoRA skills on each FFN, a learned task x skill allocation
  task_moe     task-level MoE upcycled from the pretrained FFN: 4 copies of each
               layer's FFN as experts, a learned top-1 task route; attention frozen

times two multi-task methods (``mtl.method``): the plain mean of the task losses and
PCGrad, plus four single-task baselines (full fine-tuning on one task) for the Δm
column (``get_baselines``). The heads always train; the learning rate is 1e-3 for
whatever trains (the full fine-tuning backbone and the task-MoE experts at 0.05x).

Budget for a 2-core CPU (measured in the README): length 32, batch 16, 300 steps
(4800 examples: ~1200 per task in a multi-task run, 1.6 epochs of the 3000 training
examples in a single-task one), one seed, 256 held-out examples per task. A run trains
for 2 to 4 minutes with the mean and 5 to 15 with PCGrad (one backward pass per task).
``:ci`` shrinks every run to 4 steps on length 16 and 32 held-out examples per task.

``trainable_parameters(cfg)`` counts what a run trains; ``python
experiments/wordnet_peft.py runs/wordnet_peft`` prints the README's table (per-task
accuracy, trainable parameters, Δm on accuracy over the single-task baselines) and
``python experiments/wordnet_peft.py /tmp/wordnet_ci ci`` that of a ``--arg ci``
sweep (the argument is the sweep's). When no run of the folder counts as finished
for the argument given, a line below the table says which argument its run folders
were made with, if one of ``ARGS`` made them.

References:
  Hu et al. 2022 (LoRA); Houlsby et al. 2019 (adapters); Karimi Mahabadi et al. 2021
  (HyperFormer++); Ponti et al. 2022 (Polytropon); Komatsuzaki et al. 2023, "Sparse
  Upcycling" (MoE experts from a dense checkpoint); Yu et al. 2020 (PCGrad);
  Maninis et al. 2019 (Δm).
"""

from __future__ import annotations

import re

from modular.config import get_base_config

CHECKPOINT = "all-MiniLM-L6-v2"
TASKS = ["def_pos", "def_supersense", "example_supersense", "relation"]
MTL_METHODS = ("mean", "pcgrad")
BACKBONE_LR = 0.05  # full fine-tuning and upcycled experts: 5e-5 with the base 1e-3
IMPORTED = r"^(embed|pos_embed|type_embed|ln_embed/.*|blocks/\d+/.*)$"
ARGS = (None, "ci")  # the arguments get_config knows


def methods() -> dict[str, dict]:
  """Each adaptation method's config overrides (``{"config.<key>": value}``)."""
  return {
      "full": {"config.optim.lr_multipliers": [[IMPORTED, BACKBONE_LR]]},
      "lora": {
          "config.model.ffn": {"name": "lora", "rank": 8, "alpha": 16.0, "per_task": True},
          "config.optim.freeze_pretrained": True},
      "adapters": {
          "config.model.adapter_attn": {"name": "bottleneck", "reduction_factor": 8,
                                        "per_task": True},
          "config.model.adapter_ffn": {"name": "bottleneck", "reduction_factor": 8,
                                       "per_task": True},
          "config.optim.freeze_pretrained": True},
      "hyperformer": {
          "config.model.adapter_attn": {"name": "hyperformer", "task_embed_dim": 32,
                                        "hidden_dim": 64, "proj_dim": 16,
                                        "reduction_factor": 8},
          "config.model.adapter_ffn": {"name": "hyperformer"},
          "config.optim.freeze_pretrained": True,
          "config.optim.unfreeze_pretrained": ["ln_"]},
      "polytropon": {
          "config.model.ffn": {"name": "polytropon", "num_skills": 8, "rank": 8,
                               "alpha": 8.0, "heads": 1, "share_allocation": True,
                               "sparsity_weight": 0.001},
          "config.optim.freeze_pretrained": True,
          "config.optim.lr_multipliers": [["allocation/logits$", 10.0]]},
      "task_moe": {
          "config.model.ffn": {"name": "task_moe", "num_experts": 4, "top_k": 1,
                               "expert_d_ff": 1536, "gate": "softmax",
                               "straight_through": True, "temperature": 1.0,
                               "route_mode": "learned"},
          "config.optim.freeze_pretrained": True,
          "config.optim.unfreeze_pretrained": ["/ffn/"],
          "config.optim.lr_multipliers": [[r"/ffn/(w_in|b_in|w_out|b_out)$", BACKBONE_LR],
                                          ["router/(task_embed|kernel)$", 10.0]]},
  }


def get_config(arg=None):
  """MiniLM on the four WordNet tasks; ``arg`` "ci" shrinks it for tests."""
  if arg not in ARGS + ("",):
    raise ValueError(f"experiments/wordnet_peft.py: unknown argument {arg!r}; known: ci")
  c = get_base_config()
  c.name = "wordnet_peft"
  c.data.tasks = []
  c.data.wordnet = list(TASKS)
  c.data.tokenizer = CHECKPOINT
  c.data.seq_len = 32
  c.data.num_eval = 256
  c.data.sampling = "uniform"
  c.model.arch = "encoder"
  c.model.pretrained = CHECKPOINT
  c.model.dropout = 0.1
  c.model.head = {"name": "classify", "pooling": "mean"}  # num_classes: from the data
  c.optim.learning_rate = 1e-3
  c.optim.warmup_steps = 30
  c.optim.weight_decay = 0.01
  c.train.steps = 300
  c.train.batch_size = 16
  c.train.log_every = 50
  c.train.eval_every = 300
  c.train.checkpoint_every = 100
  c.train.keep_checkpoints = 1
  c.train.progress = False
  if arg == "ci":
    c.data.seq_len = 16
    c.data.num_eval = 32
    c.optim.warmup_steps = 1
    c.train.steps = 4
    c.train.log_every = 2
    c.train.eval_every = 4
    c.train.checkpoint_every = 4
  return c


def get_hyper(h):
  """Every method x {mean, pcgrad}, each point named "<method>,<mtl method>".

  The cheaper mean runs come first, so a partial table already compares the methods.
  """
  return [h.named(f"{name},{mtl}", {**overrides, "config.mtl.method": mtl})
          for mtl in MTL_METHODS for name, overrides in methods().items()]


def get_baselines(h):
  """Full fine-tuning on one task at a time (the reference of Δm)."""
  return [h.named(task, {**methods()["full"], "config.data.wordnet": [task]})
          for task in TASKS]


def trainable_parameters(cfg) -> int:
  """The number of parameters a run of ``cfg`` trains.

  Everything but ``optim.frozen`` and, with ``optim.freeze_pretrained``, the imported
  tensors (``checkpoints.frozen_patterns``, as the loop freezes them). Builds the model
  abstractly (``nnx.eval_shape``), so it allocates and imports nothing.
  """
  from flax import nnx  # pylint: disable=g-import-not-at-top
  from modular import checkpoints  # pylint: disable=g-import-not-at-top
  from modular import config as config_lib  # pylint: disable=g-import-not-at-top
  from modular import models  # pylint: disable=g-import-not-at-top
  from modular.paths import flat_paths  # pylint: disable=g-import-not-at-top
  cfg = config_lib.fill_derived(cfg)
  model = nnx.eval_shape(lambda: models.build_model(cfg.model))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  frozen = list(cfg.optim.frozen)
  if cfg.optim.freeze_pretrained:
    frozen += checkpoints.frozen_patterns(params, cfg.model.num_layers,
                                          unfreeze=list(cfg.optim.unfreeze_pretrained),
                                          pretrained=cfg.model.pretrained)
  return sum(int(v.size) for path, v in flat_paths(params).items()
             if not any(re.search(p, path) for p in frozen))


def table(workdir: str, arg: str | None = None) -> str:
  """The README's table from a sweep folder (finished runs; the others stay empty).

  One row per point and baseline: per-task held-out accuracy (the run's
  ``summary.json``), their mean, the trainable parameter count and Δm over the
  single-task baselines on accuracy (percent, ``modular.experiments.delta_m``; the
  sweep's own ``delta_m`` column also averages the loss). A run counts once it reached
  its last step, whichever process trained it.

  Args:
    workdir: the ``modular-sweep`` folder of this experiment.
    arg: the experiment argument the sweep was run with (``--arg ci``: "ci").

  Returns:
    A Markdown table; when no row is finished but run folders exist, one more line
    below it says what made them (``made_with``).

  Raises:
    ValueError: an argument not in ``ARGS``.
  """
  import os  # pylint: disable=g-import-not-at-top
  from modular.experiments import delta_m, expand, expand_baselines  # pylint: disable=g-import-not-at-top
  from modular.experiments.results import finished_summary  # pylint: disable=g-import-not-at-top
  points, baselines = expand(__file__, arg), expand_baselines(__file__, arg)
  acc = {}
  for p in points + baselines:
    summary = finished_summary(os.path.join(workdir, p.name), p.cfg)
    acc[p.name] = summary["eval"]["accuracy"] if summary else None
  single = {"accuracy": {t: v for p in baselines if acc[p.name] for t, v in acc[p.name].items()}}
  lines = ["| run | " + " | ".join(TASKS) + " | mean | trainable params | Δm (acc, %) |",
           "|---" * (len(TASKS) + 4) + "|"]
  for p in points + baselines:
    got = acc[p.name] or {}
    cells = [f"{got[t]:.3f}" if t in got else "" for t in TASKS]
    is_point = p in points
    mean = f"{sum(got.values()) / len(got):.3f}" if got and is_point else ""
    dm = ""
    if got and is_point and single["accuracy"]:
      dm = f"{delta_m({'accuracy': got}, single, ('accuracy',)):+.1f}"
    name = p.name if acc[p.name] else f"{p.name} (not run)"
    lines.append(f"| {name} | " + " | ".join(cells) +
                 f" | {mean} | {trainable_parameters(p.cfg):,} | {dm} |")
  if not any(acc.values()):
    note = made_with(workdir, arg)
    if note:
      lines += ["", note]
  return "\n".join(lines)


def made_with(workdir: str, arg: str | None = None) -> str | None:
  """One line on which argument made the run folders of ``workdir``.

  The first run folder with a ``config.json`` is compared with the same point under
  each of ``ARGS`` as a resume would compare it (``resume.differences``, derived
  sizes filled).

  Args:
    workdir: the sweep folder.
    arg: the argument the table was asked for.

  Returns:
    None if no run folder of this experiment is there; else a line naming the
    argument that made the folders (and the command that prints their table), or
    saying that ``arg`` made them but none reached its last step, or that another
    config (another experiment, or ``--config.x`` overrides) made them.
  """
  import os  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from modular import config as config_lib  # pylint: disable=g-import-not-at-top
  from modular.experiments import expand, expand_baselines  # pylint: disable=g-import-not-at-top
  from modular.train import checkpoint, resume  # pylint: disable=g-import-not-at-top
  names = [p.name for p in expand(__file__, arg) + expand_baselines(__file__, arg)]
  found = [n for n in names if os.path.exists(os.path.join(workdir, n, "config.json"))]
  if not found:
    return None
  saved = checkpoint.load_config(os.path.join(workdir, found[0]))
  for other in ARGS:
    point = {p.name: p for p in expand(__file__, other) + expand_baselines(__file__, other)
             }.get(found[0])
    if point is None:
      continue
    cfg = config_lib.fill_derived(ml_collections.ConfigDict(point.cfg.to_dict()))
    if resume.differences(saved, cfg):
      continue
    if other == arg:
      return (f"note: {len(found)} run folder(s) in {workdir} were made with this argument, "
              f"but none reached its last step ({point.cfg.train.steps}) yet")
    command = " ".join(["python experiments/wordnet_peft.py", workdir] + [other or ""]).strip()
    return (f"note: the run folders in {workdir} were made with "
            f"{'no argument' if other is None else f'the argument {other!r}'}: {command}")
  known = " or ".join("no argument" if a is None else repr(a) for a in ARGS)
  return (f"note: the run folders in {workdir} were made by another config than this "
          f"experiment's with {known} (see {os.path.join(workdir, found[0], 'config.json')})")


if __name__ == "__main__":
  import sys  # pylint: disable=g-import-not-at-top
  try:
    print(table(sys.argv[1] if len(sys.argv) > 1 else "runs/wordnet_peft",
                sys.argv[2] if len(sys.argv) > 2 else None))
  except ValueError as e:  # an unknown argument: one line, as modular-sweep says it
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2) from None
