"""Ingest speed of Beam's DirectRunner: in-memory (one process) against multi-process.

  .venv/bin/python bench/beam_ingest.py --data ../shared/datasets/cats_vs_dogs --sizes 100,0

Runs `headswap ingest` once per size and mode, each in a fresh output folder and a fresh
process. A size N ingests a folder of symlinks to N images of the data's train/ (0: all the
data). Reads how long ImageExampleGen and StatisticsGen ran from the run's ML Metadata
(TensorFlow and TFX start-up excluded, Beam worker start-up included), and the CPU seconds
of the run's processes that were waited for: all of an in-memory run; Beam kills its worker
processes, so a multi-process run's workers are only partly counted, and ImageExampleGen's
images/s against the target. Prints one JSON object.
On a shared machine the numbers carry the other users' load: compare runs made together.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

MODES = {
    "in_memory": "--direct_running_mode=in_memory",
    "multi_processing": "--direct_running_mode=multi_processing --direct_num_workers=0",
}
TIMED = ("ImageExampleGen", "StatisticsGen")
TARGET_IMAGES_PER_S = 100  # ImageExampleGen on 2 cores


def component_seconds(output: str) -> dict:
  """{component: seconds of its newest execution} from the run's MLMD store."""
  from ml_metadata.metadata_store import metadata_store
  from tfx import v1 as tfx

  from headswap.pipeline import local_runner

  store = metadata_store.MetadataStore(
      tfx.orchestration.metadata.sqlite_metadata_connection_config(
          local_runner.metadata_path(output)))
  seconds = {}
  for context in store.get_contexts_by_type("node"):
    component = context.name.split(".", 1)[1]
    if component in TIMED:
      newest = max(store.get_executions_by_context(context.id), key=lambda e: e.id)
      seconds[component] = round(
          (newest.last_update_time_since_epoch - newest.create_time_since_epoch) / 1000, 1)
  return seconds


def run_mode(data: str, beam_args: str, workdir: str) -> dict:
  output = tempfile.mkdtemp(dir=workdir)
  before = _children_cpu_seconds()
  started = time.time()
  subprocess.run([sys.executable, "-m", "headswap.pipeline.cli", "ingest", "--data", data,
                  "--output", output, f"--beam-args={beam_args}"],
                 check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  return {"wall_seconds": round(time.time() - started, 1),
          "cpu_seconds": round(_children_cpu_seconds() - before, 1), **component_seconds(output)}


def _children_cpu_seconds() -> float:
  usage = resource.getrusage(resource.RUSAGE_CHILDREN)
  return usage.ru_utime + usage.ru_stime


def subset(data: str, size: int, workdir: str) -> str:
  """A class-folder tree of symlinks to `size` images, taken evenly from data/train/<class>."""
  train = os.path.join(data, "train")
  classes = sorted(os.listdir(train))
  root = tempfile.mkdtemp(dir=workdir, prefix=f"subset{size}-")
  for name in classes:
    os.makedirs(os.path.join(root, name))
    for image in sorted(os.listdir(os.path.join(train, name)))[:size // len(classes)]:
      os.symlink(os.path.join(train, name, image), os.path.join(root, name, image))
  return root


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--data", required=True, help="an image folder with train/<class>/")
  parser.add_argument("--sizes", default="100,0",
                      help="comma list of image counts; 0 ingests all of --data")
  parser.add_argument("--modes", default=",".join(MODES), help="comma list of: " +
                      ", ".join(MODES))
  parser.add_argument("--repeat", type=int, default=1,
                      help="rounds over all modes, interleaved so that load changes hit all")
  parser.add_argument("--workdir", default=tempfile.gettempdir(),
                      help="where the throw-away outputs go")
  args = parser.parse_args()
  args.data = os.path.abspath(args.data)  # the subsets' symlinks point into it
  runs = []
  for size in (int(s) for s in args.sizes.split(",")):
    data = subset(args.data, size, args.workdir) if size else args.data
    images = sum(len(files) for _, _, files in os.walk(data))
    for _ in range(args.repeat):
      for mode in args.modes.split(","):
        run = {"images": images, "mode": mode, "beam_args": MODES[mode],
               "load_average_before": os.getloadavg()[0],
               **run_mode(data, MODES[mode], args.workdir)}
        run["images_per_s"] = round(images / run["ImageExampleGen"], 1)
        run["meets_target"] = run["images_per_s"] >= TARGET_IMAGES_PER_S
        runs.append(run)
  print(json.dumps({"data": args.data, "cpu_count": os.cpu_count(),
                    "target_images_per_s": TARGET_IMAGES_PER_S, "runs": runs}, indent=2))


if __name__ == "__main__":
  main()
