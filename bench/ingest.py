"""Ingest benchmark: images/s of the ImageExampleGen on a real photo set, per Beam mode.

  .venv/bin/python bench/ingest.py [--data ../shared/datasets/cats_vs_dogs]

Runs the ImageExampleGen alone in a one-node TFX pipeline (LocalDagRunner, SQLite metadata,
a fresh output folder each time, so nothing is served from the cache) with Beam's
DirectRunner, once per mode (MODES below): the default (in memory, one thread) and
multi_processing with 2 workers. Each image is read, decoded, checked and written once as a
tf.Example; the time includes TFX's driver and metadata bookkeeping, so it is what a user
waits for. CPU seconds (this process and Beam's worker processes) and the load average are
printed too: on a shared machine they tell contention from cost. Prints one JSON object.
Target: >= 100 images/s on 2 cores.
"""

import argparse
import json
import os
import resource
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "datasets", "cats_vs_dogs")
TARGET_IMAGES_PER_S = 100
MODES = {
    # What `headswap ingest` runs below the size where worker processes pay off
    # (pipeline/beam_args.py). multi_threading is not measured: it lost examples (executor.py).
    "default": [],
    # With any Beam argument, TFX first builds an sdist of itself for remote workers (a few
    # seconds, paid by users who pass --beam-args too, so it stays in the time).
    "multi_processing_2": ["--direct_running_mode=multi_processing", "--direct_num_workers=2"],
}


def cpu_seconds() -> float:
  """User and system CPU of this process and of its finished children (Beam's workers)."""
  return sum(usage.ru_utime + usage.ru_stime for usage in (
      resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)))


def ingest_once(data, output, beam_args):
  """(wall seconds, CPU seconds, ingest report) of one uncached ImageExampleGen run."""
  from tfx import v1 as tfx
  from tfx.orchestration import pipeline as tfx_pipeline

  from components import features
  from components.image_example_gen.component import ImageExampleGen
  from pipeline import local_runner

  example_gen = ImageExampleGen(data)
  pipeline = tfx_pipeline.Pipeline(
      pipeline_name="bench-ingest", pipeline_root=os.path.join(output, "tfx"),
      components=[example_gen], enable_cache=False, beam_pipeline_args=beam_args,
      metadata_connection_config=tfx.orchestration.metadata.sqlite_metadata_connection_config(
          local_runner.metadata_path(output)))
  start, start_cpu = time.perf_counter(), cpu_seconds()
  tfx.orchestration.LocalDagRunner().run(pipeline)
  seconds, cpu = time.perf_counter() - start, cpu_seconds() - start_cpu
  examples = local_runner.latest_artifacts(output)["ImageExampleGen.examples"]
  return seconds, cpu, local_runner.read_json(os.path.join(examples, features.REPORT_FILE))


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data", default=DEFAULT_DATA, help="image folder, any layout")
  parser.add_argument("--modes", nargs="+", choices=sorted(MODES), default=list(MODES))
  args = parser.parse_args(argv)
  data = os.path.abspath(args.data)
  if not os.path.isdir(data):
    sys.exit(f"bench/ingest.py: no data folder at {data}")
  results = {}
  for mode in args.modes:
    with tempfile.TemporaryDirectory(prefix="bench-ingest-") as output:
      seconds, cpu, report = ingest_once(data, output, MODES[mode])
    results[mode] = {
        "beam_args": " ".join(MODES[mode]) or "(none)",
        "seconds": round(seconds, 1),
        # The machine may be shared: images per CPU-second is what one idle core would do.
        "cpu_seconds": round(cpu, 1),
        "images_per_cpu_s": round(report["examples"] / cpu, 1),
        "examples": report["examples"],
        "skipped": len(report["skipped"]),
        "images_per_s": round(report["examples"] / seconds, 1),
        "meets_target": report["examples"] / seconds >= TARGET_IMAGES_PER_S,
        "per_split": {split: sum(counts.values()) for split, counts in report["counts"].items()},
    }
  print(json.dumps({"data": data, "cpus": os.cpu_count(),
                    "load_average_1_5_15_min": [round(load, 1) for load in os.getloadavg()],
                    "target_images_per_s": TARGET_IMAGES_PER_S, "modes": results}, indent=2))


if __name__ == "__main__":
  main()
