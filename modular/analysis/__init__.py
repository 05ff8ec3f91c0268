"""What a multi-task model learned: head reuse, neuron specialization, routing, conflict.

Works on a model in memory, ``(fm, params)`` from ``FunctionalModel.split``, or on a
run folder (``report.write_report(workdir)``, the ``modular-analyze`` command), with
the tasks' evaluation data:

  analyze_model(fm, params, eval_data)          everything below, one Analysis
  gradient_head_importance(fm, params, batches) E_x |dL(x)/dxi| per task [T, NL, H]
  ablation_matrices(fm, params, batches, means) zero/mean ablation deltas [NL, H, T]
  activation_patching(fm, params, clean, corrupt) patching maps [NL, H, T] / [NL, S, T]
                                                and attribution patching beside them
  path_patching(fm, params, clean, corrupt, receivers)  sender heads -> receivers [R, H, T]
  head_reuse(scores, top_k=...)                 important-head sets, IoU / overlap
  neuron_specialization(collect_activations())  specialized FFN neurons, IoU per layer
  routing_analysis(stats, T)                    usage, entropy, load, task clusters
  conflict_over_training(read_telemetry(run))   gradient cosines logged by surgery
  write_report(workdir, out_dir=None)           PNGs, metrics.json, index.html
  noise_floor(scores)                           below it a head score is noise
  gate(accuracy, chance)                        which tasks were learned
  permutation_test(sim, declared_groups(names)) within- vs across-family similarity
  seed_report.write_seed_report([A, B])         aggregate over seeds

References:
  Michel et al. 2019; Merullo et al. 2023; Tan et al. 2024; Ye et al. 2022; Ponti et
  al. 2022; Yu et al. 2020.
"""

from modular.analysis.ablation import AblationResult, ablation_matrices
from modular.analysis.activations import ActivationStats, collect_activations
from modular.analysis.analyze import Analysis, analyze_model
from modular.analysis.batches import prepare_batches, synthetic_batches
from modular.analysis.competence import Competence, gate
from modular.analysis.groups import GroupTest, declared_groups, permutation_test
from modular.analysis.noise import noise_floor
from modular.analysis.patching import PatchingResult, activation_patching
from modular.analysis.path_patching import PathPatchingResult, path_patching
from modular.analysis.head_importance import (HeadImportance, gradient_head_importance,
                                              per_example_gate_grads)
from modular.analysis.head_reuse import HeadReuse, head_reuse, important_heads
from modular.analysis.neurons import (NeuronSpecialization, neuron_specialization,
                                      specialized_mask)
from modular.analysis.report import write_analysis, write_report
from modular.analysis.routing import RoutingSummary, routing_analysis, summarize_routing
from modular.analysis.sets import iou_matrix, overlap_matrix
from modular.analysis.telemetry import (conflict_over_training, conflict_summary,
                                        read_telemetry, stats_over_training)

__all__ = [
    "AblationResult", "ActivationStats", "Analysis", "Competence", "GroupTest",
    "HeadImportance", "HeadReuse", "PatchingResult", "PathPatchingResult",
    "activation_patching", "path_patching",
    "declared_groups", "gate", "noise_floor",
    "permutation_test",
    "NeuronSpecialization", "RoutingSummary", "ablation_matrices", "analyze_model",
    "collect_activations", "conflict_over_training", "conflict_summary",
    "gradient_head_importance", "head_reuse", "important_heads", "iou_matrix",
    "neuron_specialization", "overlap_matrix", "per_example_gate_grads", "prepare_batches",
    "read_telemetry", "routing_analysis", "specialized_mask", "stats_over_training",
    "summarize_routing", "synthetic_batches", "write_analysis", "write_report",
]
