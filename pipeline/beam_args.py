"""Default Beam settings of the ingest steps (ImageExampleGen, StatisticsGen) when no
--beam-args are given: Beam's DirectRunner in this process for small data, with a worker
process per core once the data is large enough to pay for starting them.

Measured with bench/beam_ingest.py on 2 cores (README, "Beam"): in one process both steps
took 10 s + 11.3 ms per image; with worker processes they took 137 s at 1,000 and at 3,000
images, the start of the workers (each imports TensorFlow and TFX) dominating. The workers
can at best divide the per-image part by the cores, so they pay off above
WORKER_START_S / (PER_IMAGE_S * (1 - 1 / cores)) images: 22,000 on 2 cores, 15,000 on 4.
The Evaluator keeps the in-process runner: it reads only the eval split.
"""

import math
import os
from typing import List, Optional

from components.image_example_gen import sources

WORKER_START_S = 127.0  # extra seconds of the multi-process ingest, both steps
PER_IMAGE_S = 0.0113  # seconds per image of the in-process ingest, both steps
REMOTE_CORES = 4  # a Vertex AI Pipelines step's default machine (e2-standard-4)
MULTI_PROCESS = ["--direct_running_mode=multi_processing",
                 "--direct_num_workers=0"]  # 0: a worker per core of the machine it runs on


def multi_process_min_images(cores: int) -> float:
  """The data size above which worker processes pay off on a machine with `cores`."""
  if cores < 2:
    return math.inf
  return WORKER_START_S / (PER_IMAGE_S * (1 - 1 / cores))


def ingest_beam_args(data: str, tfds_data_dir: Optional[str] = None,
                     remote: bool = False) -> List[str]:
  cores = REMOTE_CORES if remote else os.cpu_count() or 1
  return MULTI_PROCESS if image_count(data, tfds_data_dir) >= multi_process_min_images(
      cores) else []


def image_count(data: str, tfds_data_dir: Optional[str] = None) -> int:
  """Files under the data folder (no image is opened), or a TFDS dataset's examples."""
  if data.startswith(sources.TFDS_PREFIX):
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel; heavy

    info = tfds.builder(data[len(sources.TFDS_PREFIX):], data_dir=tfds_data_dir).info
    return sum(split.num_examples for split in info.splits.values())
  return sum(len(files) for _, _, files in os.walk(data))
