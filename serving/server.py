"""`headswap serve`: TF Serving's REST API over a folder of pushed versions, on FastAPI.

  GET  /v1/models/<name>[/versions/<v>]             version status
  GET  /v1/models/<name>[/versions/<v>]/metadata    signature defs, plus class names
  POST /v1/models/<name>[/versions/<v>]:predict     {"instances": [{"b64": ...}]} or "inputs"
  GET  /monitoring/prometheus/metrics               batches and images, to see batching
"""

import asyncio
import contextlib
import logging
import re
from typing import Optional

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException

from serving import protocol
from serving.batching import MicroBatcher
from serving.config import ServerConfig
from serving.errors import RequestError, not_found, too_large
from serving.models import LoadedModel, ServedVersions

log = logging.getLogger("headswap")


class NoModelError(Exception):
  pass


def create_app(config: ServerConfig) -> FastAPI:
  """Loads the newest version (NoModelError if none loads) and returns the app serving it."""
  versions = ServedVersions(config.model_base_path)
  versions.refresh()
  if versions.current is None:
    failures = "".join(f"\n  version {v}: {why}" for v, why in sorted(versions.failed.items()))
    raise NoModelError(f"no loadable model under {config.model_base_path}: expected numbered "
                       f"SavedModel folders such as {config.model_base_path}/1{failures}")
  batcher = MicroBatcher(config.max_batch_size, config.batch_timeout_ms / 1000)

  @contextlib.asynccontextmanager
  async def lifespan(_):
    batcher.start()
    poller = asyncio.create_task(_poll(versions, config.poll_seconds))
    try:
      yield
    finally:
      poller.cancel()
      batcher.stop()

  app = FastAPI(title="headswap", lifespan=lifespan, docs_url=None, redoc_url=None,
                openapi_url=None)
  name = config.name

  def served_model(model_name: str, version: Optional[str]) -> LoadedModel:
    model = versions.current  # read once: a swap mid-request cannot mix two versions
    if model_name != name or (version is not None and _number(version) != model.version):
      wanted = f"Latest({model_name})" if version is None else f"Specific({model_name}, {version})"
      raise not_found(f"Servable not found for request: {wanted}")
    return model

  def status(model_name: str, version: Optional[str]) -> JSONResponse:
    if model_name != name:
      raise not_found(f"Could not find any versions of model {model_name}")
    number = None if version is None else _number(version)
    response = protocol.status_response(versions.current, versions.failed, number)
    if version is not None and (number is None or not response["model_version_status"]):
      raise not_found(f"Could not find version {version} of model {model_name}")
    return JSONResponse(response)

  async def predict(request: Request, model_name: str, version: Optional[str]) -> JSONResponse:
    model = served_model(model_name, version)
    body = await _read_body(request, config.max_body_bytes)
    parsed = protocol.parse_predict_request(body, config.max_instances, config.max_pixels)
    outcomes = await batcher.predict(model, parsed.images)
    for index, outcome in enumerate(outcomes):
      if isinstance(outcome, RequestError):
        raise outcome.for_image(index)
    return JSONResponse(protocol.predict_response(outcomes, parsed.columnar))

  @app.get("/v1/models/{model_name}")
  async def model_status(model_name: str):
    return status(model_name, None)

  @app.get("/v1/models/{model_name}/versions/{version}")
  async def version_status(model_name: str, version: str):
    return status(model_name, version)

  @app.get("/v1/models/{model_name}/metadata")
  async def model_metadata(model_name: str):
    return JSONResponse(protocol.metadata_response(name, served_model(model_name, None)))

  @app.get("/v1/models/{model_name}/versions/{version}/metadata")
  async def version_metadata(model_name: str, version: str):
    return JSONResponse(protocol.metadata_response(name, served_model(model_name, version)))

  @app.post("/v1/models/{model_name}:predict")
  async def predict_latest(model_name: str, request: Request):
    return await predict(request, model_name, None)

  @app.post("/v1/models/{model_name}/versions/{version}:predict")
  async def predict_version(model_name: str, version: str, request: Request):
    return await predict(request, model_name, version)

  @app.get("/monitoring/prometheus/metrics", response_class=PlainTextResponse)
  async def metrics():
    return "".join(f"# TYPE {metric} counter\n{metric}{{model=\"{name}\"}} {value}\n"
                   for metric, value in (("headswap_batches_total", batcher.batches),
                                         ("headswap_predicted_images_total", batcher.images)))

  @app.exception_handler(RequestError)
  async def refused(_, error: RequestError):
    return JSONResponse({"error": str(error)}, status_code=error.status)

  @app.exception_handler(HTTPException)
  async def no_such_route(_, error: HTTPException):  # FastAPI's 404/405, in TF Serving's shape
    return JSONResponse({"error": str(error.detail)}, status_code=error.status_code,
                        headers=error.headers)

  @app.exception_handler(Exception)
  async def internal_error(_, error: Exception):  # logged by Starlette after this response
    return JSONResponse({"error": f"internal error: {type(error).__name__}: {error}"},
                        status_code=500)

  return app


def _number(version: str) -> Optional[int]:
  return int(version) if re.fullmatch(r"[0-9]+", version) else None


async def _read_body(request: Request, limit: int) -> bytes:
  """The body, refused with 413 as soon as it is known to exceed `limit` bytes."""
  declared = request.headers.get("content-length", "")
  if declared.isdigit() and int(declared) > limit:
    raise too_large(f"request body of {int(declared):,} bytes is over the limit of {limit:,} "
                    "bytes (--max-body-bytes)")
  body = bytearray()
  async for chunk in request.stream():
    body += chunk
    if len(body) > limit:
      raise too_large(f"request body is over the limit of {limit:,} bytes (--max-body-bytes)")
  return bytes(body)


async def _poll(versions: ServedVersions, seconds: float) -> None:
  while True:
    await asyncio.sleep(seconds)
    try:
      await asyncio.to_thread(versions.refresh)  # loading takes seconds: off the event loop
    except Exception:  # e.g. the folder is unreadable for a moment: try again next time
      log.exception("looking for new versions under %s failed", versions.base_path)


def run(config: ServerConfig, host: str, port: int) -> None:
  app = create_app(config)
  address = f"[{host}]" if ":" in host else host  # an IPv6 address in a URL
  log.info("model %s at http://%s:%d/v1/models/%s", config.name, address, port, config.name)
  uvicorn.run(app, host=host, port=port, access_log=False, log_level="info")
