"""Exported model versions, on disk or gs://, loaded for serving (the contract is
trainer/export.py)."""

import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import tensorflow as tf
from google.protobuf import json_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import prediction_log_pb2

from headswap.components import filesystem
from headswap.serving.errors import RequestError, bad_request
from headswap.trainer import export

log = logging.getLogger("headswap")
story = logging.getLogger("headswap.console")  # on the console too (pipeline/console.py)


Outputs = Dict[str, Any]  # one instance's outputs, by name, as JSON values
Outcome = Union[Outputs, RequestError]  # per instance: an answer, or why its bytes failed


class LoadedModel(export.ExportedModel):
  """One SavedModel version, checked and warmed up before it serves, callable on a batch of
  encoded images (serving_default) or serialized tf.Examples (from_examples)."""

  def __init__(self, path: str, version: int = 0):
    super().__init__(path)
    self.version = version
    self.signature_defs = _signature_defs(path)
    self._check_contract()
    self._warm_up()

  def predict(self, values: Sequence[bytes],
              signature: str = export.SERVING_SIGNATURE) -> List[Outcome]:
    """One model call for all values. If the graph rejects one (an image with a valid header
    but corrupt data, bytes that are no tf.Example), each is retried alone so only the bad
    one fails."""
    try:
      outputs = self._saved_model.signatures[signature](
          **{export.INPUT_OF[signature]: tf.constant(list(values))})
    except tf.errors.InvalidArgumentError as error:
      if len(values) == 1:
        return [bad_request(f"the model could not read it: {_reason(error)}")]
      return [outcome for value in values for outcome in self.predict([value], signature)]
    columns = {name: _json_values(tensor.numpy()) for name, tensor in outputs.items()}
    return [{name: column[row] for name, column in columns.items()}
            for row in range(len(values))]

  def _check_contract(self):
    """A call on one small image before serving: a version that does not keep the contract
    fails here rather than on a client's request."""
    (outcome,) = self.predict([export.sample_image()])
    if not isinstance(outcome, dict) or len(outcome.get(export.PROBABILITIES, ())) != len(
        self.class_names):
      raise ValueError(f"{self.path} does not answer with one probability per class name "
                       f"({len(self.class_names)}): {outcome}")

  def _warm_up(self):
    """Replays assets.extra/tf_serving_warmup_requests, as TF Serving does at load: each
    signature's first call traces and allocates, and a client should not wait for that. A
    request that fails fails the load, as in TF Serving."""
    path = os.path.join(self.path, "assets.extra", export.WARMUP_FILE)
    if not filesystem.exists(path):  # exported before warm-up requests were written
      return
    for index, record in enumerate(tf.data.TFRecordDataset(path).as_numpy_iterator()):
      request = prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
      signature = request.model_spec.signature_name or export.SERVING_SIGNATURE
      try:
        self._saved_model.signatures[signature](
            **{name: tf.make_ndarray(tensor) for name, tensor in request.inputs.items()})
      except (KeyError, TypeError, tf.errors.OpError) as error:
        raise ValueError(f"warm-up request {index} of {path} ({signature!r}) failed: "
                         f"{type(error).__name__}: {error}") from error


class LoadedTFLite(export.TFLiteModel):
  """A .tflite export_tflite wrote, callable as LoadedModel is on encoded images."""

  def predict(self, values: Sequence[bytes]) -> List[Outcome]:
    outcomes = []
    for value in values:  # one at a time: the interpreter's input holds one image
      try:
        outcomes.append({export.PROBABILITIES: self.probabilities([value])[0].tolist()})
      except tf.errors.InvalidArgumentError as error:  # a valid header over corrupt data
        outcomes.append(bad_request(f"the model could not read it: {_reason(error)}"))
    return outcomes


def _json_values(array: np.ndarray) -> list:
  """A batch of outputs as JSON values: strings decoded, as TF Serving gives DT_STRING."""
  if array.dtype == object:
    array = np.char.decode(array.astype(bytes), "utf-8")
  return array.tolist()


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
