"""Runs an exported headswap SavedModel (trainer/export.py) over images in batches."""

import json
import os
from typing import List, Tuple

import numpy as np
import tensorflow as tf

from trainer import export


def newest_version(path: str) -> str:
  """`path` itself if it is a SavedModel, else its highest numbered version folder."""
  if tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
    return path
  versions = [name for name in tf.io.gfile.listdir(path) if name.strip("/").isdigit()]
  if not versions:
    raise FileNotFoundError(f"{path!r} is neither a SavedModel nor a folder of numbered versions")
  return os.path.join(path, max(versions, key=lambda v: int(v.strip("/"))))


class Classifier:
  """A loaded SavedModel and the class names it was exported with."""

  def __init__(self, path: str):
    self.path = newest_version(path)
    self._signature = tf.saved_model.load(self.path).signatures[export.SERVING_SIGNATURE]
    with tf.io.gfile.GFile(os.path.join(self.path, "assets.extra", export.METADATA_FILE)) as f:
      metadata = json.load(f)
    self.class_names: List[str] = metadata["class_names"]
    self.image_size: int = metadata["image_size"]

  def probabilities(self, encoded_images: List[bytes], batch_size: int = 64) -> np.ndarray:
    batches = [self._signature(images=tf.constant(encoded_images[start:start + batch_size]))
               ["probabilities"].numpy()
               for start in range(0, len(encoded_images), batch_size)]
    return np.concatenate(batches) if batches else np.zeros((0, len(self.class_names)))


def top_k(probabilities: np.ndarray, class_names: List[str], k: int) -> List[List[Tuple[str, float]]]:
  order = np.argsort(-probabilities, axis=-1)[:, :k]
  return [[(class_names[i], float(row[i])) for i in indices]
          for row, indices in zip(probabilities, order)]
