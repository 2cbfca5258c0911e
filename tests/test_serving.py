"""The REST server on a real exported model, over real loopback HTTP (uvicorn in a thread)."""

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import threading
import time
from typing import Tuple

import httpx
import keras
import numpy as np
import pytest
import tensorflow as tf
import uvicorn
from PIL import Image, ImageOps
from tensorflow_serving.apis import prediction_log_pb2

from headswap.components.image_example_gen import decode
from headswap.pipeline import cli
from headswap.serving import cli as serving_cli, client
from headswap.serving.config import ServerConfig
from headswap.serving.errors import MAX_MESSAGE_CHARS
from headswap.serving.server import NoModelError, uvicorn_config
from headswap.trainer import export
from headswap.trainer.backbones import registry
from headswap.trainer.hparams import HParams
from headswap.trainer.model import build_classifier, build_head
from tests.conftest import CLASS_COLOURS, ROTATED, encode, make_image, write_formats

NAME = "pets"
SIZE = 64
CLASSES = sorted(CLASS_COLOURS)
LIMITS = dict(max_instances=4, max_body_bytes=100_000, max_pixels=100 * 100)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  """The Trainer's classifier on a random EfficientNet-Lite0 at 64 px (as in test_trainer.py),
  exported once: every pushed version below is a copy of it."""
  base = registry.build_base("efficientnet_lite0", None, SIZE)
  classifier = build_classifier(base, build_head(base.output_shape[-1], len(CLASSES), HParams()))
  return export.export_classifier(classifier, CLASSES, SIZE,
                                  str(tmp_path_factory.mktemp("export") / "model"))


def publish(exported: str, base_path: str, version: int) -> str:
  """As the Pusher does: copy to a staging folder, then rename it into place."""
  staging = os.path.join(base_path, f".staging-{version}")
  shutil.copytree(exported, staging)
  path = os.path.join(base_path, str(version))
  os.rename(staging, path)
  return path


def jpeg(seed: int, size: int = 64) -> bytes:
  data = io.BytesIO()
  make_image(CLASS_COLOURS[CLASSES[seed % 2]], seed, size).save(data, format="JPEG")
  return data.getvalue()


def truncated(data: bytes) -> bytes:
  """A valid header over cut-off pixel data: passes the header check, fails in the model."""
  return data[:len(data) // 2]


def b64(data: bytes) -> dict:
  return {"b64": base64.b64encode(data).decode()}


def row_request(*images: bytes) -> dict:
  return {"instances": [b64(image) for image in images]}


def tf_example(image: bytes, label=None) -> bytes:
  """A serialized tf.Example as ingest writes it (a label only if given)."""
  feature = {"image": tf.train.Feature(bytes_list=tf.train.BytesList(value=[image]))}
  if label is not None:
    feature["label"] = tf.train.Feature(int64_list=tf.train.Int64List(value=[label]))
  return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


@contextlib.contextmanager
def running_server(config: ServerConfig):
  server = uvicorn.Server(uvicorn_config(config, log_level="warning"))
  listening = socket.socket()
  listening.bind(("127.0.0.1", 0))
  thread = threading.Thread(target=server.run, kwargs={"sockets": [listening]}, daemon=True)
  thread.start()
  deadline = time.monotonic() + 30
  while not server.started:
    assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
    time.sleep(0.01)
  try:
    yield f"http://127.0.0.1:{listening.getsockname()[1]}"
  finally:
    server.should_exit = True
    thread.join(30)
    listening.close()


@pytest.fixture(scope="module")
def base_path(tmp_path_factory, exported):
  path = str(tmp_path_factory.mktemp("serving") / NAME)
  os.makedirs(path)
  publish(exported, path, 1)
  return path


@pytest.fixture(scope="module")
def url(base_path):
  # A long batch timeout, so requests sent together surely meet in one batch.
  with running_server(ServerConfig(base_path, batch_timeout_ms=50, max_batch_size=8,
                                   read_timeout_seconds=1.0, **LIMITS,
                                   version_labels={"stable": 1, "canary": 2})) as address:
    yield address


@pytest.fixture(scope="module")
def layout_model(tmp_path_factory):
  """A model whose answer changes with where colours are in an image (the untrained classifier
  above answers [0.5, 0.5] to any image), to tell how an image was decoded."""
  keras.utils.set_random_seed(0)
  model = keras.Sequential([keras.Input((SIZE, SIZE, 3)), keras.layers.Rescaling(1 / 255),
                            keras.layers.AveragePooling2D(16), keras.layers.Flatten(),
                            keras.layers.Dense(len(CLASSES), activation="softmax")])
  base_path = tmp_path_factory.mktemp("layout") / NAME
  return export.export_classifier(model, CLASSES, SIZE, str(base_path / "1"))


@pytest.fixture(scope="module")
def layout_url(layout_model):
  with running_server(ServerConfig(os.path.dirname(layout_model), **LIMITS)) as address:
    yield address


@pytest.fixture(scope="module")
def model_probabilities(layout_model):
  """The layout model's own probabilities of encoded images: what TF Serving would answer."""
  signature = tf.saved_model.load(layout_model).signatures["serving_default"]
  return lambda images: signature(images=tf.constant(images))["probabilities"].numpy()


def batches(url: str) -> float:
  metrics = httpx.get(f"{url}/monitoring/prometheus/metrics").text
  return float(next(line.split()[-1] for line in metrics.splitlines()
                    if line.startswith("headswap_batches_total")))


def assert_serves(url: str) -> None:
  response = httpx.post(f"{url}/v1/models/{NAME}:predict", json=row_request(jpeg(0)))
  assert response.status_code == 200, response.text
  assert response.json()["predictions"][0]["class_name"] in CLASSES


def test_status_and_metadata_as_tf_serving_gives_them(url):
  available = {"model_version_status": [{"version": "1", "state": "AVAILABLE",
                                         "status": {"error_code": "OK", "error_message": ""}}]}
  assert httpx.get(f"{url}/v1/models/{NAME}").json() == available
  assert httpx.get(f"{url}/v1/models/{NAME}/versions/1").json() == available
  assert httpx.get(f"{url}/health").json() == available

  metadata = httpx.get(f"{url}/v1/models/{NAME}/metadata").json()
  assert metadata["model_spec"] == {"name": NAME, "signature_name": "", "version": "1"}
  assert list(metadata["metadata"]) == ["signature_def"]  # nothing TF Serving would not give
  signature_map = metadata["metadata"]["signature_def"]
  assert set(signature_map) == {"@type", "signature_def"}
  assert signature_map["@type"] == "type.googleapis.com/tensorflow.serving.SignatureDefMap"
  assert {"serving_default", "from_examples"} <= set(signature_map["signature_def"])
  serving_default = signature_map["signature_def"]["serving_default"]
  assert serving_default["method_name"] == "tensorflow/serving/predict"
  assert serving_default["inputs"]["images"]["dtype"] == "DT_STRING"
  assert set(serving_default["outputs"]) == {"probabilities", "class_index", "class_name",
                                             "classes"}
  assert serving_default["outputs"]["classes"]["dtype"] == "DT_STRING"
  # from_examples stays numeric: the BulkInferrer cannot split a string output per example.
  from_examples = signature_map["signature_def"]["from_examples"]
  assert {output["dtype"] for output in from_examples["outputs"].values()} <= {
      "DT_FLOAT", "DT_INT64"}
  assert httpx.get(f"{url}/v1/models/{NAME}/versions/1/metadata").json() == metadata


def saved_model_outputs(base_path: str, images) -> dict:
  """Version 1's own answer: upright RGB JPEGs are served byte for byte."""
  return tf.saved_model.load(os.path.join(base_path, "1")).signatures["serving_default"](
      images=tf.constant(images))


def test_predictions_match_the_saved_model_in_row_and_columnar_format(url, base_path):
  images = [jpeg(seed) for seed in range(3)]
  expected = saved_model_outputs(base_path, images)
  predict = f"{url}/v1/models/{NAME}:predict"

  rows = [{"b64": b64(images[0])["b64"]}, {"images": b64(images[1])}, b64(images[2])]
  predictions = httpx.post(predict, json={"instances": rows}).json()["predictions"]
  np.testing.assert_allclose([p["probabilities"] for p in predictions],
                             expected["probabilities"].numpy(), rtol=1e-5, atol=1e-6)
  assert [p["class_index"] for p in predictions] == expected["class_index"].numpy().tolist()
  assert [p["class_name"].encode() for p in predictions] == expected["class_name"].numpy().tolist()
  assert [p["classes"] for p in predictions] == [CLASSES] * 3

  column = [b64(image) for image in images]
  for inputs in ({"images": column}, column):
    outputs = httpx.post(f"{url}/v1/models/{NAME}/versions/1:predict",
                         json={"inputs": inputs}).json()["outputs"]
    np.testing.assert_allclose(outputs["probabilities"], expected["probabilities"].numpy(),
                               rtol=1e-5, atol=1e-6)
    assert outputs["class_index"] == expected["class_index"].numpy().tolist()
    assert outputs["class_name"] == [name.decode() for name in expected["class_name"].numpy()]
    assert outputs["classes"] == [CLASSES] * 3


def test_classify_and_regress_answer_as_tf_serving_documents_them(url, base_path):
  """https://www.tensorflow.org/tfx/serving/api_rest. Its classification request, under
  "Encoding binary values" (our model's signature is the default one, so no signature_name):
      {"signature_name": "classify_objects",
       "examples": [{"image": { "b64": "aW1hZ2UgYnl0ZXM=" }, "caption": "seaside"},
                    {"image": { "b64": "YXdlc29tZSBpbWFnZSBieXRlcw==" }, "caption": "mountains"}]}
  and the Classify response, under "Response format":
      {"result": [
          // List of class label/score pairs for first Example (in request)
          [ [<label1>, <score1>], [<label2>, <score2>], ... ],
          ... ]}
  """
  images = [jpeg(4), jpeg(5)]
  expected = saved_model_outputs(base_path, images)["probabilities"].numpy()
  request = {"examples": [{"image": b64(images[0]), "caption": "seaside"},
                          {"image": [b64(images[1])], "caption": "mountains"}]}  # value or list
  response = httpx.post(f"{url}/v1/models/{NAME}:classify", json=request)
  assert response.status_code == 200, response.text
  result = response.json()
  assert list(result) == ["result"] and len(result["result"]) == 2
  for pairs, probabilities in zip(result["result"], expected):
    assert [label for label, _ in pairs] == CLASSES
    np.testing.assert_allclose([score for _, score in pairs], probabilities, rtol=1e-5,
                               atol=1e-6)
  # "context": features shared by all examples.
  shared = {"context": {"image": b64(images[0])}, "examples": [{"caption": "seaside"}]}
  response = httpx.post(f"{url}/v1/models/{NAME}/versions/1:classify", json=shared)
  assert response.json()["result"] == result["result"][:1]

  # The page's regress call, on a model with no regression signature: a clear 400.
  regress = {"signature_name": "tensorflow/serving/regress", "examples": [{"x": 1.0}]}
  response = httpx.post(f"{url}/v1/models/{NAME}:regress", json=regress)
  assert response.status_code == 400 and ":classify" in response.json()["error"]


def test_predict_on_the_from_examples_signature(layout_url, layout_model, model_probabilities):
  """TF Serving serves every signature: from_examples takes serialized tf.Examples (labelled,
  as the Evaluator sends them, or not), b64 as any binary DT_STRING, and answers as the
  SavedModel's from_examples does, with the same probabilities as the images themselves."""
  images = [jpeg(6), jpeg(7)]
  examples = [tf_example(images[0], label=1), tf_example(images[1])]
  expected = tf.saved_model.load(layout_model).signatures["from_examples"](
      examples=tf.constant(examples))
  np.testing.assert_allclose(expected["probabilities"].numpy(), model_probabilities(images),
                             rtol=1e-5, atol=1e-6)
  predict = f"{layout_url}/v1/models/{NAME}:predict"

  rows = {"signature_name": "from_examples",
          "instances": [b64(examples[0]), {"examples": b64(examples[1])}]}
  response = httpx.post(predict, json=rows)
  assert response.status_code == 200, response.text
  predictions = response.json()["predictions"]
  assert [set(p) for p in predictions] == [{"probabilities", "class_index"}] * 2  # numeric only
  np.testing.assert_allclose([p["probabilities"] for p in predictions],
                             expected["probabilities"].numpy(), rtol=1e-5, atol=1e-6)
  assert [p["class_index"] for p in predictions] == expected["class_index"].numpy().tolist()

  columns = {"signature_name": "from_examples", "inputs": {"examples": rows["instances"][:1]}}
  outputs = httpx.post(predict, json=columns).json()["outputs"]
  np.testing.assert_allclose(outputs["probabilities"], expected["probabilities"].numpy()[:1],
                             rtol=1e-5, atol=1e-6)


def _shape(value):
  """A JSON value with its leaves replaced by their types and lists by their first item: what a
  client parsing the response relies on."""
  if isinstance(value, dict):
    return {key: _shape(item) for key, item in value.items()}
  if isinstance(value, list):
    return [_shape(value[0])] if value else []
  return "number" if isinstance(value, (int, float)) else type(value).__name__


# Responses recorded from TF Serving's REST documentation (tensorflow_serving/g3doc/
# api_rest.md, https://www.tensorflow.org/tfx/serving/api_rest), for its half_plus_three model;
# no tensorflow_model_server binary is reachable here.
DOCUMENTED_STATUS = """{
 "model_version_status": [
  {
   "version": "123",
   "state": "AVAILABLE",
   "status": {
    "error_code": "OK",
    "error_message": ""
   }
  }
 ]
}"""
# `curl -d '{"instances": [1.0,5.0]}' -X POST http://localhost:8501/v1/models/half:predict`:
DOCUMENTED_NOT_FOUND = (404, '{ "error": "Servable not found for request: Latest(half)" }')
# "Response format" of :classify, its placeholders filled in:
DOCUMENTED_CLASSIFY = '{"result": [[["<label1>", 0.25], ["<label2>", 0.75]]]}'


def test_answers_have_the_shape_of_tf_serving_documented_responses(url):
  status = httpx.get(f"{url}/v1/models/{NAME}").json()
  assert _shape(status) == _shape(json.loads(DOCUMENTED_STATUS))
  assert status["model_version_status"][0]["state"] == "AVAILABLE"

  response = httpx.post(f"{url}/v1/models/half:predict", json={"instances": [1.0, 5.0]})
  assert (response.status_code, response.json()) == (DOCUMENTED_NOT_FOUND[0],
                                                     json.loads(DOCUMENTED_NOT_FOUND[1]))
  assert response.headers["content-type"] == "application/json"

  classify = httpx.post(f"{url}/v1/models/{NAME}:classify",
                        json={"examples": [{"image": b64(jpeg(0))}]}).json()
  assert _shape(classify) == _shape(json.loads(DOCUMENTED_CLASSIFY))


def test_version_labels_stand_for_their_versions(url):
  """The fixture labels version 1 stable and version 2, not served, canary."""
  stable, canary = f"{url}/v1/models/{NAME}/labels/stable", f"{url}/v1/models/{NAME}/labels/canary"
  assert httpx.get(stable).json() == httpx.get(f"{url}/v1/models/{NAME}/versions/1").json()
  assert httpx.get(f"{stable}/metadata").json()["model_spec"]["version"] == "1"
  assert httpx.post(f"{stable}:predict", json=row_request(jpeg(0))).status_code == 200
  classify = {"examples": [{"image": b64(jpeg(0))}]}
  assert httpx.post(f"{stable}:classify", json=classify).status_code == 200

  response = httpx.post(f"{canary}:predict", json=row_request(jpeg(0)))
  assert response.status_code == 404 and "Specific(pets, 2)" in response.json()["error"]
  assert httpx.get(canary).status_code == 404
  response = httpx.get(f"{url}/v1/models/{NAME}/labels/nope/metadata")
  assert response.status_code == 404 and "--version-labels" in response.json()["error"]


def test_version_labels_flag():
  labels = serving_cli.parse_version_labels("stable=2, canary=30")
  assert labels == {"stable": 2, "canary": 30}
  for wrong in ("stable", "stable=two", "=2", "a b=1"):
    with pytest.raises(argparse.ArgumentTypeError, match="LABEL=VERSION"):
      serving_cli.parse_version_labels(wrong)


def _image(image_format: str, size: int = 64, frames: int = 1) -> bytes:
  images = [make_image((90, 90, 90), seed, size) for seed in range(frames)]
  return encode(images[0], image_format, save_all=True, append_images=images[1:])


PREDICT = f"/v1/models/{NAME}:predict"
CLASSIFY = f"/v1/models/{NAME}:classify"
HUGE_VERSION = "9" * 5000  # int() of it raises in Python 3.10
BAD_REQUESTS = {  # (path, body, status, words of the error[, headers over JSON_HEADERS])
    "invalid JSON": (PREDICT, b"{not json", 400, "invalid JSON"),
    "not an object": (PREDICT, b"[]", 400, "JSON object"),
    "both formats": (PREDICT, json.dumps({"instances": [], "inputs": []}), 400, "not both"),
    "no b64 object": (PREDICT, json.dumps({"instances": ["abc"]}), 400, "expected"),
    "bad base64": (PREDICT, json.dumps({"instances": [{"b64": "no*base64"}]}), 400,
                   "invalid base64"),
    "not an image": (PREDICT, json.dumps(row_request(b"hello")), 400, "not an image"),
    "corrupt JPEG data": (PREDICT, json.dumps(row_request(jpeg(0), truncated(jpeg(1)))), 400,
                          "image 1: unusable image"),
    "over the pixel limit": (PREDICT, json.dumps(row_request(_image("PNG", 101))), 413,
                             "--max-pixels"),
    "too many instances": (PREDICT, json.dumps(row_request(*[jpeg(0)] * 5)), 413,
                           "--max-instances"),
    "body over the limit": (PREDICT, b" " * 100_001, 413, "--max-body-bytes"),
    "classify without examples": (CLASSIFY, json.dumps(row_request(jpeg(0))), 400,
                                  '"examples" must be a list'),
    "an example without an image": (CLASSIFY, json.dumps({"examples": [{"caption": "x"}]}),
                                    400, 'example 0 has no "image" feature'),
    "two images in an example": (CLASSIFY, json.dumps({"examples": [
        {"image": [b64(jpeg(0))] * 2}]}), 400, 'example 0 has 2 "image" values'),
    "a feature in context and example": (CLASSIFY, json.dumps({
        "context": {"image": b64(jpeg(0))}, "examples": [{"image": b64(jpeg(0))}]}), 400,
        "repeats the context's features ['image']"),
    "an unknown method": (f"/v1/models/{NAME}:explain", json.dumps(row_request(jpeg(0))), 404,
                          "no method :explain"),
    "unknown signature": (PREDICT, json.dumps({"signature_name": "x", "instances": []}), 400,
                          "signature_name"),
    "from_examples on :classify": (CLASSIFY, json.dumps({
        "signature_name": "from_examples", "examples": [{"image": b64(jpeg(0))}]}), 400,
        ":classify serves ['serving_default']"),
    "not a tf.Example": (PREDICT, json.dumps({"signature_name": "from_examples",
                                              "instances": [b64(b"\xff")]}), 400,
                         "image 0: not a serialized tf.Example"),
    "a tf.Example without an image": (PREDICT, json.dumps({
        "signature_name": "from_examples", "instances": [b64(b"")]}), 400,
        'has 0 "image" bytes values'),
    "a tf.Example of a corrupt image": (PREDICT, json.dumps({
        "signature_name": "from_examples", "instances": [b64(tf_example(truncated(jpeg(1))))]}),
        400, "image 0: unusable image"),
    "a long name echoed": (PREDICT, json.dumps({"signature_name": "x" * 60_000}), 400,
                           "characters)"),
    "unknown model": ("/v1/models/nope:predict", json.dumps(row_request(jpeg(0))), 404,
                      "Servable not found for request: Latest(nope)"),
    "unknown version": (f"/v1/models/{NAME}/versions/7:predict",
                        json.dumps(row_request(jpeg(0))), 404, "Specific(pets, 7)"),
    "a 5,000-digit version": (f"/v1/models/{NAME}/versions/{HUGE_VERSION}:predict",
                              json.dumps(row_request(jpeg(0))), 404, "Specific(pets, 999"),
    # What a web page in the user's browser can send without asking the server first:
    "a form": (PREDICT, json.dumps(row_request(jpeg(0))), 415, "application/json",
               {"content-type": "application/x-www-form-urlencoded"}),
    "text/plain": (PREDICT, json.dumps(row_request(jpeg(0))), 415, "application/json",
                   {"content-type": "text/plain"}),
    "no content type": (PREDICT, json.dumps(row_request(jpeg(0))), 415, "application/json",
                        {"content-type": ""}),
    "a rebound DNS name": (PREDICT, json.dumps(row_request(jpeg(0))), 400, "--allowed-hosts",
                           {"host": "attacker.example:8501"}),
}
JSON_HEADERS = {"content-type": "application/json; charset=utf-8"}


@pytest.mark.parametrize("problem", BAD_REQUESTS)
def test_a_bad_request_gets_its_4xx_and_the_server_serves_on(url, problem):
  path, body, status, message, *headers = BAD_REQUESTS[problem]
  response = httpx.post(url + path, content=body, headers={**JSON_HEADERS, **dict(*headers)})
  assert response.status_code == status, response.text
  assert message in response.json()["error"]
  assert len(response.json()["error"]) < MAX_MESSAGE_CHARS + 100
  assert_serves(url)


def test_unknown_models_versions_and_routes_get_404_json(url):
  for path in ("/v1/models/nope", f"/v1/models/{NAME}/versions/2", f"/v1/models/{NAME}/x",
               f"/v1/models/{NAME}/versions/{HUGE_VERSION}",
               f"/v1/models/{NAME}/versions/{HUGE_VERSION}/metadata"):
    response = httpx.get(url + path)
    assert response.status_code == 404 and response.json()["error"], path
    assert len(response.json()["error"]) < MAX_MESSAGE_CHARS + 100
  assert_serves(url)


def test_loopback_host_names_are_served_with_or_without_a_port(url):
  for host in ("localhost", "LOCALHOST:8501", "127.0.0.1:80", "[::1]:8501", "[::1]"):
    assert httpx.get(f"{url}/v1/models/{NAME}", headers={"host": host}).status_code == 200, host


async def _post_all(url: str, bodies) -> list:
  async with httpx.AsyncClient(base_url=url) as http:
    return await asyncio.gather(*(http.post(PREDICT, json=body) for body in bodies))


def test_concurrent_requests_share_model_calls_and_a_corrupt_image_fails_alone(url):
  bodies = [row_request(jpeg(seed)) for seed in range(15)] + [row_request(truncated(jpeg(0)))]
  batches_before = batches(url)
  responses = asyncio.run(_post_all(url, bodies))
  assert [r.status_code for r in responses] == [200] * 15 + [400]
  assert "unusable image" in responses[-1].json()["error"]
  # 16 images, at most 8 per model call (the fixture's max_batch_size), several per call.
  assert 2 <= batches(url) - batches_before < len(bodies)


def _served_probabilities(url: str, *images: bytes) -> np.ndarray:
  response = httpx.post(url + PREDICT, json=row_request(*images))
  assert response.status_code == 200, response.text
  return np.array([p["probabilities"] for p in response.json()["predictions"]])


def test_photos_are_served_as_ingest_stores_them(layout_url, model_probabilities, tmp_path):
  """A phone photo rotated by its EXIF tag is served upright, as it was trained; WebP is read."""
  write_formats(str(tmp_path), CLASS_COLOURS["cats"])
  rotated, webp = (tmp_path / ROTATED).read_bytes(), (tmp_path / "photo.webp").read_bytes()
  upright = encode(ImageOps.exif_transpose(Image.open(io.BytesIO(rotated))), "PNG")
  webp_pixels = encode(Image.open(io.BytesIO(webp)).convert("RGB"), "PNG")

  served = _served_probabilities(layout_url, rotated, webp)
  np.testing.assert_allclose(served, model_probabilities([upright, webp_pixels]),
                             rtol=1e-5, atol=1e-6)
  sideways = model_probabilities([rotated])[0]  # the SavedModel alone ignores EXIF
  assert not np.allclose(served[0], sideways, rtol=1e-5, atol=1e-6)


def _gif_with_later_frames(first: Image.Image, *sizes) -> bytes:
  """A GIF of `first`, then a frame of each (width, height) holding one pixel of data: PIL's
  first look sees only `first`, TensorFlow's decoder allocates the largest for every frame."""
  frames = (b"\x2c" + struct.pack("<HHHHB", 0, 0, width, height, 0)  # image descriptor
            + b"\x02\x02\x44\x01\x00"  # LZW of 2-bit codes: clear, pixel 0, end
            for width, height in sizes)
  return b"".join([encode(first, "GIF")[:-1], *frames, b"\x3b"])  # [:-1]: the trailer


def test_a_gif_is_served_as_its_first_frame_whatever_follows(layout_url, model_probabilities):
  first = make_image(CLASS_COLOURS["dogs"], 3, 32)
  gifs = {"a 65535x65535 frame": _gif_with_later_frames(first, (65535, 65535)),
          "3,000 more frames": _gif_with_later_frames(first, *[(1, 1)] * 3000)}
  first_frame = encode(Image.open(io.BytesIO(encode(first, "GIF"))).convert("RGB"), "PNG")
  expected = model_probabilities([first_frame])
  for what, gif in gifs.items():
    np.testing.assert_allclose(_served_probabilities(layout_url, gif), expected, rtol=1e-5,
                               atol=1e-6, err_msg=what)
    assert_serves(layout_url)


def test_a_gif_of_a_million_frames_stalls_no_other_request(layout_model, model_probabilities):
  """A 21 MB GIF of 1.4 million 1-px frames once held the event loop for 2.8 s. Now it is
  served as its first frame, and requests sent while it is read, decoded and predicted are
  answered meanwhile, none held for long (the bound is loose: the machine may be busy)."""
  first = make_image(CLASS_COLOURS["cats"], 5, 32)
  body = json.dumps(row_request(_gif_with_later_frames(first, *[(1, 1)] * 1_400_000)))
  config = ServerConfig(os.path.dirname(layout_model), **{**LIMITS, "max_body_bytes": len(body)})
  with running_server(config) as url:
    assert_serves(url)  # the model is warm: the waits below are the GIF's
    gif = {}

    def post_gif():
      start = time.monotonic()
      gif["response"] = httpx.post(url + PREDICT, content=body, headers=JSON_HEADERS, timeout=120)
      gif["seconds"] = time.monotonic() - start

    in_flight = threading.Thread(target=post_gif)
    in_flight.start()
    waits = []
    while in_flight.is_alive() or not waits:
      start = time.monotonic()
      assert httpx.get(f"{url}/v1/models/{NAME}").status_code == 200
      assert_serves(url)
      waits.append(time.monotonic() - start)
    in_flight.join()
  # A stalled loop holds a request for most of the GIF's own time (3.2 s with the old frame
  # count); a slower CPU slows both, so the bound grows with the GIF's time.
  assert max(waits) < max(2, gif["seconds"] / 2), (waits, gif["seconds"])
  assert gif["response"].status_code == 200, gif["response"].text
  first_frame = encode(Image.open(io.BytesIO(encode(first, "GIF"))).convert("RGB"), "PNG")
  np.testing.assert_allclose([gif["response"].json()["predictions"][0]["probabilities"]],
                             model_probabilities([first_frame]), rtol=1e-5, atol=1e-6)


def _slow_to_decode(monkeypatch) -> Tuple[bytes, threading.Semaphore]:
  """An image whose decode takes 2 s, and a semaphore released as each such decode starts."""
  slow_image, started = _image("PNG", 16), threading.Semaphore(0)
  fast_decode = decode.upright_rgb

  def slow_decode(data, max_pixels):
    if data == slow_image:
      started.release()
      time.sleep(2)
    return fast_decode(data, max_pixels)

  monkeypatch.setattr(decode, "upright_rgb", slow_decode)
  return slow_image, started


def test_images_are_decoded_off_the_event_loop(url, monkeypatch):
  """While one image takes long to decode, other requests are answered."""
  slow_image, started = _slow_to_decode(monkeypatch)
  slow_request = threading.Thread(target=_served_probabilities, args=(url, slow_image))
  slow_request.start()
  assert started.acquire(timeout=30)
  start = time.monotonic()
  assert_serves(url)
  assert time.monotonic() - start < 1.5 and slow_request.is_alive()
  slow_request.join()


def test_requests_beyond_the_pending_limit_are_answered_429(base_path, monkeypatch):
  """Requests holding a body are bounded: one more than --max-pending-requests gets 429 at
  once, and a valid request is served when the others are done."""
  slow_image, started = _slow_to_decode(monkeypatch)
  with running_server(ServerConfig(base_path, max_pending_requests=2, **LIMITS)) as url:
    slow_requests = [threading.Thread(target=_served_probabilities, args=(url, slow_image))
                     for _ in range(2)]
    for thread in slow_requests:
      thread.start()
    assert started.acquire(timeout=30) and started.acquire(timeout=30)
    answer = httpx.post(url + PREDICT, json=row_request(jpeg(0)))
    assert answer.status_code == 429 and "--max-pending-requests" in answer.json()["error"]
    for thread in slow_requests:
      thread.join()
    assert_serves(url)


def _send_raw(url: str, data: bytes) -> bytes:
  """Sends `data` on a new connection, then reads until the server closes it (10 s at most)."""
  host, port = url.rsplit("/", 1)[-1].split(":")
  with socket.create_connection((host, int(port)), timeout=10) as connection:
    connection.sendall(data)
    answer = b""
    while chunk := connection.recv(65536):
      answer += chunk
  return answer


def test_silent_and_stalled_clients_are_disconnected(url):
  """The fixture gives clients 1 s to send a request's head, and then its body."""
  head = (f"POST {PREDICT} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
          "Content-Type: application/json\r\n")
  stalls = {  # what the client sends, then nothing: the start of the server's answer
      "nothing": (b"", b""),
      "half a request head": (head.encode(), b""),
      "10 bytes of 1000": ((head + "Content-Length: 1000\r\n\r\n").encode() + b"{" * 10,
                           b"HTTP/1.1 408 "),
      "a request, then nothing": (b"GET /v1/models/pets HTTP/1.1\r\nHost: localhost\r\n\r\n",
                                  b"HTTP/1.1 200 "),
  }
  for stall, (data, answer) in stalls.items():
    start = time.monotonic()
    assert _send_raw(url, data).startswith(answer), stall
    assert time.monotonic() - start < 5, stall
    assert_serves(url)


def _served_version(url: str) -> str:
  return httpx.get(f"{url}/v1/models/{NAME}").json()["model_version_status"][0]["version"]


def _wait_until(condition, what: str, seconds: float = 60) -> None:
  deadline = time.monotonic() + seconds
  while not condition():
    assert time.monotonic() < deadline, f"{what}: not within {seconds:g} s"
    time.sleep(0.1)


def test_pushed_versions_are_served_without_restart_or_failed_requests(exported, tmp_path):
  base_path = str(tmp_path / NAME)
  os.makedirs(base_path)
  publish(exported, base_path, 1)
  with running_server(ServerConfig(base_path, poll_seconds=0.1)) as url:
    statuses, stop = [], threading.Event()

    def keep_predicting():
      with httpx.Client(base_url=url) as http:
        while not stop.is_set():
          statuses.append(http.post(PREDICT, json=row_request(jpeg(0))).status_code)

    traffic = threading.Thread(target=keep_predicting)
    traffic.start()
    try:
      publish(exported, base_path, 2)
      _wait_until(lambda: _served_version(url) == "2", "version 2 served")
      # A copy that is not atomic: seen empty first, then retried once its files arrive.
      os.makedirs(os.path.join(base_path, "3"))
      version_3 = f"{url}/v1/models/{NAME}/versions/3"
      _wait_until(lambda: httpx.get(version_3).status_code == 200, "version 3 failed")
      (status,) = httpx.get(version_3).json()["model_version_status"]
      assert status["state"] == "END" and status["status"]["error_message"]
      shutil.copytree(exported, os.path.join(base_path, "3"), dirs_exist_ok=True)
      _wait_until(lambda: _served_version(url) == "3", "version 3 served once complete")
      shutil.rmtree(os.path.join(base_path, "3"))  # a rollback, as with TF Serving
      _wait_until(lambda: _served_version(url) == "2", "version 2 served again")
    finally:
      stop.set()
      traffic.join()

    assert len(statuses) > 10 and set(statuses) == {200}
    assert httpx.post(f"{url}/v1/models/{NAME}/versions/2:predict",
                      json=row_request(jpeg(0))).status_code == 200
    assert httpx.post(f"{url}/v1/models/{NAME}/versions/1:predict",
                      json=row_request(jpeg(0))).status_code == 404
    assert [status["version"] for status in
            httpx.get(f"{url}/v1/models/{NAME}").json()["model_version_status"]] == ["2"]


def _free_port() -> int:
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    return probe.getsockname()[1]


def _serve_as_a_vertex_ai_container(storage_uri: str, environment: dict) -> None:
  """Runs `headswap serve` with only Vertex AI's variables, no flags, and talks to it: its
  port, its health route, and its predict route taking Vertex's {"instances": [...]}."""
  port, routes = _free_port(), "/v1/endpoints/7/deployedModels/8"
  environment = {**environment, "AIP_HTTP_PORT": str(port), "AIP_STORAGE_URI": storage_uri,
                 "AIP_PREDICT_ROUTE": f"{routes}:predict", "AIP_HEALTH_ROUTE": routes}
  server = subprocess.Popen([sys.executable, "-m", "headswap.pipeline.cli", "serve"],
                            env=environment)
  url = f"http://127.0.0.1:{port}"

  def healthy() -> bool:
    assert server.poll() is None, "headswap serve exited"
    try:
      return httpx.get(url + routes).status_code == 200
    except httpx.TransportError:  # not listening yet
      return False

  try:
    _wait_until(healthy, "healthy", seconds=180)  # importing TensorFlow on a busy machine
    (status,) = httpx.get(url + routes).json()["model_version_status"]
    assert status["version"] == "1" and status["state"] == "AVAILABLE"
    vertex_request = {"instances": [{"images": b64(jpeg(0))}, b64(jpeg(1))], "parameters": {}}
    response = httpx.post(f"{url}{routes}:predict", json=vertex_request)
    assert response.status_code == 200, response.text
    predictions = response.json()["predictions"]
    assert len(predictions) == 2 and all(p["classes"] == CLASSES for p in predictions)
  finally:
    server.terminate()
    server.wait(60)


def test_headswap_serve_in_a_vertex_ai_container(exported):
  """AIP_STORAGE_URI naming one SavedModel, served as version 1."""
  _serve_as_a_vertex_ai_container(exported, os.environ)


def test_headswap_serve_in_a_vertex_ai_container_reads_the_model_from_gs(layout_model, gcs):
  """As Vertex AI gives it: AIP_STORAGE_URI on Cloud Storage (a local emulator, tests/gcs.py;
  the small layout model, as the emulator's TensorFlow plugin reads at most 256 KiB a file)."""
  _serve_as_a_vertex_ai_container(gcs.upload(layout_model, "vertex/model"), gcs.env)


def _model_config(*models: str) -> str:
  return "model_config_list {\n%s\n}\n" % "\n".join(f"  config {{ {m} }}" for m in models)


def test_several_models_from_a_model_config_file(base_path, layout_model, model_probabilities,
                                                 tmp_path):
  """TF Serving's --model_config_file: each model under its name, with its version labels."""
  config_file = tmp_path / "models.config"
  config_file.write_text(_model_config(
      f'name: "{NAME}" base_path: "{base_path}" model_platform: "tensorflow" '
      'version_labels { key: "stable" value: 1 }',
      f"name: 'layout' base_path: '{os.path.dirname(layout_model)}' "
      "model_platform: 'tensorflow'"))
  with running_server(ServerConfig(model_config_file=str(config_file), **LIMITS)) as url:
    for name in (NAME, "layout"):
      (status,) = httpx.get(f"{url}/v1/models/{name}").json()["model_version_status"]
      assert status["state"] == "AVAILABLE"
      metadata = httpx.get(f"{url}/v1/models/{name}/metadata").json()
      assert metadata["model_spec"]["name"] == name
    images = [jpeg(8), jpeg(9)]
    response = httpx.post(f"{url}/v1/models/layout:predict", json=row_request(*images))
    np.testing.assert_allclose([p["probabilities"] for p in response.json()["predictions"]],
                               model_probabilities(images), rtol=1e-5, atol=1e-6)
    stable = httpx.post(f"{url}/v1/models/{NAME}/labels/stable:predict", json=row_request(jpeg(0)))
    assert stable.status_code == 200, stable.text
    response = httpx.post(f"{url}/v1/models/layout/labels/stable:predict",
                          json=row_request(jpeg(0)))
    assert response.status_code == 404 and "layout is labelled 'stable'" in response.json()["error"]
    assert httpx.get(f"{url}/health").json() == httpx.get(f"{url}/v1/models/{NAME}").json()
    assert httpx.get(f"{url}/v1/models/other").status_code == 404


BAD_MODEL_CONFIGS = {  # the file's text: words of the error
    "not a proto": ("model_config_list { config { name: ", "not a text-format ModelServerConfig"),
    "no models": ("", "expected model_config_list"),
    "another platform": (_model_config('name: "a" base_path: "/m/a" model_platform: "pytorch"'),
                         "model 'a': model_platform 'pytorch'"),
    "all versions": (_model_config('name: "a" base_path: "/m/a" '
                                   "model_version_policy { all {} }"),
                     "model 'a': model_version_policy { all { } }"),
    "no base path": (_model_config('name: "a"'), "needs a name and a base_path"),
    "a name twice": (_model_config('name: "a" base_path: "/m/a"', 'name: "a" base_path: "/m/b"'),
                     "model 'a': the name is listed twice"),
}


@pytest.mark.parametrize("problem", BAD_MODEL_CONFIGS)
def test_a_bad_model_config_file_stops_serve_naming_the_setting(problem, tmp_path):
  text, message = BAD_MODEL_CONFIGS[problem]
  config_file = tmp_path / "models.config"
  config_file.write_text(text)
  with pytest.raises(SystemExit) as exit_:
    cli.main(["serve", "--model_config_file", str(config_file)])
  assert str(config_file) in str(exit_.value.code) and message in str(exit_.value.code)


def test_serve_takes_a_model_config_file_or_a_base_path():
  with pytest.raises(SystemExit, match="either --model-base-path"):
    cli.main(["serve", "--model-config-file", "models.config", "--model-base-path", "m"])
  with pytest.raises(SystemExit, match="in the file"):
    cli.main(["serve", "--model-config-file", "models.config", "--version-labels", "a=1"])


def _warmup_requests(model_path: str) -> list:
  path = os.path.join(model_path, "assets.extra", "tf_serving_warmup_requests")
  return [prediction_log_pb2.PredictionLog.FromString(record).predict_log.request
          for record in tf.data.TFRecordDataset(path).as_numpy_iterator()]


def test_the_export_writes_tf_serving_warmup_requests_and_serve_replays_them(exported,
                                                                             tmp_path):
  """TF Serving's format: a TFRecord of PredictionLogs, one per signature, each a request the
  SavedModel answers."""
  requests = _warmup_requests(exported)
  assert [r.model_spec.signature_name for r in requests] == ["serving_default", "from_examples"]
  signatures = tf.saved_model.load(exported).signatures
  for request in requests:
    outputs = signatures[request.model_spec.signature_name](
        **{name: tf.make_ndarray(tensor) for name, tensor in request.inputs.items()})
    assert outputs["probabilities"].shape == (1, len(CLASSES))

  # headswap serve replays them at load: one that fails fails the version, as in TF Serving.
  broken = str(tmp_path / NAME / "1")
  shutil.copytree(exported, broken)
  (request,) = [r for r in requests if r.model_spec.signature_name == "serving_default"]
  request.inputs["images"].CopyFrom(tf.make_tensor_proto([b"not an image"]))
  log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(
      request=request))
  with tf.io.TFRecordWriter(os.path.join(broken, "assets.extra",
                                         "tf_serving_warmup_requests")) as writer:
    writer.write(log.SerializeToString())
  with pytest.raises(NoModelError, match="warm-up request 0 of .*tf_serving_warmup_requests "
                                         "\\('serving_default'\\) failed"):
    with running_server(ServerConfig(os.path.dirname(broken))):
      pass


def test_predict_prints_top_k_from_a_saved_model_and_from_the_server(url, base_path, tmp_path,
                                                                   capsys):
  image = tmp_path / "cat.jpg"
  image.write_bytes(jpeg(0))
  write_formats(str(tmp_path), CLASS_COLOURS["dogs"])  # decoded alike in process and served
  images = [str(image), str(tmp_path / ROTATED), str(tmp_path / "photo.webp")]
  outputs = []
  for source in (["--model", base_path], ["--server", f"{url}/v1/models/{NAME}"]):
    cli.main(["predict", *source, "--top-k", "2", *images])
    outputs.append(capsys.readouterr().out)
  assert outputs[0] == outputs[1]
  lines = outputs[0].splitlines()
  # Both classes named: the server's answer names every class (the "classes" output).
  assert lines[0] == str(image) and len(lines) == 9
  assert sorted(line.split()[0] for line in lines[1:3]) == CLASSES

  for source in (["--model", base_path], ["--server", url, "--model-name", NAME]):
    with pytest.raises(SystemExit) as exit_:
      cli.main(["predict", *source, str(image), str(tmp_path / "missing.jpg")])
    assert exit_.value.code == 1
    assert "missing.jpg\n  error: " in capsys.readouterr().out


def test_predict_finds_the_model_in_the_server_url():
  assert client.split_model_url("http://h:1/v1/models/pets") == ("http://h:1", "pets")
  assert client.split_model_url("http://h:1/v1/models/pets/", "pets") == ("http://h:1", "pets")
  assert client.split_model_url("http://h:1/", "pets") == ("http://h:1", "pets")
  with pytest.raises(client.ServerError, match="names no model"):
    client.split_model_url("http://h:1")
  with pytest.raises(client.ServerError, match="not 'dogs'"):
    client.split_model_url("http://h:1/v1/models/pets", "dogs")


def test_serve_refuses_a_non_loopback_host_unless_allowed():
  with pytest.raises(SystemExit, match="--allow-remote"):
    cli.main(["serve", "--model-base-path", "unused", "--host", "0.0.0.0"])
  assert serving_cli.is_loopback("127.0.0.1") and serving_cli.is_loopback("::1")
  assert serving_cli.is_loopback("localhost")
  assert not serving_cli.is_loopback("example.com")
  assert not serving_cli.is_loopback("192.168.1.2")
