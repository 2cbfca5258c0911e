"""ImageExampleGen: TFX's FileBasedExampleGen with the image executor plugged in."""

import glob
import hashlib
import os
from typing import Optional

from google.protobuf import any_pb2, struct_pb2
from tfx.components import FileBasedExampleGen
from tfx.components.example_gen import driver, input_processor
from tfx.dsl.components.base import executor_spec
from tfx.proto import example_gen_pb2

from headswap.components import features, filesystem
from headswap.components.image_example_gen import executor, sources
from headswap.components.image_example_gen.sources import (DEFAULT_EVAL_PERCENT,
                                                           DEFAULT_MAX_FILE_BYTES,
                                                           DEFAULT_MAX_PIXELS)


def ImageExampleGen(data: str, labels_csv: Optional[str] = None,  # pylint: disable=invalid-name
                    file_column: Optional[str] = None, label_column: Optional[str] = None,
                    allow_outside_root: bool = False,
                    eval_percent: int = DEFAULT_EVAL_PERCENT,
                    max_pixels: int = DEFAULT_MAX_PIXELS,
                    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                    tfds_data_dir: Optional[str] = None) -> FileBasedExampleGen:
  """Ingests `data` (a folder, see sources.py, or "tfds:<name>") into train/eval[/test].

  The eval split is carved from the training images by a hash of their content, so an
  image always lands in the same split; a user-given test split is kept as given.
  file_column, label_column and allow_outside_root are sources.list_images's.
  """
  if not 0 < eval_percent < 100:
    raise ValueError(f"eval_percent must be between 1 and 99, got {eval_percent}")
  settings = {"max_pixels": max_pixels, "max_file_bytes": max_file_bytes,
              "allow_outside_root": allow_outside_root}
  layout = sources.detect_layout(data, labels_csv)
  if layout == "tfds":
    import tensorflow_datasets as tfds  # heavy: only for this source
    tfds_name = data[len(sources.TFDS_PREFIX):]
    input_base = tfds_data_dir or tfds.core.constants.DATA_DIR
    settings.update(tfds_name=tfds_name, tfds_data_dir=input_base)
  else:
    tfds_name = None
    input_base = filesystem.absolute(data)
  if labels_csv:
    settings.update(labels_csv=filesystem.absolute(labels_csv), file_column=file_column or "",
                    label_column=label_column or "")
    # TFX fingerprints the image files only; a relabelled CSV must invalidate the cache too.
    with filesystem.open_file(labels_csv) as f:
      settings["labels_csv_sha256"] = hashlib.sha256(f.read()).hexdigest()

  splits = [example_gen_pb2.SplitConfig.Split(name=features.TRAIN,
                                              hash_buckets=100 - eval_percent),
            example_gen_pb2.SplitConfig.Split(name=features.EVAL, hash_buckets=eval_percent)]
  if layout in ("presplit", "tfds") and _has_test_split(data, tfds_name, input_base):
    # Routed by the source, not by hash; the bucket count only has to be positive.
    splits.append(example_gen_pb2.SplitConfig.Split(name=features.TEST, hash_buckets=1))

  packed = any_pb2.Any()
  packed.Pack(struct_pb2.Struct(fields={
      key: struct_pb2.Value(string_value=value) if isinstance(value, str)
      else struct_pb2.Value(bool_value=value) if isinstance(value, bool)
      else struct_pb2.Value(number_value=value) for key, value in settings.items()}))
  return _FileBasedImageExampleGen(
      input_base=input_base,
      input_config=example_gen_pb2.Input(splits=[example_gen_pb2.Input.Split(
          name="images", pattern=sources.file_pattern(layout, tfds_name))]),
      output_config=example_gen_pb2.Output(
          split_config=example_gen_pb2.SplitConfig(splits=splits)),
      custom_config=example_gen_pb2.CustomConfig(custom_config=packed),
      custom_executor_spec=executor_spec.BeamExecutorSpec(executor.Executor),
  ).with_id("ImageExampleGen")


def _has_test_split(data, tfds_name, tfds_data_dir) -> bool:
  if tfds_name is None:
    return filesystem.isdir(os.path.join(data, features.TEST))
  import tensorflow_datasets as tfds
  return features.TEST in tfds.builder(tfds_name, data_dir=tfds_data_dir).info.splits


def input_fingerprint(input_base: str, patterns) -> str:
  """Names, sizes and mtimes of the files the glob patterns match, never following symlinks.

  TFX's own fingerprint sums sizes and mtimes (to the second) without names, so a photo
  moved to another class folder would be served stale from the cache; and it follows
  symlinks, so one broken link would fail the run before the executor could skip it.
  """
  digest = hashlib.sha256()
  found = False
  for relative, size, mtime_ns in _files(input_base, patterns):
    found = True
    # fsencode: a name that is not UTF-8 is hashed as its bytes on disk.
    digest.update(os.fsencode(relative) + f"\0{size}\0{mtime_ns}\n".encode())
  if not found:
    raise sources.IngestError(f"no files match {patterns} in {input_base!r}")
  return f"files sha256:{digest.hexdigest()}"


def _files(input_base, patterns):
  """(path relative to input_base, size, mtime in ns) of the files the patterns match.

  Under gs:// every file counts: its globs take no wildcard in a folder part.
  """
  if filesystem.is_remote(input_base):
    yield from filesystem.walk_files(input_base)
    return
  for pattern in patterns:
    for match in sorted(glob.glob(os.path.join(glob.escape(input_base), pattern))):
      if os.path.isdir(match) and not os.path.islink(match):
        yield from ((os.path.join(os.path.relpath(match, input_base), relative), size, mtime)
                    for relative, size, mtime in filesystem.walk_files(match))
      else:
        stat = os.lstat(match)
        yield os.path.relpath(match, input_base), stat.st_size, stat.st_mtime_ns


class _InputProcessor(input_processor.FileBasedInputProcessor):

  def resolve_span_and_version(self):
    self._fingerprint = input_fingerprint(self._input_base_uri,
                                          [split.pattern for split in self._splits])
    return 0, None  # our patterns have no span or version spec


class _Driver(driver.FileBasedDriver):

  def get_input_processor(self, splits, range_config=None, input_base_uri=None):
    return _InputProcessor(input_base_uri, splits, range_config)


class _FileBasedImageExampleGen(FileBasedExampleGen):
  DRIVER_CLASS = _Driver
