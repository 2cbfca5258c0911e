"""TF Serving's REST wire format for trainer/export.py's signatures: :predict of serving_default
(images) or from_examples (serialized tf.Examples), and :classify (every class's [name,
probability]).

See https://www.tensorflow.org/tfx/serving/api_rest: a client of TF Serving works unchanged.
"""

import base64
import binascii
import dataclasses
import json
from typing import Dict, List, Optional, Sequence

from google.protobuf import message
from tensorflow.core.example import example_pb2 as tf_example

from headswap.components import features
from headswap.serving.errors import RequestError, bad_request, not_found, too_large
from headswap.serving.images import upright_rgb
from headswap.serving.models import LoadedModel, Outputs
from headswap.trainer import export

B64 = "b64"
IMAGE_FORMAT = f'{{"{B64}": "<base64 image>"}}'
VALUE_FORMAT = {export.SERVING_SIGNATURE: IMAGE_FORMAT,
                export.EXAMPLES_SIGNATURE: f'{{"{B64}": "<base64 serialized tf.Example>"}}'}
B64_SLICE_CHARS = 1 << 20  # a multiple of 4; a few milliseconds of decoding each


@dataclasses.dataclass
class ParsedRequest:
  method: str  # "predict" or "classify"
  signature: str
  values: List[bytes]  # what the signature takes: encoded images or serialized tf.Examples
  columnar: bool = False  # :predict with "inputs" in, "outputs" out


def check_method(method: str) -> None:
  """Refuses, before the body is read, a method this server has no signature for."""
  if method == "regress":
    raise bad_request("this model is a classifier: it has no regression signature for "
                      ":regress; use :classify or :predict")
  if method not in ("predict", "classify"):
    raise not_found(f"no method :{method}: use :predict or :classify")


def parse_request(method: str, body: bytes, max_instances: int,
                  max_pixels: int) -> ParsedRequest:
  """The images (or tf.Examples) of a :predict or :classify body, each image decoded as ingest
  decodes it (upright RGB JPEG or PNG bytes); raises RequestError naming the problem."""
  try:
    request = json.loads(body)
  except (ValueError, RecursionError) as error:
    raise bad_request(f"invalid JSON: {error}") from error
  wanted = '"examples"' if method == "classify" else '"instances" or "inputs"'
  if not isinstance(request, dict):
    raise bad_request(f"the request must be a JSON object with {wanted}")
  signature = request.get("signature_name") or export.SERVING_SIGNATURE
  served = [export.SERVING_SIGNATURE] if method == "classify" else list(export.INPUT_OF)
  if signature not in served:
    raise bad_request(f"signature_name {signature!r} not found: :{method} serves {served}")
  if method == "classify":
    return ParsedRequest(method, signature,
                         _decoded(_examples(request), signature, max_instances, max_pixels))
  if ("instances" in request) == ("inputs" in request):
    raise bad_request('the request must have either "instances" (row format) or "inputs" '
                      "(columnar format), not both or neither")
  columnar = "inputs" in request
  values = (_column(request["inputs"], signature) if columnar
            else _rows(request["instances"], signature))
  return ParsedRequest(method, signature, _decoded(values, signature, max_instances, max_pixels),
                       columnar)


def _decoded(values: list, signature: str, max_instances: int, max_pixels: int) -> List[bytes]:
  if not values:
    raise bad_request("the request has no instances")
  if len(values) > max_instances:
    raise too_large(f"{len(values)} instances in one request, over the limit of "
                    f"{max_instances} (--max-instances)")
  decoded = []
  for index, value in enumerate(values):
    try:
      data = _decode_b64(value, signature)
      decoded.append(upright_rgb(data, max_pixels) if signature == export.SERVING_SIGNATURE
                     else _upright_example(data, max_pixels))
    except RequestError as error:
      raise error.for_image(index) from error
  return decoded


def _upright_example(data: bytes, max_pixels: int) -> bytes:
  """The tf.Example with its image decoded as an image request's is: the same limits, and the
  same pixels for the model (ingest's examples hold upright RGB images already, kept as is)."""
  try:
    example = tf_example.Example.FromString(data)
  except message.DecodeError as error:
    raise bad_request(f"not a serialized tf.Example: {error}") from error
  image = example.features.feature[features.IMAGE].bytes_list.value
  if len(image) != 1:
    raise bad_request(f'the tf.Example has {len(image)} "{features.IMAGE}" bytes values, not 1')
  image[0] = upright_rgb(image[0], max_pixels)
  return example.SerializeToString()


def _examples(request: dict) -> list:
  """The "image" feature of each example, as ingest names it in its tf.Examples; other
  features are not the model's inputs and are ignored, as parsing a tf.Example would."""
  examples, context = request.get("examples"), request.get("context", {})
  if not isinstance(examples, list) or not isinstance(context, dict):
    raise bad_request(f'"examples" must be a list of {{"{features.IMAGE}": {IMAGE_FORMAT}}}, '
                      '"context" an object')
  values = []
  for index, example in enumerate(examples):
    shared = sorted(set(context) & set(example)) if isinstance(example, dict) else []
    if shared:  # TF Serving's rule: a feature is in the context or in the examples
      raise bad_request(f"example {index} repeats the context's features {shared}")
    value = {**context, **example}.get(features.IMAGE) if isinstance(example, dict) else None
    if value is None:
      raise bad_request(f'example {index} has no "{features.IMAGE}" feature: expected '
                        f'{{"{features.IMAGE}": {IMAGE_FORMAT}}}')
    if isinstance(value, list):  # a feature's list of values: one image per example
      if len(value) != 1:
        raise bad_request(f'example {index} has {len(value)} "{features.IMAGE}" values, not 1')
      value = value[0]
    values.append(value)
  return values


def _rows(instances, signature: str) -> list:
  """[{"b64": ...}, ...] or [{"images": {"b64": ...}}, ...] ("examples" for from_examples)."""
  if not isinstance(instances, list):
    raise bad_request(f'"instances" must be a list of {VALUE_FORMAT[signature]}')
  name = export.INPUT_OF[signature]
  return [row[name] if isinstance(row, dict) and name in row else row for row in instances]


def _column(inputs, signature: str) -> list:
  """[{"b64": ...}, ...] or {"images": [{"b64": ...}, ...]} ("examples" for from_examples)."""
  name = export.INPUT_OF[signature]
  if isinstance(inputs, dict) and set(inputs) == {name}:
    inputs = inputs[name]
  if not isinstance(inputs, list):
    raise bad_request(f'"inputs" must be a list of {VALUE_FORMAT[signature]} or '
                      f'{{"{name}": [...]}}')
  return inputs


def _decode_b64(value, signature: str) -> bytes:
  if not (isinstance(value, dict) and set(value) == {B64} and isinstance(value[B64], str)):
    raise bad_request(f"expected {VALUE_FORMAT[signature]}, got {json.dumps(value)[:80]}")
  text = value[B64]
  try:
    return _b64decode(text)
  except (binascii.Error, ValueError) as error:
    raise bad_request(f"invalid base64: {error}") from error


def _b64decode(text: str) -> bytes:
  """base64.b64decode(text, validate=True), its padding optional, a slice at a time: binascii
  holds the GIL throughout, so a 30 MB image decoded whole would stall the event loop, and so
  every other request, while a decoder thread decodes it."""
  pieces = []
  for start in range(0, len(text), B64_SLICE_CHARS):
    piece = text[start:start + B64_SLICE_CHARS]
    if start + B64_SLICE_CHARS < len(text):
      if piece.endswith("="):
        raise binascii.Error("padding before the end of the data")
    else:
      piece += "=" * (-len(piece) % 4)
    pieces.append(base64.b64decode(piece, validate=True))
  return b"".join(pieces)


def response(request: ParsedRequest, predictions: Sequence[Outputs],
             class_names: Sequence[str]) -> Dict:
  if request.method == "classify":  # ClassificationResponse: scores in the model's class order
    return {"result": [[[name, score] for name, score in
                        zip(class_names, p[export.PROBABILITIES])] for p in predictions]}
  if request.columnar:
    return {"outputs": {name: [p[name] for p in predictions] for name in predictions[0]}}
  return {"predictions": list(predictions)}


def status_response(served: LoadedModel, failed: Dict[int, str],
                    version: Optional[int] = None) -> Dict:
  """GetModelStatusResponse: the served version AVAILABLE, versions that failed to load END;
  only `version`'s entry if given (the list is then empty if it is neither)."""
  statuses = [_version_status(served.version, "AVAILABLE", "OK", "")]
  statuses += [_version_status(number, "END", "UNKNOWN", message)
               for number, message in sorted(failed.items(), reverse=True)]
  return {"model_version_status": [status for status in statuses
                                   if version is None or status["version"] == str(version)]}


def _version_status(version: int, state: str, error_code: str, error_message: str) -> Dict:
  return {"version": str(version), "state": state,
          "status": {"error_code": error_code, "error_message": error_message}}


SIGNATURE_DEF_MAP = "type.googleapis.com/tensorflow.serving.SignatureDefMap"


def metadata_response(model_name: str, model: LoadedModel) -> Dict:
  """GetModelMetadataResponse as TF Serving prints it: its metadata map holds protobuf Any
  values, hence the "@type"."""
  return {"model_spec": {"name": model_name, "signature_name": "",
                         "version": str(model.version)},
          "metadata": {"signature_def": {"@type": SIGNATURE_DEF_MAP,
                                         "signature_def": model.signature_defs}}}
