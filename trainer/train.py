"""The transfer-learning schedule: train a new head on the frozen base, then fine-tune the
top blocks of the base at a lower learning rate, all under a MirroredStrategy."""

import dataclasses
import logging
import os
import time
from typing import Dict, List, Optional

import keras
import numpy as np
import tensorflow as tf

from headswap.components.progress import progress
from headswap.trainer import data, feature_cache
from headswap.trainer.backbones import registry
from headswap.trainer.hparams import HParams
from headswap.trainer.model import (build_classifier, build_head, compile_for_training,
                                    restart_optimizer)
from headswap.trainer.strategy import distribution_strategy, is_chief, task_name, worker_count

log = logging.getLogger("headswap")
FROZEN, FINE_TUNE = "frozen", "fine_tune"
TENSORBOARD_FOLDER = "tensorboard"  # in the run folder, a subfolder per phase
STEPS_PER_EXECUTION = 64


@dataclasses.dataclass
class TrainingRun:
  classifier: keras.Model
  image_size: int
  history: List[Dict[str, float]]  # one row per epoch of both phases, with "phase" and "epoch"
  summary: Dict  # what happened, for people and the report
  # The shipped classifier on the examples it was fitted on, in data.decoded_images' order:
  # the train split's, then with hp.fit_eval_split the eval split's.
  train_probabilities: np.ndarray
  train_labels: np.ndarray
  # Phase 1's head, before phase 2 trained it further: on the frozen base's pooled features it
  # gives the test accuracy after phase 1 (bench/e2e.py).
  frozen_head: keras.Model
  # With phase 2 kept: pixels -> [the classifier's probabilities, phase 1's], for the test
  # accuracy after each phase from one pass (trainer/export.py); else None.
  both_phases: Optional[keras.Model] = None


def train(train_files: List[str], eval_files: List[str], num_classes: int, hp: HParams,
          feature_cache_dir: str, run_dir: str) -> TrainingRun:
  if hp.fit_eval_split and hp.stop_early:
    raise ValueError("fit_eval_split leaves nothing to stop early on: it needs the Tuner's "
                     "epoch counts (stop_early off)")
  strategy = distribution_strategy(hp.cpu_replicas)
  replicas = strategy.num_replicas_in_sync
  global_batch = hp.batch_size * replicas  # each replica keeps its batch size
  with strategy.scope():
    base = registry.build_base(hp.backbone, hp.weights, hp.image_size or None)
    base.trainable = False
    head = build_head(base.output_shape[-1], num_classes, hp, seeded=True)
  image_size = base.input_shape[1]
  train_images = data.decoded_images(train_files, image_size)
  eval_images = data.decoded_images(eval_files, image_size)

  def fitted(train_examples, eval_examples):
    """The examples a phase fits: with hp.fit_eval_split the eval split's too, after train's."""
    return train_examples.concatenate(eval_examples) if hp.fit_eval_split else train_examples

  def fit(model, learning_rate, train_examples, eval_examples, phase, initial_epoch, epochs,
          augment, batch_size=global_batch):
    if hp.fit_eval_split:  # the eval split trains too: nothing is left to validate on
      train_examples, eval_examples = fitted(train_examples, eval_examples), None
    return fit_phase(model, learning_rate, train_examples, eval_examples, hp, batch_size,
                     epochs, initial_epoch=initial_epoch, augment=augment,
                     stop_early=hp.stop_early, strategy=strategy,
                     # One writer per log folder: workers all-reduce the same metrics.
                     run_dir=(os.path.join(run_dir, TENSORBOARD_FOLDER, phase) if is_chief()
                              else None),
                     # Per worker: Keras's backup file cannot take two writers.
                     backup_dir=os.path.join(run_dir, "backup", task_name(), phase),
                     description=f"{phase} epochs")

  # With both fast paths the images go through the base once, to the fine-tuning cut.
  deepest_cut = hp.fine_tune_blocks if hp.fast_fine_tuning else 0
  frozen_outputs = feature_cache.FrozenOutputs(
      base, [feature_cache.Split(train_files, train_images, hp.cached_views),
             feature_cache.Split(eval_files, eval_images)], feature_cache_dir,
      hp.backbone, hp.weights, global_batch, deepest_cut, hp.augmentations, hp.seed)

  # Phase 1: feature extraction.
  started = time.time()
  if hp.fast_feature_extraction:
    # The frozen base gives the same features every epoch: compute them once.
    train_outputs, eval_outputs = frozen_outputs.pooled_features()
    frozen = fit(head, hp.learning_rate, data.examples_of(*train_outputs),
                 data.examples_of(*eval_outputs), FROZEN, 0, hp.epochs, augment=False,
                 batch_size=hp.feature_batch_size * replicas)
    with strategy.scope():
      classifier = build_classifier(base, head)
    # What the shipped model would be run on to predict the training examples: the cheapest
    # inputs it was trained from, of the unaugmented view.
    shipped = head, fitted(_first_view(train_outputs, hp.cached_views),
                           data.examples_of(*eval_outputs))
  else:
    with strategy.scope():
      classifier = build_classifier(base, head)
    frozen = fit(classifier, hp.learning_rate, train_images, eval_images, FROZEN, 0, hp.epochs,
                 augment=True)
    shipped = classifier, fitted(train_images, eval_images)
  history = _rows(frozen, FROZEN, first_epoch=0)
  summary = {"replicas": replicas, "global_batch_size": global_batch,
             "image_size": image_size, "hparams": dataclasses.asdict(hp),
             "frozen": {"epochs": len(history), "seconds": round(time.time() - started, 1),
                        # of the weights kept: the best epoch's, or the last one's
                        **_kept_epoch(frozen, hp.stop_early),
                        "fast_feature_extraction": hp.fast_feature_extraction,
                        "feature_files_computed": frozen_outputs.computed[feature_cache.POOLED]}}

  frozen_head = keras.models.clone_model(head)
  frozen_head.set_weights(head.get_weights())

  # Phase 2: fine-tuning the top blocks, BatchNormalization statistics untouched.
  both_phases = None
  if hp.fine_tune_blocks:
    started = time.time()
    frozen_weights = classifier.get_weights()
    with strategy.scope():
      unfrozen = registry.unfreeze_top_blocks(base, hp.fine_tune_blocks)
      bottom, top = registry.split_at_top_blocks(base, hp.fine_tune_blocks)
      # Sharing its layers with `classifier`: training one trains the other.
      tuned = build_classifier(top, head) if hp.fast_fine_tuning else classifier
    # The top as phase 1 left it, kept apart for the test accuracy after phase 1.
    frozen_top = keras.models.clone_model(top)
    frozen_top.set_weights(top.get_weights())
    if hp.fast_fine_tuning:
      # The bottom stays frozen: its output for each view, computed once, stands in for the
      # images.
      train_outputs, eval_outputs = frozen_outputs.activations(hp.fine_tune_blocks)
      fine_train, fine_eval = data.examples_of(*train_outputs), data.examples_of(*eval_outputs)
      fine_unaugmented = fitted(_first_view(train_outputs, hp.cached_views), fine_eval)
    else:
      fine_train, fine_eval = train_images, eval_images
      fine_unaugmented = fitted(train_images, eval_images)
    fine = fit(tuned, hp.phase2_learning_rate, fine_train, fine_eval, FINE_TUNE, len(history),
               hp.fine_tune_epochs, augment=not hp.fast_fine_tuning)
    best = _kept_epoch(fine, hp.stop_early)
    # Without early stopping the Tuner chose this depth over phase 1 alone on held-out data.
    kept = not hp.stop_early or best["val_loss"] < summary["frozen"]["val_loss"]
    if not kept:  # fine-tuning made eval loss worse: ship the feature-extraction model
      classifier.set_weights(frozen_weights)
    else:
      shipped = tuned, fine_unaugmented
      both_phases = _both_phases(bottom, top, head, frozen_top, frozen_head)
    history += _rows(fine, FINE_TUNE, first_epoch=len(history))
    summary["fine_tune"] = {"blocks": hp.fine_tune_blocks, "layers_unfrozen": len(unfrozen),
                            "epochs": len(fine["loss"]), **best,
                            "on_cached_activations": hp.fast_fine_tuning,
                            "activation_files_computed":
                                frozen_outputs.computed[feature_cache.ACTIVATIONS],
                            "kept": kept, "seconds": round(time.time() - started, 1)}
  # For the report's suspected mislabels, without another pass of the base over the images.
  model, inputs = shipped
  train_probabilities, train_labels = feature_cache.outputs_of(
      model, data.inference_batches(inputs, global_batch))
  return TrainingRun(classifier, image_size, history, summary, train_probabilities, train_labels,
                     frozen_head, both_phases)


def _both_phases(bottom: keras.Model, top: keras.Model, head: keras.Model,
                 frozen_top: keras.Model, frozen_head: keras.Model) -> keras.Model:
  """pixels -> [probabilities after phase 2, after phase 1]: the frozen bottom of the base
  once, then its fine-tuned top under the head, and the top as phase 1 left it under phase
  1's head. The copy adds the top blocks' compute only."""
  # One model of the copy's layers: a nested model named as the base's top would clash.
  phase_1 = keras.Model(frozen_top.input, frozen_head(frozen_top.output), name="phase_1")
  pixels = keras.Input(bottom.input_shape[1:], name="pixels")
  activations = bottom(pixels, training=False)
  return keras.Model(pixels, [head(top(activations, training=False), training=False),
                              phase_1(activations, training=False)], name="both_phases")


def _kept_epoch(metrics: Dict[str, List[float]], stop_early: bool) -> Dict[str, float]:
  """The eval split's val_loss and val_accuracy of the weights a phase kept, if it had one."""
  if "val_loss" not in metrics:
    return {}
  kept = int(np.argmin(metrics["val_loss"])) if stop_early else -1
  return {name: metrics[name][kept] for name in ("val_loss", "val_accuracy")}


def _first_view(outputs: feature_cache.Outputs, views: int) -> tf.data.Dataset:
  """The rows of view 0 (the image as it is) of outputs over `views` views, view-major."""
  features, labels = outputs
  images = len(labels) // views
  return data.examples_of(features[:images], labels[:images])


def fit_phase(model: keras.Model, learning_rate: float, train_examples: tf.data.Dataset,
              eval_examples: Optional[tf.data.Dataset], hp: HParams, batch_size: int, epochs: int,
              initial_epoch: int = 0, augment: bool = False, stop_early: bool = True,
              strategy: Optional[tf.distribute.Strategy] = None, run_dir: Optional[str] = None,
              backup_dir: Optional[str] = None, restart: bool = False,
              description: str = "training epochs") -> Dict[str, List[float]]:
  """Trains `model` on (inputs, label) examples (images, or cached outputs of the frozen part
  below it) and returns the per-epoch metrics, val_loss and val_accuracy on the eval examples
  among them (if given). `stop_early`: stops when val_loss has not improved for hp.patience
  epochs and restores the best epoch's weights; else trains all `epochs`. The one training loop of both
  Trainer phases and every Tuner trial.

  `augment` applies hp.augmentations (image inputs only); under `strategy` the model was
  built in its scope and each replica gets batch_size / replicas examples per step.
  `restart`: the model was fitted by this same call before with its weights since reset (a
  Tuner's next fold): its optimizer starts over, and its traced steps are kept.
  `description` names the epochs' progress bar (components/progress.py).
  """
  distributed = strategy is not None
  strategy = strategy or tf.distribute.get_strategy()
  batches = data.training_batches(train_examples, batch_size, hp.seed,
                                  hp.augmentations if augment else ())
  with strategy.scope():
    if restart:
      restart_optimizer(model, learning_rate)
    else:
      # Several steps per call make a head's tiny steps 2x faster; Keras 3.12 cannot run them
      # on a distributed iterator (an unfed placeholder), so distributed fits take one. No
      # more than an epoch has (when known): their loop traces the step twice, 0.2-0.4 CPU s a
      # head trial on a small set, where an epoch is one step.
      steps = int(batches.cardinality())
      compile_for_training(model, learning_rate,
                           1 if distributed else
                           min(STEPS_PER_EXECUTION, steps) if steps > 0 else STEPS_PER_EXECUTION)
  callbacks = ([] if eval_examples is None else
               [EvaluateEachEpoch(data.inference_batches(eval_examples, batch_size))])
  if stop_early:
    callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=hp.patience,
                                                   restore_best_weights=True))
  if run_dir:
    callbacks.append(keras.callbacks.TensorBoard(run_dir))
  if backup_dir and worker_count() > 1:  # a restarted worker resumes from its last epoch
    callbacks.append(keras.callbacks.BackupAndRestore(backup_dir))
  with progress(description, epochs, "epochs") as advance:
    callbacks.append(keras.callbacks.LambdaCallback(on_epoch_end=lambda *_: advance()))
    return model.fit(batches, initial_epoch=initial_epoch,
                     epochs=initial_epoch + epochs, callbacks=callbacks, verbose=0).history


class EvaluateEachEpoch(keras.callbacks.Callback):
  """val_loss and val_accuracy after each epoch, from the model called directly, outside the
  distribution strategy: Keras's own validation would split the eval split's short last
  batch over the replicas (see data.training_batches). Each worker scores the whole split,
  so all of them stop early at the same epoch."""

  def __init__(self, batches: tf.data.Dataset):
    super().__init__()
    self._batches = batches

  def on_epoch_end(self, epoch, logs=None):
    probabilities, labels = feature_cache.collect(feature_cache.inference_function(self.model),
                                                  self._batches)
    logs.update(validation_metrics(probabilities, labels))


def validation_metrics(probabilities: np.ndarray, labels: np.ndarray) -> Dict[str, float]:
  """What early stopping and the Tuner rank by: mean log loss (probabilities clipped as
  Keras's crossentropy clips them), and accuracy."""
  chosen = probabilities[np.arange(len(labels)), labels].astype(np.float64)
  epsilon = keras.config.epsilon()
  return {"val_loss": float(-np.log(np.clip(chosen, epsilon, 1 - epsilon)).mean()),
          "val_accuracy": float((probabilities.argmax(-1) == labels).mean())}


def _rows(metrics, phase, first_epoch):
  return [{"phase": phase, "epoch": first_epoch + i + 1,
           **{name: float(values[i]) for name, values in metrics.items()}}
          for i in range(len(metrics["loss"]))]
