"""tf.data input from ExampleGen's TFRecords: every image is decoded and resized once."""

import json
import math
import os
from typing import List, Sequence

import tensorflow as tf

from headswap.components import features
from headswap.trainer import preprocessing

AUTOTUNE = tf.data.AUTOTUNE
SHUFFLE_BUFFER = 2048
# "crop": the share of the image's area kept and the aspect ratios drawn from (the usual
# random-resized-crop recipe, less aggressive: small photos of small objects lose the object).
CROP_AREAS = (0.6, 1.0)
CROP_ASPECT_RATIOS = (3 / 4, 4 / 3)


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
    return tf.cast(pixels, tf.uint8), parsed[features.LABEL]

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


def example_count(file_patterns: List[str]) -> int:
  """The examples in the files: their records counted, none decoded."""
  return count(_records(file_patterns))


def _records(file_patterns: List[str]) -> tf.data.Dataset:
  # One file after another in name order, so every reader sees the examples in one order.
  files = tf.data.Dataset.list_files(file_patterns, shuffle=False)
  return tf.data.TFRecordDataset(files, compression_type="GZIP")


def augment(image: tf.Tensor, seed: tf.Tensor, names: Sequence[str]) -> tf.Tensor:
  """One random view of a uint8 image [size, size, 3]: "crop" keeps 60-100% of its area at
  an aspect ratio of 3:4 to 4:3, resized back; "flip" mirrors it half of the time.
  Stateless: a seed [2] always gives the same view, so views can be cached."""
  shape = image.shape
  view = image
  if "crop" in names:
    begin, extent, _ = tf.image.stateless_sample_distorted_bounding_box(
        tf.shape(image), tf.zeros([1, 0, 4]), seed, min_object_covered=0.0,
        aspect_ratio_range=CROP_ASPECT_RATIOS, area_range=CROP_AREAS,
        use_image_if_no_bounding_boxes=True)
    resized = tf.image.resize(tf.slice(image, begin, extent), shape[:2])
    view = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), image.dtype)
  if "flip" in names:
    view = tf.image.stateless_random_flip_left_right(view, seed + 1)
  return tf.ensure_shape(view, shape)


def views(images: tf.data.Dataset, count: int, names: Sequence[str],
          seed: int) -> tf.data.Dataset:
  """(pixels, label) of each image `count` times: as it is, its mirror if "flip" is among the
  names, then random augmented views. View-major: element v * N + i is view v of image i, the
  same one every time.

  The mirror before random views: frozen features, project head on the image and one more view
  (bench/frozen_features.py, 300 px, 199 test photos): cat_breeds Lite2 73.9% with the mirror,
  72.4% with a random crop and flip; Lite1+Lite2 76.4% and 73.9%."""
  dataset = images
  for view in range(1, count):
    if view == 1 and "flip" in names:
      dataset = dataset.concatenate(images.map(
          lambda pixels, label: (tf.image.flip_left_right(pixels), label),
          num_parallel_calls=AUTOTUNE))
      continue
    dataset = dataset.concatenate(images.enumerate().map(
        lambda i, example, view=view: (
            augment(example[0], tf.stack([tf.constant(seed + view, tf.int64), i]), names),
            example[1]),
        num_parallel_calls=AUTOTUNE))
  return dataset


def examples_of(features, labels) -> tf.data.Dataset:
  """(features, label) pairs from arrays: cached outputs of a frozen part of the base."""
  return tf.data.Dataset.from_tensor_slices((features, labels))


def count(examples: tf.data.Dataset) -> int:
  known = int(examples.cardinality())
  return known if known >= 0 else int(examples.reduce(0, lambda total, _: total + 1))


def training_batches(examples: tf.data.Dataset, batch_size: int, seed: int,
                     augmentations: Sequence[str] = ()) -> tf.data.Dataset:
  """One epoch of shuffled batches of (float32 inputs, labels): every example at least once,
  the last batch filled up from the next shuffle, so all are full; reshuffled each epoch.

  No batch is partial: a distribution strategy splits a short last batch in replica-sized
  pieces, so some replicas get none (3 examples over 4 replicas: 1, 1, 1, 0), and oneDNN's
  kernels on some CPUs fail on an empty batch. `augmentations` (see augment) apply to image
  examples only: a new view of each image every time it comes round.
  """
  # Finite, not endless with steps_per_epoch: Keras 3.12 runs an endless dataset 2-5x slower
  # (a head on cached features: 0.33 s against 0.06 s an epoch).
  steps = math.ceil(count(examples) / batch_size)
  dataset = (examples.shuffle(SHUFFLE_BUFFER, seed=seed, reshuffle_each_iteration=True).repeat()
             .take(steps * batch_size))
  if augmentations:
    dataset = dataset.enumerate().map(
        lambda step, example: (augment(example[0], tf.stack([tf.constant(seed, tf.int64), step]),
                                       augmentations), example[1]),
        num_parallel_calls=AUTOTUNE)
  dataset = dataset.batch(batch_size, drop_remainder=True).map(_as_float,
                                                               num_parallel_calls=AUTOTUNE)
  return dataset.prefetch(AUTOTUNE)


def inference_batches(examples: tf.data.Dataset, batch_size: int) -> tf.data.Dataset:
  """Batches of (float32 inputs, labels) in order, the last one short: for a model called
  directly, never for a distributed fit (see training_batches)."""
  return examples.batch(batch_size).map(_as_float, num_parallel_calls=AUTOTUNE).prefetch(AUTOTUNE)


def _as_float(inputs, labels):
  return tf.cast(inputs, tf.float32), labels
