"""Which parameter-efficient module and which multi-task method help which WordNet task.

  modular-sweep --experiment experiments/wordnet_peft.py --workdir runs/wordnet_peft
  modular-sweep --experiment experiments/wordnet_peft.py:ci --workdir /tmp/wordnet_ci
  python experiments/wordnet_peft.py runs/wordnet_peft      # the protocol table
  python experiments/wordnet_peft.py /tmp/wordnet_ci ci     # that of the :ci sweep

MiniLM (all-MiniLM-L6-v2, imported from its wheel) on the four WordNet tasks
(``modular.data.builders.wordnet``: definition -> supersense, definition -> part of
speech, (lemma, example) -> supersense, word pair -> relation), mean-pooled per-task
classification heads. Ways to adapt the model (``methods()``):

  full         full fine-tuning (every imported tensor trains, at 0.05x the heads' rate)
  lora         per-task LoRA (rank 8) on both FFN linears; backbone frozen
  adapters     per-task bottleneck adapters (reduction 8) after attention and FFN
  hyperformer  HyperFormer++: adapters generated per task and layer by a shared
               hypernetwork; backbone frozen except its LayerNorms (not an arm of the
               protocol; its points can be added to ``MEAN_ARMS``)
  polytropon   Polytropon: 8 LoRA skills on each FFN, a learned task x skill allocation
  task_moe     task-level MoE upcycled from the pretrained FFN: 4 copies of each
               layer's FFN as experts, a learned top-1 task route; attention frozen

The protocol (``get_hyper``; every arm x ``SEEDS``, seeds paired by value):

  compute-matched  every run trains ``train.steps`` steps of batch 16 (a task sees about a
                   quarter of its single-task baseline's examples): ``MEAN_ARMS`` x mean,
                   and the surgery methods ``SURGERY`` (PCGrad, CAGrad) on the arms whose
                   trained parameters are shared by the tasks (``SHARED``: full, Polytropon,
                   task MoE; with per-task LoRA or adapters and per-task heads PCGrad is
                   the mean)
  data-matched     ``DATA_MATCHED`` x mean for T x the steps ("<arm>,mean,data-matched"):
                   with uniform sampling each task sees as many examples as its baseline
  baselines        full fine-tuning on one task (``get_baselines``), the reference of Δm
                   for both budgets

Model selection: 10% of the train synsets are carved into a validation split
(``data.val_share``, ``modular.data.splits``; no synset in both), evaluated every
``train.eval_every`` steps; a run keeps only its validation-best checkpoint and measures
all 500 test examples per task once with it (``predictions.npz``). The table
(``table``, ``modular.experiments.protocol.seed_table``) reports per point the test
accuracy over seeds with 95% t-intervals, the test-set bootstrap, Δm with its interval,
and McNemar's exact test against ``REFERENCE`` (full fine-tuning with the mean) within
each seed, combined over the seeds by Fisher's method.

``:ci`` shrinks the protocol to two tasks, two seeds, the arms full x {mean, PCGrad} and
LoRA x mean data-matched (10 runs with the baselines), 4 steps at length 16 (validation on
2% of the train synsets at steps 2 and 4, test on 64 examples per task).

References:
  Hu et al. 2022 (LoRA); Houlsby et al. 2019 (adapters); Karimi Mahabadi et al. 2021
  (HyperFormer++); Ponti et al. 2022 (Polytropon); Komatsuzaki et al. 2023, "Sparse
  Upcycling" (MoE experts from a dense checkpoint); Yu et al. 2020 (PCGrad); Liu et al.
  2021 (CAGrad); Maninis et al. 2019 (Δm); McNemar 1947; Fisher 1932.
"""

from __future__ import annotations

import re

from modular.config import get_base_config

CHECKPOINT = "all-MiniLM-L6-v2"
TASKS = ["def_pos", "def_supersense", "example_supersense", "relation"]
CI_TASKS = ["def_pos", "relation"]
SEEDS = (0, 1, 2)
CI_SEEDS = (0, 1)
MEAN_ARMS = ("full", "lora", "adapters", "polytropon", "task_moe")
SURGERY = ("pcgrad", "cagrad")
SHARED = ("full", "polytropon", "task_moe")  # trained parameters shared by the tasks
DATA_MATCHED = ("full", "lora")
REFERENCE = "full,mean"  # the arm every other is tested against (results.md too)
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
  c.data.num_eval = 500  # the whole test split, measured once per run
  c.data.val_share = 0.1
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
  c.train.eval_every = 75  # validation at 75, 150, 225, 300
  c.train.checkpoint_every = 75
  c.train.keep_checkpoints = 1
  c.train.keep_step0 = False  # only the validation-best checkpoint stays
  c.train.progress = False
  if arg == "ci":
    c.data.wordnet = list(CI_TASKS)
    c.data.seq_len = 16
    c.data.val_share = 0.02  # about 60 validation examples per task
    c.data.num_eval = 64
    c.optim.warmup_steps = 1
    c.train.steps = 4
    c.train.log_every = 2
    c.train.eval_every = 2
    c.train.checkpoint_every = 2
  return c


def arms(arg=None) -> list[tuple[str, dict]]:
  """``(name, overrides)`` of every arm of the protocol, cheapest first (docstring)."""
  cfg = get_config(arg)
  t = len(cfg.data.wordnet)
  m = methods()
  if arg == "ci":
    out = [("full,mean", {**m["full"], "config.mtl.method": "mean"}),
           ("full,pcgrad", {**m["full"], "config.mtl.method": "pcgrad"})]
    data_matched = ("lora",)
  else:
    out = [(f"{a},mean", {**m[a], "config.mtl.method": "mean"}) for a in MEAN_ARMS]
    out += [(f"{a},{s}", {**m[a], "config.mtl.method": s}) for s in SURGERY for a in SHARED]
    data_matched = DATA_MATCHED
  for a in data_matched:  # T x the steps (and cadences): each task sees its baseline's data
    out.append((f"{a},mean,data-matched", {
        **m[a], "config.mtl.method": "mean", "config.train.steps": t * cfg.train.steps,
        "config.train.eval_every": t * cfg.train.eval_every,
        "config.train.checkpoint_every": t * cfg.train.checkpoint_every}))
  return out


def get_hyper(h, arg=None):
  """Every arm x seed, each point named "<arm>,seed=<s>"; seed 0 of every arm first."""
  seeds = CI_SEEDS if arg == "ci" else SEEDS
  return [p for s in seeds
          for p in h.seeds([h.named(name, o) for name, o in arms(arg)], [s])]


def get_baselines(h, arg=None):
  """Full fine-tuning on one task at a time x seed (the reference of Δm)."""
  seeds = CI_SEEDS if arg == "ci" else SEEDS
  tasks = get_config(arg).data.wordnet
  return [p for s in seeds for p in h.seeds(
      [h.named(task, {**methods()["full"], "config.data.wordnet": [task]}) for task in tasks],
      [s])]


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
  """The protocol table from a sweep folder (finished runs; the others count as missing).

  One row per arm and baseline, its seeds aggregated (``protocol.seed_table``: test
  accuracy over seeds with 95% t-intervals, the test-set bootstrap, Δm on accuracy with
  its interval, McNemar's exact test against ``REFERENCE`` combined over seeds by
  Fisher's method), with the trainable parameter count and the mean wall time of a run
  (training steps / ``steps_per_s`` + compile, from ``summary.json``). A run counts once
  it reached its last step, whichever process trained it.

  Args:
    workdir: the ``modular-sweep`` folder of this experiment.
    arg: the experiment argument the sweep was run with (``--arg ci``: "ci").

  Returns:
    A Markdown table and its notes; when no run is finished but run folders exist,
    one more line says what made them (``made_with``).

  Raises:
    ValueError: an argument not in ``ARGS``.
  """
  import json  # pylint: disable=g-import-not-at-top
  import os  # pylint: disable=g-import-not-at-top
  from modular.experiments import expand, expand_baselines  # pylint: disable=g-import-not-at-top
  from modular.experiments import protocol  # pylint: disable=g-import-not-at-top
  from modular.experiments.results import finished_summary  # pylint: disable=g-import-not-at-top
  points, baselines = expand(__file__, arg), expand_baselines(__file__, arg)
  rows, walls, cfgs = [], {}, {}
  base_names = {p.name for p in baselines}
  for p in points + baselines:
    summary = finished_summary(os.path.join(workdir, p.name), p.cfg)
    rows.append({"name": p.name, "group": p.group, "seed": p.seed, "baseline": p.name in base_names,
                 "status": "finished" if summary else "missing",
                 "eval": summary["eval"] if summary else {}})
    cfgs.setdefault(p.group, p.cfg)
    if summary and summary.get("steps_per_s"):
      walls.setdefault(p.group, []).append(
          (p.cfg.train.steps / summary["steps_per_s"] + (summary.get("compile_s") or 0)) / 60)

  counted: dict[str, int] = {}  # arms that differ only in method or steps count once

  def extra(group: str) -> dict[str, str]:
    c = cfgs[group]
    key = json.dumps([c.model.to_dict(), c.optim.to_dict(), list(c.data.wordnet)],
                     sort_keys=True, default=str)
    if key not in counted:
      counted[key] = trainable_parameters(c)
    w = walls.get(group)
    return {"trainable params": f"{counted[key]:,}",
            "min/run": f"{sum(w) / len(w):.1f}" if w else ""}

  text = protocol.seed_table(workdir, rows, get_config(arg).data.wordnet, REFERENCE, extra)
  if not any(r["status"] == "finished" for r in rows):
    note = made_with(workdir, arg)
    if note:
      text += "\n\n" + note
  return text


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
