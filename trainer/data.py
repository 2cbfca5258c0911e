"""tf.data input from ExampleGen's TFRecords: every image is decoded and resized once."""

import json
import math
import os
from typing import List, Tuple

import keras
import tensorflow as tf

from components import features
from trainer import preprocessing

AUTOTUNE = tf.data.AUTOTUNE
SHUFFLE_BUFFER = 2048


def class_names_of(split_files: List[str]) -> List[str]:
  """The class list ExampleGen wrote next to its splits (…/<examples>/Split-train/*)."""
  examples_uri = os.path.dirname(os.path.dirname(split_files[0]))
  with tf.io.gfile.GFile(os.path.join(examples_uri, features.CLASS_NAMES_FILE)) as f:
    return json.load(f)


def decoded_images(file_patterns: List[str], image_size: int) -> tf.data.Dataset:
  """(uint8 pixels [size, size, 3], label) per example, decoded once and kept in memory.

  uint8 keeps the cache at a quarter of float32's size (2,000 images at 224 px: 300 MB).
  """
  def decode(serialized):
    parsed = tf.io.parse_single_example(serialized, preprocessing.EXAMPLE_SPEC)
    pixels = preprocessing.decode_image(parsed[features.IMAGE], image_size)
    return tf.cast(tf.round(pixels), tf.uint8), parsed[features.LABEL]

  # Across workers (MultiWorkerMirroredStrategy) shard examples, not files: ExampleGen may
  # write fewer files than there are workers.
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
  return _records(file_patterns).map(decode, num_parallel_calls=AUTOTUNE).cache().with_options(
      options)


def example_files(file_patterns: List[str]) -> List[str]:
  """The source file name of each example, in decoded_images' order."""
  spec = {features.FILENAME: tf.io.FixedLenFeature([], tf.string)}
  names = _records(file_patterns).map(
      lambda serialized: tf.io.parse_single_example(serialized, spec)[features.FILENAME])
  return [name.decode() for name in names.as_numpy_iterator()]


def _records(file_patterns: List[str]) -> tf.data.Dataset:
  # One file after another in name order, so every reader sees the examples in one order.
  files = tf.data.Dataset.list_files(file_patterns, shuffle=False)
  return tf.data.TFRecordDataset(files, compression_type="GZIP")


def augmenter(names: List[str], seed: int) -> keras.Sequential:
  """Random transforms for training batches; identity at evaluation."""
  layers = {
      "flip": lambda: keras.layers.RandomFlip("horizontal", seed=seed),
      "rotation": lambda: keras.layers.RandomRotation(0.1, seed=seed),
      "zoom": lambda: keras.layers.RandomZoom(0.1, seed=seed),
      "translation": lambda: keras.layers.RandomTranslation(0.1, 0.1, seed=seed),
      "contrast": lambda: keras.layers.RandomContrast(0.1, seed=seed),
  }
  return keras.Sequential([layers[name]() for name in names], name="augmentation")


def examples_of(features, labels) -> tf.data.Dataset:
  """(features, label) pairs from arrays: cached outputs of a frozen part of the base."""
  return tf.data.Dataset.from_tensor_slices((features, labels))


def count(examples: tf.data.Dataset) -> int:
  known = int(examples.cardinality())
  return known if known >= 0 else int(examples.reduce(0, lambda total, _: total + 1))


def training_batches(examples: tf.data.Dataset, batch_size: int, seed: int,
                     augmentations: List[str] = ()) -> Tuple[tf.data.Dataset, int]:
  """Endless shuffled batches of (float32 inputs, labels), all full, and the steps that make
  one epoch (every example at least once).

  No batch is partial: a distribution strategy splits a short last batch in replica-sized
  pieces, so some replicas get none (3 examples over 4 replicas: 1, 1, 1, 0), and oneDNN's
  kernels on some CPUs fail on an empty batch. Augmentations apply to image batches only.
  """
  steps = math.ceil(count(examples) / batch_size)
  dataset = (examples.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
             .repeat().batch(batch_size, drop_remainder=True).map(_as_float, num_parallel_calls=AUTOTUNE))
  if augmentations:
    augment = augmenter(list(augmentations), seed)
    dataset = dataset.map(lambda x, y: (augment(x, training=True), y),
                          num_parallel_calls=AUTOTUNE)
  return dataset.prefetch(AUTOTUNE), steps


def inference_batches(examples: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
  """Batches of (float32 inputs, labels) in order, the last one short: for a model called
  directly, never for a distributed fit (see training_batches)."""
  return examples.batch(batch_size).map(_as_float, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def _as_float(inputs, labels):
  return tf.cast(inputs, tf.float32), labels
