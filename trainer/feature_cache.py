"""Pooled features of the frozen base, computed once per dataset and backbone and shared.

The Trainer's fast path and every Tuner trial read the same cache file, so the base runs
over the images once however many heads are trained on top of it.
"""

import hashlib
import io
import logging
import os
from typing import List, Tuple

import keras
import numpy as np
import tensorflow as tf

from trainer import data

log = logging.getLogger("headswap")


def cache_path(cache_dir: str, file_patterns: List[str], backbone: str, weights: str,
               image_size: int, cut: str = "") -> str:
  """Changes when the examples (names and sizes) or the base change; `cut` names the layer
  whose input is cached ("" for the pooled features)."""
  digest = hashlib.sha256(f"{backbone}|{weights}|{image_size}{'|' + cut if cut else ''}"
                          .encode())
  for path in sorted(tf.io.gfile.glob(file_patterns)):
    digest.update(f"{path}|{tf.io.gfile.stat(path).length}".encode())
  return os.path.join(cache_dir, digest.hexdigest()[:24] + ".npz")


def pooled_features(base: keras.Model, images: tf.data.Dataset, path: str,
                    batch_size: int = 32) -> Tuple[np.ndarray, np.ndarray, bool]:
  """(outputs [N, ...], labels [N], computed now?) of the frozen `base` (or of the bottom
  part of it, see registry.split_at_top_blocks) over `images` (decoded, see data.py), read
  from or written to the cache file `path`."""
  if tf.io.gfile.exists(path):
    with tf.io.gfile.GFile(path, "rb") as f:
      cached = np.load(io.BytesIO(f.read()))
      return cached["features"], cached["labels"], False
  log.info("computing %s outputs once, into %s", base.name, path)
  extract = tf.function(lambda pixels: base(pixels, training=False))
  feature_batches, label_batches = [], []
  for pixels, labels in data.batches(images, batch_size, training=False):
    feature_batches.append(extract(pixels).numpy())
    label_batches.append(labels.numpy())
  features = np.concatenate(feature_batches)
  labels = np.concatenate(label_batches)
  tf.io.gfile.makedirs(os.path.dirname(path))
  buffer = io.BytesIO()
  np.savez(buffer, features=features, labels=labels)
  temporary = path + ".partial"
  with tf.io.gfile.GFile(temporary, "wb") as f:
    f.write(buffer.getvalue())
  tf.io.gfile.rename(temporary, path, overwrite=True)  # readers never see a half-written file
  return features, labels, True
