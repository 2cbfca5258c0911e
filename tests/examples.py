"""TFRecords in ExampleGen's layout, written without a pipeline run, for stage-level tests.

Each image goes through the real ingest decoder (components/image_example_gen/decode.py);
only Beam and TFX orchestration are skipped, to keep trainer tests to seconds.
"""

import json
import os

import tensorflow as tf

from headswap.components import features
from headswap.components.image_example_gen import decode, sources


def write_examples(images_root, output, eval_every=4):
  listing = sources.list_images(images_root)
  writers = {split: tf.io.TFRecordWriter(
      _split_file(output, split), options=tf.io.TFRecordOptions(compression_type="GZIP"))
      for split in (features.TRAIN, features.EVAL)}
  for i, candidate in enumerate(listing.candidates):
    example = decode.to_example(decode.read_bytes(candidate.path), candidate.source,
                                listing.class_names.index(candidate.label_name),
                                candidate.label_name, max_pixels=10**8)
    split = features.EVAL if i % eval_every == 0 else features.TRAIN
    writers[split].write(example.SerializeToString())
  for writer in writers.values():
    writer.close()
  with open(os.path.join(output, features.CLASS_NAMES_FILE), "w") as f:
    json.dump(listing.class_names, f)
  return output


def _split_file(output, split):
  folder = os.path.join(output, f"Split-{split}")
  os.makedirs(folder, exist_ok=True)
  return os.path.join(folder, "data_tfrecord-00000-of-00001.gz")
