"""KerasTuner search of the head and of the fine-tune depth, cheap enough to be on by default.

Stage 1 searches the head (dense units or none, dropout, learning rate) on the frozen
base's pooled features, which trainer/feature_cache.py computes once for every trial and
for the Trainer. Its best head is the feature-extraction result. Stage 2 fine-tunes that
head with the top 1, 2, ... blocks unfrozen at a searched learning rate, with short budgets.
Its trials carry the stage-1 values as fixed hyperparameters, so one HyperParameters object
tells the Trainer everything: the best fine-tune trial if it beat feature extraction, else
the best head with fine_tune_blocks 0. The summary (tuning/summary.py) says which, with the
measured numbers.
"""

import contextlib
import dataclasses
import io
import logging
import math
import statistics
import time
from typing import Any, Dict, Optional, Tuple

import keras
import keras_tuner
import numpy as np
from keras_tuner.src.distribute import utils as distribute_utils

from headswap.components import progress
from headswap.trainer import data, feature_cache
from headswap.trainer.backbones import registry
from headswap.trainer.hparams import HParams
from headswap.trainer.model import build_classifier, build_head
from headswap.trainer.train import fit_phase
from headswap.tuning.oracles import (DEPTH, DEPTH_PORT_OFFSET, HEADS, StageOracle, Status,
                                     oracle_port, stage_oracles)
from headswap.tuning.space import LOSS, OBJECTIVE, SearchSpace

log = logging.getLogger("headswap")
story = logging.getLogger("headswap.console")  # on the console too (pipeline/console.py)
EPOCHS = "epochs"  # a trial's best epoch count: the Trainer trains its phase that many
# A depth trial's yardstick: the eval split's val_accuracy and val_loss of the head it starts
# from (head trials are scored on folds of train instead), and how many images they are on.
FROZEN = {OBJECTIVE.name: "frozen_val_accuracy", LOSS: "frozen_val_loss"}
EVAL_IMAGES = "eval_images"
# The stage keeps its best eval score of this many: every epoch of every depth trial.
CANDIDATES = "candidates"
SIGNIFICANCE = 0.05  # the chance that noise alone makes phase 2 kept
EVERY_TRIAL = 1 << 30  # as get_best_trials' count


class Splits:
  """Both splits, decoded once, and the frozen base's cached outputs over them: the cache
  files the Trainer reads too (trainer/train.py), so neither computes them twice."""

  def __init__(self, train_files, eval_files, hp: HParams, space: SearchSpace, cache_dir: str):
    self.base = registry.build_base(hp.backbone, hp.weights, hp.image_size or None)
    self.base_weights = self.base.get_weights()  # what each depth trial starts from
    image_size = self.base.input_shape[1]
    self.images = tuple(data.decoded_images(files, image_size)
                        for files in (train_files, eval_files))
    # The images go through the base once, to the deepest cut a depth trial may ask for.
    deepest_cut = max(space.fine_tune_blocks) if hp.fast_fine_tuning and space.depth_trials else 0
    self.outputs = feature_cache.FrozenOutputs(
        self.base, [feature_cache.Split(train_files, self.images[0], hp.cached_views),
                    feature_cache.Split(eval_files, self.images[1])],
        cache_dir, hp.backbone, hp.weights, hp.batch_size, deepest_cut, hp.augmentations,
        hp.seed)


def precompute(train_files, eval_files, hp: HParams, space: SearchSpace,
               cache_dir: str) -> Dict[str, float]:
  """Every cache file a search may read, computed here once, for workers that then only read
  them (two workers computing one file at once would collide)."""
  outputs = Splits(train_files, eval_files, hp, space, cache_dir).outputs
  started = time.time()
  outputs.pooled_features()
  seconds = round(time.time() - started, 1)
  if hp.fast_fine_tuning:
    for blocks in space.fine_tune_blocks:
      outputs.activations(blocks)
  return _cache_counts(outputs, seconds)


def _cache_counts(outputs: feature_cache.FrozenOutputs, feature_seconds: float):
  return {"feature_files_computed": outputs.computed[feature_cache.POOLED],
          "feature_seconds": feature_seconds,
          "activation_files_computed": outputs.computed[feature_cache.ACTIVATIONS]}


def _best_epoch(accuracy, loss, started: float) -> Dict[str, float]:
  """The trial's metrics for the oracle from its per-epoch curves: its best epoch (the
  highest accuracy, the lower loss among equals), and its wall time."""
  best = int(np.lexsort((loss, -np.asarray(accuracy)))[0])
  return {OBJECTIVE.name: float(accuracy[best]), LOSS: float(loss[best]), EPOCHS: best + 1,
          "seconds": round(time.time() - started, 2)}


class _HeadTuner(keras_tuner.Tuner):
  """Stage 1: heads trained on cached pooled features, scored by k-fold cross-validation
  over the training images, which a small eval split could not do reliably."""

  def __init__(self, oracle, feature_dim, num_classes, base_hp, folds, **kwargs):
    self._base_hp = base_hp
    self._folds = folds
    super().__init__(oracle=oracle, hypermodel=lambda hp: build_head(
        feature_dim, num_classes, self.hparams(hp)), **kwargs)

  def hparams(self, hp: keras_tuner.HyperParameters) -> HParams:
    return dataclasses.replace(self._base_hp, **hp.values)

  def run_trial(self, trial, train_outputs: feature_cache.Outputs, epochs: int):
    """Each fold's head trains `epochs` epochs on the other images' views as the Trainer's
    phase 1 does, scored after each on the fold's images as they are; the trial's result is
    the epoch with the best accuracy averaged over the folds (the lower mean loss among
    equals), and that epoch count."""
    started = time.time()
    values = self.hparams(trial.hyperparameters)
    features, labels = train_outputs
    images = len(labels) // values.cached_views
    fold_of = np.random.default_rng(values.seed).permutation(images) % self._folds
    head = self.hypermodel.build(trial.hyperparameters)
    initial_weights = head.get_weights()
    curves = []
    for fold in range(self._folds):
      held = fold_of == fold
      trained = np.tile(~held, values.cached_views)
      head.set_weights(initial_weights)  # one head for every fold: traced once
      curves.append(fit_phase(head, values.learning_rate,
                              data.examples_of(features[trained], labels[trained]),
                              data.examples_of(features[:images][held], labels[:images][held]),
                              values, values.feature_batch_size, epochs, stop_early=False,
                              restart=fold > 0))
    return _best_epoch(*(np.mean([curve[name] for curve in curves], axis=0)
                         for name in (OBJECTIVE.name, LOSS)), started)


class TransferTuner(keras_tuner.Tuner):
  """The depth stage's tuner, whose search() runs the head stage first: what TFX's Tuner
  component drives, `headswap tune` runs, and each worker of a distributed search runs."""

  def __init__(self, train_files, eval_files, num_classes, base_hp: HParams,
               space: SearchSpace, feature_cache_dir: str, directory: str,
               overwrite: bool = True):
    self.heads_oracle, self._depth_oracle = stage_oracles(space, base_hp.seed)
    with oracle_port(DEPTH_PORT_OFFSET):
      super().__init__(oracle=self._depth_oracle, directory=directory, project_name=DEPTH,
                       overwrite=overwrite)
    self._train_files, self._eval_files = train_files, eval_files
    self._num_classes = num_classes
    self._base_hp = base_hp
    self._space = space
    self._feature_cache_dir = feature_cache_dir
    self._overwrite = overwrite
    self._head_tuner: Optional[_HeadTuner] = None
    self._best_head: Optional[Tuple[keras.Model, Dict[str, Any], Dict[str, float]]] = None
    self._splits: Optional[Splits] = None
    self._feature_seconds = 0.0

  def search(self, *args, **kwargs):
    hp = self._base_hp
    self._splits = Splits(self._train_files, self._eval_files, hp, self._space,
                          self._feature_cache_dir)
    started = time.time()
    train_outputs, _ = self._splits.outputs.pooled_features()
    self._feature_seconds = round(time.time() - started, 1)
    with oracle_port(0):
      self._head_tuner = _HeadTuner(self.heads_oracle, train_outputs[0].shape[-1],
                                    self._num_classes, hp, self._space.folds,
                                    directory=self.directory, project_name=HEADS,
                                    overwrite=self._overwrite)
    with _trials_shown(self.heads_oracle, "head trials"):
      self._head_tuner.search(train_outputs, self._space.head_epochs)
    with _trials_shown(self._depth_oracle, "depth trials"):
      super().search(*args, **kwargs)

  def _head(self) -> Tuple[keras.Model, Dict[str, Any], Dict[str, float]]:
    """Stage 1's best head trained as the Trainer's phase 1 will train it (every training
    image, the cross-validated epoch count), its values and its FROZEN metrics on the eval
    split: final, since the depth oracle hands out no trial before stage 1 has ended
    everywhere."""
    if self._best_head is None:
      values = head_values(best_trial(self._head_tuner.oracle))
      hp = dataclasses.replace(self._base_hp, **values)
      train_outputs, eval_outputs = self._splits.outputs.pooled_features()
      head = build_head(train_outputs[0].shape[-1], self._num_classes, hp, seeded=True)
      history = fit_phase(head, hp.learning_rate, data.examples_of(*train_outputs),
                          data.examples_of(*eval_outputs), hp, hp.feature_batch_size,
                          hp.epochs, stop_early=hp.stop_early)
      frozen = {**{FROZEN[name]: history[name][-1] for name in FROZEN},
                EVAL_IMAGES: len(eval_outputs[1]),
                CANDIDATES: self._space.depth_trials * self._space.depth_epochs}
      self._best_head = head, values, frozen
      if self._trains_nothing(frozen):
        accuracy = frozen[FROZEN[OBJECTIVE.name]]
        story.info("depth trials train nothing: the head's eval accuracy %.4f on %d images "
                   "leaves %.4f to gain, and fine-tuning would have to add more than %.4f "
                   "(--always-train-depth-trials trains them)", accuracy, frozen[EVAL_IMAGES],
                   1 - accuracy, _margin(frozen))
    return self._best_head

  def _trains_nothing(self, frozen: Dict[str, float]) -> bool:
    return not self._space.always_train_depth_trials and futile_depth(frozen)

  def run_trial(self, trial, *args, **kwargs):
    """The best head fine-tuned with the top blocks unfrozen, as the Trainer's phase 2 does
    it: on cached activations of the frozen bottom blocks, or on augmented images."""
    started = time.time()
    head, values, frozen = self._head()
    hp = trial.hyperparameters
    for name, value in values.items():
      hp.Fixed(name, value)
    if self._trains_nothing(frozen):
      # Zero epochs of fine-tuning: the head itself, which cannot beat itself.
      return {OBJECTIVE.name: frozen[FROZEN[OBJECTIVE.name]], LOSS: frozen[FROZEN[LOSS]],
              EPOCHS: 0, "seconds": round(time.time() - started, 2), **frozen}
    blocks = hp.get("fine_tune_blocks")
    head_copy = keras.models.clone_model(head)
    head_copy.set_weights(head.get_weights())
    base_hp = self._base_hp
    # The base the cache was computed with, unfrozen at the top, then put back as it was.
    base = self._splits.base
    if base_hp.fast_fine_tuning:
      train_data, eval_data = (data.examples_of(*outputs)
                               for outputs in self._splits.outputs.activations(blocks))
    else:
      train_data, eval_data = self._splits.images
    registry.unfreeze_top_blocks(base, blocks)
    try:
      classifier = build_classifier(
          registry.split_at_top_blocks(base, blocks)[1] if base_hp.fast_fine_tuning else base,
          head_copy)
      history = fit_phase(classifier, hp.get("fine_tune_learning_rate"), train_data, eval_data,
                          base_hp, base_hp.batch_size, self._space.depth_epochs,
                          augment=not base_hp.fast_fine_tuning)
    finally:
      base.trainable = False
      base.set_weights(self._splits.base_weights)
    return {**_best_epoch(history[OBJECTIVE.name], history[LOSS], started), **frozen}

  # KerasTuner prints these (TFX's Tuner executor asks for both): to the log, not the console.
  def search_space_summary(self, extended=False):
    _log_printed(super().search_space_summary, extended)

  def results_summary(self, num_trials=10):
    _log_printed(super().results_summary, num_trials)

  def get_best_hyperparameters(self, num_trials=1):
    return [best_hyperparameters(self.heads_oracle, self.oracle)]

  def cache_counts(self) -> Dict[str, float]:
    """What this tuner's search computed for the cache, for the summary (tuning/summary.py)."""
    return _cache_counts(self._splits.outputs, self._feature_seconds)


def _trials_shown(oracle: StageOracle, description: str):
  """The stage's progress as its oracle ends trials. A worker's oracles are the chief's, which
  shows them (tuning/jobs.supervise): the worker shows neither them nor their epochs."""
  if distribute_utils.has_chief_oracle():
    return progress.shown_elsewhere()
  return oracle.trials_shown(description)


def _log_printed(function, *args) -> None:
  printed = io.StringIO()
  with contextlib.redirect_stdout(printed):
    function(*args)
  log.info("%s", printed.getvalue().strip())


def head_values(trial) -> Dict[str, Any]:
  """A head trial's values as the Trainer takes them: its cross-validated epoch count, trained
  in full on every training image."""
  return {**trial.hyperparameters.values, EPOCHS: int(metric(trial, EPOCHS)),
          "stop_early": False}


def best_hyperparameters(heads: StageOracle, depth: StageOracle) -> keras_tuner.HyperParameters:
  """What the Trainer gets: the best fine-tune trial and its best epoch count if it beat
  feature extraction (the best head), else the best head with fine_tune_blocks 0."""
  tuned = best_trial(depth)
  if tuned and paid_off(tuned):
    chosen = tuned.hyperparameters.copy()
    # Phase 2 trains as long as the trial's best epoch, with no early stopping (as phase 1).
    chosen.Fixed("fine_tune_epochs", int(metric(tuned, EPOCHS)))
    return chosen
  chosen = keras_tuner.HyperParameters()
  for name, value in {**head_values(best_trial(heads)), "fine_tune_blocks": 0}.items():
    chosen.Fixed(name, value)
  return chosen


def best_trial(oracle: StageOracle):
  """The completed trial with the highest accuracy, the lower loss among equals (None: no
  trial completed). `oracle` may be a worker's client of the chief's oracle, which lists
  trials through get_best_trials only."""
  completed = [trial for trial in oracle.get_best_trials(EVERY_TRIAL)
               if trial.status == Status.COMPLETED]
  return max(completed, key=rank, default=None)


def rank(trial) -> Tuple[float, float]:
  return metric(trial, OBJECTIVE.name), -metric(trial, LOSS)


def paid_off(depth_trial) -> bool:
  """Fine-tuning beat the head it started from on the eval split by more than that split's
  noise (required_gain). With one standard error as the margin, the best of the depth trials
  beat the head by chance: on cat_breeds (153 eval photos) phase 2 kept that way moved test
  accuracy by -2.0 to +0.5 points in six runs (-0.8 on average), on cats_vs_dogs by 0.0."""
  return (metric(depth_trial, OBJECTIVE.name)
          > metric(depth_trial, FROZEN[OBJECTIVE.name]) + required_gain(depth_trial))


def required_gain(depth_trial) -> float:
  return _margin({name: metric(depth_trial, name)
                  for name in (FROZEN[OBJECTIVE.name], EVAL_IMAGES, CANDIDATES)})


def futile_depth(frozen: Dict[str, float]) -> bool:
  """Not even a perfect eval score could beat the head's by the margin (paid_off): no depth
  trial can make fine-tuning kept."""
  return 1 - frozen[FROZEN[OBJECTIVE.name]] <= _margin(frozen)


def _margin(frozen: Dict[str, float]) -> float:
  """What chance alone adds to the best of the stage's CANDIDATES eval scores of a model with
  the head's eval accuracy p on n images: the one-sided SIGNIFICANCE margin of its standard
  error sqrt(p (1 - p) / n), Bonferroni-corrected for the candidates. With 3 trials x 2 epochs
  z = 2.39: on cat_breeds' 153 eval photos at 69%, 9.0 points; at one standard error, the
  margin before, phase 2 was kept for +3.9 points in the run where it lost 2.0 on test."""
  accuracy, images = frozen[FROZEN[OBJECTIVE.name]], frozen[EVAL_IMAGES]
  z = statistics.NormalDist().inv_cdf(1 - SIGNIFICANCE / frozen[CANDIDATES])
  return z * math.sqrt(accuracy * (1 - accuracy) / images)


def metric(trial, name):
  return trial.metrics.get_last_value(name) if trial.metrics.exists(name) else None
