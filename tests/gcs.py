"""A local Cloud Storage emulator, so tests read and write gs:// with no account or network.

gcp-storage-emulator runs as a subprocess on a free loopback port. Beam and
google-cloud-storage find it through STORAGE_EMULATOR_HOST; TensorFlow's built-in gs://
filesystem has Google's endpoint compiled in, so the env here switches TensorFlow to its
modular plugin, which reads CLOUD_STORAGE_EMULATOR_ENDPOINT. The plugin reads its variables
when TensorFlow is imported: run gs:// commands in a subprocess started with `env`.
"""

import dataclasses
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from typing import Dict, Iterator, List

BUCKET = "headswap-test"
START_TIMEOUT_S = 30.0

# The plugin segfaults if any of its five cache variables is unset, and a non-zero block
# size broke SavedModel saving here: caching off throughout.
_PLUGIN_CACHE_OFF = {
    "GCS_READ_CACHE_BLOCK_SIZE_MB": "0", "GCS_READ_CACHE_MAX_SIZE_MB": "0",
    "GCS_READ_CACHE_MAX_STALENESS": "0", "GCS_STAT_CACHE_MAX_AGE": "0",
    "GCS_STAT_CACHE_MAX_ENTRIES": "1024",
}


@dataclasses.dataclass
class Emulator:
  url: str  # http://127.0.0.1:<port>
  bucket: str

  @property
  def env(self) -> Dict[str, str]:
    """os.environ plus what points TensorFlow, Beam and google-cloud-storage at the emulator."""
    return {
        **os.environ, **_PLUGIN_CACHE_OFF,
        "TF_USE_MODULAR_FILESYSTEM": "1",
        "CLOUD_STORAGE_EMULATOR_ENDPOINT": self.url,
        "GOOGLE_CLOUD_CPP_STORAGE_REST_CONFIG": "disable-xml",
        "STORAGE_EMULATOR_HOST": self.url,
        # Without these google.auth.default() probes for a GCE metadata server for ~23 s
        # in every process before it settles for anonymous access, which the emulator takes.
        "NO_GCE_CHECK": "true", "GOOGLE_CLOUD_PROJECT": "headswap-test",
    }

  def gs(self, path: str = "") -> str:
    return f"gs://{self.bucket}/{path}"

  def upload(self, folder: str, prefix: str) -> str:
    """Copies every file under a local folder to gs://<bucket>/<prefix>/; returns that URL."""
    for parent, _, names in os.walk(folder):
      for name in names:
        path = os.path.join(parent, name)
        with open(path, "rb") as f:
          self.write(f"{prefix}/{os.path.relpath(path, folder)}", f.read())
    return self.gs(prefix)

  def write(self, name: str, data: bytes) -> None:
    query = urllib.parse.urlencode({"uploadType": "media", "name": name})
    request = urllib.request.Request(
        f"{self.url}/upload/storage/v1/b/{self.bucket}/o?{query}", data=data, method="POST",
        headers={"Content-Type": "application/octet-stream"})
    urllib.request.urlopen(request).close()

  def names(self, prefix: str = "") -> List[str]:
    """The object names under prefix, as Cloud Storage lists them (no folders)."""
    query = urllib.parse.urlencode({"prefix": prefix})
    with urllib.request.urlopen(f"{self.url}/storage/v1/b/{self.bucket}/o?{query}") as response:
      return sorted(item["name"] for item in json.load(response).get("items", []))

  def wipe(self) -> None:
    urllib.request.urlopen(f"{self.url}/wipe?keep-buckets=1").close()


def free_port() -> int:
  with socket.socket() as probe:
    probe.bind(("127.0.0.1", 0))
    return probe.getsockname()[1]


def running_emulator() -> Iterator[Emulator]:
  """Starts the emulator, yields it once it answers, and stops it."""
  port = free_port()
  log = tempfile.TemporaryFile()  # not a pipe: it logs every request and would fill one
  process = subprocess.Popen(
      [sys.executable, "-m", "gcp_storage_emulator", "start", "--host", "127.0.0.1",
       "--port", str(port), "--in-memory", "--default-bucket", BUCKET],
      stdout=log, stderr=subprocess.STDOUT)
  emulator = Emulator(f"http://127.0.0.1:{port}", BUCKET)
  try:
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
      try:
        urllib.request.urlopen(emulator.url + "/").close()
        break
      except OSError:
        if process.poll() is not None or time.monotonic() > deadline:
          log.seek(0)
          raise RuntimeError("the Cloud Storage emulator did not start: " +
                             log.read().decode(errors="replace")[-2000:])
        time.sleep(0.1)
    yield emulator
  finally:
    process.terminate()
    process.wait(timeout=10)
    log.close()
