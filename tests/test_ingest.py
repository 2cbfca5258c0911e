"""The ingest stage, run for real (TFX LocalDagRunner, Beam DirectRunner) on tiny images.

A pipeline run costs most of a minute, so one dataset carries every accepted format and
every kind of bad file, and module-scoped fixtures share each run among the tests reading it.
"""

import hashlib
import io
import json
import os
import re
import shutil
import types

import numpy as np
import pytest
import tensorflow as tf

from headswap.components import features
from headswap.components.filesystem import read_json
from headswap.components.image_example_gen import component, decode, executor, sources
from headswap.pipeline import cli
from tests.conftest import (BOMB_LIMIT, CLASS_COLOURS, ROTATED, artifact_properties,
                            encode, make_image, node_states, prepare_mock_tfds, read_examples,
                            run_ingest, write_bad_files, write_class_folders, write_formats)

INGEST_NODES = ["ImageExampleGen", "StatisticsGen", "SchemaGen", "ExampleValidator"]
THREE_CLASSES = {**CLASS_COLOURS, "birds": (60, 170, 60)}
# File written by write_formats -> (format, channels) of the source, as the examples record it.
FORMATS = {
    "baseline.jpeg": ("jpeg", 3), "rgb8.png": ("png", 3), "rgb16.png": ("png", 3),
    "gray16.png": ("png", 1), "palette.png": ("png", 3), "alpha.png": ("png", 4),
    "animation.gif": ("gif", 3), "bitmap.bmp": ("bmp", 3), "photo.webp": ("webp", 3),
    "gray.jpg": ("jpeg", 1), "cmyk.jpg": ("jpeg", 4), "upper.JPG": ("jpeg", 3),
    "png_named.jpg": ("png", 3), ROTATED: ("jpeg", 3),
}
KEPT_BYTE_FOR_BYTE = ["baseline.jpeg", "rgb8.png", "upper.JPG", "png_named.jpg"]


def _ingest(data, output, *flags):
  artifacts = run_ingest(data, output, *flags)
  examples = artifacts["ImageExampleGen.examples"]
  return types.SimpleNamespace(
      data=data, output=output, flags=flags, artifacts=artifacts,
      examples=read_examples(examples),
      report=read_json(os.path.join(examples, features.REPORT_FILE)))


def _by_file(examples):
  return {row[features.FILENAME]: dict(row, split=split)
          for split, rows in examples.items() for row in rows}


def _split_of_content(examples):
  return {row[features.SHA256]: split for split, rows in examples.items() for row in rows}


def _skipped(report):
  return {item["file"]: item["reason"] for item in report["skipped"]}


def _anomalies(run):
  """{split: the ExampleValidator's Anomalies proto}."""
  from tensorflow_data_validation.utils import anomalies_util

  folder = run.artifacts["ExampleValidator.anomalies"]
  return {split: anomalies_util.load_anomalies_binary(
      os.path.join(folder, f"Split-{split}", "SchemaDiff.pb")) for split in run.examples}


def _decode(row):
  """What every later stage does with the stored image: it must be RGB, of the given size."""
  image = tf.io.decode_image(row[features.IMAGE], expand_animations=False).numpy()
  assert image.dtype == np.uint8
  assert image.shape == (row[features.HEIGHT], row[features.WIDTH], 3), row[features.FILENAME]
  assert row[features.IMAGE][:3] == b"\xff\xd8\xff" or row[features.IMAGE][:4] == b"\x89PNG"
  return image


# --- Class folders, every format, every bad file: one run -----------------------------------

@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
  """Three class folders; cats/ also holds every accepted format and every kind of bad file."""
  root = tmp_path_factory.mktemp("mixed")
  data = root / "pets"
  write_class_folders(str(data), classes=THREE_CLASSES)
  sizes = write_formats(str(data / "cats"), CLASS_COLOURS["cats"])
  bad = write_bad_files(str(data), "cats", CLASS_COLOURS["cats"])
  run = _ingest(data, root / "output", "--max-pixels", str(BOMB_LIMIT))
  return types.SimpleNamespace(**vars(run), sizes=sizes, bad=bad)


def test_class_folders_become_train_and_eval_with_sorted_class_names(mixed):
  assert sorted(mixed.examples) == [features.EVAL, features.TRAIN]
  assert all(mixed.examples.values())
  examples_uri = mixed.artifacts["ImageExampleGen.examples"]
  class_names = read_json(os.path.join(examples_uri, features.CLASS_NAMES_FILE))
  assert class_names == ["birds", "cats", "dogs"]
  assert json.loads(artifact_properties(mixed.output, examples_uri)["class_names"]) == class_names
  rows = _by_file(mixed.examples)
  for name, row in rows.items():
    assert row[features.LABEL_NAME] == name.split("/")[0]
    assert row[features.LABEL] == class_names.index(row[features.LABEL_NAME])
    _decode(row)
  expected = {f"{name}/{name}.{i}.jpg" for name in class_names for i in range(12)}
  expected |= {f"cats/{name}" for name in FORMATS}
  assert set(rows) == expected
  assert mixed.report["layout"] == "folders"
  assert mixed.report["examples"] == len(expected)
  assert {split: sum(per_class.values()) for split, per_class in mixed.report["counts"].items()} \
      == {split: len(split_rows) for split, split_rows in mixed.examples.items()}
  per_class = {name: sum(counts[name] for counts in mixed.report["counts"].values())
               for name in class_names}
  assert per_class == {"birds": 12, "cats": 12 + len(FORMATS), "dogs": 12}


def test_every_format_is_stored_upright_as_rgb_jpeg_or_png(mixed):
  assert set(mixed.sizes) == set(FORMATS)
  rows = _by_file(mixed.examples)
  for name, (source_format, channels) in FORMATS.items():
    row = rows[f"cats/{name}"]
    assert (row[features.FORMAT], row[features.CHANNELS]) == (source_format, channels), name
    assert (row[features.HEIGHT], row[features.WIDTH]) == mixed.sizes[name], name
    _decode(row)
    with open(os.path.join(mixed.data, "cats", name), "rb") as f:
      kept = row[features.IMAGE] == f.read()
    assert kept == (name in KEPT_BYTE_FOR_BYTE), name


def test_exif_rotated_photo_is_stored_upright(mixed):
  # On disk: 64 wide, 48 high, red left half, blue right half; EXIF says turn 90° clockwise.
  image = _decode(_by_file(mixed.examples)[f"cats/{ROTATED}"]).astype(int)
  assert image.shape == (64, 48, 3)
  top, bottom = image[:24].mean(axis=(0, 1)), image[40:].mean(axis=(0, 1))
  assert top[0] > 200 and top[2] < 50  # red on top
  assert bottom[2] > 200 and bottom[0] < 50  # blue below


def test_16_bit_gray_is_scaled_not_clipped(mixed):
  # gray16.png holds the 8-bit gray of make_image(cats, seed 7) times 257.
  expected = np.asarray(make_image(CLASS_COLOURS["cats"], 7).convert("L"), dtype=int)
  image = _decode(_by_file(mixed.examples)["cats/gray16.png"]).astype(int)
  assert np.abs(image - expected[..., None]).max() <= 1


def test_bad_files_are_skipped_with_their_reason(mixed):
  skipped = _skipped(mixed.report)
  assert set(skipped) == set(mixed.bad)
  for name, words in mixed.bad.items():
    assert words in skipped[name].lower(), (name, skipped[name])
  assert not set(mixed.bad) & set(_by_file(mixed.examples))
  assert len(mixed.report["skipped"]) == len(mixed.bad)


def test_statistics_describe_readable_features_not_image_bytes(mixed):
  import tensorflow_data_validation as tfdv

  for split in mixed.examples:
    statistics = tfdv.load_stats_binary(os.path.join(
        mixed.artifacts["StatisticsGen.statistics"], f"Split-{split}", "FeatureStats.pb"))
    by_name = {feature.path.step[0]: feature for feature in statistics.datasets[0].features}
    assert set(by_name) == set(features.READABLE)
    assert statistics.datasets[0].num_examples == len(mixed.examples[split])
  assert by_name[features.LABEL_NAME].string_stats.unique == 3


# --- Hostile files: a FIFO, a device, an oversize file, a name that is not UTF-8 ------------

MAX_FILE_BYTES = 20_000  # the 64-px JPEGs are ~3 kB; the 128-px PNG ~47 kB


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
  """cats/ and dogs/, cats/ also holding files that once hung or crashed the run.

  Run with --allow-outside-root, so the /dev/zero link reaches the reader."""
  root = tmp_path_factory.mktemp("hostile")
  data = root / "pets"
  write_class_folders(str(data))
  cats = data / "cats"
  os.mkfifo(cats / "fifo.jpg")
  os.symlink("/dev/zero", cats / "zero.jpg")
  make_image(CLASS_COLOURS["cats"], 41, size=128).save(cats / "large.png")
  make_image(CLASS_COLOURS["cats"], 42).save(root / "elsewhere.jpg")
  os.symlink(root / "elsewhere.jpg", cats / "outside.jpg")
  with open(os.path.join(os.fsencode(cats), b"caf\xe9.jpg"), "wb") as f:  # Latin-1 name
    make_image(CLASS_COLOURS["cats"], 43).save(f, format="JPEG")
  return _ingest(data, root / "output", "--max-file-bytes", str(MAX_FILE_BYTES),
                 "--allow-outside-root")


def test_hostile_files_are_skipped_and_every_good_image_is_kept(hostile):
  assert _skipped(hostile.report) == {
      "cats/fifo.jpg": "not a regular file (a FIFO, device or socket)",
      "cats/zero.jpg": "not a regular file (a FIFO, device or socket)",
      "cats/large.png": f"{os.path.getsize(hostile.data / 'cats' / 'large.png'):,} bytes: "
                        f"larger than the file size limit of {MAX_FILE_BYTES:,} bytes "
                        "(raise --max-file-bytes to accept it)"}
  rows = _by_file(hostile.examples)
  assert set(rows) == {f"{name}/{name}.{i}.jpg" for name in CLASS_COLOURS for i in range(12)} | {
      "cats/outside.jpg", "cats/caf\\xe9.jpg"}  # the byte escaped, as the report shows it
  assert rows["cats/caf\\xe9.jpg"][features.LABEL_NAME] == "cats"


def test_symlinks_leading_outside_the_data_folder_are_skipped_by_default(hostile):
  listing = sources.list_images(str(hostile.data))
  skipped = dict(listing.skipped)
  assert skipped["cats/zero.jpg"] == "outside the data folder (it is /dev/zero; " \
      "--allow-outside-root reads it)"
  assert skipped["cats/outside.jpg"].startswith("outside the data folder")
  assert "cats/outside.jpg" not in {c.source for c in listing.candidates}
  assert "cats/fifo.jpg" in {c.source for c in listing.candidates}  # the reader skips it


def test_reader_reads_regular_files_up_to_the_limit_only(tmp_path, monkeypatch):
  os.mkfifo(tmp_path / "fifo")  # a FIFO without a writer: open() alone would wait forever
  os.symlink("/dev/zero", tmp_path / "zero")  # endless: read() alone would fill the memory
  for name in ("fifo", "zero"):
    with pytest.raises(decode.SkipImage, match="not a regular file"):
      decode.read_bytes(str(tmp_path / name), max_bytes=100)
  (tmp_path / "limit").write_bytes(b"x" * 100)
  assert decode.read_bytes(str(tmp_path / "limit"), max_bytes=100) == b"x" * 100
  with pytest.raises(decode.SkipImage, match="100 bytes: larger than the file size limit of 99 "):
    decode.read_bytes(str(tmp_path / "limit"), max_bytes=99)
  # A file larger than its stat says (it grew, or a filesystem lies): the read stops anyway.
  (tmp_path / "small").write_bytes(b"x")
  small = os.stat(tmp_path / "small")
  monkeypatch.setattr(decode.os, "fstat", lambda descriptor: small)
  with pytest.raises(decode.SkipImage, match="grew while read"):
    decode.read_bytes(str(tmp_path / "limit"), max_bytes=50)


# --- Pre-split folders: test kept as given, duplicates, a vanished class ---------------------

@pytest.fixture(scope="module")
def presplit(tmp_path_factory):
  """train/ with cats and dogs; test/ with cats only, one of them a byte copy of a train dog."""
  root = tmp_path_factory.mktemp("presplit")
  data = root / "presplit"
  write_class_folders(str(data / "train"), per_class=12, seed=1)
  write_class_folders(str(data / "test"), per_class=4, seed=2,
                      classes={"cats": CLASS_COLOURS["cats"]})
  shutil.copy(data / "train" / "dogs" / "dogs.0.jpg", data / "test" / "cats" / "copy.jpg")
  return _ingest(data, root / "output", "--allow-anomalies")  # the vanished class is flagged


def test_presplit_keeps_test_as_given_and_carves_eval_from_train(presplit):
  files = {split: {row[features.FILENAME] for row in rows}
           for split, rows in presplit.examples.items()}
  assert sorted(files) == [features.EVAL, features.TEST, features.TRAIN]
  assert files[features.TEST] == {f"test/cats/cats.{i}.jpg" for i in range(4)} | {
      "test/cats/copy.jpg"}
  assert files[features.TRAIN] | files[features.EVAL] == {
      f"train/{name}/{name}.{i}.jpg" for name in ("cats", "dogs") for i in range(12)}
  assert files[features.TRAIN] and files[features.EVAL]
  assert not files[features.TRAIN] & files[features.EVAL]
  assert presplit.report["layout"] == "presplit"
  assert presplit.report["class_names"] == ["cats", "dogs"]
  assert presplit.report["skipped"] == []


def test_duplicates_across_splits_are_reported(presplit):
  split = _by_file(presplit.examples)["train/dogs/dogs.0.jpg"]["split"]
  assert presplit.report["duplicates_across_splits"] == [
      sorted([f"{split}:train/dogs/dogs.0.jpg", "test:test/cats/copy.jpg"])]
  assert presplit.report["duplicates_within_splits"] == 0


def test_an_example_missing_from_the_written_split_fails_the_run(presplit, tmp_path):
  examples = str(tmp_path / "examples")
  shutil.copytree(presplit.artifacts["ImageExampleGen.examples"], examples)
  executor.check_written(examples, presplit.report)  # what was written is all there
  test_split = os.path.join(examples, f"Split-{features.TEST}")
  records = [record.numpy() for record in tf.data.TFRecordDataset(
      tf.io.gfile.glob(os.path.join(test_split, "*")), compression_type="GZIP")]
  shutil.rmtree(test_split)
  os.makedirs(test_split)
  with tf.io.TFRecordWriter(os.path.join(test_split, "data.gz"), "GZIP") as writer:
    for record in records[1:]:
      writer.write(record)
  with pytest.raises(sources.IngestError,
                     match=f"wrote {len(records) - 1} of the {len(records)} test examples"):
    executor.check_written(examples, presplit.report)


def test_validator_flags_a_class_that_vanished_from_a_split(presplit):
  anomalies = _anomalies(presplit)
  for split, counts in presplit.report["counts"].items():
    vanished = any(count == 0 for count in counts.values())
    info = anomalies[split].anomaly_info.get(features.LABEL_NAME)
    descriptions = " ".join(reason.short_description for reason in info.reason) if info else ""
    assert ("vanished" in descriptions) == vanished, (split, counts, descriptions)
  assert presplit.report["counts"][features.TEST]["dogs"] == 0  # so the test split was flagged


# --- Folder + labels CSV (Kaggle layout) ----------------------------------------------------

@pytest.fixture(scope="module")
def kaggle(tmp_path_factory):
  """train/<id>.jpg plus labels.csv of id,label, the ids without extension as Kaggle has them."""
  root = tmp_path_factory.mktemp("kaggle")
  images = root / "train"
  images.mkdir()
  labels = {}
  for class_index, (name, colour) in enumerate(sorted(CLASS_COLOURS.items())):
    for i in range(12):
      image_id = f"{i:02d}{class_index}f3a"
      make_image(colour, 500 + class_index * 100 + i).save(images / f"{image_id}.jpg")
      labels[image_id] = name
  make_image(CLASS_COLOURS["cats"], 999).save(images / "unlabelled.jpg")
  make_image(CLASS_COLOURS["cats"], 998).save(root / "outside.jpg")
  rows = [f"{image_id},{name}" for image_id, name in labels.items()]  # lines 2 to 25
  rows += ["gone,cats", ",dogs",  # lines 26 and 27
           "000f3a,cats",  # line 28: listed again with the same label, once is enough
           "010f3a,dogs",  # line 29: line 3 says cats
           "../outside.jpg,cats"]  # line 30: outside the data folder
  (root / "labels.csv").write_text("id,label\n" + "\n".join(rows) + "\n")
  # --allow-anomalies: the few eval images, chosen by hash, hold one class, which the gate flags.
  run = _ingest(images, root / "output", "--labels", str(root / "labels.csv"),
                "--allow-anomalies")
  return types.SimpleNamespace(**vars(run), labels=labels, csv=str(root / "labels.csv"),
                               outside=os.path.realpath(root / "outside.jpg"))


def test_csv_labels_images_of_a_flat_folder(kaggle):
  rows = _by_file(kaggle.examples)
  assert {name: row[features.LABEL_NAME] for name, row in rows.items()} == {
      f"{image_id}.jpg": name for image_id, name in kaggle.labels.items() if image_id != "010f3a"}
  assert kaggle.report["layout"] == "csv"
  assert kaggle.report["class_names"] == ["cats", "dogs"]
  assert _skipped(kaggle.report) == {
      "gone": "listed in the labels CSV but missing",
      f"{kaggle.csv}:27": "CSV row without a file name and label",
      "unlabelled.jpg": "not in the labels CSV",
      "010f3a.jpg": "labelled 'cats' (line 3) and 'dogs' (line 29) in the labels CSV",
      "../outside.jpg": f"outside the data folder (it is {kaggle.outside}; "
                        "--allow-outside-root reads it)"}


def _three_images(tmp_path):
  images = tmp_path / "images"
  images.mkdir()
  for i, name in enumerate(["cats", "dogs", "cats"]):
    make_image(CLASS_COLOURS[name], i).save(images / f"{i}.png")
  return images


THREE_LABELS = [("0.png", "cats"), ("1.png", "dogs"), ("2.png", "cats")]


@pytest.mark.parametrize("header", ["filename,label", "id,label", "image,class",
                                    "File,Category", "id,breed", "image_id,breed"])
def test_csv_header_names_the_file_and_label_columns(tmp_path, header):
  images = _three_images(tmp_path)
  (tmp_path / "labels.csv").write_text(f"{header}\n0.png,cats\n1.png,dogs\n2.png,cats\n")
  listing = sources.list_images(str(images), str(tmp_path / "labels.csv"))
  assert listing.class_names == ["cats", "dogs"]
  assert [(c.source, c.label_name) for c in listing.candidates] == THREE_LABELS
  assert listing.skipped == []


def test_csv_columns_named_by_flags(tmp_path):
  images = _three_images(tmp_path)
  labels = tmp_path / "labels.csv"
  labels.write_text("path,width,breed\n0.png,64,cats\n1.png,64,dogs\n2.png,64,cats\n")
  listing = sources.list_images(str(images), str(labels), file_column="path",
                                label_column="Breed")
  assert [(c.source, c.label_name) for c in listing.candidates] == THREE_LABELS
  with pytest.raises(sources.IngestError, match=re.escape("no column 'name' (--file-column)")):
    sources.list_images(str(images), str(labels), file_column="name", label_column="breed")
  with pytest.raises(sources.IngestError, match="or --file-column and --label-column"):
    sources.list_images(str(images), str(labels))


def test_a_file_named_twice_in_the_csv_is_one_file(tmp_path):
  """Absolute or ./ names of a file in the data folder are its relative name: listed both
  ways with two labels, it is reported and left out, not kept as two opposite examples. An
  absolute path outside the folder is refused under the name it was given."""
  images = _three_images(tmp_path)
  labels = tmp_path / "labels.csv"
  labels.write_text(f"file,label\n0.png,cats\n1.png,dogs\n2.png,cats\n{images / '0.png'},dogs\n"
                    f"./2.png,cats\n{images / '1.png'},dogs\n{labels},dogs\n")
  listing = sources.list_images(str(images), str(labels))
  assert [(c.source, c.label_name) for c in listing.candidates] == THREE_LABELS[1:]
  assert dict(listing.skipped) == {
      "0.png": "labelled 'cats' (line 2) and 'dogs' (line 5) in the labels CSV",
      str(labels): f"outside the data folder (it is {os.path.realpath(labels)}; "
                   "--allow-outside-root reads it)"}


@pytest.mark.parametrize("content, words", [
    (b"file,label\n0.png,cats\n1.png,d\0gs\n", "line 3 holds a NUL byte"),
    ("file,label\n0.png,cats\n1.png,ch\u00e9vre\n".encode("latin-1"),
     "line 3 is not UTF-8 (byte 0xe9)"),
    (b"file,label\n0.png,cats\n" + b"x" * 200_000 + b",dogs\n", "line 3: field larger"),
])
def test_csv_mistakes_stop_with_one_line_naming_the_line(tmp_path, content, words):
  images = _three_images(tmp_path)
  labels = tmp_path / "labels.csv"
  labels.write_bytes(content)
  with pytest.raises(sources.IngestError, match=re.escape(words)) as error:
    sources.list_images(str(images), str(labels))
  assert str(error.value).startswith(f"labels CSV {str(labels)!r} line ")
  with pytest.raises(SystemExit) as exit_:
    cli.main(["ingest", "--data", str(images), "--labels", str(labels),
              "--output", str(tmp_path / "output")])
  assert exit_.value.code == f"headswap: {error.value}"  # one line, no traceback
  assert "\n" not in exit_.value.code


def test_a_labels_csv_over_the_size_limit_is_refused_unread(tmp_path, monkeypatch):
  images = _three_images(tmp_path)
  labels = tmp_path / "labels.csv"
  labels.write_text("file,label\n" + "a.jpg,cats\n" * 20)
  monkeypatch.setattr(sources, "MAX_LABELS_CSV_BYTES", 100)
  with pytest.raises(sources.IngestError, match="is over 100 bytes"):
    sources.list_images(str(images), str(labels))


# --- TensorFlow Datasets, offline through tfds.testing.mock_data ----------------------------

@pytest.fixture(scope="module")
def tfds_run(tmp_path_factory):
  import tensorflow_datasets as tfds

  root = tmp_path_factory.mktemp("tfds")
  data_dir = root / "tensorflow_datasets"
  # LocalDagRunner runs the components in this process, so the mock reaches the executor.
  with tfds.testing.mock_data(num_examples=16, data_dir=str(data_dir)):
    prepare_mock_tfds("cats_vs_dogs", {"train": 16, "test": 16})
    return _ingest("tfds:cats_vs_dogs", root / "output", "--tfds-data-dir", str(data_dir))


def test_tfds_dataset_by_name(tfds_run):
  assert tfds_run.report["layout"] == "tfds"
  assert tfds_run.report["class_names"] == ["cat", "dog"]
  files = {split: sorted(row[features.FILENAME] for row in rows)
           for split, rows in tfds_run.examples.items()}
  assert sorted(files) == [features.EVAL, features.TEST, features.TRAIN]
  assert files[features.TEST] == sorted(f"tfds:cats_vs_dogs/test/{i}" for i in range(16))
  assert sorted(files[features.TRAIN] + files[features.EVAL]) == sorted(
      f"tfds:cats_vs_dogs/train/{i}" for i in range(16))
  for row in _by_file(tfds_run.examples).values():
    _decode(row)
    assert row[features.LABEL] == ["cat", "dog"].index(row[features.LABEL_NAME])
  # The mock yields the same examples for every split: each test image is a train duplicate.
  assert len(tfds_run.report["duplicates_across_splits"]) == 16


def _build_tiny_tfds(data_dir, shards):
  """Prepares a real TFDS dataset, tiny_pets, in data_dir: {split: {sha256: class}} of its images.

  Its builder is not registered: the ingest finds it from its files, as it would a dataset
  prepared elsewhere."""
  import tensorflow_datasets as tfds

  images = {split: [(encode(make_image(CLASS_COLOURS[name], seed=i * 7 + offset), "JPEG"), name)
                    for i in range(count) for name in ("cats", "dogs")]
            for split, count, offset in (("train", 15, 0), ("test", 3, 1))}

  class TinyPets(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(encoding_format="jpeg"),
          "label": tfds.features.ClassLabel(names=["cats", "dogs"])}))

    def _split_generators(self, dl_manager):
      return {split: self._generate_examples(rows) for split, rows in images.items()}

    def _generate_examples(self, rows):
      for index, (data, name) in enumerate(rows):
        yield index, {"image": io.BytesIO(data), "label": name}

  TinyPets(data_dir=data_dir).download_and_prepare(
      download_config=tfds.download.DownloadConfig(num_shards=shards))
  return {split: {hashlib.sha256(data).hexdigest(): name for data, name in rows}
          for split, rows in images.items()}


def test_tfds_images_are_read_from_the_shard_files_in_the_workers(tmp_path):
  data_dir = str(tmp_path / "tensorflow_datasets")
  expected = _build_tiny_tfds(data_dir, shards=3)

  listing = sources.list_images("tfds:tiny_pets", tfds_data_dir=data_dir)
  assert listing.candidates == []  # no image in the job: only which examples each worker reads
  for split, count in (("train", 30), ("test", 6)):  # each split's shards, end to end
    shards = [shard for shard in listing.tfds_shards if shard.split == split]
    assert len(shards) == 3
    assert [shard.start for shard in shards] + [count] == [0] + [shard.stop for shard in shards]

  run = _ingest("tfds:tiny_pets", tmp_path / "output", "--tfds-data-dir", data_dir)
  assert run.report["counts"][features.TEST] == {"cats": 3, "dogs": 3}
  read = {split: {row[features.SHA256]: row[features.LABEL_NAME] for row in rows}
          for split, rows in run.examples.items()}
  assert read[features.TEST] == expected["test"]
  assert {**read[features.TRAIN], **read[features.EVAL]} == expected["train"]
  assert sorted(row[features.FILENAME] for row in run.examples[features.TEST]) == sorted(
      f"tfds:tiny_pets/test/{i}" for i in range(6))


# --- Layout mistakes: a clear message naming the folder, before any pipeline starts ----------

def _empty_class(data):
  write_class_folders(str(data))
  os.makedirs(data / "zebras")
  return str(data / "zebras"), "holds no images"


def _single_class(data):
  write_class_folders(str(data), classes={"cats": CLASS_COLOURS["cats"]})
  return str(data), "at least two class folders"


def _test_class_unknown_to_train(data):
  write_class_folders(str(data / "train"))
  write_class_folders(str(data / "test"), per_class=2, classes={"zebras": (0, 0, 0)})
  return str(data / "test" / "zebras"), "no counterpart"


def _class_folder_named_train(data):
  write_class_folders(str(data))
  write_class_folders(str(data), per_class=2, classes={"train": (0, 0, 0)})
  return str(data / "train"), "a folder named train/ switched to the pre-split layout"


@pytest.mark.parametrize("mistake", [_empty_class, _single_class, _test_class_unknown_to_train,
                                     _class_folder_named_train])
def test_layout_mistakes_stop_with_a_message_naming_the_folder(tmp_path, mistake):
  data = tmp_path / "data"
  folder, words = mistake(data)
  with pytest.raises(sources.IngestError, match=words) as error:
    sources.list_images(str(data))
  assert repr(folder) in str(error.value)
  with pytest.raises(SystemExit) as exit_:
    cli.main(["ingest", "--data", str(data), "--output", str(tmp_path / "output")])
  assert exit_.value.code == f"headswap: {error.value}"  # printed as is, no traceback
  assert not os.path.exists(tmp_path / "output")


def test_unprepared_tfds_dataset_stops_with_a_message(tmp_path):
  with pytest.raises(SystemExit) as exit_:
    cli.main(["ingest", "--data", "tfds:cats_vs_dogs", "--tfds-data-dir", str(tmp_path),
              "--output", str(tmp_path / "output")])
  assert "'cats_vs_dogs' is not prepared" in exit_.value.code


# --- Caching: an unchanged folder is served from the cache; a moved photo re-runs -----------
# Last in the file: it changes the `mixed` dataset (earlier tests read the first run only).

def test_input_fingerprint_sees_names_sizes_and_times(tmp_path):
  data = write_class_folders(str(tmp_path / "data"))
  os.symlink(os.path.join(data, "cats", "nowhere.jpg"), os.path.join(data, "cats", "broken.jpg"))
  seen = set()

  def assert_new_fingerprint():
    fingerprint = component.input_fingerprint(data, ["*/*"])
    assert fingerprint == component.input_fingerprint(data, ["*/*"])
    assert fingerprint not in seen
    seen.add(fingerprint)

  assert_new_fingerprint()
  os.rename(os.path.join(data, "cats", "cats.0.jpg"), os.path.join(data, "dogs", "cats.0.jpg"))
  assert_new_fingerprint()
  os.rename(os.path.join(data, "dogs", "dogs.0.jpg"), os.path.join(data, "dogs", "renamed.jpg"))
  assert_new_fingerprint()
  stat = os.stat(os.path.join(data, "dogs", "dogs.1.jpg"))
  os.utime(os.path.join(data, "dogs", "dogs.1.jpg"), ns=(stat.st_atime_ns, stat.st_mtime_ns + 1))
  assert_new_fingerprint()
  with open(os.path.join(data, "dogs", "dogs.2.jpg"), "ab") as f:
    f.write(b"\0")
  assert_new_fingerprint()
  with pytest.raises(sources.IngestError, match="no files match"):
    component.input_fingerprint(str(tmp_path / "empty"), ["*/*"])


def test_rerun_is_cached_and_a_moved_or_renamed_photo_reruns(mixed):
  again = run_ingest(mixed.data, mixed.output, *mixed.flags)
  assert {key: again[key] for key in mixed.artifacts} == mixed.artifacts
  states = node_states(mixed.output)
  assert all(states[node] == ["COMPLETE", "CACHED"] for node in INGEST_NODES), states

  # Relabel by moving a photo to another class folder, and rename another: same sizes and
  # mtimes, so only a fingerprint that includes file names notices.
  cats, dogs = mixed.data / "cats", mixed.data / "dogs"
  os.rename(cats / "cats.0.jpg", dogs / "was-a-cat.jpg")
  os.rename(dogs / "dogs.1.jpg", dogs / "renamed.jpg")
  moved = _ingest(mixed.data, mixed.output, *mixed.flags)
  assert moved.artifacts["ImageExampleGen.examples"] != mixed.artifacts["ImageExampleGen.examples"]
  assert node_states(mixed.output)["ImageExampleGen"] == ["COMPLETE", "CACHED", "COMPLETE"]
  rows = _by_file(moved.examples)
  assert rows["dogs/was-a-cat.jpg"][features.LABEL_NAME] == "dogs"
  assert "dogs/renamed.jpg" in rows and "dogs/dogs.1.jpg" not in rows
  # The content decides the split, whatever the name or folder: every image stays put.
  assert _split_of_content(moved.examples) == _split_of_content(mixed.examples)
