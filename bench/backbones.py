"""Frozen feature extraction speed of each EfficientNet-Lite: images/s at its native size.

  .venv/bin/python bench/backbones.py [--batches 8] [--warmup 2] [--models efficientnet_lite0 ...]

Each model is the registry's base with ImageNet weights (raw pixels in, pooled features out),
run as the feature cache runs it: a tf.function of model(x, training=False) on batches of 32.
Warm-up batches (tracing, first allocations) are not timed; the load and the one-time weights
conversion are reported apart. The pixels are random: the speed does not depend on them.
On a shared machine, images/s falls with the load average printed beside it; CPU ms per
image much less, so 1000 * cores / cpu_ms_per_image roughly estimates images/s on idle cores.
Prints one JSON object.
"""

import argparse
import json
import os
import statistics
import time

import numpy as np
import tensorflow as tf

from headswap.trainer.backbones import efficientnet_lite, registry

BATCH_SIZE = 32


def measure(name: str, batches: int, warmup: int) -> dict:
  started = time.perf_counter()
  base = registry.build_base(name, "imagenet")
  load_s = time.perf_counter() - started
  size = base.input_shape[1]
  extract = tf.function(lambda pixels: base(pixels, training=False))
  pixels = tf.constant(np.random.default_rng(0).uniform(0, 255, (BATCH_SIZE, size, size, 3)),
                       tf.float32)
  for _ in range(warmup):
    extract(pixels).numpy()
  seconds, cpu_started = [], time.process_time()
  for _ in range(batches):
    started = time.perf_counter()
    extract(pixels).numpy()
    seconds.append(time.perf_counter() - started)
  cpu_s = time.process_time() - cpu_started
  return {"image_size": size, "features": int(base.output_shape[-1]),
          "params": int(base.count_params()),
          "images_per_s": round(BATCH_SIZE * batches / sum(seconds), 1),
          "batch_ms_p50": round(1000 * statistics.median(seconds), 1),
          "batch_ms_max": round(1000 * max(seconds), 1),
          "timed_images": BATCH_SIZE * batches, "load_s": round(load_s, 2),
          # CPU time does not grow with other processes' load, wall time does
          "cpu_ms_per_image": round(1000 * cpu_s / (BATCH_SIZE * batches), 1),
          # other processes on the 2 cores inflate the times: how busy the machine was
          "load_average_1min": round(os.getloadavg()[0], 1)}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--batches", type=int, default=8, help="timed batches per model")
  parser.add_argument("--warmup", type=int, default=2, help="untimed batches first")
  parser.add_argument("--models", nargs="+", default=list(efficientnet_lite.WEIGHTS_PACKAGES))
  args = parser.parse_args()
  for name in args.models:  # convert any missing weights first, so no load below converts
    efficientnet_lite.imagenet_weights_file(name)
  print(json.dumps({
      "benchmark": "frozen feature extraction (pooled features, training=False)",
      "batch_size": BATCH_SIZE, "cpu_count": os.cpu_count(),
      "tensorflow": tf.__version__,
      "models": {name: measure(name, args.batches, args.warmup) for name in args.models},
  }))


if __name__ == "__main__":
  main()
