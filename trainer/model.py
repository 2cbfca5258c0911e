"""The classifier: a pretrained base, its head cut off, and a new head for our classes."""

import keras

from headswap.trainer.hparams import HParams


def build_head(feature_dim: int, num_classes: int, hp: HParams,
               seeded: bool = False) -> keras.Model:
  """Pooled features [B, D] -> class probabilities [B, C]. `seeded` starts from hp.seed, so
  the Trainer's phase 1 and the Tuner's best head begin from the same weights."""
  if seeded:
    keras.utils.set_random_seed(hp.seed)
  features = keras.Input((feature_dim,), name="pooled_features")
  x = features
  if hp.head_units:
    x = keras.layers.Dense(hp.head_units, activation="relu", name="head_dense")(x)
  x = keras.layers.Dropout(hp.dropout, name="head_dropout")(x)
  probabilities = keras.layers.Dense(num_classes, activation="softmax", name="head_softmax")(x)
  return keras.Model(features, probabilities, name="head")


def build_classifier(base: keras.Model, head: keras.Model) -> keras.Model:
  """Raw 0-255 pixels -> probabilities. The base always runs with training=False, so its
  BatchNormalization layers keep their ImageNet statistics even while fine-tuning."""
  pixels = keras.Input(base.input_shape[1:], name="pixels")
  probabilities = head(base(pixels, training=False))
  return keras.Model(pixels, probabilities, name="classifier")


def compile_for_training(model: keras.Model, learning_rate: float,
                         steps_per_execution: int = 1) -> None:
  # No XLA: a phase of a few epochs never wins back its compile time.
  model.compile(optimizer=keras.optimizers.Adam(learning_rate),
                loss="sparse_categorical_crossentropy", metrics=["accuracy"],
                jit_compile=False, steps_per_execution=steps_per_execution)


def restart_optimizer(model: keras.Model, learning_rate: float) -> None:
  """A compiled model's optimizer as if new (no steps, no moments): what compiling again would
  give, without throwing away the traced training step (~0.6 s to trace again)."""
  for variable in model.optimizer.variables:
    variable.assign(keras.ops.zeros_like(variable))
  model.optimizer.learning_rate = learning_rate
