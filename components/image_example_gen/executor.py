"""Beam executor of the image ExampleGen: files in, tf.Example splits and a report out."""

import dataclasses
import json
import logging
import os
from typing import Any, Dict

import apache_beam as beam
import tensorflow as tf
from google.protobuf import json_format, struct_pb2
from tfx.components.example_gen.base_example_gen_executor import BaseExampleGenExecutor
from tfx.proto import example_gen_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

from headswap.components import features
from headswap.components.image_example_gen import decode, sources

log = logging.getLogger("headswap")
PROGRESS_EVERY = 500
SKIPPED = "skipped"
LISTING = "_headswap_listing"  # exec_properties key: listed once in Do, read by the transform


def settings_from(exec_properties: Dict[str, Any]) -> Dict[str, Any]:
  """The headswap settings packed into ExampleGen's custom_config (see component.py)."""
  config = example_gen_pb2.CustomConfig()
  proto_utils.json_to_proto(exec_properties.get("custom_config") or "{}", config)
  settings = struct_pb2.Struct()
  config.custom_config.Unpack(settings)
  return json_format.MessageToDict(settings)


def output_buckets(exec_properties: Dict[str, Any]) -> Dict[str, int]:
  """Split name -> hash buckets, from the output config (see component.py)."""
  output_config = example_gen_pb2.Output()
  proto_utils.json_to_proto(exec_properties[standard_component_specs.OUTPUT_CONFIG_KEY],
                            output_config)
  return {split.name: split.hash_buckets for split in output_config.split_config.splits}


class _DecodeImages(beam.DoFn):
  """Reads and decodes each image once; emits (split, example) or a skip reason."""

  def __init__(self, class_names, max_pixels, max_file_bytes, train_buckets, total_buckets):
    self._class_index = {name: i for i, name in enumerate(class_names)}
    self._max_pixels = max_pixels
    self._max_file_bytes = max_file_bytes
    self._train_buckets = train_buckets
    self._total_buckets = total_buckets
    self._done = 0
    self._decoded = beam.metrics.Metrics.counter("headswap", "images_decoded")
    self._skipped = beam.metrics.Metrics.counter("headswap", "images_skipped")

  def process(self, candidate: sources.Candidate):
    try:
      data = candidate.data if candidate.path is None else decode.read_bytes(
          candidate.path, self._max_file_bytes)
      example = decode.to_example(data, candidate.source,
                                  self._class_index[candidate.label_name],
                                  candidate.label_name, self._max_pixels)
    except decode.SkipImage as reason:
      self._skipped.inc()
      yield beam.pvalue.TaggedOutput(SKIPPED, (candidate.source, str(reason)))
      return
    self._decoded.inc()
    self._done += 1
    if self._done % PROGRESS_EVERY == 0:
      log.info("ingest: %d images decoded by this worker", self._done)
    sha256 = example.features.feature[features.SHA256].bytes_list.value[0].decode()
    yield self._split_of(candidate, sha256), example

  def _split_of(self, candidate, sha256):
    if candidate.given_split:
      return candidate.given_split
    # The content decides, so an image keeps its split across runs, renames and moves.
    bucket = int(sha256[:16], 16) % self._total_buckets
    return features.TRAIN if bucket < self._train_buckets else features.EVAL


def _summary(split_and_example):
  split, example = split_and_example
  feature = example.features.feature
  return (split, feature[features.LABEL_NAME].bytes_list.value[0].decode(),
          feature[features.SHA256].bytes_list.value[0].decode(),
          feature[features.FILENAME].bytes_list.value[0].decode())


def build_report(listing: sources.Listing, summaries, decode_skips) -> Dict[str, Any]:
  counts = {}
  by_hash = {}
  for split, label_name, sha256, filename in summaries:
    per_class = counts.setdefault(split, {name: 0 for name in listing.class_names})
    per_class[label_name] += 1
    by_hash.setdefault(sha256, []).append((split, filename))
  duplicates = [sorted(files) for files in by_hash.values() if len(files) > 1]
  skipped = sorted(listing.skipped + list(decode_skips))
  return {
      "layout": listing.layout,
      "class_names": listing.class_names,
      "counts": counts,
      "examples": sum(sum(per_class.values()) for per_class in counts.values()),
      "skipped": [{"file": source, "reason": reason} for source, reason in skipped],
      "duplicates_across_splits": [
          [f"{split}:{name}" for split, name in group] for group in sorted(duplicates)
          if len({split for split, _ in group}) > 1],
      "duplicates_within_splits": sum(
          1 for group in duplicates if len({split for split, _ in group}) == 1),
  }


def _write_report(summaries, path, listing, decode_skips):
  _write_json(path, build_report(listing, summaries, decode_skips))


def _write_json(path, value):
  with tf.io.gfile.GFile(path, "w") as f:
    json.dump(value, f, indent=2, sort_keys=True)


class Executor(BaseExampleGenExecutor):
  """File-based ExampleGen for labelled images (layouts in sources.py)."""

  def GetInputSourceToExamplePTransform(self) -> beam.PTransform:
    return _ImagesToExamples

  def GenerateExamplesByBeam(self, pipeline, exec_properties):
    examples, skips = pipeline | "ImagesToExamples" >> self.GetInputSourceToExamplePTransform()(
        exec_properties, split_pattern=None)
    (examples
     | "Summaries" >> beam.Map(_summary)
     | "AllSummaries" >> beam.combiners.ToList()
     | "WriteReport" >> beam.Map(
         _write_report, path=os.path.join(self._examples_uri, features.REPORT_FILE),
         # Without its candidates: Beam pickles this argument several times.
         listing=dataclasses.replace(exec_properties[LISTING], candidates=[], tfds_shards=[]),
         decode_skips=beam.pvalue.AsList(skips)))
    return {
        split: (examples
                | f"Select[{split}]" >> beam.Filter(lambda pair, s=split: pair[0] == s)
                | f"Serialize[{split}]" >> beam.Map(lambda pair: pair[1].SerializeToString()))
        for split in output_buckets(exec_properties)}

  def Do(self, input_dict, output_dict, exec_properties):
    artifact = artifact_utils.get_single_instance(
        output_dict[standard_component_specs.EXAMPLES_KEY])
    settings = settings_from(exec_properties)
    self._examples_uri = artifact.uri
    listing = sources.list_images(
        settings.get("tfds_name") and sources.TFDS_PREFIX + settings["tfds_name"]
        or exec_properties[standard_component_specs.INPUT_BASE_KEY],
        settings.get("labels_csv"), settings.get("tfds_data_dir"),
        file_column=settings.get("file_column"), label_column=settings.get("label_column"),
        allow_outside_root=settings["allow_outside_root"])
    exec_properties[LISTING] = listing
    _write_json(os.path.join(artifact.uri, features.CLASS_NAMES_FILE), listing.class_names)
    super().Do(input_dict, output_dict, exec_properties)
    with tf.io.gfile.GFile(os.path.join(artifact.uri, features.REPORT_FILE)) as f:
      report = json.load(f)
    artifact.set_string_custom_property("class_names", json.dumps(listing.class_names))
    log.info("ingest report: %s", summarize(report))
    check_written(artifact.uri, report)
    empty = [name for name in listing.class_names
             if not report["counts"].get(features.TRAIN, {}).get(name)]
    if empty:
      raise sources.IngestError(
          f"class {empty[0]!r} has no usable training image; see the skipped files in "
          f"{os.path.join(artifact.uri, features.REPORT_FILE)}")


def check_written(examples_uri: str, report: Dict[str, Any]) -> None:
  """Every example the report counts is in its split's files.

  Beam's DirectRunner in multi_threading mode dropped one example of 3,000 in each of four
  runs here, silently: a run that lost an example fails, naming the split."""
  for split, per_class in report["counts"].items():
    pattern = features.split_pattern(examples_uri, split)
    written = sum(1 for _ in tf.data.TFRecordDataset(tf.io.gfile.glob(pattern),
                                                       compression_type="GZIP"))
    if written != sum(per_class.values()):
      raise sources.IngestError(
          f"Beam wrote {written} of the {sum(per_class.values())} {split} examples to "
          f"{pattern}; rerun (the DirectRunner's default in_memory mode has not lost any)")


@beam.ptransform_fn
@beam.typehints.with_output_types(Any)
def _ImagesToExamples(pipeline, exec_properties, split_pattern):
  """All images of the listing as (split, tf.Example), with skip reasons tagged SKIPPED."""
  del split_pattern  # the listing covers every split; see sources.file_pattern
  listing = exec_properties[LISTING]
  settings = settings_from(exec_properties)
  buckets = output_buckets(exec_properties)
  train_buckets = buckets[features.TRAIN]
  total_buckets = train_buckets + buckets[features.EVAL]
  if listing.layout == "tfds":  # the workers read the images from the dataset's files
    candidates = (pipeline
                  | "ListTfdsShards" >> beam.Create(listing.tfds_shards, reshuffle=True)
                  | "ReadTfdsShards" >> beam.FlatMap(sources.read_tfds_shard)
                  | "Spread" >> beam.Reshuffle())  # decoded by all workers, not the readers
  else:
    candidates = pipeline | "ListImages" >> beam.Create(listing.candidates, reshuffle=True)
  results = (candidates
             | "Decode" >> beam.ParDo(_DecodeImages(
                 listing.class_names, int(settings["max_pixels"]),
                 int(settings["max_file_bytes"]), train_buckets,
                 total_buckets)).with_outputs(SKIPPED, main="examples"))
  return results.examples, results[SKIPPED]


def summarize(report: Dict[str, Any]) -> str:
  """One paragraph for a person: counts per split and class, skips, duplicates."""
  lines = [f"{report['examples']} examples, {len(report['class_names'])} classes "
           f"({report['layout']} layout)"]
  for split, per_class in sorted(report["counts"].items()):
    lines.append(f"  {split:5s} {sum(per_class.values()):6d}  " +
                 ", ".join(f"{name}: {count}" for name, count in per_class.items()))
  lines.append(f"  skipped {len(report['skipped'])}" + "".join(
      f"\n    {item['file']}: {item['reason']}" for item in report["skipped"][:20]))
  if len(report["skipped"]) > 20:
    lines.append(f"    ... and {len(report['skipped']) - 20} more in the report")
  lines.append(f"  exact duplicates across splits: {len(report['duplicates_across_splits'])}")
  return "\n".join(lines)
