"""TF Serving's REST wire format, for the one input and three outputs of our signature:
:predict, and :classify (every class's [name, probability]).

See https://www.tensorflow.org/tfx/serving/api_rest: a client of TF Serving works unchanged.
"""

import base64
import binascii
import dataclasses
import json
from typing import Dict, List, Optional, Sequence

from components import features
from serving.errors import RequestError, bad_request, not_found, too_large
from serving.images import upright_rgb
from serving.models import LoadedModel, Prediction
from trainer import export

B64 = "b64"
IMAGE_FORMAT = f'{{"{B64}": "<base64 image>"}}'
B64_SLICE_CHARS = 1 << 20  # a multiple of 4; a few milliseconds of decoding each


@dataclasses.dataclass
class ImageRequest:
  method: str  # "predict" or "classify"
  images: List[bytes]
  columnar: bool = False  # :predict with "inputs" in, "outputs" out


def check_method(method: str) -> None:
  """Refuses, before the body is read, a method this server has no signature for."""
  if method == "regress":
    raise bad_request("this model is a classifier: it has no regression signature for "
                      ":regress; use :classify or :predict")
  if method not in ("predict", "classify"):
    raise not_found(f"no method :{method}: use :predict or :classify")


def parse_request(method: str, body: bytes, max_instances: int, max_pixels: int) -> ImageRequest:
  """The images of a :predict or :classify body, each decoded as ingest decodes it (upright
  RGB JPEG or PNG bytes); raises RequestError naming the problem."""
  try:
    request = json.loads(body)
  except (ValueError, RecursionError) as error:
    raise bad_request(f"invalid JSON: {error}") from error
  wanted = '"examples"' if method == "classify" else '"instances" or "inputs"'
  if not isinstance(request, dict):
    raise bad_request(f"the request must be a JSON object with {wanted}")
  signature = request.get("signature_name") or export.SERVING_SIGNATURE
  if signature != export.SERVING_SIGNATURE:
    raise bad_request(f"signature_name {signature!r} not found: this server serves "
                      f"{export.SERVING_SIGNATURE!r}")
  if method == "classify":
    return ImageRequest(method, _decoded(_examples(request), max_instances, max_pixels))
  if ("instances" in request) == ("inputs" in request):
    raise bad_request('the request must have either "instances" (row format) or "inputs" '
                      "(columnar format), not both or neither")
  columnar = "inputs" in request
  values = _column(request["inputs"]) if columnar else _rows(request["instances"])
  return ImageRequest(method, _decoded(values, max_instances, max_pixels), columnar)


def _decoded(values: list, max_instances: int, max_pixels: int) -> List[bytes]:
  if not values:
    raise bad_request("the request has no images")
  if len(values) > max_instances:
    raise too_large(f"{len(values)} images in one request, over the limit of {max_instances} "
                    "(--max-instances)")
  images = []
  for index, value in enumerate(values):
    try:
      images.append(upright_rgb(_decode_b64(value), max_pixels))
    except RequestError as error:
      raise error.for_image(index) from error
  return images


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


def _rows(instances) -> list:
  """[{"b64": ...}, ...] or [{"images": {"b64": ...}}, ...]."""
  if not isinstance(instances, list):
    raise bad_request(f'"instances" must be a list of {IMAGE_FORMAT}')
  return [row[export.IMAGES_INPUT] if isinstance(row, dict) and export.IMAGES_INPUT in row
          else row for row in instances]


def _column(inputs) -> list:
  """[{"b64": ...}, ...] or {"images": [{"b64": ...}, ...]}."""
  if isinstance(inputs, dict) and set(inputs) == {export.IMAGES_INPUT}:
    inputs = inputs[export.IMAGES_INPUT]
  if not isinstance(inputs, list):
    raise bad_request(f'"inputs" must be a list of {IMAGE_FORMAT} or '
                      f'{{"{export.IMAGES_INPUT}": [...]}}')
  return inputs


def _decode_b64(value) -> bytes:
  if not (isinstance(value, dict) and set(value) == {B64} and isinstance(value[B64], str)):
    raise bad_request(f"expected {IMAGE_FORMAT}, got {json.dumps(value)[:80]}")
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


def response(request: ImageRequest, predictions: Sequence[Prediction],
             class_names: Sequence[str]) -> Dict:
  if request.method == "classify":  # ClassificationResponse: scores in the model's class order
    return {"result": [[[name, score] for name, score in zip(class_names, p.probabilities)]
                       for p in predictions]}
  if request.columnar:
    return {"outputs": {field.name: [getattr(p, field.name) for p in predictions]
                        for field in dataclasses.fields(Prediction)}}
  return {"predictions": [dataclasses.asdict(p) for p in predictions]}


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
