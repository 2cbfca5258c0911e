"""KerasTuner search of the head and of the fine-tune depth, cheap enough to be on by default.

Stage 1 searches the head (dense units or none, dropout, learning rate) on the frozen
base's pooled features, which trainer/feature_cache.py computes once for every trial and
for the Trainer. Stage 2 takes the best head and searches how many top blocks to unfreeze
(0 = feature extraction only) and the fine-tuning learning rate with short budgets. Its
best trial carries the stage-1 values as fixed hyperparameters, so one HyperParameters
object tells the Trainer everything, and the summary says whether fine-tuning paid off.
"""

import dataclasses
import json
import os
import time
from typing import Any, Dict, List, Optional

import keras
import keras_tuner
import tensorflow as tf

from trainer import data, feature_cache
from trainer.backbones import registry
from trainer.hparams import HParams
from trainer.model import build_classifier, build_head, compile_for_training

OBJECTIVE = "val_loss"  # the Trainer's early stopping watches the same number


@dataclasses.dataclass
class SearchSpace:
  head_units: List[int] = dataclasses.field(default_factory=lambda: [0, 64, 256])
  dropout: List[float] = dataclasses.field(default_factory=lambda: [0.0, 0.5])  # [min, max]
  learning_rate: List[float] = dataclasses.field(default_factory=lambda: [1e-4, 1e-2])
  fine_tune_blocks: List[int] = dataclasses.field(default_factory=lambda: [0, 1, 2])
  fine_tune_learning_rate: List[float] = dataclasses.field(default_factory=lambda: [1e-5, 1e-4])
  head_trials: int = 8
  depth_trials: int = 3
  head_epochs: int = 20
  depth_epochs: int = 2
  seconds: float = 0  # 0: no time budget


def _head_hyperparameters(hp: keras_tuner.HyperParameters, space: SearchSpace) -> None:
  hp.Choice("head_units", space.head_units)
  hp.Float("dropout", *space.dropout, step=0.1)
  hp.Float("learning_rate", *space.learning_rate, sampling="log")


class _Budgeted:
  """Tuner mixin: times each trial and hands out no new trial once the deadline passed."""
  deadline: Optional[float] = None

  def on_trial_begin(self, trial):
    self.__dict__.setdefault("trial_seconds", {})[trial.trial_id] = time.time()
    super().on_trial_begin(trial)

  def on_trial_end(self, trial):
    super().on_trial_end(trial)
    self.trial_seconds[trial.trial_id] = round(time.time() - self.trial_seconds[trial.trial_id], 2)
    if self.deadline and time.time() > self.deadline:
      self.oracle.max_trials = len(self.oracle.trials)  # the oracle stops at max_trials


class _HeadTuner(_Budgeted, keras_tuner.RandomSearch):
  """Stage 1: heads trained on cached pooled features, a second or two per trial."""

  def __init__(self, feature_dim, num_classes, base_hp, space, deadline, **kwargs):
    def build(hp):
      _head_hyperparameters(hp, space)
      values = dataclasses.replace(base_hp, **hp.values)
      head = build_head(feature_dim, num_classes, values)
      compile_for_training(head, values.learning_rate)
      return head
    super().__init__(hypermodel=build, objective=OBJECTIVE, max_trials=space.head_trials,
                     **kwargs)
    self.deadline = deadline


class TransferTuner(_Budgeted, keras_tuner.RandomSearch):
  """Stage 2 tuner, which runs stage 1 first; what TFX's Tuner component drives."""

  def __init__(self, train_files, eval_files, num_classes, base_hp: HParams,
               space: SearchSpace, feature_cache_dir: str, **kwargs):
    super().__init__(hypermodel=None, objective=OBJECTIVE, max_trials=space.depth_trials,
                     **kwargs)
    self._train_files, self._eval_files = train_files, eval_files
    self._num_classes = num_classes
    self._base_hp = base_hp
    self._space = space
    self._feature_cache_dir = feature_cache_dir
    self._stages: Dict[str, Any] = {}

  def search(self, *args, **kwargs):
    started = time.time()
    self.deadline = started + self._space.seconds if self._space.seconds else None
    hp = self._base_hp
    base = registry.build_base(hp.backbone, hp.weights, hp.image_size or None)
    image_size = base.input_shape[1]
    self._train_images = data.decoded_images(self._train_files, image_size)
    self._eval_images = data.decoded_images(self._eval_files, image_size)
    paths = [feature_cache.cache_path(self._feature_cache_dir, files, hp.backbone, hp.weights,
                                      image_size)
             for files in (self._train_files, self._eval_files)]
    (train_x, train_y, train_computed), (eval_x, eval_y, eval_computed) = [
        feature_cache.pooled_features(base, images, path, hp.batch_size)
        for images, path in zip((self._train_images, self._eval_images), paths)]

    head_tuner = _HeadTuner(train_x.shape[-1], self._num_classes, hp, self._space,
                            self.deadline, directory=self.project_dir, project_name="heads",
                            overwrite=True, seed=hp.seed)
    head_tuner.search(train_x, train_y, validation_data=(eval_x, eval_y),
                      epochs=self._space.head_epochs, batch_size=hp.batch_size, verbose=0,
                      callbacks=[keras.callbacks.EarlyStopping(patience=hp.patience,
                                                               restore_best_weights=True)])
    best_trial = head_tuner.oracle.get_best_trials(1)[0]
    self._best_head = head_tuner.load_model(best_trial)
    self._head_values = best_trial.hyperparameters.values
    self._head_score = best_trial.score
    self._stages["heads"] = {"trials": _trial_rows(head_tuner),
                             "feature_files_computed": train_computed + eval_computed,
                             "seconds": round(time.time() - started, 1)}

    depth_started = time.time()
    super().search(*args, **kwargs)
    self._stages["depth"] = {"trials": _trial_rows(self),
                             "seconds": round(time.time() - depth_started, 1)}

  def run_trial(self, trial, *args, **kwargs):
    hp = trial.hyperparameters
    for name, value in self._head_values.items():
      hp.Fixed(name, value)
    blocks = hp.Choice("fine_tune_blocks", self._space.fine_tune_blocks)
    learning_rate = hp.Float("fine_tune_learning_rate", *self._space.fine_tune_learning_rate,
                             sampling="log")
    if blocks == 0:  # feature extraction only: stage 1 already measured it
      return {OBJECTIVE: self._head_score}
    head = keras.models.clone_model(self._best_head)
    head.set_weights(self._best_head.get_weights())
    base = registry.build_base(self._base_hp.backbone, self._base_hp.weights,
                               self._base_hp.image_size or None)
    classifier = build_classifier(base, head)
    registry.unfreeze_top_blocks(base, blocks)
    compile_for_training(classifier, learning_rate)
    batch_size = self._base_hp.batch_size
    history = classifier.fit(
        data.batches(self._train_images, batch_size, training=True,
                     augmentations=self._base_hp.augmentations, seed=self._base_hp.seed),
        validation_data=data.batches(self._eval_images, batch_size, training=False),
        epochs=self._space.depth_epochs, verbose=0)
    return {OBJECTIVE: min(history.history[OBJECTIVE])}

  def summary(self) -> Dict[str, Any]:
    """Every trial of both stages, and whether fine-tuning beat feature extraction."""
    best = self.get_best_hyperparameters()[0].values
    depth_rows = self._stages["depth"]["trials"]
    tuned = [row for row in depth_rows if row["hyperparameters"]["fine_tune_blocks"] > 0]
    best_tuned = min(tuned, key=lambda row: row["score"], default=None)
    return {"best_hyperparameters": best, "objective": OBJECTIVE, "stages": self._stages,
            "feature_extraction_score": self._head_score,
            "best_fine_tune_score": best_tuned and best_tuned["score"],
            "fine_tuning_paid_off": bool(best_tuned and best_tuned["score"] < self._head_score)}


def _trial_rows(tuner) -> List[Dict[str, Any]]:
  rows = []
  for trial in sorted(tuner.oracle.trials.values(), key=lambda t: t.trial_id):
    rows.append({"trial": trial.trial_id, "status": trial.status, "score": trial.score,
                 "hyperparameters": trial.hyperparameters.values,
                 "seconds": tuner.trial_seconds.get(trial.trial_id)})
  return rows


def summary_table(summary: Dict[str, Any]) -> str:
  """The summary as a table a person reads top to bottom."""
  lines = []
  for stage, content in summary["stages"].items():
    lines.append(f"{stage} ({content['seconds']} s)")
    for row in sorted(content["trials"], key=lambda r: (r["score"] is None, r["score"])):
      values = ", ".join(f"{k}={_short(v)}" for k, v in sorted(row["hyperparameters"].items()))
      score = "-" if row["score"] is None else f"{row['score']:.4f}"
      lines.append(f"  trial {row['trial']:>4}  {OBJECTIVE} {score}  {values}")
  verdict = "paid off" if summary["fine_tuning_paid_off"] else "did not pay off"
  lines.append(f"fine-tuning {verdict}: feature extraction {summary['feature_extraction_score']:.4f}"
               f", best fine-tune {summary['best_fine_tune_score']}")
  return "\n".join(lines)


def _short(value):
  return f"{value:.2g}" if isinstance(value, float) else value


def write_summary(tuner: TransferTuner, folder: str) -> None:
  summary = tuner.summary()
  tf.io.gfile.makedirs(folder)
  with tf.io.gfile.GFile(os.path.join(folder, "tuning_summary.json"), "w") as f:
    json.dump(summary, f, indent=2, default=str)
  with tf.io.gfile.GFile(os.path.join(folder, "tuning_summary.txt"), "w") as f:
    f.write(summary_table(summary) + "\n")
