"""`headswap predict`: the top classes of each image, from a SavedModel or .tflite file loaded in
process or from a server over TF Serving's REST API."""

import base64
import dataclasses
import re
from typing import List, Optional, Sequence, Tuple

import httpx

from headswap.serving.config import ServerConfig
from headswap.serving.errors import RequestError

MODEL_URL = re.compile(r"(?P<server>.+?)/v1/models/(?P<name>[^/:]+)/?")
# The signature :predict calls without a signature_name, and its outputs (trainer/export.py)
# this client reads; literals, as importing export would import TensorFlow.
DEFAULT_SIGNATURE = "serving_default"
OUTPUTS_READ = {"probabilities", "classes"}


@dataclasses.dataclass
class ImageResult:
  path: str
  probabilities: Optional[List[float]] = None
  class_names: Sequence[str] = ()  # in the order of probabilities
  error: Optional[str] = None

  def top(self, k: int):
    """[(class name, probability)] of the k most probable classes."""
    ranked = sorted(enumerate(self.probabilities), key=lambda pair: -pair[1])[:k]
    return [(self.class_names[i], p) for i, p in ranked]


class ServerError(Exception):
  """No answers can come from the server: it is unreachable, or the model is unknown."""


def split_model_url(url: str, model_name: Optional[str] = None) -> Tuple[str, str]:
  """(server URL, model name) from a model's URL, http://host:port/v1/models/<name>, or from
  a server's URL and model_name."""
  match = MODEL_URL.fullmatch(url)
  if match and model_name and model_name != match["name"]:
    raise ServerError(f"{url} is the URL of model {match['name']!r}, not {model_name!r}")
  if match:
    return match["server"], match["name"]
  if not model_name:
    raise ServerError(f"{url} names no model: give the model's URL, as `headswap serve` "
                      "prints it (http://host:port/v1/models/<name>), or --model-name")
  return url.rstrip("/"), model_name


def predict_local(model_path: str, image_paths: Sequence[str],
                  max_pixels: int = ServerConfig.max_pixels,
                  batch_size: int = ServerConfig.max_batch_size) -> List[ImageResult]:
  """`model_path` is a .tflite file, a SavedModel or a base path of numbered versions (the
  newest is used)."""
  from headswap.serving import images, models  # TensorFlow: only for this mode
  from headswap.trainer import export

  model = (models.LoadedTFLite(model_path) if model_path.endswith(".tflite") else
           models.LoadedModel(export.resolve_saved_model(model_path)))
  results, readable = [], []
  for path in image_paths:
    result = ImageResult(path, class_names=model.class_names)
    results.append(result)
    try:
      readable.append((result, images.upright_rgb(_read(path), max_pixels)))
    except (OSError, RequestError) as error:
      result.error = str(error)
  for start in range(0, len(readable), batch_size):
    chunk = readable[start:start + batch_size]
    for (result, _), outcome in zip(chunk, model.predict([data for _, data in chunk])):
      if isinstance(outcome, RequestError):
        result.error = str(outcome)
      else:
        result.probabilities = outcome["probabilities"]
  return results


def predict_remote(server_url: str, model_name: str, image_paths: Sequence[str],
                   timeout_s: float = 60.0) -> List[ImageResult]:
  """One request per image, so a bad image fails alone (a request fails as a whole)."""
  try:
    with httpx.Client(base_url=server_url.rstrip("/"), timeout=timeout_s) as http:
      return _predict_each(http, model_name, image_paths)
  except httpx.HTTPError as error:
    raise ServerError(f"{server_url}: {error}") from error


def _predict_each(http: httpx.Client, model_name: str,
                  image_paths: Sequence[str]) -> List[ImageResult]:
  _check_outputs(_answer(http.get(f"/v1/models/{model_name}/metadata")))
  results = []
  for path in image_paths:
    result = ImageResult(path)
    results.append(result)
    try:
      body = {"instances": [{"b64": base64.b64encode(_read(path)).decode()}]}
    except OSError as error:
      result.error = str(error)
      continue
    response = http.post(f"/v1/models/{model_name}:predict", json=body)
    if response.status_code == 200:
      (prediction,) = response.json()["predictions"]
      # The signature's own class names: what any TF Serving client gets, no side channel.
      result.probabilities, result.class_names = prediction["probabilities"], prediction["classes"]
    else:
      result.error = _error_message(response)
  return results


def _check_outputs(metadata: dict) -> None:
  """Refuses a model whose serving signature is not trainer/export.py's, from TF Serving's
  metadata, before any image is sent."""
  signatures = metadata["metadata"]["signature_def"]["signature_def"]
  outputs = set(signatures.get(DEFAULT_SIGNATURE, {}).get("outputs", {}))
  if not OUTPUTS_READ <= outputs:
    raise ServerError(f"the served model's {DEFAULT_SIGNATURE!r} signature lacks the outputs "
                      f"{sorted(OUTPUTS_READ - outputs)} of a headswap export (it has "
                      f"{sorted(outputs)})")


def print_top_k(results: Sequence[ImageResult], k: int) -> int:
  """Prints each image's top k classes (or its error); returns how many images failed."""
  width = max((len(name) for r in results for name in r.class_names), default=0)
  for result in results:
    print(result.path)
    if result.error:
      print(f"  error: {result.error}")
      continue
    for name, probability in result.top(k):
      print(f"  {name:<{width}}  {probability:.4f}")
  return sum(1 for result in results if result.error)


def _read(path: str) -> bytes:
  with open(path, "rb") as f:
    return f.read()


def _answer(response: httpx.Response) -> dict:
  if response.status_code != 200:
    raise ServerError(f"{response.request.method} {response.request.url}: "
                      f"{_error_message(response)}")
  return response.json()


def _error_message(response: httpx.Response) -> str:
  """The status and TF Serving's {"error": ...}, or the raw body if something else answered."""
  try:
    message = response.json()["error"]
  except (ValueError, KeyError, TypeError):
    message = response.text[:200]
  return f"HTTP {response.status_code}: {message}"
