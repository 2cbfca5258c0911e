"""What an Evaluator measured, read back from TFMA's output: the report, the benchmark and the
gate's baseline all take their numbers from here, so they cannot disagree."""

import math
import os
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import tensorflow_model_analysis as tfma

from headswap.components import filesystem

ACCURACY = "sparse_categorical_accuracy"  # the gated metric (pipeline.eval_config)
CONFUSION = "multi_class_confusion_matrix_plot"

MetricValues = Dict[Tuple[str, Optional[int]], Optional[float]]  # (name, class id): value


def overall_metrics(evaluation_uri: str) -> Dict[str, MetricValues]:
  """{"candidate": values, "baseline": values if there was one} on the whole split.

  A model evaluated alone is unnamed in TFMA's output; NaN (a class never predicted has no
  precision) becomes None.
  """
  models: Dict[str, MetricValues] = {}
  for metrics in tfma.load_metrics(evaluation_uri):
    if metrics.slice_key.single_slice_keys:
      continue
    for entry in metrics.metric_keys_and_values:
      if entry.key.is_diff:
        continue
      class_id = (entry.key.sub_key.class_id.value
                  if entry.key.sub_key.HasField("class_id") else None)
      value = entry.value.double_value.value
      models.setdefault(entry.key.model_name or "candidate", {})[entry.key.name, class_id] = (
          None if math.isnan(value) else value)
  return models


def blessed(blessing_uri: str) -> bool:
  """Whether the Evaluator blessed the model (its ModelBlessing holds a BLESSED file)."""
  return filesystem.exists(os.path.join(blessing_uri, "BLESSED"))


def candidate_results(evaluation_uri: str, class_names: List[str]) -> Dict[str, Any]:
  """The evaluated model's accuracy, example count, per-class metrics and confusion matrix.

  {"accuracy", "examples", "per_class": {class: {"precision", "recall", "f1_score"[, "auc"]}},
   "confusion": counts, rows the true class, columns the predicted one}
  """
  values = overall_metrics(evaluation_uri)["candidate"]
  per_class = {name: {} for name in class_names}
  for (metric, class_id), value in values.items():
    if class_id is not None:
      per_class[class_names[class_id]][metric] = value
  return {"accuracy": values[ACCURACY, None], "examples": round(values["example_count", None]),
          "per_class": per_class, "confusion": _confusion(evaluation_uri, len(class_names))}


def _confusion(evaluation_uri, num_classes) -> np.ndarray:
  counts = np.zeros((num_classes, num_classes), dtype=int)
  for plots in tfma.load_plots(evaluation_uri):
    if plots.slice_key.single_slice_keys:
      continue
    for entry in plots.plot_keys_and_values:
      if entry.key.name != CONFUSION or entry.key.model_name not in ("", "candidate"):
        continue
      # One matrix, at threshold 0: each image counts for its most probable class.
      matrix, = entry.value.multi_class_confusion_matrix_at_thresholds.matrices
      for cell in matrix.entries:
        counts[cell.actual_class_id, cell.predicted_class_id] += round(cell.num_weighted_examples)
  return counts
