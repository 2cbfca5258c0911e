"""Learning curves of both phases, with the moment fine-tuning started marked."""

import io
from typing import Dict, List

import matplotlib

matplotlib.use("Agg")  # files only: training runs have no screen
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
from matplotlib import ticker  # pylint: disable=wrong-import-position
import tensorflow as tf  # pylint: disable=wrong-import-position


def learning_curves(history: List[Dict[str, float]], path: str) -> str:
  """Writes the curves as a PNG to `path`, local or gs:// (through tf.io.gfile: matplotlib
  writes local files only, and a Vertex Trainer's model_run_dir is on GCS)."""
  epochs = [row["epoch"] for row in history]
  fine_tune_start = next((row["epoch"] - 0.5 for row in history if row["phase"] == "fine_tune"),
                         None)
  figure, axes = plt.subplots(2, 1, figsize=(8, 8), sharex=True)
  for axis, metric, title in ((axes[0], "accuracy", "Accuracy"), (axes[1], "loss", "Loss")):
    axis.plot(epochs, [row[metric] for row in history], marker="o", label=f"Training {metric}")
    if all(f"val_{metric}" in row for row in history):  # none when the eval split trained too
      axis.plot(epochs, [row[f"val_{metric}"] for row in history], marker="o",
                label=f"Validation {metric}")
    if fine_tune_start is not None:
      axis.axvline(fine_tune_start, color="grey", linestyle="--", label="Start fine-tuning")
    axis.set_title(metric.capitalize())
    axis.set_ylabel(title)
    axis.legend(loc="lower right" if metric == "accuracy" else "upper right")
  axes[1].set_xlabel("epoch")
  axes[1].xaxis.set_major_locator(ticker.MaxNLocator(integer=True))  # no epoch 1.5
  figure.tight_layout()
  image = io.BytesIO()
  figure.savefig(image, format="png", dpi=100)
  plt.close(figure)
  with tf.io.gfile.GFile(path, "wb") as f:
    f.write(image.getvalue())
  return path
