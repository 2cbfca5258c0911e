"""KerasTuner search of the head and of the fine-tune depth, cheap enough to be on by default.

Stage 1 searches the head (dense units or none, dropout, learning rate) on the frozen
base's pooled features, which trainer/feature_cache.py computes once for every trial and
for the Trainer. Its best head is the feature-extraction result. Stage 2 fine-tunes that
head with the top 1, 2, ... blocks unfrozen at a searched learning rate, with short budgets.
Its trials carry the stage-1 values as fixed hyperparameters, so one HyperParameters object
tells the Trainer everything: the best fine-tune trial if it beat feature extraction, else
the best head with fine_tune_blocks 0. The summary says which, with the measured numbers.

Each stage draws its trials from a StageOracle. In one process (the TFX Tuner, `headswap
tune`) both oracles are local; in a distributed search (tuning/jobs.py) they live in
the chief and every worker runs this same TransferTuner against them over gRPC.
"""

import contextlib
import dataclasses
import json
import logging
import os
import time
from typing import Any, Dict, List, Optional, Tuple

import keras
import keras_tuner
import numpy as np
import tensorflow as tf
from keras_tuner.src.engine import trial as trial_module

from trainer import data, feature_cache
from trainer.backbones import registry
from trainer.hparams import HParams
from trainer.model import build_classifier, build_head
from trainer.train import fit_phase

log = logging.getLogger("headswap")

OBJECTIVE = "val_loss"  # the Trainer's early stopping watches the same number
EPOCHS = "epochs"  # a trial's best epoch count: the Trainer's phase 1 trains that many
# A depth trial's yardstick: the eval split's val_loss of the head it starts from, as the
# Trainer decides whether to keep phase 2 (head trials are scored on folds of train instead).
FROZEN_OBJECTIVE = "frozen_val_loss"
HEADS, DEPTH = "heads", "depth"
PORT_VARIABLE = "KERASTUNER_ORACLE_PORT"
DEPTH_PORT_OFFSET = 1  # the depth stage's oracle listens next to the head stage's
LONG_POLL_SECONDS = 20  # a tuner held back gets IDLE after this and asks again
POLL_SECONDS = 0.1
Status = trial_module.TrialStatus


@dataclasses.dataclass
class SearchSpace:
  head_units: List[int] = dataclasses.field(default_factory=lambda: [0, 64, 256])
  dropout: List[float] = dataclasses.field(default_factory=lambda: [0.0, 0.5])  # [min, max]
  learning_rate: List[float] = dataclasses.field(default_factory=lambda: [1e-4, 1e-2])
  # Blocks to unfreeze; 0 (feature extraction only) is stage 1's best head, measured there.
  fine_tune_blocks: List[int] = dataclasses.field(default_factory=lambda: [1, 2])
  fine_tune_learning_rate: List[float] = dataclasses.field(default_factory=lambda: [1e-5, 1e-4])
  head_trials: int = 8
  folds: int = 5  # of the training images, for each head trial
  depth_trials: int = 3
  head_epochs: int = 20
  depth_epochs: int = 2
  seconds: float = 0  # 0: no time budget

  def head_hyperparameters(self) -> keras_tuner.HyperParameters:
    hp = keras_tuner.HyperParameters()
    hp.Choice("head_units", self.head_units)
    hp.Float("dropout", *self.dropout, step=0.1)
    hp.Float("learning_rate", *self.learning_rate, sampling="log")
    return hp

  def depth_hyperparameters(self) -> keras_tuner.HyperParameters:
    hp = keras_tuner.HyperParameters()
    hp.Choice("fine_tune_blocks", self.fine_tune_blocks)
    hp.Float("fine_tune_learning_rate", *self.fine_tune_learning_rate, sampling="log")
    return hp


class StageOracle(keras_tuner.oracles.RandomSearchOracle):
  """Random search for one stage that can hold its trials back until the stage may start
  (enough tuners arrived, the stage before finished), stops handing out trials at a deadline
  and remembers which tuner ran each trial."""

  def __init__(self, name: str, hyperparameters, max_trials: int, seed: int,
               deadline: Optional[float] = None, min_trials: int = 0,
               tuners_to_wait_for: int = 1, after: Optional["StageOracle"] = None):
    super().__init__(objective=OBJECTIVE, max_trials=max_trials,
                     hyperparameters=hyperparameters, seed=seed)
    self.name = name
    self.deadline = deadline
    self.min_trials = min_trials
    self.tuners_to_wait_for = tuners_to_wait_for
    self.after = after
    self.arrived = set()
    self.workers: Dict[str, str] = {}  # trial id -> tuner id
    self.stopped = False
    self.first_started: Optional[float] = None
    self.last_ended: Optional[float] = None
    self.verbose = 0  # end_trial logs one line per trial instead of KerasTuner's tables

  @property
  def finished(self) -> bool:
    return self.stopped and not self.ongoing_trials

  @property
  def seconds(self) -> Optional[float]:
    """From the first trial's start to the last one's end, on whichever tuners."""
    if self.first_started and self.last_ended:
      return round(self.last_ended - self.first_started, 1)
    return None

  def _may_start(self) -> bool:
    return (len(self.arrived) >= self.tuners_to_wait_for
            and (self.after is None or self.after.finished))

  def create_trial(self, tuner_id):
    # Waits outside the oracle's lock (taken by super()), so the awaited tuners can arrive.
    self.arrived.add(tuner_id)
    waited = 0.0
    while not self._may_start():
      if waited >= LONG_POLL_SECONDS:
        return trial_module.Trial(self.get_space(), trial_id="waiting", status=Status.IDLE)
      time.sleep(POLL_SECONDS)
      waited += POLL_SECONDS
    trial = super().create_trial(tuner_id)
    if trial.status == Status.RUNNING:
      self.workers[trial.trial_id] = tuner_id
      self.first_started = self.first_started or time.time()
    elif trial.status == Status.STOPPED:
      self.stopped = True
    return trial

  def populate_space(self, trial_id):
    if self.deadline and time.time() > self.deadline:
      if len(self.trials) >= self.min_trials:
        return {"status": Status.STOPPED, "values": None}
      # Over budget but a result is needed: the first listed (default) values.
      return {"status": Status.RUNNING,
              "values": {hp.name: hp.default for hp in self.hyperparameters.space}}
    return super().populate_space(trial_id)

  def end_trial(self, trial):
    super().end_trial(trial)
    self.last_ended = time.time()
    ended = self.trials[trial.trial_id]
    log.info("%s trial %s (%s): %s, %s %s", self.name, ended.trial_id,
             self.workers.get(ended.trial_id), ended.status, OBJECTIVE, ended.score)


def stage_oracles(space: SearchSpace, seed: int,
                  tuners_to_wait_for: int = 1) -> Tuple[StageOracle, StageOracle]:
  """The head stage's oracle and the depth stage's, which waits for the head stage. Only
  the head stage must run a trial whatever the time budget: it alone makes a result."""
  deadline = time.time() + space.seconds if space.seconds else None
  seed += 1  # KerasTuner draws a random seed for 0
  heads = StageOracle(HEADS, space.head_hyperparameters(), space.head_trials, seed, deadline,
                      min_trials=1, tuners_to_wait_for=tuners_to_wait_for)
  depth = StageOracle(DEPTH, space.depth_hyperparameters(), space.depth_trials, seed, deadline,
                      after=heads)
  return heads, depth


class Splits:
  """Both splits, decoded once, and the frozen base's cached outputs over them: the cache
  files the Trainer reads too (trainer/train.py), so neither computes them twice."""

  def __init__(self, train_files, eval_files, hp: HParams, space: SearchSpace, cache_dir: str):
    self.base = registry.build_base(hp.backbone, hp.weights, hp.image_size or None)
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


@contextlib.contextmanager
def _oracle_port(offset: int):
  """KerasTuner's OracleClient reads the chief's port from the environment when a tuner is
  built (workers only): point it at the stage's oracle while building."""
  port = os.environ.get(PORT_VARIABLE)
  if port is None or not offset:
    yield
    return
  os.environ[PORT_VARIABLE] = str(int(port) + offset)
  try:
    yield
  finally:
    os.environ[PORT_VARIABLE] = port


def _best_epoch(history: Dict[str, List[float]], started: float) -> Dict[str, float]:
  """The trial's metrics for the oracle: its best epoch, and its wall time."""
  best = int(np.argmin(history[OBJECTIVE]))
  return {OBJECTIVE: history[OBJECTIVE][best], "val_accuracy": history["val_accuracy"][best],
          EPOCHS: best + 1, "seconds": round(time.time() - started, 2)}


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
    """Each fold's head trains on the other images' views as the Trainer's phase 1 does and
    stops early on the fold's images as they are; the trial's score is the folds' mean best
    val_loss, its epoch count their median best epoch."""
    started = time.time()
    values = self.hparams(trial.hyperparameters)
    features, labels = train_outputs
    images = len(labels) // values.cached_views
    fold_of = np.random.default_rng(values.seed).permutation(images) % self._folds
    best = []
    for fold in range(self._folds):
      held = fold_of == fold
      trained = np.tile(~held, values.cached_views)
      head = self.hypermodel.build(trial.hyperparameters)
      history = fit_phase(head, values.learning_rate,
                          data.examples_of(features[trained], labels[trained]),
                          data.examples_of(features[:images][held], labels[:images][held]),
                          values, values.batch_size, epochs)
      best.append(_best_epoch(history, started))
    return {OBJECTIVE: float(np.mean([fold[OBJECTIVE] for fold in best])),
            "val_accuracy": float(np.mean([fold["val_accuracy"] for fold in best])),
            EPOCHS: float(np.median([fold[EPOCHS] for fold in best])),
            "seconds": round(time.time() - started, 2)}


class TransferTuner(keras_tuner.Tuner):
  """The depth stage's tuner, whose search() runs the head stage first: what TFX's Tuner
  component drives, `headswap tune` runs, and each worker of a distributed search runs."""

  def __init__(self, train_files, eval_files, num_classes, base_hp: HParams,
               space: SearchSpace, feature_cache_dir: str, directory: str,
               overwrite: bool = True):
    self.heads_oracle, depth_oracle = stage_oracles(space, base_hp.seed)
    with _oracle_port(DEPTH_PORT_OFFSET):
      super().__init__(oracle=depth_oracle, directory=directory, project_name=DEPTH,
                       overwrite=overwrite)
    self._train_files, self._eval_files = train_files, eval_files
    self._num_classes = num_classes
    self._base_hp = base_hp
    self._space = space
    self._feature_cache_dir = feature_cache_dir
    self._overwrite = overwrite
    self._head_tuner: Optional[_HeadTuner] = None
    self._best_head: Optional[Tuple[keras.Model, Dict[str, Any]]] = None
    self._splits: Optional[Splits] = None
    self._feature_seconds = 0.0

  def search(self, *args, **kwargs):
    hp = self._base_hp
    self._splits = Splits(self._train_files, self._eval_files, hp, self._space,
                          self._feature_cache_dir)
    started = time.time()
    train_outputs, _ = self._splits.outputs.pooled_features()
    self._feature_seconds = round(time.time() - started, 1)
    with _oracle_port(0):
      self._head_tuner = _HeadTuner(self.heads_oracle, train_outputs[0].shape[-1],
                                    self._num_classes, hp, self._space.folds,
                                    directory=self.directory, project_name=HEADS,
                                    overwrite=self._overwrite)
    self._head_tuner.search(train_outputs, self._space.head_epochs)
    super().search(*args, **kwargs)

  def _head(self) -> Tuple[keras.Model, Dict[str, Any], float]:
    """Stage 1's best head trained as the Trainer's phase 1 will train it (every training
    image, the cross-validated epoch count), its values and its val_loss on the eval split:
    final, since the depth oracle hands out no trial before stage 1 has ended everywhere."""
    if self._best_head is None:
      values = head_values(self._head_tuner.oracle.get_best_trials(1)[0])
      hp = dataclasses.replace(self._base_hp, **values)
      train_outputs, eval_outputs = self._splits.outputs.pooled_features()
      head = build_head(train_outputs[0].shape[-1], self._num_classes, hp)
      history = fit_phase(head, hp.learning_rate, data.examples_of(*train_outputs),
                          data.examples_of(*eval_outputs), hp, hp.batch_size, hp.epochs,
                          stop_early=hp.stop_early)
      self._best_head = head, values, history[OBJECTIVE][-1]
    return self._best_head

  def run_trial(self, trial, *args, **kwargs):
    """The best head fine-tuned with the top blocks unfrozen, as the Trainer's phase 2 does
    it: on cached activations of the frozen bottom blocks, or on augmented images."""
    started = time.time()
    head, values, frozen_loss = self._head()
    hp = trial.hyperparameters
    for name, value in values.items():
      hp.Fixed(name, value)
    blocks = hp.get("fine_tune_blocks")
    head_copy = keras.models.clone_model(head)
    head_copy.set_weights(head.get_weights())
    base_hp = self._base_hp
    base = registry.build_base(base_hp.backbone, base_hp.weights, base_hp.image_size or None)
    registry.unfreeze_top_blocks(base, blocks)
    if base_hp.fast_fine_tuning:
      train_data, eval_data = (data.examples_of(*outputs)
                               for outputs in self._splits.outputs.activations(blocks))
      classifier = build_classifier(registry.split_at_top_blocks(base, blocks)[1], head_copy)
    else:
      train_data, eval_data = self._splits.images
      classifier = build_classifier(base, head_copy)
    history = fit_phase(classifier, hp.get("fine_tune_learning_rate"), train_data, eval_data,
                        base_hp, base_hp.batch_size, self._space.depth_epochs,
                        augment=not base_hp.fast_fine_tuning)
    return {**_best_epoch(history, started), FROZEN_OBJECTIVE: frozen_loss}

  def get_best_hyperparameters(self, num_trials=1):
    return [best_hyperparameters(self.heads_oracle, self.oracle)]

  def summary(self) -> Dict[str, Any]:
    return summarize(self.heads_oracle, self.oracle,
                     _cache_counts(self._splits.outputs, self._feature_seconds))


def head_values(trial) -> Dict[str, Any]:
  """A head trial's values as the Trainer takes them: its cross-validated epoch count, trained
  in full on every training image."""
  return {**trial.hyperparameters.values, EPOCHS: int(round(_metric(trial, EPOCHS))),
          "stop_early": False}


def best_hyperparameters(heads: StageOracle, depth: StageOracle) -> keras_tuner.HyperParameters:
  """What the Trainer gets: the best fine-tune trial if it beat feature extraction (the
  best head), else the best head with fine_tune_blocks 0."""
  head = heads.get_best_trials(1)[0]
  tuned = [trial for trial in depth.get_best_trials(1) if trial.status == Status.COMPLETED]
  if tuned and _paid_off(tuned[0]):
    return tuned[0].hyperparameters
  chosen = keras_tuner.HyperParameters()
  for name, value in {**head_values(head), "fine_tune_blocks": 0}.items():
    chosen.Fixed(name, value)
  return chosen


def _paid_off(depth_trial) -> bool:
  return depth_trial.score < _metric(depth_trial, FROZEN_OBJECTIVE)


def _metric(trial, name):
  return trial.metrics.get_last_value(name) if trial.metrics.exists(name) else None


def _trial_rows(oracle: StageOracle) -> List[Dict[str, Any]]:
  return [{"trial": trial.trial_id, "worker": oracle.workers.get(trial.trial_id),
           "status": trial.status, "score": trial.score,
           "val_accuracy": _metric(trial, "val_accuracy"), EPOCHS: _metric(trial, EPOCHS),
           "seconds": _metric(trial, "seconds"),
           "hyperparameters": trial.hyperparameters.values}
          for trial in sorted(oracle.trials.values(), key=lambda t: t.trial_id)]


def summarize(heads: StageOracle, depth: StageOracle,
              computed: Dict[str, float]) -> Dict[str, Any]:
  """Every trial of both stages, and whether fine-tuning beat feature extraction."""
  head_rows, depth_rows = _trial_rows(heads), _trial_rows(depth)
  best_head = min((row for row in head_rows if row["score"] is not None),
                  key=lambda row: row["score"])
  best_tuned = min((row for row in depth_rows if row["score"] is not None),
                   key=lambda row: row["score"], default=None)
  tuned_trial = next(iter(depth.get_best_trials(1)), None)
  return {
      "best_hyperparameters": best_hyperparameters(heads, depth).values,
      "objective": OBJECTIVE,
      "stages": {
          HEADS: {"trials": head_rows, "seconds": heads.seconds,
                  "feature_files_computed": computed["feature_files_computed"],
                  "feature_seconds": computed["feature_seconds"]},
          DEPTH: {"trials": depth_rows, "seconds": depth.seconds,
                  "activation_files_computed": computed["activation_files_computed"]}},
      # score and val_accuracy: means over the folds of the training images
      "feature_extraction": {"score": best_head["score"], "epochs": best_head[EPOCHS],
                             "val_accuracy": best_head["val_accuracy"],
                             "eval_score": tuned_trial and _metric(tuned_trial,
                                                                   FROZEN_OBJECTIVE)},
      "best_fine_tune": best_tuned and {
          "score": best_tuned["score"], "val_accuracy": best_tuned["val_accuracy"],
          "fine_tune_blocks": best_tuned["hyperparameters"]["fine_tune_blocks"]},
      "fine_tuning_paid_off": bool(tuned_trial and _paid_off(tuned_trial)),
  }


def summary_table(summary: Dict[str, Any]) -> str:
  """The summary as a table a person reads top to bottom, best trial of each stage first."""
  lines = []
  for stage, content in summary["stages"].items():
    cache = (f"pooled features: {content['feature_files_computed']} files computed, "
             f"{content['feature_seconds']} s" if stage == HEADS else
             f"bottom activations: {content['activation_files_computed']} files computed")
    lines.append(f"{stage}: {len(content['trials'])} trials in {content['seconds']} s; {cache}")
    lines.append(f"  {'trial':>5}  {'worker':8}  {OBJECTIVE:>8}  {'val_acc':>7}  {'epochs':>6}"
                 f"  {'seconds':>7}  hyperparameters")
    for row in sorted(content["trials"], key=lambda r: (r["score"] is None, r["score"] or 0)):
      values = ", ".join(f"{k}={_short(v)}" for k, v in sorted(row["hyperparameters"].items()))
      lines.append(f"  {row['trial']:>5}  {row['worker'] or '-':8}  {_number(row['score']):>8}"
                   f"  {_number(row['val_accuracy']):>7}  {_seconds(row[EPOCHS]):>6}"
                   f"  {_seconds(row['seconds']):>7}  "
                   f"{values}{'' if row['status'] == Status.COMPLETED else ' ' + row['status']}")
  lines.append(_verdict(summary))
  return "\n".join(lines)


def _verdict(summary: Dict[str, Any]) -> str:
  extraction = summary["feature_extraction"]
  measured = (f"feature extraction {OBJECTIVE} {_number(extraction['score'])}, "
              f"val_accuracy {_number(extraction['val_accuracy'])} over the folds of train")
  tuned = summary["best_fine_tune"]
  if not tuned:
    return f"fine-tuning not tried (no depth trial ran): {measured}"
  verdict = "paid off" if summary["fine_tuning_paid_off"] else "did not pay off"
  blocks = tuned["fine_tune_blocks"]
  return (f"fine-tuning {verdict}: top {blocks} block{'s' * (blocks > 1)} unfrozen reached "
          f"eval {OBJECTIVE} {_number(tuned['score'])}, val_accuracy "
          f"{_number(tuned['val_accuracy'])}, against the head's "
          f"{_number(extraction['eval_score'])}; {measured}")


def _number(value):
  return "-" if value is None else f"{value:.4f}"


def _seconds(value):
  return "-" if value is None else f"{value:.1f}"


def _short(value):
  return f"{value:.2g}" if isinstance(value, float) else value


def write_summary(summary: Dict[str, Any], folder: str) -> None:
  tf.io.gfile.makedirs(folder)
  with tf.io.gfile.GFile(os.path.join(folder, "tuning_summary.json"), "w") as f:
    json.dump(summary, f, indent=2, default=str)
  with tf.io.gfile.GFile(os.path.join(folder, "tuning_summary.txt"), "w") as f:
    f.write(summary_table(summary) + "\n")
