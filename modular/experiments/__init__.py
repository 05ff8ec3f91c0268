"""Ablation sweeps declared next to their config (big_vision's ``get_hyper`` style).

An experiment file defines ``get_config(arg=None)`` and ``get_hyper(hyper)``; the
latter returns a list of override dicts built from the axes of ``hyper``:

  def get_hyper(h):
    return h.product([
        h.sweep("config.data.sampling", ["uniform", "proportional"]),
        h.sweep("config.train.seed", [0, 1]),
    ])

Single-task baselines (for the Δm column) are declared the same way, by an optional
``get_baselines(hyper)`` whose points each train exactly one task:

  def get_baselines(h):
    return h.sweep("config.data.tasks", [["copy"], ["reverse"]])

Seeds are a declared axis: ``h.seeds(points, [0, 1, 2])`` repeats every point per seed
(``config.train.seed`` and ``config.data.seed``; folders ``<name>,seed=<s>``), and
``results.md`` then adds a table over seeds (``protocol.seed_table``): per point the mean
and 95% t-interval over seeds, the test-set bootstrap, Δm with its interval and a paired
test (McNemar exact per seed, Fisher over seeds) against the experiment's ``REFERENCE``
point. With ``config.data.val_share > 0`` every run selects its checkpoint on a
validation split and reports test metrics measured once with it
(``modular.train.selection``). ``get_hyper(h, arg)`` and ``get_baselines(h, arg)`` may
take the experiment argument as a second parameter.

Baselines run in the same sweep (folders ``single-<name>``); a multi-task row's
Δm (percent, Maninis et al. 2019) compares its per-task accuracy and loss with
the mean of the baselines that trained that task.

``run_sweep`` validates every point (baselines included) before any run starts,
against the config saved in its run folder too (``spec.check_saved_configs``: a
folder made with another ``--arg`` stops the sweep unchanged), prepares the data once, skips runs that already finished (their ``summary.json``
is read back), and hands the others to an ``Executor``: its one method
``run(trials, on_outcome) -> outcomes`` runs a batch of trials and reports each as
it ends (``engine.LocalExecutor``: one after another in this process;
``ray_engine.RayExecutor``: Ray Tune trials on a local or remote Ray cluster, the
only module that imports Ray). ``results.csv`` / ``results.md`` are rewritten after
each run ends.
"""

from modular.experiments.engine import Executor, LocalExecutor, Outcome, Trial
from modular.experiments.results import delta_m, finished_summary, results_table
from modular.experiments.spec import Point, expand, expand_baselines, hyper, run_name
from modular.experiments.sweep import failed_runs, prepare_data, run_sweep

__all__ = [
    "Executor", "LocalExecutor", "Outcome", "Point", "Trial", "delta_m", "expand",
    "expand_baselines", "failed_runs", "finished_summary", "hyper", "prepare_data",
    "results_table", "run_name", "run_sweep",
]
