"""Outputs of the frozen base, computed once per dataset and backbone and shared.

The Trainer's fast paths and every Tuner trial read the same cache files, so the base runs
over the images once however many heads and fine-tune depths are trained on top of it.
"""

import dataclasses
import hashlib
import logging
import os
import uuid
import weakref
from typing import Dict, List, Optional, Sequence, Tuple

import keras
import numpy as np
import tensorflow as tf

from headswap.components.progress import Advance, ignore, progress
from headswap.trainer import data
from headswap.trainer.backbones import registry

log = logging.getLogger("headswap")

Outputs = Tuple[np.ndarray, np.ndarray]  # (outputs [N, ...], labels [N])
POOLED, ACTIVATIONS = "pooled", "activations"
# In the key: files cached in another example order must not be read as this one's.
EXAMPLE_ORDER = "files-in-name-order"


def cache_path(cache_dir: str, file_patterns: List[str], backbone: str, weights: str,
               image_size: int, cut: str = "", views: str = "") -> str:
  """Changes when the examples (names and sizes) or the base change; `cut` names the layer
  whose input is cached ("" for the pooled features), `views` the augmented views."""
  digest = hashlib.sha256(f"{EXAMPLE_ORDER}|{backbone}|{weights}|{image_size}"
                          f"{'|' + cut if cut else ''}{'|' + views if views else ''}".encode())
  for path in sorted(tf.io.gfile.glob(file_patterns)):
    digest.update(f"{path}|{tf.io.gfile.stat(path).length}".encode())
  return os.path.join(cache_dir, digest.hexdigest()[:24] + ".npy")


@dataclasses.dataclass
class Split:
  files: List[str]
  images: tf.data.Dataset  # data.decoded_images of the files
  # The image and views - 1 augmented views of it (data.views): the training split's.
  views: int = 1


class FrozenOutputs:
  """Per split, the frozen base's pooled features and its activations where the top k blocks
  begin (what fine-tuning on cached activations trains from), each read from or written to
  the cache; of every view of each image, view-major (data.views).

  The images go through the base once per view, up to the deepest cut asked for
  (`deepest_cut`); the pooled features and the shallower cuts follow from those activations
  through the blocks above it, a small share of the compute."""

  def __init__(self, base: keras.Model, splits: List[Split], cache_dir: str, backbone: str,
               weights: str, batch_size: int, deepest_cut: int = 0,
               augmentations: Sequence[str] = (), seed: int = 0):
    self._base = base
    self._splits = splits
    self._cache_dir = cache_dir
    self._key = (backbone, weights, base.input_shape[1])
    self._batch_size = batch_size
    self._deepest = deepest_cut
    self._augmentations = list(augmentations)
    self._seed = seed
    # Each part of the base built once: both splits then run one traced function of it.
    self._parts: Dict[Tuple[Optional[int], int], keras.Model] = {}
    self.computed: Dict[str, int] = {POOLED: 0, ACTIVATIONS: 0}  # cache files written

  def pooled_features(self) -> List[Outputs]:
    """(features, labels) per split."""
    return [self._split_outputs(split, 0) for split in range(len(self._splits))]

  def activations(self, blocks: int) -> List[Outputs]:
    """(input of the top `blocks` blocks, labels) per split."""
    if not blocks:
      raise ValueError("activations are cut below at least one block")
    return [self._split_outputs(split, blocks) for split in range(len(self._splits))]

  def _split_outputs(self, split: int, blocks: int) -> Outputs:
    chosen = self._splits[split]
    files, images, views = chosen.files, chosen.images, chosen.views
    views_key = (f"{views}|mirror-first|{','.join(self._augmentations)}|{self._seed}|"
                 f"{data.CROP_AREAS}|{data.CROP_ASPECT_RATIOS}" if views > 1 else "")
    path = cache_path(self._cache_dir, files, *self._key, f"top{blocks}" if blocks else "",
                      views_key)
    if tf.io.gfile.exists(path):
      return read(path)
    if blocks < self._deepest:
      below = self._split_outputs(split, self._deepest)
      part = self._part(self._deepest, blocks)
      batches = data.inference_batches(data.examples_of(*below), self._batch_size)
      total = len(below[1])
    else:
      part = self._part(None, blocks)
      batches = data.inference_batches(
          data.views(images, views, self._augmentations, self._seed), self._batch_size)
      total = data.example_count(files) * views
    outputs = f"below its top {blocks} blocks" if blocks else "(pooled)"
    log.info("computing %s outputs %s of %d view(s) once, into %s", self._base.name, outputs,
             views, path)
    with progress(f"{self._base.name} outputs {outputs}", total,
                  "images" if views == 1 else "views") as advance:
      features, labels = outputs_of(part, batches, advance)
    _write(path, features, labels)
    self.computed[ACTIVATIONS if blocks else POOLED] += 1
    return features, labels

  def _part(self, from_top: Optional[int], to_top: int) -> keras.Model:
    if (from_top, to_top) not in self._parts:
      self._parts[from_top, to_top] = registry.section(self._base, from_top, to_top)
    return self._parts[from_top, to_top]


def outputs_of(part: keras.Model, batches: tf.data.Dataset, advance: Advance = ignore) -> Outputs:
  """`part`'s outputs (training=False) and the labels over (inputs, labels) batches."""
  return collect(inference_function(part), batches, advance)


# One traced inference function per model, whatever the batch size: a split's short last
# batch, the other split and a Tuner trial's next fold reuse the trace (of a base: seconds).
_inference_functions = weakref.WeakKeyDictionary()


def inference_function(model: keras.Model):
  """model(inputs, training=False) as a tf.function traced once, any batch size."""
  if model not in _inference_functions:
    _inference_functions[model] = tf.function(
        lambda inputs: model(inputs, training=False),
        input_signature=[tf.TensorSpec((None, *model.input_shape[1:]), tf.float32)])
  return _inference_functions[model]


def collect(predict, batches: tf.data.Dataset, advance: Advance = ignore) -> Outputs:
  """predict(inputs) and the labels over (inputs, labels) batches, as arrays; advance(n)
  after each batch of n."""
  output_batches, label_batches = [], []
  for inputs, labels in batches:
    output_batches.append(predict(inputs).numpy())
    label_batches.append(labels.numpy())
    advance(len(label_batches[-1]))
  return _stacked(output_batches), np.concatenate(label_batches)


def _stacked(batches: List[np.ndarray]) -> np.ndarray:
  """np.concatenate(batches), each batch freed once copied: the activations of two views at
  300 px are ~0.5 GB, and holding them twice made a run's peak memory."""
  stacked = np.empty((sum(len(batch) for batch in batches), *batches[0].shape[1:]),
                     batches[0].dtype)
  start = 0
  batches.reverse()
  while batches:
    batch = batches.pop()
    stacked[start:start + len(batch)] = batch
    start += len(batch)
  return stacked


def read(path: str) -> Outputs:
  """A cache file's (outputs, labels), read into the arrays in chunks: no copy of the file."""
  with tf.io.gfile.GFile(path, "rb") as f:
    return np.load(f), np.load(f)


def _write(path: str, features: np.ndarray, labels: np.ndarray) -> None:
  """Two .npy records, features then labels, streamed in chunks: the activations of two views
  at 300 px run to ~1 GB, and a copy of them in memory pushed a run past 6 GiB."""
  tf.io.gfile.makedirs(os.path.dirname(path))
  # Named per writer: workers of a multi-worker run compute the same file at once.
  temporary = f"{path}.partial-{uuid.uuid4().hex}"
  with tf.io.gfile.GFile(temporary, "wb") as f:
    np.save(f, features)
    np.save(f, labels)
  tf.io.gfile.rename(temporary, path, overwrite=True)  # readers never see a half-written file
