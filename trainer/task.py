"""run_fn: what the TFX Trainer runs, from examples and hyperparameters to a SavedModel."""

import json
import logging
import os
import tempfile
import time

import keras_tuner
import tensorflow as tf
from tfx.components.trainer.fn_args_utils import FnArgs

from headswap.trainer import data, export, plots
from headswap.trainer.hparams import HParams
from headswap.trainer.strategy import is_chief
from headswap.trainer.train import train

log = logging.getLogger("headswap")
HISTORY_FILE = "history.json"
SUMMARY_FILE = "training_summary.json"
CURVES_FILE = "learning_curves.png"
# The shipped model's probabilities per training image: the report's suspected mislabels.
TRAIN_PREDICTIONS_FILE = "train_predictions.json"
FROZEN_HEAD_FILE = "frozen_head.keras"  # phase 1's head (trainer/train.py TrainingRun)
CHIEF_EXPORT_TIMEOUT_S = 1800


def run_fn(fn_args: FnArgs) -> None:
  config = fn_args.custom_config or {}
  tuned = (keras_tuner.HyperParameters.from_config(fn_args.hyperparameters).values
           if fn_args.hyperparameters else None)
  hp = HParams.from_sources(config.get("hparams"), tuned)
  class_names = data.class_names_of(fn_args.train_files)
  log.info("training %d classes with %s", len(class_names), hp.to_json())
  run = train(fn_args.train_files, fn_args.eval_files, len(class_names), hp,
              config["feature_cache_dir"], fn_args.model_run_dir)
  if not is_chief():
    _export_as_worker(run, class_names, fn_args.serving_model_dir)
    return
  export.export_classifier(run.classifier, class_names, run.image_size, fn_args.serving_model_dir,
                           run.both_phases)
  if config.get("tflite"):
    calibration = data.decoded_images(fn_args.train_files, run.image_size).take(
        export.CALIBRATION_IMAGES)
    export.export_tflite(run.classifier, class_names, run.image_size, fn_args.serving_model_dir,
                         (pixels for pixels, _ in calibration.as_numpy_iterator()))
  tf.io.gfile.makedirs(fn_args.model_run_dir)
  fitted_files = data.example_files(fn_args.train_files)  # in TrainingRun's order
  if hp.fit_eval_split:
    fitted_files += data.example_files(fn_args.eval_files)
  train_predictions = {"class_names": class_names, "files": fitted_files,
                       "labels": run.train_labels.tolist(),
                       "probabilities": run.train_probabilities.round(4).tolist()}
  for name, value, indent in ((HISTORY_FILE, run.history, 2), (SUMMARY_FILE, run.summary, 2),
                              (TRAIN_PREDICTIONS_FILE, train_predictions, None)):
    with tf.io.gfile.GFile(os.path.join(fn_args.model_run_dir, name), "w") as f:
      json.dump(value, f, indent=indent)
  plots.learning_curves(run.history, os.path.join(fn_args.model_run_dir, CURVES_FILE))
  run.frozen_head.save(os.path.join(fn_args.model_run_dir, FROZEN_HEAD_FILE))


def _export_as_worker(run, class_names, serving_model_dir) -> None:
  """A non-chief worker's part of the export. Every worker saves, as TensorFlow's multi-worker
  guidance asks (saving may take part in collectives), the others to a throwaway folder;
  then each waits for the chief's whole model (its metadata file is written last), since
  TFX's executor checks on every worker that the model is there."""
  throwaway = tempfile.mkdtemp(prefix="headswap-worker-export-")
  try:
    export.export_classifier(run.classifier, class_names, run.image_size, throwaway,
                             run.both_phases)
  finally:
    tf.io.gfile.rmtree(throwaway)
  deadline = time.time() + CHIEF_EXPORT_TIMEOUT_S
  written_last = os.path.join(serving_model_dir, "assets.extra", export.METADATA_FILE)
  while not tf.io.gfile.exists(written_last):
    if time.time() > deadline:
      raise RuntimeError(f"the chief wrote no model to {serving_model_dir} within "
                         f"{CHIEF_EXPORT_TIMEOUT_S} s of this worker's export")
    time.sleep(1)
