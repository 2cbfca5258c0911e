"""`headswap serve` and `headswap predict` flags. TensorFlow and FastAPI are imported only when
a command runs, so `headswap --help` stays instant."""

import argparse
import ipaddress
import os
import re
import sys
from typing import Dict

from headswap.serving.config import ServerConfig

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8501  # TF Serving's REST port
# What Vertex AI gives a custom serving container; each, when set, is the default of a flag.
VERTEX_PORT, VERTEX_MODEL = "AIP_HTTP_PORT", "AIP_STORAGE_URI"
VERTEX_PREDICT_ROUTE, VERTEX_HEALTH_ROUTE = "AIP_PREDICT_ROUTE", "AIP_HEALTH_ROUTE"


def register(commands) -> None:
  serve = commands.add_parser("serve", help="serve pushed models over TF Serving's REST API")
  add_serve_arguments(serve)
  serve.set_defaults(func=serve_main)
  predict = commands.add_parser("predict", help="top-k classes of images, from a SavedModel, "
                                                "a .tflite file or a running server")
  add_predict_arguments(predict)
  predict.set_defaults(func=predict_main)


def _positive(kind):
  def parse(text: str):
    value = kind(text)
    if value <= 0:
      raise argparse.ArgumentTypeError(f"must be above 0, got {text}")
    return value
  return parse


def _route(text: str) -> str:
  if not text.startswith("/"):
    raise argparse.ArgumentTypeError(f"must be a URL path starting with /, got {text!r}")
  return text


def parse_version_labels(text: str) -> Dict[str, int]:
  """{"stable": 2, "canary": 3} of "stable=2,canary=3"."""
  labels = {}
  for pair in text.split(","):
    label, _, version = pair.strip().partition("=")
    if not (re.fullmatch(r"[A-Za-z0-9_.-]+", label) and re.fullmatch(r"[0-9]{1,18}", version)):
      raise argparse.ArgumentTypeError(f"expected LABEL=VERSION pairs such as stable=2, got "
                                       f"{pair.strip()!r}")
    labels[label] = int(version)
  return labels


def _host_names(text: str):
  """("localhost", "::1") of "LocalHost,[::1]": as the server compares Host headers."""
  return tuple(name.strip().strip("[]").lower() for name in text.split(","))


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("--model-base-path", default=os.environ.get(VERTEX_MODEL),
                      help="folder of numbered SavedModel versions, e.g. OUTPUT/serving/<name>; "
                           "the newest is served and newer pushes replace it without a restart "
                           "(a SavedModel folder is served as version 1; default: "
                           f"${VERTEX_MODEL})")
  parser.add_argument("--model-name", default="",
                      help="the name in /v1/models/<name> (default: the base path's last folder)")
  parser.add_argument("--model-config-file", "--model_config_file", metavar="FILE",
                      help="several models instead of --model-base-path: TF Serving's "
                           "text-format ModelServerConfig, model_config_list { config { name: "
                           "\"pets\" base_path: \"/models/pets\" model_platform: "
                           "\"tensorflow\" } ... } (version_labels too); --health-route and "
                           "--predict-route are the first model's")
  parser.add_argument("--host", default=DEFAULT_HOST,
                      help="address to listen on; other than loopback needs --allow-remote")
  parser.add_argument("--allow-remote", action="store_true",
                      help="allow a non-loopback --host: anyone who can reach it can use the "
                           "server, which has no authentication")
  parser.add_argument("--port", type=int, default=os.environ.get(VERTEX_PORT) or DEFAULT_PORT,
                      help=f"default: ${VERTEX_PORT} if set, else {DEFAULT_PORT}")
  parser.add_argument("--health-route", type=_route,
                      default=os.environ.get(VERTEX_HEALTH_ROUTE) or ServerConfig.health_route,
                      help="GET: the served version's status, 200 once a model is loaded "
                           f"(default: ${VERTEX_HEALTH_ROUTE} if set, else "
                           f"{ServerConfig.health_route})")
  parser.add_argument("--predict-route", type=_route,
                      default=os.environ.get(VERTEX_PREDICT_ROUTE) or None,
                      help="POST: a second URL for the served model's :predict, such as "
                           f"Vertex AI's (default: ${VERTEX_PREDICT_ROUTE} if set)")
  parser.add_argument("--version-labels", type=parse_version_labels, default={},
                      help="LABEL=VERSION pairs, e.g. stable=2,canary=3: /labels/stable in a URL "
                           "means /versions/2, as TF Serving's version_labels (only the served, "
                           "newest, version answers; others get 404)")
  parser.add_argument("--max-batch-size", type=_positive(int),
                      default=ServerConfig.max_batch_size,
                      help="most images in one model call, from all concurrent requests")
  parser.add_argument("--batch-timeout-ms", type=float, default=ServerConfig.batch_timeout_ms,
                      help="how long an idle model waits for more images before a call")
  parser.add_argument("--max-instances", type=_positive(int), default=ServerConfig.max_instances,
                      help="most images in one request")
  parser.add_argument("--max-body-bytes", type=_positive(int),
                      default=ServerConfig.max_body_bytes, help="largest request body")
  parser.add_argument("--max-pixels", type=_positive(int), default=ServerConfig.max_pixels,
                      help="largest image, in pixels (a GIF's first frame, the one served): "
                           "decompression bomb guard")
  parser.add_argument("--decode-threads", type=_positive(int),
                      default=ServerConfig.decode_threads,
                      help="images decoded at once (each up to --max-pixels); more wait")
  parser.add_argument("--max-pending-requests", type=_positive(int),
                      default=ServerConfig.max_pending_requests,
                      help="predict requests in progress at once (each holds up to "
                           "--max-body-bytes); more are answered 429 Too Many Requests")
  parser.add_argument("--read-timeout-seconds", type=_positive(float),
                      default=ServerConfig.read_timeout_seconds,
                      help="time a client has to send a request's head, and then its body")
  parser.add_argument("--allowed-hosts", type=_host_names,
                      help="comma-separated names a request's Host header may give, or '*' for "
                           f"any (default: {','.join(ServerConfig.allowed_hosts)} and --host): "
                           "other names are refused, so that a web page cannot reach the "
                           "server through a DNS name rebound to this machine")
  parser.add_argument("--poll-seconds", type=_positive(float), default=ServerConfig.poll_seconds,
                      help="how often to look for a newly pushed version")


def serve_main(args: argparse.Namespace) -> None:
  if not (is_loopback(args.host) or args.allow_remote):
    sys.exit(f"headswap serve: --host {args.host} is not a loopback address, so other machines "
             "could call this server, which has no authentication. Add --allow-remote if "
             "that is intended.")
  if bool(args.model_config_file) == bool(args.model_base_path):
    sys.exit(f"headswap serve: give either --model-base-path (or set ${VERTEX_MODEL}) or "
             "--model-config-file")
  if args.model_config_file and (args.model_name or args.version_labels):
    sys.exit("headswap serve: with --model-config-file, name models and label versions in the "
             "file (name, version_labels), not with --model-name or --version-labels")
  from headswap.serving import server  # pylint: disable=import-outside-toplevel

  config = ServerConfig(
      model_base_path=args.model_base_path or "", model_name=args.model_name,
      model_config_file=args.model_config_file,
      max_batch_size=args.max_batch_size, batch_timeout_ms=args.batch_timeout_ms,
      max_instances=args.max_instances, max_body_bytes=args.max_body_bytes,
      max_pixels=args.max_pixels, poll_seconds=args.poll_seconds,
      decode_threads=args.decode_threads, read_timeout_seconds=args.read_timeout_seconds,
      max_pending_requests=args.max_pending_requests, health_route=args.health_route,
      predict_route=args.predict_route, version_labels=args.version_labels,
      allowed_hosts=args.allowed_hosts or ServerConfig.allowed_hosts + _host_names(args.host))
  try:
    server.run(config, args.host, args.port)
  except (server.NoModelError, ValueError, OSError) as error:
    sys.exit(f"headswap serve: {error}")


def is_loopback(host: str) -> bool:
  if host == "localhost":
    return True
  try:
    return ipaddress.ip_address(host).is_loopback
  except ValueError:  # any other host name may resolve anywhere
    return False


def add_predict_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument("images", nargs="+", metavar="IMG", help="image files to classify")
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument("--model", help="a SavedModel, a folder of numbered versions (the "
                                      "newest is used) or a .tflite file, loaded in this "
                                      "process")
  source.add_argument("--server", metavar="URL",
                      help="the model's URL on a running `headswap serve` or TF Serving, as "
                           f"`headswap serve` prints it: http://{DEFAULT_HOST}:{DEFAULT_PORT}"
                           "/v1/models/<name> (or the server's URL and --model-name)")
  parser.add_argument("--model-name", help="with --server: the served model's name, the last "
                                           "folder of the server's --model-base-path")
  parser.add_argument("--top-k", type=_positive(int), default=3,
                      help="classes to show per image")


def predict_main(args: argparse.Namespace) -> None:
  """Exits with status 1 if any image could not be classified."""
  from headswap.serving import client  # pylint: disable=import-outside-toplevel

  if args.server:
    try:
      server_url, model_name = client.split_model_url(args.server, args.model_name)
      results = client.predict_remote(server_url, model_name, args.images)
    except client.ServerError as error:
      sys.exit(f"headswap predict: {error}")
  else:
    try:
      results = client.predict_local(args.model, args.images)
    except (OSError, ValueError) as error:
      sys.exit(f"headswap predict: cannot load {args.model}: {error}")
  if client.print_top_k(results, args.top_k):
    sys.exit(1)
