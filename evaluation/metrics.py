"""Classification metrics a person reads: accuracy, per-class P/R/F1/support, confusion matrix."""

from typing import Any, Dict, List

import numpy as np


def classification_report(labels: np.ndarray, predicted: np.ndarray,
                          class_names: List[str]) -> Dict[str, Any]:
  count = len(class_names)
  confusion = np.zeros((count, count), dtype=int)  # rows: true class, columns: predicted
  np.add.at(confusion, (labels, predicted), 1)
  per_class = {}
  for index, name in enumerate(class_names):
    true_positive = confusion[index, index]
    support = confusion[index].sum()
    predicted_count = confusion[:, index].sum()
    precision = true_positive / predicted_count if predicted_count else 0.0
    recall = true_positive / support if support else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    per_class[name] = {"precision": round(float(precision), 4), "recall": round(float(recall), 4),
                       "f1": round(float(f1), 4), "support": int(support)}
  return {"accuracy": round(float(np.trace(confusion) / max(confusion.sum(), 1)), 4),
          "images": int(confusion.sum()), "per_class": per_class,
          "confusion_matrix": {"labels": class_names, "rows_true_columns_predicted":
                               confusion.tolist()}}
