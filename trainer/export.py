"""Exports a trained classifier as a SavedModel that TF Serving and TFMA both load.

Two signatures, one preprocessing path (trainer/preprocessing.py):
  serving_default  images: encoded image bytes [B] (REST: {"b64": ...}), best as ingest
                   stores them (components/image_example_gen/decode.py upright_rgb)
  from_examples    examples: serialized tf.Example [B] (what the Evaluator and the
                   BulkInferrer feed)
Both return probabilities [B, C] and class_index [B]; serving_default also class_name [B] and
classes [B, C] (every class name, in the order of probabilities): the class names are constants
in the graph, so a served model names its classes to any TF Serving client on its own.
from_examples has numeric outputs only (the BulkInferrer's RunInference cannot split a string
output into per-example logs), and phase_1_probabilities [B, C] when phase 2 was kept: what
the model gave before fine-tuning, for the report's test accuracy after each phase.

assets.extra/tf_serving_warmup_requests holds one PredictionLog per signature (TF Serving's
warm-up format): TF Serving, and `headswap serve`, replay them at load so that the first
client request after a push or restart is not the one that pays for the first model call.

ExportedModel loads one back, for evaluation and (with its checks) serving/models.py.

export_tflite writes the same classifier for phones next to it, so a push carries them with the
version: model.tflite (float16 weights) and model_int8.tflite (full-integer, calibrated on
training images). Both take uint8 pixels [1, size, size, 3] as preprocessing.decode_image gives
them (TFLite has no image decoder; the 0-255 rounding makes uint8 exact) and give probabilities
[1, C]; class names and image size ride in each file's metadata, so a file works on its own.
TFLiteModel loads one back.
"""

import json
import os
import re
import tempfile
from typing import Dict, Iterable, List, Optional, Sequence

import keras
import numpy as np
import tensorflow as tf
from tensorflow.lite.python import schema_py_generated as tflite_schema
from tensorflow.lite.tools import flatbuffer_utils
from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

from headswap.components import features, filesystem
from headswap.trainer import preprocessing

SERVING_SIGNATURE = "serving_default"
EXAMPLES_SIGNATURE = "from_examples"
IMAGES_INPUT = "images"
EXAMPLES_INPUT = "examples"
PROBABILITIES = "probabilities"  # the output TFMA scores and the report reads
PHASE_1_PROBABILITIES = "phase_1_probabilities"
CLASSES = "classes"  # every class name per image, where TF Serving's classify signatures have it
METADATA_FILE = "headswap.json"  # in assets.extra: class names and image size for tools
WARMUP_FILE = "tf_serving_warmup_requests"  # in assets.extra: TF Serving's fixed name
INPUT_OF = {SERVING_SIGNATURE: IMAGES_INPUT, EXAMPLES_SIGNATURE: EXAMPLES_INPUT}
VERSION_FOLDER = re.compile(r"[0-9]+")  # the Pusher's staging folders never match
TFLITE_FLOAT16, TFLITE_INT8 = "model.tflite", "model_int8.tflite"  # in the SavedModel's folder
PIXELS_INPUT = "pixels"  # the .tflite files' input
TFLITE_METADATA = "headswap"  # their metadata entry: METADATA_FILE's JSON
CALIBRATION_IMAGES = 300  # training images the int8 model's ranges are measured on


def export_classifier(model: keras.Model, class_names: List[str], image_size: int,
                      path: str, both_phases: Optional[keras.Model] = None) -> str:
  """Writes `model` (0-255 pixels [B, size, size, 3] -> probabilities [B, C]) to `path`;
  `both_phases` (trainer/train.py TrainingRun) serves from_examples if given."""
  names = tf.constant(class_names)

  # One trace of the model for both endpoints. Endpoints that call the model themselves trace
  # it twice each (write_out traces them to list their variables, tf.saved_model.save again
  # for the signatures): four model traces. These endpoints only call this concrete function
  # (from_examples the two-phase model's, traced once more, when there is one), so their own
  # traces are cheap.
  @tf.function(input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32)],
               autograph=False)
  def predict(pixels):
    probabilities = model(pixels, training=False)
    class_index = tf.argmax(probabilities, axis=-1)
    return {PROBABILITIES: probabilities, "class_index": class_index,
            "class_name": tf.gather(names, class_index),
            CLASSES: tf.tile(names[tf.newaxis], [tf.shape(probabilities)[0], 1])}

  predict = predict.get_concrete_function()
  pixels_spec = predict.structured_input_signature[0][0]

  @tf.function(input_signature=[pixels_spec], autograph=False)
  def predict_numbers(pixels):
    if both_phases is None:
      return {name: predict(pixels)[name] for name in (PROBABILITIES, "class_index")}
    probabilities, phase_1 = both_phases(pixels, training=False)
    return {PROBABILITIES: probabilities, "class_index": tf.argmax(probabilities, axis=-1),
            PHASE_1_PROBABILITIES: phase_1}

  predict_numbers = predict_numbers.get_concrete_function()

  def from_images(images):
    return predict(preprocessing.decode_images(images, image_size))

  def from_examples(examples):
    return predict_numbers(preprocessing.decode_images(preprocessing.example_images(examples),
                                                       image_size))

  archive = keras.export.ExportArchive()
  archive.track(model)
  if both_phases is not None:
    archive.track(both_phases)
  archive.add_endpoint(SERVING_SIGNATURE, from_images,
                       input_signature=[tf.TensorSpec([None], tf.string, name=IMAGES_INPUT)])
  archive.add_endpoint(EXAMPLES_SIGNATURE, from_examples,
                       input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
  archive.write_out(path, verbose=False)
  extra = os.path.join(path, "assets.extra")
  tf.io.gfile.makedirs(extra)
  with tf.io.gfile.GFile(os.path.join(extra, METADATA_FILE), "w") as f:
    f.write(_metadata(class_names, image_size))
  _write_warmup_requests(os.path.join(extra, WARMUP_FILE))
  return path


def export_tflite(model: keras.Model, class_names: List[str], image_size: int, folder: str,
                  calibration_pixels: Iterable[np.ndarray]) -> List[str]:
  """Writes TFLITE_FLOAT16 and TFLITE_INT8 of `model` into `folder`; calibration_pixels are
  uint8 [size, size, 3] training images. Returns the two paths."""
  pixels_spec = tf.TensorSpec([1, image_size, image_size, 3], tf.uint8, name=PIXELS_INPUT)
  archive = keras.export.ExportArchive()
  archive.track(model)
  archive.add_endpoint(SERVING_SIGNATURE, lambda pixels: {
      PROBABILITIES: model(tf.cast(pixels, tf.float32), training=False)},
                       input_signature=[pixels_spec])
  calibration = [pixels[np.newaxis] for pixels in calibration_pixels]
  metadata = _metadata(class_names, image_size).encode()
  paths = []
  # TF 2.16 cannot convert a Keras 3 model directly (from_keras_model and
  # from_concrete_functions abort on its variables): it converts the model's SavedModel.
  with tempfile.TemporaryDirectory(prefix="headswap-tflite-") as saved_model:
    archive.write_out(saved_model, verbose=False)
    for name in (TFLITE_FLOAT16, TFLITE_INT8):
      converter = tf.lite.TFLiteConverter.from_saved_model(saved_model)
      converter.optimizations = [tf.lite.Optimize.DEFAULT]
      if name == TFLITE_FLOAT16:
        converter.target_spec.supported_types = [tf.float16]
      else:  # the uint8 input stays as it is (a Cast inside), the probabilities float
        converter.representative_dataset = lambda: ([pixels] for pixels in calibration)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
      paths.append(os.path.join(folder, name))
      with tf.io.gfile.GFile(paths[-1], "wb") as f:
        f.write(_with_metadata(converter.convert(), metadata))
  return paths


def _metadata(class_names: List[str], image_size: int) -> str:
  """METADATA_FILE's JSON, also each .tflite file's TFLITE_METADATA entry."""
  return json.dumps({"class_names": list(class_names), "image_size": image_size})


def _with_metadata(content: bytes, metadata: bytes) -> bytes:
  """The .tflite `content` with `metadata` as its TFLITE_METADATA entry (a flatbuffer
  metadata buffer, which interpreters ignore)."""
  model = flatbuffer_utils.convert_bytearray_to_object(bytearray(content))
  buffer = tflite_schema.BufferT()
  buffer.data = np.frombuffer(metadata, np.uint8)
  model.buffers.append(buffer)
  entry = tflite_schema.MetadataT()
  entry.name, entry.buffer = TFLITE_METADATA, len(model.buffers) - 1
  model.metadata = (model.metadata or []) + [entry]
  return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def sample_image() -> bytes:
  """A small black PNG: what warm-up requests and the server's load check send."""
  return tf.io.encode_png(tf.zeros([8, 8, 3], tf.uint8)).numpy()


def _write_warmup_requests(path: str) -> None:
  image = sample_image()
  example = tf.train.Example(features=tf.train.Features(feature={
      features.IMAGE: tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))}))
  with tf.io.TFRecordWriter(path) as writer:
    for signature, value in ((SERVING_SIGNATURE, image),
                             (EXAMPLES_SIGNATURE, example.SerializeToString())):
      request = predict_pb2.PredictRequest(
          model_spec=model_pb2.ModelSpec(signature_name=signature),
          inputs={INPUT_OF[signature]: tf.make_tensor_proto([value])})
      writer.write(prediction_log_pb2.PredictionLog(
          predict_log=prediction_log_pb2.PredictLog(request=request)).SerializeToString())


class ExportedModel:
  """A SavedModel export_classifier wrote, and the class names it was exported with."""

  def __init__(self, path: str):
    self.path = path
    self._saved_model = tf.saved_model.load(path)  # owns the variables the signature reads
    self.serve = self._saved_model.signatures[SERVING_SIGNATURE]
    with filesystem.open_file(os.path.join(path, "assets.extra", METADATA_FILE)) as f:
      self.class_names: List[str] = json.load(f)["class_names"]

  def probabilities(self, encoded_images: Sequence[bytes], batch_size: int = 64) -> np.ndarray:
    """[images, classes], batch_size images per call."""
    batches = [self.serve(images=tf.constant(list(encoded_images[start:start + batch_size])))
               [PROBABILITIES].numpy()
               for start in range(0, len(encoded_images), batch_size)]
    return np.concatenate(batches) if batches else np.zeros((0, len(self.class_names)))


class TFLiteModel:
  """A .tflite export_tflite wrote, local or gs://."""

  def __init__(self, path: str):
    self.path = path
    with filesystem.open_file(path) as f:
      content = f.read()
    self.size_bytes = len(content)
    model = tflite_schema.Model.GetRootAs(content)
    entries = {model.Metadata(i).Name(): model.Metadata(i).Buffer()
               for i in range(model.MetadataLength())}
    if TFLITE_METADATA.encode() not in entries:
      raise ValueError(f"{path} has no {TFLITE_METADATA!r} metadata: not a headswap export")
    metadata = json.loads(model.Buffers(entries[TFLITE_METADATA.encode()]).DataAsNumpy().tobytes())
    self.class_names: List[str] = metadata["class_names"]
    self.image_size: int = metadata["image_size"]
    self._run = tf.lite.Interpreter(model_content=content).get_signature_runner()

  def pixel_probabilities(self, images: Iterable[np.ndarray]) -> np.ndarray:
    """[images, classes] of uint8 images [size, size, 3], one interpreter call each (its
    input holds one)."""
    rows = [self._run(**{PIXELS_INPUT: pixels[np.newaxis].astype(np.uint8)})[PROBABILITIES][0]
            for pixels in images]
    return np.array(rows).reshape(-1, len(self.class_names))

  def probabilities(self, encoded_images: Sequence[bytes]) -> np.ndarray:
    """[images, classes], decoded as the SavedModel decodes them."""
    return self.pixel_probabilities(
        preprocessing.decode_image(tf.constant(image), self.image_size).numpy()
        for image in encoded_images)


def version_paths(base_path: str) -> Dict[int, str]:
  """{version: SavedModel folder} of the published versions under base_path: its numbered
  folders, or base_path itself as version 1 if it is a SavedModel (what Vertex AI's
  AIP_STORAGE_URI usually names; TF Serving numbers from 1 too)."""
  if filesystem.exists(os.path.join(base_path, "saved_model.pb")):
    return {1: base_path}
  try:
    entries = filesystem.scan(base_path)
  except FileNotFoundError:
    return {}
  return {int(name): os.path.join(base_path, name) for name, is_folder in entries
          if is_folder and VERSION_FOLDER.fullmatch(name)}


def resolve_saved_model(path: str) -> str:
  """`path` itself if it is a SavedModel, else its newest version folder."""
  versions = version_paths(path)
  if not versions:
    raise FileNotFoundError(f"{path} is neither a SavedModel nor a folder of numbered versions")
  return versions[max(versions)]
