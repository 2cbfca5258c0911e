"""Default Beam settings of the ingest steps (ImageExampleGen, StatisticsGen) when no
--beam-args are given: Beam's DirectRunner with a worker process per core for large data,
in one process for small data, where starting the workers costs more than they save.

Measured with bench/beam_ingest.py (numbers in the README): multi-process ingest lost
below MULTI_PROCESS_MIN_IMAGES and won above it. The Evaluator keeps the in-process runner:
each of its workers would load TensorFlow and the model for a fifth of the data.
"""

import os
from typing import List, Optional

from components.image_example_gen import sources

MULTI_PROCESS_MIN_IMAGES = 2000
MULTI_PROCESS = ["--direct_running_mode=multi_processing",
                 "--direct_num_workers=0"]  # 0: a worker per core of the machine it runs on


def ingest_beam_args(data: str, tfds_data_dir: Optional[str] = None,
                     remote: bool = False) -> List[str]:
  """Multi-process for large data. Remote steps run on other machines: their cores are
  not counted here (the workers follow them at run time)."""
  if not remote and (os.cpu_count() or 1) < 2:
    return []
  return MULTI_PROCESS if image_count(data, tfds_data_dir) >= MULTI_PROCESS_MIN_IMAGES else []


def image_count(data: str, tfds_data_dir: Optional[str] = None) -> int:
  """Files under the data folder (no image is opened), or a TFDS dataset's examples."""
  if data.startswith(sources.TFDS_PREFIX):
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel; heavy

    info = tfds.builder(data[len(sources.TFDS_PREFIX):], data_dir=tfds_data_dir).info
    return sum(split.num_examples for split in info.splits.values())
  return sum(len(files) for _, _, files in os.walk(data))
