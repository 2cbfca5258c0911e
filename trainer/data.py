"""tf.data input from ExampleGen's TFRecords: every image is decoded and resized once."""

import json
import os
from typing import List, Optional

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


def replica_batch_size(file_patterns: List[str], batch_size: int, replicas: int) -> int:
  """The global batch size for a split, so that its first batch splits evenly over replicas.

  Keras builds a distributed model by averaging the first batch across replicas, which needs
  equal shares: a split smaller than one batch gets a smaller batch, a multiple of replicas.
  """
  if replicas == 1:
    return batch_size
  examples = int(tf.data.TFRecordDataset(tf.io.gfile.glob(file_patterns), compression_type="GZIP")
                 .reduce(0, lambda count, _: count + 1))
  if examples < replicas:
    raise ValueError(f"{file_patterns} hold {examples} examples, fewer than the {replicas} "
                     "replicas that would share them: use fewer --cpu-replicas or more images")
  return min(batch_size, examples - examples % replicas)


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


def batches(images: tf.data.Dataset, batch_size: int, training: bool,
            augmentations: List[str] = (), seed: int = 0) -> tf.data.Dataset:
  """Float 0-255 pixel batches; shuffled and augmented only when training."""
  if training:
    images = images.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True)
  dataset = images.batch(batch_size).map(lambda x, y: (tf.cast(x, tf.float32), y),
                                         num_parallel_calls=AUTOTUNE)
  if training and augmentations:
    augment = augmenter(list(augmentations), seed)
    dataset = dataset.map(lambda x, y: (augment(x, training=True), y),
                          num_parallel_calls=AUTOTUNE)
  return dataset.prefetch(AUTOTUNE)


def feature_batches(features, labels, batch_size: int, seed: Optional[int] = None):
  """Cached outputs of a frozen part (pooled features, activations) as batches; shuffled
  when a seed is given (training)."""
  dataset = tf.data.Dataset.from_tensor_slices((features, labels))
  if seed is not None:
    dataset = dataset.shuffle(len(labels), seed=seed, reshuffle_each_iteration=True)
  return dataset.batch(batch_size).prefetch(AUTOTUNE)
