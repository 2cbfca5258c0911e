"""Finds the labelled images a user points headswap at.

Four layouts are understood:
  folders   root/<class>/<image>
  presplit  root/train/<class>/<image> and root/test/<class>/<image>
  csv       root/<image> plus a CSV of filename,label
  tfds      a TensorFlow Datasets image-classification dataset, "tfds:<name>"

Listing is cheap and runs before Beam; reading and decoding each image is Beam's job.
Layout mistakes (an empty class folder, a single class, a test class unknown to train, a
malformed labels CSV) raise IngestError naming the folder or line; a file that merely
cannot be used (hidden, outside the data folder, labelled twice) is skipped with a reason
so that the run goes on and the report says what was left out.
"""

import codecs
import csv
import dataclasses
import io
import os
from typing import Iterator, List, NamedTuple, Optional, Tuple

from headswap.components import features, filesystem

TFDS_PREFIX = "tfds:"
DEFAULT_MAX_PIXELS = 50_000_000  # ~7000x7000; larger files are more likely bombs than photos
# Checked before reading (a 2 GiB non-image once took 3.1 GB to be skipped); a 50 MP photo
# is 10-30 MB as JPEG, but 150 MB as BMP or TIFF: raise --max-file-bytes for those.
DEFAULT_MAX_FILE_BYTES = 64 * 2**20
DEFAULT_EVAL_PERCENT = 20
# Read whole into memory: a million rows of long paths is ~200 MB.
MAX_LABELS_CSV_BYTES = 256 * 2**20
FILENAME_COLUMNS = ("filename", "file", "image", "id")
LABEL_COLUMNS = ("label", "class", "category")


class IngestError(ValueError):
  """The input cannot be ingested as given; the message says where and why."""


@dataclasses.dataclass(frozen=True)
class Candidate:
  """One image to read: from a file (path) or already in memory (data)."""
  source: str  # shown to people: path relative to the data root, or tfds:<name>/<split>/<i>
  label_name: str
  given_split: Optional[str]  # features.TEST for a user-given test set; None: train/eval by hash
  path: Optional[str] = None
  data: Optional[bytes] = None


@dataclasses.dataclass(frozen=True)
class TfdsShard:
  """Examples [start, stop) of one split of a prepared TFDS dataset: one shard file's worth.

  The ingest lists these, not the images, so a Beam job carries names and numbers only and
  its workers read the images from the dataset's files (read_tfds_shard).
  """
  name: str
  data_dir: Optional[str]  # as given: None is TFDS's default
  split: str
  start: int
  stop: int


@dataclasses.dataclass
class Listing:
  layout: str
  class_names: List[str]
  candidates: List[Candidate]
  skipped: List[Tuple[str, str]]  # (source, reason) found while listing
  tfds_shards: List[TfdsShard] = dataclasses.field(default_factory=list)  # tfds layout only


def file_pattern(layout: str, tfds_name: Optional[str] = None) -> str:
  """The glob, relative to the input base, whose files the driver fingerprints for caching."""
  return {"folders": "*/*", "presplit": "*/*/*", "csv": "*"}.get(layout) or tfds_name


def detect_layout(root: str, labels_csv: Optional[str] = None) -> str:
  if root.startswith(TFDS_PREFIX):
    return "tfds"
  if not filesystem.isdir(root):
    raise IngestError(f"data folder {root!r} does not exist or is not a folder")
  if labels_csv:
    return "csv"
  if filesystem.isdir(os.path.join(root, "train")):
    return "presplit"
  return "folders"


def list_images(root: str, labels_csv: Optional[str] = None,
                tfds_data_dir: Optional[str] = None, file_column: Optional[str] = None,
                label_column: Optional[str] = None, allow_outside_root: bool = False) -> Listing:
  """The images under root; file_column and label_column name the labels CSV's columns.

  A symlink or CSV row leading outside root is skipped unless allow_outside_root.
  """
  layout = detect_layout(root, labels_csv)
  if layout == "tfds":
    return _list_tfds(root[len(TFDS_PREFIX):], tfds_data_dir)
  if layout == "csv":
    listing = _list_csv(root, labels_csv, file_column, label_column, allow_outside_root)
  elif layout == "presplit":
    listing = _list_presplit(root, allow_outside_root)
  else:
    skipped = []
    class_names, candidates = _list_class_folders(root, "", None, skipped, allow_outside_root)
    _require_two_classes(class_names, root)
    listing = Listing(layout, class_names, candidates, skipped)
  return _printable(listing)


class Preflight(NamedTuple):
  class_names: List[str]
  has_test_split: bool
  images: int  # to read; some may still be skipped


def preflight(root: str, labels_csv: Optional[str] = None, tfds_data_dir: Optional[str] = None,
              **listing_options) -> Preflight:
  """What the pipeline is set up by, cheaply, before it starts; the one listing of the data
  outside the ingest's executor.

  Layout mistakes raise IngestError here, before TFX and Beam spend a minute starting.
  listing_options are list_images's.
  """
  if detect_layout(root, labels_csv) == "tfds":
    builder = _tfds_builder(root[len(TFDS_PREFIX):], tfds_data_dir)
    _, label_key = _tfds_keys(builder)
    return Preflight(sorted(builder.info.features[label_key].names),
                     features.TEST in builder.info.splits,
                     sum(split.num_examples for split in builder.info.splits.values()))
  listing = list_images(root, labels_csv, **listing_options)
  return Preflight(listing.class_names,
                   any(c.given_split == features.TEST for c in listing.candidates),
                   len(listing.candidates))


def shown(name: str) -> str:
  """name as people and tf.Examples see it: bytes that are not UTF-8 escaped as \\xNN.

  os.listdir gives such bytes as lone surrogates, which no encoder accepts; the image is
  still read through its path as it is on disk.
  """
  return os.fsencode(name).decode("utf-8", "backslashreplace")


def _printable(listing: Listing) -> Listing:
  return Listing(
      listing.layout, sorted(shown(name) for name in listing.class_names),
      [dataclasses.replace(c, source=shown(c.source), label_name=shown(c.label_name))
       for c in listing.candidates],
      [(shown(source), shown(reason)) for source, reason in listing.skipped])


def _tfds_builder(name, data_dir):
  import tensorflow_datasets as tfds  # heavy: only for this source
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as error:
    raise IngestError(f"there is no TFDS dataset named {name!r}") from error
  if not builder.info.splits:  # known from a prepared dataset's files only
    raise IngestError(f"TFDS dataset {name!r} is not prepared in {builder.data_dir!r}; "
                      f"prepare it first, e.g. `tfds build {name} --data_dir <that data dir>`")
  return builder


def _tfds_keys(builder) -> Tuple[str, str]:
  """(image feature, label feature) of an image-classification dataset."""
  import tensorflow_datasets as tfds
  image_key = next((k for k, f in builder.info.features.items()
                    if isinstance(f, tfds.features.Image)), None)
  label_key = next((k for k, f in builder.info.features.items()
                    if isinstance(f, tfds.features.ClassLabel)), None)
  if image_key is None or label_key is None:
    raise IngestError(f"TFDS dataset {builder.name!r} is not an image-classification dataset "
                      "(it needs an Image and a ClassLabel feature)")
  return image_key, label_key


def _list_class_folders(root, prefix, given_split, skipped, allow_outside_root):
  """Lists root/prefix/<class>/* and returns (sorted class names, candidates)."""
  folder = os.path.join(root, prefix)
  class_names = []
  candidates = []
  for entry, is_folder in filesystem.scan(folder):
    relative = os.path.join(prefix, entry)
    path = os.path.join(folder, entry)
    if entry.startswith("."):
      skipped.append((relative, "hidden"))
      continue
    if not is_folder:
      skipped.append((relative, "file outside any class folder"))
      continue
    found = _list_files(root, relative, entry, given_split, skipped, allow_outside_root)
    if not found:
      raise IngestError(f"class folder {path!r} holds no images")
    class_names.append(entry)
    candidates.extend(found)
  return class_names, candidates


def _list_files(root, relative_folder, label_name, given_split, skipped, allow_outside_root):
  found = []
  for name, is_folder in filesystem.scan(os.path.join(root, relative_folder)):
    relative = os.path.join(relative_folder, name)
    reason = _unreadable_reason(root, relative, is_folder, allow_outside_root)
    if reason:
      skipped.append((relative, reason))
    else:
      found.append(Candidate(relative, label_name, given_split, path=os.path.join(root, relative)))
  return found


def _unreadable_reason(root, relative, is_folder, allow_outside_root) -> Optional[str]:
  path = os.path.join(root, relative)
  if os.path.basename(relative).startswith("."):
    return "hidden"
  if filesystem.is_remote(root):  # an object store has no symlinks, only names
    if os.path.isabs(relative) or relative.split("/")[0] == os.pardir:
      return "outside the data folder (--allow-outside-root does not reach out of gs://)"
  else:
    real_root, real_path = os.path.realpath(root), os.path.realpath(path)
    if not allow_outside_root and os.path.commonpath([real_root, real_path]) != real_root:
      return f"outside the data folder (it is {real_path}; --allow-outside-root reads it)"
    if os.path.islink(path) and not os.path.exists(path):
      return "broken symlink"
  if is_folder:
    return "nested folder (only files directly in a class folder are read)"
  return None


def _require_two_classes(class_names, where, why_here=""):
  if len(class_names) < 2:
    found = f"only {class_names[0]!r}" if class_names else "none"
    raise IngestError(
        f"{where!r} needs at least two class folders to classify; found {found}{why_here}")


def _list_presplit(root, allow_outside_root) -> Listing:
  skipped = []
  for entry in filesystem.listdir(root):
    if entry not in ("train", "test"):
      skipped.append((entry, "not a train/ or test/ folder"))
  class_names, candidates = _list_class_folders(root, "train", None, skipped,
                                                allow_outside_root)
  _require_two_classes(
      class_names, os.path.join(root, "train"),
      " (a folder named train/ switched to the pre-split layout, train/<class>/ and "
      "test/<class>/; rename it if it is a class)")
  if filesystem.isdir(os.path.join(root, "test")):
    test_classes, test_candidates = _list_class_folders(root, "test", features.TEST, skipped,
                                                        allow_outside_root)
    unknown = sorted(set(test_classes) - set(class_names))
    if unknown:
      raise IngestError(
          f"test class folder {os.path.join(root, 'test', unknown[0])!r} has no "
          f"counterpart in {os.path.join(root, 'train')!r}; the model could never predict it")
    candidates.extend(test_candidates)
  return Listing("presplit", class_names, candidates, skipped)


def _list_csv(root, labels_csv, file_column, label_column, allow_outside_root) -> Listing:
  rows = _read_csv(labels_csv)
  if not rows:
    raise IngestError(f"labels CSV {labels_csv!r} is empty")
  file_index, label_index = _csv_columns(labels_csv, rows[0], file_column, label_column)
  skipped = []
  labels = {}  # file -> {label: first line giving it}, in the CSV's order
  entries = dict(filesystem.scan(root))  # name -> is a folder
  by_stem = {}
  for name in entries:
    by_stem.setdefault(os.path.splitext(name)[0], []).append(name)
  for line_number, row in enumerate(rows[1:], start=2):
    if (len(row) <= max(file_index, label_index) or not row[file_index].strip()
        or not row[label_index].strip()):
      skipped.append((f"{labels_csv}:{line_number}", "CSV row without a file name and label"))
      continue
    relative = _relative_to(root, row[file_index].strip())
    if relative not in entries and len(by_stem.get(relative, [])) == 1:
      relative = by_stem[relative][0]  # Kaggle's id columns often leave the extension out
    labels.setdefault(os.path.normpath(relative), {}).setdefault(
        row[label_index].strip(), line_number)
  candidates = []
  for relative, lines in labels.items():
    path = os.path.join(root, relative)
    listed = relative in entries  # else in a subfolder, or missing: ask the filesystem
    reason = _unreadable_reason(root, relative,
                                entries[relative] if listed else filesystem.isdir(path),
                                allow_outside_root)
    if len(lines) > 1:
      reason = "labelled " + " and ".join(
          f"{label!r} (line {line})" for label, line in lines.items()) + " in the labels CSV"
    elif not reason and not (listed or filesystem.exists(path)):
      reason = "listed in the labels CSV but missing"
    if reason:
      skipped.append((relative, reason))
    else:
      candidates.append(Candidate(relative, next(iter(lines)), None, path=path))
  for name in sorted(entries):
    if name not in labels and os.path.join(root, name) != filesystem.absolute(labels_csv):
      skipped.append((name, "not in the labels CSV"))
  class_names = sorted({c.label_name for c in candidates})
  _require_two_classes(class_names, labels_csv)
  return Listing("csv", class_names, candidates, skipped)


def _relative_to(root, name) -> str:
  """A CSV row's file name relative to the data folder: an absolute path inside it is the same
  file as its relative name, so that listing it both ways cannot make two examples (with two
  labels). Names outside the folder are kept as written, for the report."""
  if filesystem.is_remote(root) or not os.path.isabs(name):
    return name
  inside = os.path.relpath(os.path.normpath(name), filesystem.absolute(root))
  return name if inside.split(os.sep)[0] == os.pardir else inside


def _read_csv(labels_csv) -> List[List[str]]:
  """The rows of a UTF-8 CSV; anything else stops with the line it went wrong on."""
  if not filesystem.isfile(labels_csv):
    raise IngestError(f"labels CSV {labels_csv!r} does not exist or is not a file")
  with filesystem.open_file(labels_csv) as f:
    data = f.read(MAX_LABELS_CSV_BYTES + 1)
  if len(data) > MAX_LABELS_CSV_BYTES:
    raise IngestError(f"labels CSV {labels_csv!r} is over {MAX_LABELS_CSV_BYTES:,} bytes; a "
                      "CSV of file names and labels is far smaller: is it the right file?")
  data = data.removeprefix(codecs.BOM_UTF8)  # Excel's "CSV UTF-8" starts with one

  def line_of(offset):
    return data.count(b"\n", 0, offset) + 1

  nul = data.find(b"\0")
  if nul >= 0:
    raise IngestError(f"labels CSV {labels_csv!r} line {line_of(nul)} holds a NUL byte; "
                      "is it a text file?")
  try:
    text = data.decode("utf-8")
  except UnicodeDecodeError as error:
    raise IngestError(
        f"labels CSV {labels_csv!r} line {line_of(error.start)} is not UTF-8 (byte "
        f"0x{data[error.start]:02x}); save the file as UTF-8") from error
  reader = csv.reader(io.StringIO(text, newline=""))
  try:
    return list(reader)
  except csv.Error as error:
    raise IngestError(f"labels CSV {labels_csv!r} line {reader.line_num}: {error}") from error


def _csv_columns(labels_csv, header, file_column, label_column) -> Tuple[int, int]:
  """(file column, label column): named by the flags, or by a known name, or for a CSV of
  two columns (Kaggle's id,breed) the one left over, file first."""
  names = [column.strip().lower() for column in header]

  def find(given, known, flag):
    if not given:
      return next((names.index(c) for c in known if c in names), None)
    if given.strip().lower() not in names:
      raise IngestError(f"labels CSV {labels_csv!r} has no column {given!r} ({flag}); "
                        f"its header (line 1) is {header}")
    return names.index(given.strip().lower())

  file_index = find(file_column, FILENAME_COLUMNS, "--file-column")
  label_index = find(label_column, LABEL_COLUMNS, "--label-column")
  if len(names) == 2:
    if file_index is None:
      file_index = 0 if label_index in (None, 1) else 1
    if label_index is None:
      label_index = 1 - file_index
  if file_index is None or label_index is None or file_index == label_index:
    raise IngestError(
        f"labels CSV {labels_csv!r} needs a header naming a file column "
        f"({'/'.join(FILENAME_COLUMNS)}) and a label column ({'/'.join(LABEL_COLUMNS)}), or "
        f"--file-column and --label-column; its header (line 1) is {header}")
  return file_index, label_index


def _list_tfds(name, data_dir) -> Listing:
  builder = _tfds_builder(name, data_dir)
  _, label_key = _tfds_keys(builder)
  skipped = [(f"tfds:{name}/{split}", "split not used (only train and test are)")
             for split in builder.info.splits if split not in ("train", "test")]
  shards = []
  for split in ("train", "test"):
    if split not in builder.info.splits:
      continue
    start = 0
    for length in builder.info.splits[split].shard_lengths:
      shards.append(TfdsShard(name, data_dir, split, start, start + length))
      start += length
  return Listing("tfds", sorted(builder.info.features[label_key].names), [], skipped, shards)


def read_tfds_shard(shard: TfdsShard) -> Iterator[Candidate]:
  """The images of one TfdsShard, still encoded, as candidates (in a Beam worker)."""
  import tensorflow_datasets as tfds  # heavy: only for this source

  builder = _tfds_builder(shard.name, shard.data_dir)
  image_key, label_key = _tfds_keys(builder)
  class_names = builder.info.features[label_key].names
  dataset = builder.as_dataset(split=f"{shard.split}[{shard.start}:{shard.stop}]",
                               shuffle_files=False,
                               decoders={image_key: tfds.decode.SkipDecoding()})
  for index, example in enumerate(tfds.as_numpy(dataset), start=shard.start):
    yield Candidate(f"tfds:{shard.name}/{shard.split}/{index}",
                    class_names[int(example[label_key])],
                    features.TEST if shard.split == "test" else None,
                    data=bytes(example[image_key]))
