"""The transfer-learning schedule: train a new head on the frozen base, then fine-tune the
top blocks of the base at a lower learning rate, all under a MirroredStrategy."""

import dataclasses
import logging
import os
import time
from typing import Dict, List

import keras
import numpy as np

from trainer import data, feature_cache
from trainer.backbones import registry
from trainer.hparams import HParams
from trainer.model import build_classifier, build_head, compile_for_training
from trainer.strategy import distribution_strategy, worker_count

log = logging.getLogger("headswap")
FROZEN, FINE_TUNE = "frozen", "fine_tune"


@dataclasses.dataclass
class TrainingRun:
  classifier: keras.Model
  image_size: int
  history: List[Dict[str, float]]  # one row per epoch of both phases, with "phase" and "epoch"
  summary: Dict  # what happened, for people and the report
  # The shipped classifier on the training examples, in data.decoded_images' order.
  train_probabilities: np.ndarray
  train_labels: np.ndarray


def train(train_files: List[str], eval_files: List[str], num_classes: int, hp: HParams,
          feature_cache_dir: str, run_dir: str) -> TrainingRun:
  keras.utils.set_random_seed(hp.seed)
  strategy = distribution_strategy(hp.cpu_replicas)
  replicas = strategy.num_replicas_in_sync
  global_batch = hp.batch_size * replicas  # each replica keeps its batch size
  with strategy.scope():
    base = registry.build_base(hp.backbone, hp.weights, hp.image_size or None)
    base.trainable = False
    head = build_head(base.output_shape[-1], num_classes, hp)
  image_size = base.input_shape[1]
  train_images = data.decoded_images(train_files, image_size)
  eval_images = data.decoded_images(eval_files, image_size)
  train_batch = data.replica_batch_size(train_files, global_batch, replicas)
  eval_batch = data.replica_batch_size(eval_files, global_batch, replicas)
  eval_batches = data.batches(eval_images, eval_batch, training=False)
  train_unaugmented = data.batches(train_images, train_batch, training=False)

  def train_batches():
    return data.batches(train_images, train_batch, training=True,
                        augmentations=hp.augmentations, seed=hp.seed)

  # With both fast paths the images go through the base once, to the fine-tuning cut.
  deepest_cut = hp.fine_tune_blocks if hp.fast_fine_tuning else 0
  frozen_outputs = feature_cache.FrozenOutputs(
      base, [(train_files, train_images), (eval_files, eval_images)], feature_cache_dir,
      hp.backbone, hp.weights, global_batch, deepest_cut)

  def callbacks(phase):
    chosen = [keras.callbacks.EarlyStopping(monitor="val_loss", patience=hp.patience,
                                            restore_best_weights=True),
              keras.callbacks.TensorBoard(os.path.join(run_dir, "tensorboard", phase))]
    if worker_count() > 1:  # a restarted worker resumes from the last epoch, not from zero
      chosen.append(keras.callbacks.BackupAndRestore(os.path.join(run_dir, "backup", phase)))
    return chosen

  # Phase 1: feature extraction.
  started = time.time()
  if hp.fast_feature_extraction:
    # The frozen base gives the same features every epoch: compute them once.
    (train_x, train_y), (eval_x, eval_y) = frozen_outputs.pooled_features()
    with strategy.scope():
      compile_for_training(head, hp.learning_rate)
    frozen = head.fit(data.feature_batches(train_x, train_y, train_batch, seed=hp.seed),
                      validation_data=data.feature_batches(eval_x, eval_y, eval_batch),
                      epochs=hp.epochs, callbacks=callbacks(FROZEN), verbose=2)
    with strategy.scope():
      classifier = build_classifier(base, head)
    # What the shipped model would be run on to predict the training examples: the cheapest
    # inputs it was trained from.
    shipped = head, data.feature_batches(train_x, train_y, train_batch)
  else:
    with strategy.scope():
      classifier = build_classifier(base, head)
      compile_for_training(classifier, hp.learning_rate)
    frozen = classifier.fit(train_batches(), validation_data=eval_batches, epochs=hp.epochs,
                            callbacks=callbacks(FROZEN), verbose=2)
    shipped = classifier, train_unaugmented
  history = _rows(frozen, FROZEN, first_epoch=0)
  summary = {"replicas": replicas, "global_batch_size": global_batch,
             "image_size": image_size, "hparams": dataclasses.asdict(hp),
             "frozen": {"epochs": len(history), "seconds": round(time.time() - started, 1),
                        "best_val_loss": min(frozen.history["val_loss"]),
                        "fast_feature_extraction": hp.fast_feature_extraction,
                        "feature_files_computed": frozen_outputs.computed[feature_cache.POOLED]}}

  # Phase 2: fine-tuning the top blocks, BatchNormalization statistics untouched.
  if hp.fine_tune_blocks:
    started = time.time()
    frozen_weights = classifier.get_weights()
    with strategy.scope():
      unfrozen = registry.unfreeze_top_blocks(base, hp.fine_tune_blocks)
      tuned = classifier
      if hp.fast_fine_tuning:
        _, top = registry.split_at_top_blocks(base, hp.fine_tune_blocks)
        tuned = build_classifier(top, head)  # shares its layers with `classifier`
      compile_for_training(tuned, hp.phase2_learning_rate)
    if hp.fast_fine_tuning:
      # The bottom stays frozen: its output, computed once, stands in for the images.
      (train_a, train_y), (eval_a, eval_y) = frozen_outputs.activations(hp.fine_tune_blocks)
      fine_train = data.feature_batches(train_a, train_y, train_batch, seed=hp.seed)
      fine_eval = data.feature_batches(eval_a, eval_y, eval_batch)
    else:
      fine_train, fine_eval = train_batches(), eval_batches
    fine = tuned.fit(fine_train, validation_data=fine_eval, initial_epoch=len(history),
                     epochs=len(history) + hp.fine_tune_epochs, callbacks=callbacks(FINE_TUNE),
                     verbose=2)
    best = min(fine.history["val_loss"])
    kept = best < summary["frozen"]["best_val_loss"]
    if not kept:  # fine-tuning made eval loss worse: ship the feature-extraction model
      classifier.set_weights(frozen_weights)
    elif hp.fast_fine_tuning:
      shipped = tuned, data.feature_batches(train_a, train_y, train_batch)
    else:
      shipped = classifier, train_unaugmented
    history += _rows(fine, FINE_TUNE, first_epoch=len(history))
    summary["fine_tune"] = {"blocks": hp.fine_tune_blocks, "layers_unfrozen": len(unfrozen),
                            "epochs": len(fine.history["loss"]), "best_val_loss": best,
                            "on_cached_activations": hp.fast_fine_tuning,
                            "activation_files_computed":
                                frozen_outputs.computed[feature_cache.ACTIVATIONS],
                            "kept": kept, "seconds": round(time.time() - started, 1)}
  # For the report's suspected mislabels, without another pass of the base over the images.
  train_probabilities, train_labels = feature_cache.outputs_of(*shipped)
  return TrainingRun(classifier, image_size, history, summary, train_probabilities, train_labels)


def _rows(fit_history, phase, first_epoch):
  metrics = fit_history.history
  return [{"phase": phase, "epoch": first_epoch + i + 1,
           **{name: float(values[i]) for name, values in metrics.items()}}
          for i in range(len(metrics["loss"]))]
