"""The tf.Example contract between ingest and every later stage.

ExampleGen writes these features; the Trainer, the Evaluator and the report read them.
"""

import os

IMAGE = "image"  # encoded RGB JPEG or PNG bytes
LABEL = "label"  # int64 index into the sorted class list
LABEL_NAME = "label_name"
FILENAME = "filename"  # where the image came from, relative to the data root
HEIGHT = "height"
WIDTH = "width"
CHANNELS = "channels"  # of the source image (1 gray, 3 RGB, 4 RGBA/CMYK)
FORMAT = "format"  # of the source file: jpeg, png, gif, bmp, webp, ...
SHA256 = "sha256"  # of the source file's bytes: stable split key and duplicate finder

# What StatisticsGen looks at: everything a person can read (not the raw bytes).
READABLE = [LABEL, LABEL_NAME, HEIGHT, WIDTH, CHANNELS, FORMAT]

TRAIN, EVAL, TEST = "train", "eval", "test"

CLASS_NAMES_FILE = "class_names.json"  # written next to the splits of the Examples artifact
REPORT_FILE = "ingest_report.json"


def split_pattern(examples_uri: str, split: str) -> str:
  """The files of one split of an Examples artifact, as TFX lays them out."""
  return os.path.join(examples_uri, f"Split-{split}", "*")
