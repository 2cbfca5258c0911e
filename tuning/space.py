"""The search space of the two-stage search, and its objective.

Stage 1 draws a head (dense units or none, dropout, learning rate), stage 2 how many top blocks
to unfreeze and their learning rate; the trial counts, epochs and time budget are here too
(--max-trials, --depth-trials, --tune-seconds and --always-train-depth-trials override theirs).
tuning/trials.py runs the trials.
"""

import dataclasses
from typing import List

import keras_tuner

# Both stages rank trials by accuracy on held-out images (heads: folds of train; depths: the
# eval split), lower val_loss breaking ties. On noisy fine-grained labels val_loss misleads:
# it picked heads stopped after 1-3 epochs that test 2-6 points below the same heads trained
# 10-20 (cat_breeds, Lite0: 64.8-70.4% vs 70-72%), and fine-tuning that lowered the eval
# loss lowered test accuracy (cat_breeds, Lite1+Lite2: 72.4 -> 71.9% at 260 px, 74.4 -> 72.4%
# at 300 px).
OBJECTIVE = keras_tuner.Objective("val_accuracy", direction="max")
LOSS = "val_loss"  # the tie-breaker; the Trainer's early stopping (without the Tuner) watches it


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
  head_epochs: int = 15  # every head trial trains each fold this long; its best epoch is kept
  depth_epochs: int = 2
  seconds: float = 0  # 0: no time budget
  # False: the depth trials train nothing when no eval score could make fine-tuning kept, the
  # head's eval accuracy being too close to 1 (tuning/trials.py futile_depth). On cats_vs_dogs
  # (1 error in 366 eval photos) the depth stage took 1.6 s instead of 128.9 s (README).
  always_train_depth_trials: bool = False

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
