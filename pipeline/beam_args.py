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


def ingest_beam_args(num_images: Optional[int], remote: bool = False) -> List[str]:
  """num_images: as the CLI's listing counted them; None (not listed) keeps one process."""
  cores = REMOTE_CORES if remote else os.cpu_count() or 1
  return MULTI_PROCESS if (num_images or 0) >= multi_process_min_images(cores) else []
