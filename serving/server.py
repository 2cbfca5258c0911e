"""`headswap serve`: TF Serving's REST API over a folder of pushed versions, on FastAPI.

  GET  /v1/models/<name>[/versions/<v>]             version status
  GET  /v1/models/<name>[/versions/<v>]/metadata    signature defs
  POST /v1/models/<name>[/versions/<v>]:predict     {"instances": [{"b64": ...}]} or "inputs";
                                                    "signature_name": "from_examples" takes
                                                    serialized tf.Examples, as b64 too
  POST /v1/models/<name>[/versions/<v>]:classify    {"examples": [{"image": {"b64": ...}}]}
                                                    (:regress: 400, as there is no regressor)
  /labels/<label> in place of /versions/<v>         the version --version-labels gives it
  GET  /monitoring/prometheus/metrics               batches and images, to see batching
  GET  --health-route (/health)                      the served version's status
  POST --predict-route, if given                     :predict of the served version

One model (--model-base-path), or several (--model-config-file, serving/model_config.py): then
the last two routes are the first model's. Vertex AI's AIP_* variables set the port, the model
and the last two routes (serving/cli.py).
"""

import asyncio
import contextlib
import functools
import logging
import re
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from typing import List, Optional

import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.exceptions import HTTPException
from uvicorn.protocols.http.h11_impl import H11Protocol

from headswap.serving import protocol
from headswap.serving import model_config
from headswap.serving.batching import MicroBatcher
from headswap.serving.config import ModelSource, ServerConfig
from headswap.serving.errors import RequestError, bad_request, not_found, shorten, too_large
from headswap.serving.models import LoadedModel, ServedVersions

log = logging.getLogger("headswap")
story = logging.getLogger("headswap.console")  # on the console too (pipeline/console.py)


class NoModelError(Exception):
  pass


def sources(config: ServerConfig) -> List[ModelSource]:
  """The models to serve, in order: the config file's, or the one the flags name."""
  if config.model_config_file:
    return model_config.read(config.model_config_file)
  return [ModelSource(config.name, config.model_base_path, config.version_labels)]


def _load(source: ModelSource) -> ServedVersions:
  """Its newest loadable version, or NoModelError."""
  versions = ServedVersions(source.base_path)
  versions.refresh()
  if versions.current is None:
    failures = "".join(f"\n  version {v}: {why}" for v, why in sorted(versions.failed.items()))
    raise NoModelError(f"no loadable model {source.name!r} under {source.base_path}: expected "
                       f"numbered SavedModel folders such as {source.base_path}/1{failures}")
  return versions


def create_app(config: ServerConfig) -> FastAPI:
  """Loads each model's newest version (NoModelError if one has none that loads) and returns
  the app serving them."""
  models = {source.name: source for source in sources(config)}
  served = {name: _load(source) for name, source in models.items()}
  batcher = MicroBatcher(config.max_batch_size, config.batch_timeout_ms / 1000)
  # Request parsing and image decoding: off the event loop, so a slow image stalls no other
  # request, and on few threads, so many large images queue instead of filling memory.
  decoders = ThreadPoolExecutor(config.decode_threads, thread_name_prefix="decode")

  @contextlib.asynccontextmanager
  async def lifespan(_):
    batcher.start()
    pollers = [asyncio.create_task(_poll(versions, config.poll_seconds))
               for versions in served.values()]
    try:
      yield
    finally:
      for poller in pollers:
        poller.cancel()
      batcher.stop()
      decoders.shutdown(cancel_futures=True)

  def trusted(request: Request) -> None:
    """Refuses what a web page in the user's browser could send: another site's Host name
    (DNS rebinding) or a POST that is not JSON (a cross-site form or text/plain fetch, which
    browsers send without asking the server first)."""
    host = _host_name(request.headers.get("host", ""))
    if "*" not in config.allowed_hosts and host not in config.allowed_hosts:
      raise bad_request(f"Host {host!r} is not allowed: add it to --allowed-hosts")
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if request.method == "POST" and media_type != "application/json":
      raise RequestError(HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
                         f"Content-Type {media_type!r}: send the request as application/json")

  app = FastAPI(title="headswap", lifespan=lifespan, docs_url=None, redoc_url=None,
                openapi_url=None, dependencies=[Depends(trusted)])
  name = next(iter(models))  # the health and predict routes' model

  def served_model(model_name: str, version: Optional[str]) -> LoadedModel:
    # read once: a swap mid-request cannot mix two versions
    model = served[model_name].current if model_name in served else None
    if model is None or (version is not None and _number(version) != model.version):
      wanted = f"Latest({model_name})" if version is None else f"Specific({model_name}, {version})"
      raise not_found(f"Servable not found for request: {wanted}")
    return model

  def status(model_name: str, version: Optional[str]) -> JSONResponse:
    if model_name not in served:
      raise not_found(f"Could not find any versions of model {model_name}")
    number = None if version is None else _number(version)
    versions = served[model_name]
    response = protocol.status_response(versions.current, versions.failed, number)
    if version is not None and (number is None or not response["model_version_status"]):
      raise not_found(f"Could not find version {version} of model {model_name}")
    return JSONResponse(response)

  def labelled(model_name: str, label: str) -> str:
    """The version number a label stands for, as the /versions/<v> routes take it."""
    labels = models[model_name].version_labels if model_name in models else {}
    if label not in labels:
      raise not_found(f"no version of model {model_name} is labelled {label!r} "
                      "(--version-labels, or version_labels in --model-config-file)")
    return str(labels[label])

  # Requests holding a body (read, decoded or batched): at most max_pending_requests, so
  # their memory stays under max_pending_requests x max_body_bytes however many clients come.
  pending = 0

  async def answer(request: Request, model_name: str, version: Optional[str],
                   method: str) -> JSONResponse:
    """:predict or :classify."""
    nonlocal pending
    model = served_model(model_name, version)
    protocol.check_method(method)
    if pending >= config.max_pending_requests:
      raise RequestError(HTTPStatus.TOO_MANY_REQUESTS,
                         f"{pending} requests are in progress, the most this server takes "
                         "(--max-pending-requests): retry shortly")
    pending += 1
    try:
      body = await _read_body(request, config.max_body_bytes, config.read_timeout_seconds)
      parsed = await asyncio.get_running_loop().run_in_executor(decoders, functools.partial(
          protocol.parse_request, method, body, config.max_instances, config.max_pixels))
      outcomes = await batcher.predict(model, parsed.signature, parsed.values)
    finally:
      pending -= 1
    for index, outcome in enumerate(outcomes):
      if isinstance(outcome, RequestError):
        raise outcome.for_image(index)
    return JSONResponse(protocol.response(parsed, outcomes, model.class_names))

  # First, so that they win should a Vertex AI route look like one of TF Serving's.
  @app.get(config.health_route)
  async def health():
    return status(name, None)

  if config.predict_route:
    @app.post(config.predict_route)
    async def predict_route(request: Request):
      return await answer(request, name, None, "predict")

  @app.get("/v1/models/{model_name}")
  async def model_status(model_name: str):
    return status(model_name, None)

  @app.get("/v1/models/{model_name}/versions/{version}")
  async def version_status(model_name: str, version: str):
    return status(model_name, version)

  @app.get("/v1/models/{model_name}/labels/{label}")
  async def label_status(model_name: str, label: str):
    return status(model_name, labelled(model_name, label))

  @app.get("/v1/models/{model_name}/metadata")
  async def model_metadata(model_name: str):
    return JSONResponse(protocol.metadata_response(model_name, served_model(model_name, None)))

  @app.get("/v1/models/{model_name}/versions/{version}/metadata")
  async def version_metadata(model_name: str, version: str):
    return JSONResponse(protocol.metadata_response(model_name, served_model(model_name, version)))

  @app.get("/v1/models/{model_name}/labels/{label}/metadata")
  async def label_metadata(model_name: str, label: str):
    return await version_metadata(model_name, labelled(model_name, label))

  @app.post("/v1/models/{model_name}:{method}")
  async def answer_latest(model_name: str, method: str, request: Request):
    return await answer(request, model_name, None, method)

  @app.post("/v1/models/{model_name}/versions/{version}:{method}")
  async def answer_version(model_name: str, version: str, method: str, request: Request):
    return await answer(request, model_name, version, method)

  @app.post("/v1/models/{model_name}/labels/{label}:{method}")
  async def answer_label(model_name: str, label: str, method: str, request: Request):
    return await answer(request, model_name, labelled(model_name, label), method)

  @app.get("/monitoring/prometheus/metrics", response_class=PlainTextResponse)
  async def metrics():
    return "".join(f"# TYPE {metric} counter\n{metric} {value}\n"
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
    return JSONResponse({"error": shorten(f"internal error: {type(error).__name__}: {error}")},
                        status_code=500)

  return app


def _number(version: str) -> Optional[int]:
  """A version number as TF Serving's int64 holds it; None for anything else."""
  return int(version) if re.fullmatch(r"[0-9]{1,18}", version) else None


def _host_name(header: str) -> str:
  """"::1" of "[::1]:8501", "localhost" of "LocalHost:8501"."""
  host = header if header.endswith("]") else header.rsplit(":", 1)[0]
  return host.strip("[]").lower()


async def _read_body(request: Request, limit: int, timeout_seconds: float) -> bytes:
  """The body, refused with 413 as soon as it is known to exceed `limit` bytes, and with 408
  if it has not all arrived within timeout_seconds."""
  declared = request.headers.get("content-length", "")
  if declared.isdigit() and int(declared) > limit:
    raise too_large(f"request body of {int(declared):,} bytes is over the limit of {limit:,} "
                    "bytes (--max-body-bytes)")
  body = bytearray()

  async def read():
    async for chunk in request.stream():
      body.extend(chunk)
      if len(body) > limit:
        raise too_large(f"request body is over the limit of {limit:,} bytes (--max-body-bytes)")

  try:
    await asyncio.wait_for(read(), timeout_seconds)
  except asyncio.TimeoutError as error:
    raise RequestError(HTTPStatus.REQUEST_TIMEOUT,
                       f"the request body did not arrive within {timeout_seconds:g} s "
                       f"({len(body):,} bytes did; --read-timeout-seconds)") from error
  return bytes(body)


async def _poll(versions: ServedVersions, seconds: float) -> None:
  while True:
    await asyncio.sleep(seconds)
    try:
      await asyncio.to_thread(versions.refresh)  # loading takes seconds: off the event loop
    except Exception:  # e.g. the folder is unreadable for a moment: try again next time
      log.exception("looking for new versions under %s failed", versions.base_path)


class _HeadTimeoutProtocol(H11Protocol):
  """uvicorn's HTTP/1.1 connection, closed if a complete request head has not arrived within
  timeout_seconds of connecting or of the previous response. uvicorn alone keeps a silent
  connection open forever, and its keep-alive timer stops at the first byte."""

  def __init__(self, *args, timeout_seconds: float, **kwargs):
    super().__init__(*args, **kwargs)
    self._timeout_seconds = timeout_seconds
    self._head_timer: Optional[asyncio.TimerHandle] = None

  def connection_made(self, transport) -> None:
    super().connection_made(transport)
    self._await_head()

  def on_response_complete(self) -> None:
    self._await_head()  # first: the parent goes on to a pipelined request at once
    super().on_response_complete()

  def handle_events(self) -> None:
    super().handle_events()
    if self.cycle is not None and not self.cycle.response_complete:  # the app has a request
      self._head_timer.cancel()

  def connection_lost(self, exc) -> None:
    self._head_timer.cancel()
    super().connection_lost(exc)

  def _await_head(self) -> None:
    if self._head_timer is not None:
      self._head_timer.cancel()
    self._head_timer = self.loop.call_later(self._timeout_seconds, self.transport.close)


def uvicorn_config(config: ServerConfig, **options) -> uvicorn.Config:
  """The app on uvicorn, with a time limit on reading each request's head."""
  protocol_class = functools.partial(_HeadTimeoutProtocol,
                                     timeout_seconds=config.read_timeout_seconds)
  return uvicorn.Config(create_app(config), http=protocol_class, access_log=False, **options)


def run(config: ServerConfig, host: str, port: int) -> None:
  server = uvicorn.Server(uvicorn_config(config, host=host, port=port, log_level="info"))
  address = f"[{host}]" if ":" in host else host  # an IPv6 address in a URL
  for source in sources(config):
    story.info("model %s at http://%s:%d/v1/models/%s", source.name, address, port, source.name)
  server.run()
