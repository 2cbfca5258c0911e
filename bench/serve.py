"""Serving benchmark: latency, throughput under concurrent clients, and errors on bad requests.

  .venv/bin/python bench/serve.py [--clients 8] [--max-batch-size N] [--batch-timeout-ms MS]
                                 [--backbone NAME --image-size PX] [--tflite]

Exports the Trainer's classifier as a run ships it (the default backbone and image size, with
ImageNet weights; --backbone and --image-size measure another), measures its offline batched
throughput in this process, then starts `headswap serve` on a free loopback port and measures:
  - p50/p99 latency of one request with one 450x375 JPEG (a shared photo resized), one client;
  - images/s with --clients concurrent clients, against the best offline images/s;
  - errors over 1,000 good and 1,000 bad requests mixed (a bad one must get its 4xx).
--tflite also writes the run's two .tflite files (`headswap run --tflite`) and times one photo
at a time through each, decode included, as `headswap predict --model x.tflite` runs it.
Prints one JSON object. Stops by itself: every phase is bounded and the server is stopped.
Targets: p50 <= 50 ms, p99 <= 150 ms, >= 80% of offline throughput, 0 errors.
"""

import argparse
import asyncio
import base64
import io
import json
import os
import random
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time
import zlib

import httpx
import numpy as np
import psutil
from PIL import Image

from common import ROOT, SHARED_DATA
from headswap.serving.config import ServerConfig
from headswap.trainer.hparams import HParams

DEFAULT_PHOTO = os.path.join(SHARED_DATA, "test", "cats", "cat.4001.jpg")
PHOTO_SIZE = (450, 375)
MODEL_NAME = "bench"
CLASS_NAMES = ["cats", "dogs"]
MAX_BODY_BYTES = 1024 * 1024  # bench setting: over-limit bodies stay cheap to send 100s of times
PHASE_TIMEOUT_S = 300
JSON = {"Content-Type": "application/json"}  # the server refuses other POSTs (415)


def photo_jpeg(path):
  """The photo at PHOTO_SIZE, as a JPEG a phone or browser would send."""
  data = io.BytesIO()
  with Image.open(path) as photo:
    photo.convert("RGB").resize(PHOTO_SIZE, Image.BILINEAR).save(data, "JPEG", quality=90)
  return data.getvalue()


def export_model(path, backbone, image_size, image, tflite):
  """The classifier as the Trainer builds and exports it (the head's weights are untrained:
  speed does not depend on them); with `tflite`, its .tflite files beside it, calibrated on
  `image` (ranges, not speed, depend on the calibration photos)."""
  from headswap.trainer import export, preprocessing
  from headswap.trainer.backbones import registry
  from headswap.trainer.hparams import HParams
  from headswap.trainer.model import build_classifier, build_head

  base = registry.build_base(backbone, "imagenet", image_size)
  image_size = base.input_shape[1]  # 0: the backbone's native size
  classifier = build_classifier(base, build_head(base.output_shape[-1], len(CLASS_NAMES),
                                                 HParams()))
  export.export_classifier(classifier, CLASS_NAMES, image_size, path)
  if tflite:
    pixels = preprocessing.decode_image(image, image_size).numpy().astype(np.uint8)
    export.export_tflite(classifier, CLASS_NAMES, image_size, path, [pixels] * 8)
  return path


def tflite_latency(model_path, image, calls=50):
  """{file: size, p50/p99 ms of one photo, decode included} of each .tflite file."""
  from headswap.trainer import export

  results = {}
  for name in (export.TFLITE_FLOAT16, export.TFLITE_INT8):
    model = export.TFLiteModel(os.path.join(model_path, name))
    model.probabilities([image])  # the interpreter's first call allocates
    latencies = []
    for _ in range(calls):
      start = time.perf_counter()
      model.probabilities([image])
      latencies.append(time.perf_counter() - start)
    results[name] = {"megabytes": round(model.size_bytes / 1e6, 1),
                     "p50_ms": round(float(np.percentile(latencies, 50)) * 1000, 1),
                     "p99_ms": round(float(np.percentile(latencies, 99)) * 1000, 1),
                     "calls": calls}
  return results


def offline_throughput(model_path, image, batch_sizes, seconds=3.0):
  """{batch size: images/s and CPU ms per image} of the SavedModel's serving_default, called
  directly. CPU time counts only this process's work, so it holds up when others share the
  machine; images/s does not."""
  from headswap.serving.models import LoadedModel

  model = LoadedModel(model_path)
  rates = {}
  for batch_size in batch_sizes:
    batch = [image] * batch_size
    model.predict(batch)
    done, start, cpu_start = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
      model.predict(batch)
      done += batch_size
    rates[batch_size] = {
        "images_per_s": round(done / (time.perf_counter() - start), 1),
        "cpu_ms_per_image": round((time.process_time() - cpu_start) / done * 1000, 1)}
  return rates


def free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def start_server(base_path, port, args):
  command = [sys.executable, "-m", "headswap.pipeline.cli", "serve", "--model-base-path", base_path,
             "--port", str(port), "--max-body-bytes", str(MAX_BODY_BYTES),
             "--max-batch-size", str(args.max_batch_size),
             "--batch-timeout-ms", str(args.batch_timeout_ms)]
  log = tempfile.TemporaryFile()
  server = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
  deadline = time.monotonic() + PHASE_TIMEOUT_S
  while time.monotonic() < deadline:
    if server.poll() is not None:
      log.seek(0)
      raise RuntimeError(f"the server exited: {log.read().decode()[-2000:]}")
    try:
      if httpx.get(f"http://127.0.0.1:{port}/v1/models/{MODEL_NAME}").status_code == 200:
        return server
    except httpx.TransportError:
      pass
    time.sleep(0.5)
  server.kill()
  raise RuntimeError("the server did not start in time")


def request_body(images):
  return json.dumps({"instances": [{"b64": base64.b64encode(i).decode()} for i in images]})


def bad_requests(image):
  """(kind, path suffix, body, expected status) for each kind of bad request."""
  predict = f"/v1/models/{MODEL_NAME}:predict"
  return [
      ("invalid_json", predict, "{not json", 400),
      ("bad_base64", predict, '{"instances": [{"b64": "not*base64"}]}', 400),
      ("not_an_image", predict, request_body([b"plain text, not pixels"]), 400),
      ("truncated_jpeg", predict, request_body([image[:len(image) // 2]]), 400),
      ("over_pixel_limit", predict, request_body([png_header(20_000, 20_000)]), 413),
      ("too_many_instances", predict,
       json.dumps({"instances": [{"b64": ""}] * (ServerConfig.max_instances + 1)}), 413),
      ("body_too_large", predict, "x" * (MAX_BODY_BYTES + 1), 413),
      ("unknown_model", "/v1/models/nope:predict", request_body([image]), 404),
      ("unknown_version", f"/v1/models/{MODEL_NAME}/versions/999:predict",
       request_body([image]), 404),
  ]


def png_header(width, height):
  """A 1x1 PNG whose header claims width x height: a decompression bomb, as far as a header
  check can tell."""
  data = io.BytesIO()
  Image.new("RGB", (1, 1)).save(data, format="PNG")
  png = bytearray(data.getvalue())
  ihdr = png.index(b"IHDR")
  png[ihdr + 4:ihdr + 12] = struct.pack(">II", width, height)
  png[ihdr + 17:ihdr + 21] = struct.pack(">I", zlib.crc32(bytes(png[ihdr:ihdr + 17])))
  return bytes(png)


async def run_requests(url, requests, clients):
  """Sends (path, body) requests over `clients` connections; returns [(status, seconds)]."""
  results = [None] * len(requests)
  next_index = iter(range(len(requests)))
  limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
  async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as http:
    async def client():
      for index in next_index:
        path, body = requests[index]
        start = time.perf_counter()
        try:
          status = (await http.post(path, content=body, headers=JSON)).status_code
        except httpx.TransportError as error:
          status = f"{type(error).__name__}"
        results[index] = (status, time.perf_counter() - start)
    await asyncio.wait_for(asyncio.gather(*(client() for _ in range(clients))), PHASE_TIMEOUT_S)
  return results


def batch_counters(url):
  lines = httpx.get(f"{url}/monitoring/prometheus/metrics").text.splitlines()
  values = {re.split(r"[{ ]", line)[0]: float(line.split()[-1]) for line in lines
            if not line.startswith("#")}
  return values["headswap_batches_total"], values["headswap_predicted_images_total"]


def cpu_seconds(process):
  times = process.cpu_times()
  return times.user + times.system


def measure(url, server, image, args):
  """Latency, load and bad-request phases against the running server (a psutil.Process)."""
  good = (f"/v1/models/{MODEL_NAME}:predict", request_body([image]))
  asyncio.run(run_requests(url, [good] * 20, 1))  # warm up connections and the model
  cpu_before = cpu_seconds(server)
  timed = asyncio.run(run_requests(url, [good] * 200, 1))
  latencies = [seconds for _, seconds in timed]
  latency_cpu_ms = (cpu_seconds(server) - cpu_before) / len(latencies) * 1000

  batches_before, images_before = batch_counters(url)
  start, cpu_before = time.perf_counter(), cpu_seconds(server)
  loaded = asyncio.run(run_requests(url, [good] * args.load_requests, args.clients))
  served_rate = len(loaded) / (time.perf_counter() - start)
  load_cpu_ms = (cpu_seconds(server) - cpu_before) / len(loaded) * 1000
  batches, images = (a - b for a, b in zip(batch_counters(url), (batches_before, images_before)))

  bad = bad_requests(image)
  mixed = [("good", *good, 200)] * args.requests
  mixed += [bad[i % len(bad)] for i in range(args.requests)]
  random.Random(0).shuffle(mixed)
  outcomes = asyncio.run(run_requests(url, [(path, body) for _, path, body, _ in mixed],
                                      args.clients))
  by_kind = {}
  for (kind, _, _, expected), (status, _) in zip(mixed, outcomes):
    counts = by_kind.setdefault(kind, {"requests": 0, "errors": 0, "statuses": {}})
    counts["requests"] += 1
    counts["errors"] += status != expected
    counts["statuses"][str(status)] = counts["statuses"].get(str(status), 0) + 1
  return {
      "latency_ms": {"p50": round(float(np.percentile(latencies, 50)) * 1000, 1),
                     "p99": round(float(np.percentile(latencies, 99)) * 1000, 1),
                     "requests": len(latencies),
                     "non_200": sum(status != 200 for status, _ in timed),
                     "server_cpu_ms_per_request": round(latency_cpu_ms, 1)},
      "load": {"clients": args.clients, "requests": len(loaded),
               "non_200": sum(status != 200 for status, _ in loaded),
               "images_per_s": round(served_rate, 1),
               "server_cpu_ms_per_image": round(load_cpu_ms, 1),
               # None: no batch ran (every request refused or timed out: see non_200)
               "mean_batch_size": round(images / batches, 2) if batches else None},
      "errors": {"good_requests": args.requests, "bad_requests": args.requests,
                 "errors": sum(kind["errors"] for kind in by_kind.values()),
                 "by_kind": by_kind},
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--photo", default=DEFAULT_PHOTO, help="resized to 450x375")
  parser.add_argument("--clients", type=int, default=8)
  parser.add_argument("--load-requests", type=int, default=600)
  parser.add_argument("--requests", type=int, default=1000, help="good ones, and as many bad")
  parser.add_argument("--max-batch-size", type=int, default=ServerConfig.max_batch_size)
  parser.add_argument("--batch-timeout-ms", type=float, default=ServerConfig.batch_timeout_ms)
  parser.add_argument("--backbone", default=HParams.backbone)
  parser.add_argument("--image-size", type=int, default=HParams.image_size,
                      help="0: the backbone's native size")
  parser.add_argument("--tflite", action="store_true", help="also time the .tflite files")
  args = parser.parse_args()
  image = photo_jpeg(args.photo)
  load_before = os.getloadavg()[0]

  with tempfile.TemporaryDirectory() as folder:
    base_path = os.path.join(folder, MODEL_NAME)
    model_path = export_model(os.path.join(base_path, "1"), args.backbone, args.image_size,
                              image, args.tflite)
    offline = offline_throughput(model_path, image, (1, 2, 4, 8, 16))
    port = free_port()
    server = start_server(base_path, port, args)
    try:
      results = measure(f"http://127.0.0.1:{port}", psutil.Process(server.pid), image, args)
    finally:
      server.terminate()
      try:
        server.wait(30)
      except subprocess.TimeoutExpired:
        server.kill()
    # Again after the server ran: other work on the machine may have slowed the first pass,
    # and the comparison should be against the model at its best.
    best_batch_size = max(offline, key=lambda size: offline[size]["images_per_s"])
    offline_after = offline_throughput(model_path, image, (best_batch_size,))
    if args.tflite:
      results["tflite"] = tflite_latency(model_path, image)

  best_offline = max(rate["images_per_s"] for rate in (*offline.values(),
                                                       *offline_after.values()))
  ratio = results["load"]["images_per_s"] / best_offline
  least_offline_cpu = min(rate["cpu_ms_per_image"] for rate in offline.values())
  print(json.dumps({
      "model": f"{args.backbone} imagenet weights, "
               f"{args.image_size or 'native'} px",
      "image": f"{os.path.relpath(args.photo, ROOT)} resized to "
               f"{PHOTO_SIZE[0]}x{PHOTO_SIZE[1]}, JPEG {len(image):,} bytes",
      # Other work on the machine slows every wall-clock number here.
      "machine": {"cpus": os.cpu_count(),
                  "load_average_1min_before_and_after": [load_before, os.getloadavg()[0]]},
      "server": {"max_batch_size": args.max_batch_size,
                 "batch_timeout_ms": args.batch_timeout_ms, "max_body_bytes": MAX_BODY_BYTES},
      **results,
      "offline_by_batch_size": offline,
      "offline_after_serving": offline_after,
      "throughput_vs_best_offline": round(ratio, 3),
      # The same comparison in CPU time, which other work on the machine distorts far less.
      "cpu_per_image_best_offline_vs_served": round(
          least_offline_cpu / results["load"]["server_cpu_ms_per_image"], 3),
      "targets_met": {"p50_le_50ms": results["latency_ms"]["p50"] <= 50,
                      "p99_le_150ms": results["latency_ms"]["p99"] <= 150,
                      "throughput_ge_80pct_offline": ratio >= 0.8,
                      "zero_errors": results["errors"]["errors"] == 0
                                     and results["load"]["non_200"] == 0
                                     and results["latency_ms"]["non_200"] == 0},
  }, indent=2))


if __name__ == "__main__":
  main()
