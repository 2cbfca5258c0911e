"""Server settings, importable without TensorFlow or FastAPI (the CLI reads the defaults)."""

import dataclasses
import os
from typing import Dict, Optional, Tuple

LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")


@dataclasses.dataclass(frozen=True)
class ModelSource:
  name: str  # in the URLs
  base_path: str  # holds <version>/ SavedModel folders, as the Pusher writes them
  # /labels/<label> in a URL means /versions/<number>, as TF Serving's version_labels.
  version_labels: Dict[str, int] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class ServerConfig:
  model_base_path: str = ""  # holds <version>/ SavedModel folders, as the Pusher writes them
  model_name: str = ""  # in the URLs; default: the base path's last folder
  # Several models instead (serving/model_config.py); the routes below are its first model's.
  model_config_file: Optional[str] = None
  max_batch_size: int = 8  # a cap: concurrent requests set the actual batch size
  batch_timeout_ms: float = 2.0
  max_instances: int = 64  # images per request
  max_body_bytes: int = 32 * 1024 * 1024
  max_pixels: int = 50_000_000  # per image, as at ingest: decompression bomb guard
  poll_seconds: float = 1.0  # how often to look for a newly pushed version
  # Host headers answered ("*": any). Only loopback names by default, so a web page whose
  # name is rebound to 127.0.0.1 cannot drive the server from the user's browser.
  allowed_hosts: Tuple[str, ...] = LOOPBACK_NAMES
  read_timeout_seconds: float = 30.0  # to send a request's head, and then its body
  decode_threads: int = 2  # images decoded at once, each up to max_pixels: bounds CPU and memory
  max_pending_requests: int = 32  # :predict/:classify requests in progress; more get 429
  # GET: the served version's status, 200 once a model is loaded (load balancers, Vertex AI).
  health_route: str = "/health"
  predict_route: Optional[str] = None  # POST: :predict of the served model, for Vertex AI
  # /labels/<label> in a URL means /versions/<number>, as TF Serving's version_labels.
  version_labels: Dict[str, int] = dataclasses.field(default_factory=dict)

  @property
  def name(self) -> str:
    return self.model_name or os.path.basename(os.path.normpath(self.model_base_path))
