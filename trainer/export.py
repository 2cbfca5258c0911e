"""Exports a trained classifier as a SavedModel that TF Serving and TFMA both load.

Two signatures, one preprocessing path (trainer/preprocessing.py):
  serving_default  images: encoded image bytes [B] (REST: {"b64": ...}), best as ingest
                   stores them (components/image_example_gen/decode.py upright_rgb)
  from_examples    examples: serialized tf.Example [B] (what the Evaluator and the
                   BulkInferrer feed)
Both return probabilities [B, C] and class_index [B]; serving_default also class_name [B]: the
class names are constants in the graph, so a served model names its classes on its own.
(from_examples has numeric outputs only: the BulkInferrer's RunInference cannot split a string
output into per-example logs.)
"""

import json
import os
from typing import List

import keras
import tensorflow as tf

from trainer import preprocessing

SERVING_SIGNATURE = "serving_default"
EXAMPLES_SIGNATURE = "from_examples"
IMAGES_INPUT = "images"
EXAMPLES_INPUT = "examples"
PROBABILITIES = "probabilities"  # the output TFMA scores and the report reads
METADATA_FILE = "headswap.json"  # in assets.extra: class names and image size for tools


def export_classifier(model: keras.Model, class_names: List[str], image_size: int,
                      path: str) -> str:
  """Writes `model` (0-255 pixels [B, size, size, 3] -> probabilities [B, C]) to `path`."""
  names = tf.constant(class_names)

  # One trace of the model for both endpoints. Endpoints that call the model themselves trace
  # it twice each (write_out traces them to list their variables, tf.saved_model.save again
  # for the signatures): four model traces. These endpoints only call this concrete function,
  # so their own traces are cheap.
  @tf.function(input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32)],
               autograph=False)
  def predict(pixels):
    probabilities = model(pixels, training=False)
    class_index = tf.argmax(probabilities, axis=-1)
    return {PROBABILITIES: probabilities, "class_index": class_index,
            "class_name": tf.gather(names, class_index)}

  predict = predict.get_concrete_function()

  def from_images(images):
    return predict(preprocessing.decode_images(images, image_size))

  def from_examples(examples):
    images, _ = preprocessing.parse_examples(examples)
    outputs = predict(preprocessing.decode_images(images, image_size))
    return {name: outputs[name] for name in (PROBABILITIES, "class_index")}

  archive = keras.export.ExportArchive()
  archive.track(model)
  archive.add_endpoint(SERVING_SIGNATURE, from_images,
                       input_signature=[tf.TensorSpec([None], tf.string, name=IMAGES_INPUT)])
  archive.add_endpoint(EXAMPLES_SIGNATURE, from_examples,
                       input_signature=[tf.TensorSpec([None], tf.string, name=EXAMPLES_INPUT)])
  archive.write_out(path, verbose=False)
  extra = os.path.join(path, "assets.extra")
  tf.io.gfile.makedirs(extra)
  with tf.io.gfile.GFile(os.path.join(extra, METADATA_FILE), "w") as f:
    json.dump({"class_names": list(class_names), "image_size": image_size}, f)
  return path
