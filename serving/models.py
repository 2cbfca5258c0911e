"""Exported model versions, on disk or gs://, loaded for serving (the contract is
trainer/export.py)."""

import dataclasses
import io
import logging
import os
from typing import Dict, List, Optional, Sequence, Tuple, Union

import tensorflow as tf
from google.protobuf import json_format
from PIL import Image
from tensorflow.core.protobuf import saved_model_pb2

from components import filesystem
from serving.errors import RequestError, bad_request
from trainer import export

log = logging.getLogger("headswap")
story = logging.getLogger("headswap.console")  # on the console too (pipeline/console.py)


@dataclasses.dataclass(frozen=True)
class Prediction:
  probabilities: List[float]
  class_index: int
  class_name: str


Outcome = Union[Prediction, RequestError]  # per image: an answer, or why its bytes failed


class LoadedModel(export.ExportedModel):
  """One SavedModel version, checked before it serves, callable on a batch of encoded images."""

  def __init__(self, path: str, version: int = 0):
    super().__init__(path)
    self.version = version
    self.signature_defs = _signature_defs(path)
    self._check_contract()

  def predict(self, images: Sequence[bytes]) -> List[Outcome]:
    """One model call for all images. If the decoder rejects one (bytes with a valid header
    but corrupt data), each image is retried alone so only the bad one fails."""
    try:
      outputs = self.serve(images=tf.constant(list(images)))
    except tf.errors.InvalidArgumentError as error:
      if len(images) == 1:
        return [bad_request(f"the model could not decode the image: {_reason(error)}")]
      return [outcome for image in images for outcome in self.predict([image])]
    return [Prediction(probabilities.tolist(), int(index), name.decode())
            for probabilities, index, name in zip(outputs["probabilities"].numpy(),
                                                  outputs["class_index"].numpy(),
                                                  outputs["class_name"].numpy())]

  def _check_contract(self):
    """A call on one small image before serving: traces nothing later, and a version that
    does not keep the contract fails here rather than on a client's request."""
    pixel = io.BytesIO()
    Image.new("RGB", (8, 8)).save(pixel, format="PNG")
    (outcome,) = self.predict([pixel.getvalue()])
    if not isinstance(outcome, Prediction) or len(outcome.probabilities) != len(self.class_names):
      raise ValueError(f"{self.path} does not answer with one probability per class name "
                       f"({len(self.class_names)}): {outcome}")


def _reason(error: tf.errors.OpError) -> str:
  """TensorFlow's own message without the graph location around it."""
  return error.message.split("\n\t [[")[0].strip().splitlines()[-1]


def _signature_defs(path: str) -> Dict:
  """The SignatureDefs as TF Serving's metadata API prints them (proto field names)."""
  with filesystem.open_file(os.path.join(path, "saved_model.pb")) as f:
    saved_model = saved_model_pb2.SavedModel.FromString(f.read())
  return {name: json_format.MessageToDict(signature, preserving_proto_field_name=True,
                                          including_default_value_fields=True)
          for name, signature in saved_model.meta_graphs[0].signature_def.items()}


class ServedVersions:
  """The newest loadable version under a base path, as TF Serving's default policy serves:
  a newer push replaces it, and deleting its folder rolls back to the next newest.

  `current` is swapped by one reference assignment, so a request resolves to one complete
  model, and a batch already running keeps its model alive until it finishes.
  """

  def __init__(self, base_path: str):
    self.base_path = base_path
    self.current: Optional[LoadedModel] = None
    self.failed: Dict[int, str] = {}  # versions that would not load, and why
    # What each failed version's folder held: it is retried once its files change (a copy
    # into the folder that was still running when it was first seen).
    self._failed_files: Dict[int, Tuple] = {}

  def refresh(self) -> None:
    """Serves the newest version on disk that loads, if it is not served already."""
    on_disk = export.version_paths(self.base_path)
    for gone in set(self.failed) - set(on_disk):
      del self.failed[gone], self._failed_files[gone]
    for version, path in sorted(on_disk.items(), reverse=True):
      if self.current and version == self.current.version:
        return
      files = _files_of(path)
      if self._failed_files.get(version) == files:
        continue
      try:
        model = LoadedModel(path, version)
      except Exception as error:  # a broken push must not stop the served version
        self.failed[version] = f"{type(error).__name__}: {error}"
        self._failed_files[version] = files
        log.error("not serving version %d of %s: %s", version, self.base_path,
                  self.failed[version])
        continue
      self.failed.pop(version, None)
      self._failed_files.pop(version, None)
      story.info("serving version %d (%s)", version, path)
      self.current = model
      return


def _files_of(folder: str) -> Tuple:
  """(path, size, mtime) of every file under folder: changes whenever its content does."""
  return tuple(filesystem.walk_files(folder))
