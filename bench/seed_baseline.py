"""The seeds' tutorial (TensorFlow's "Transfer learning and fine-tuning") on our data, timed.

  .venv/bin/python bench/seed_baseline.py [--data DIR] [--epochs 10] [--fine-tune-epochs N]

As the tutorial: image_dataset_from_directory at 160 px, batches of 32, prefetch only;
RandomFlip + RandomRotation(0.2) in the model; MobileNetV2 (no top) frozen under
GlobalAveragePooling + Dropout(0.2) + Dense(1) for --epochs epochs with RMSprop 1e-4, then
layers from fine_tune_at=100 unfrozen and --fine-tune-epochs more at RMSprop 1e-5. Validation
is a fifth of train/ (image_dataset_from_directory's validation_split); the test accuracy is on
test/. ImageNet weights come from Keras's cache if they are there, else the weights are random
(same compute, so the timing holds; the accuracy then means nothing and "weights" says so).
Prints one JSON object: wall seconds per phase and in total (from process start, imports
included, as a user would wait), the test accuracy.
"""

import time

PROCESS_START = time.perf_counter()

# pylint: disable=wrong-import-position
import argparse
import contextlib
import json
import os
import sys

from common import SHARED_DATA

IMAGE_SIZE = 160
BATCH_SIZE = 32
FINE_TUNE_AT = 100
BASE_LEARNING_RATE = 1e-4
WEIGHTS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_160_no_top.h5"


def datasets(data, seed):
  import keras
  import tensorflow as tf

  size = (IMAGE_SIZE, IMAGE_SIZE)
  train, validation = keras.utils.image_dataset_from_directory(
      os.path.join(data, "train"), batch_size=BATCH_SIZE, image_size=size, shuffle=True,
      validation_split=0.2, subset="both", seed=seed)
  test = keras.utils.image_dataset_from_directory(
      os.path.join(data, "test"), batch_size=BATCH_SIZE, image_size=size, shuffle=False)
  return [d.prefetch(tf.data.AUTOTUNE) for d in (train, validation, test)]


def build_model(weights):
  import keras

  shape = (IMAGE_SIZE, IMAGE_SIZE, 3)
  augmentation = keras.Sequential([keras.layers.RandomFlip("horizontal"),
                                   keras.layers.RandomRotation(0.2)])
  base = keras.applications.MobileNetV2(input_shape=shape, include_top=False, weights=weights)
  base.trainable = False
  inputs = keras.Input(shape)
  x = keras.applications.mobilenet_v2.preprocess_input(augmentation(inputs))
  x = base(x, training=False)
  x = keras.layers.GlobalAveragePooling2D()(x)
  x = keras.layers.Dropout(0.2)(x)
  return keras.Model(inputs, keras.layers.Dense(1)(x)), base


def compile_model(model, learning_rate):
  import keras

  model.compile(optimizer=keras.optimizers.RMSprop(learning_rate),
                loss=keras.losses.BinaryCrossentropy(from_logits=True),
                metrics=[keras.metrics.BinaryAccuracy(threshold=0, name="accuracy")])


def run(args):
  fine_tune_epochs = args.epochs if args.fine_tune_epochs is None else args.fine_tune_epochs

  import keras

  from headswap.trainer.backbones.registry import keras_cache_dir

  keras.utils.set_random_seed(args.seed)
  weights = "imagenet" if os.path.isfile(os.path.join(keras_cache_dir(), WEIGHTS_FILE)) else None
  seconds = {}
  start = time.perf_counter()
  train, validation, test = datasets(args.data, args.seed)
  model, base = build_model(weights)
  compile_model(model, BASE_LEARNING_RATE)
  seconds["startup"] = start - PROCESS_START
  seconds["setup"] = time.perf_counter() - start

  start = time.perf_counter()
  frozen = model.fit(train, epochs=args.epochs, validation_data=validation, verbose=2)
  seconds["frozen"] = time.perf_counter() - start

  start = time.perf_counter()
  base.trainable = True
  for layer in base.layers[:FINE_TUNE_AT]:
    layer.trainable = False
  compile_model(model, BASE_LEARNING_RATE / 10)
  fine = model.fit(train, epochs=args.epochs + fine_tune_epochs, initial_epoch=args.epochs,
                   validation_data=validation, verbose=2)
  seconds["fine_tune"] = time.perf_counter() - start

  start = time.perf_counter()
  _, test_accuracy = model.evaluate(test, verbose=0)
  seconds["test"] = time.perf_counter() - start
  seconds["total"] = time.perf_counter() - PROCESS_START

  last_history = (fine if fine_tune_epochs else frozen).history
  return {
      "benchmark": "seed tutorial (MobileNetV2 160 px)",
      "data": args.data,
      "weights": weights or "random (no ImageNet file in Keras's cache: accuracy meaningless)",
      "epochs": {"frozen": args.epochs, "fine_tune": fine_tune_epochs},
      "wall_seconds": {name: round(value, 1) for name, value in seconds.items()},
      "frozen_val_accuracy": round(frozen.history["val_accuracy"][-1], 4),
      "final_val_accuracy": round(last_history["val_accuracy"][-1], 4),
      "test_accuracy": round(float(test_accuracy), 4),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data", default=SHARED_DATA, help="train/ and test/ class folders")
  parser.add_argument("--epochs", type=int, default=10, help="frozen epochs")
  parser.add_argument("--fine-tune-epochs", type=int,
                      help="fine-tuning epochs (default: as many as --epochs)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  with contextlib.redirect_stdout(sys.stderr):  # Keras's progress lines; stdout is the JSON
    result = run(args)
  print(json.dumps(result, indent=2))


if __name__ == "__main__":
  main()
