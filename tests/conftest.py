"""Tiny generated datasets for real runs of the stack (no mocks)."""

import glob
import io
import os
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

# Two classes a small CNN separates in one epoch: warm colours vs cool colours, with noise.
CLASS_COLOURS = {"cats": (200, 80, 40), "dogs": (40, 90, 200)}


def make_image(colour, seed, size=64) -> Image.Image:
  rng = np.random.default_rng(seed)
  pixels = np.clip(rng.normal(colour, 35, size=(size, size, 3)), 0, 255).astype(np.uint8)
  return Image.fromarray(pixels, "RGB")


def write_class_folders(root, per_class=12, classes=CLASS_COLOURS, seed=0, size=64):
  """root/<class>/<class>.<i>.jpg; distinct seeds make every image's content distinct."""
  for class_index, (name, colour) in enumerate(sorted(classes.items())):
    os.makedirs(os.path.join(root, name), exist_ok=True)
    for i in range(per_class):
      image = make_image(colour, seed * 100_000 + class_index * 1000 + i, size)
      image.save(os.path.join(root, name, f"{name}.{i}.jpg"), quality=90)
  return root


@pytest.fixture
def folders_dataset(tmp_path):
  return write_class_folders(str(tmp_path / "data"))


@pytest.fixture
def presplit_dataset(tmp_path):
  root = tmp_path / "presplit"
  write_class_folders(str(root / "train"), per_class=12, seed=1)
  write_class_folders(str(root / "test"), per_class=4, seed=2)
  return str(root)


# --- Ingest: files of every kind, a CLI run, and what it wrote ------------------------------

def encode(image: Image.Image, image_format: str, **options) -> bytes:
  output = io.BytesIO()
  image.save(output, format=image_format, **options)
  return output.getvalue()


def _png_16bit_rgb(size, seed) -> bytes:
  """PIL cannot write 16-bit RGB PNGs: chunks by hand."""
  pixels = np.random.default_rng(seed).integers(0, 65536, size=(size, size, 3), dtype=np.uint16)
  rows = b"".join(b"\x00" + row.astype(">u2").tobytes() for row in pixels)
  header = struct.pack(">IIBBBBB", size, size, 16, 2, 0, 0, 0)  # 16 bits, RGB
  return _png(header, zlib.compress(rows))


def _png(header, compressed_rows):
  return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", header) + _png_chunk(b"IDAT", compressed_rows)
          + _png_chunk(b"IEND", b""))


def _png_chunk(kind, data):
  return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _oversized_png_header(side) -> bytes:
  """A tiny file claiming side x side pixels: what a decompression bomb looks like to PIL."""
  return _png(struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0), zlib.compress(b"\x00" * 1000))


ROTATED = "exif_rotated.jpg"  # 64 wide, 48 high: left half red, right half blue; EXIF: turn 90° CW


def write_formats(folder, colour, seed=7) -> dict:
  """One image per accepted format or quirk; returns {file name: (height, width) upright}."""
  image = make_image(colour, seed)
  gray16 = Image.fromarray((np.asarray(image.convert("L"), dtype=np.uint16) * 257))
  halves = Image.new("RGB", (64, 48), (255, 0, 0))
  halves.paste((0, 0, 255), (32, 0, 64, 48))
  exif = Image.Exif()
  exif[0x0112] = 6
  files = {
      "baseline.jpeg": encode(image, "JPEG", quality=90),
      "rgb8.png": encode(image, "PNG"),
      "rgb16.png": _png_16bit_rgb(64, seed),
      "gray16.png": encode(gray16, "PNG"),
      "palette.png": encode(image.convert("P"), "PNG"),
      "alpha.png": encode(image.convert("RGBA"), "PNG"),
      "animation.gif": encode(image, "GIF"),
      "bitmap.bmp": encode(image, "BMP"),
      "photo.webp": encode(image, "WEBP"),
      "gray.jpg": encode(image.convert("L"), "JPEG"),
      "cmyk.jpg": encode(image.convert("CMYK"), "JPEG"),
      "upper.JPG": encode(image.rotate(90), "JPEG"),
      "png_named.jpg": encode(image.rotate(180), "PNG"),
      ROTATED: encode(halves, "JPEG", exif=exif.tobytes()),
  }
  os.makedirs(folder, exist_ok=True)
  for name, data in files.items():
    with open(os.path.join(folder, name), "wb") as f:
      f.write(data)
  return {name: (64, 48) if name == ROTATED else (64, 64) for name in files}


BOMB_LIMIT = 64 * 64 * 2  # --max-pixels for write_bad_files: 64-px images pass, 128-px do not


def write_bad_files(root, class_name, colour) -> dict:
  """Files the ingest must skip; returns {path relative to root: words of the reason}."""
  folder = os.path.join(root, class_name)
  jpeg = encode(make_image(colour, 99), "JPEG", quality=90)
  rng = np.random.default_rng(5)
  files = {
      "empty.jpg": (b"", "empty file"),
      "truncated.jpg": (jpeg[:len(jpeg) * 7 // 10], "truncated"),
      "corrupt.jpg": (b"\xff\xd8\xff\xe0" + rng.bytes(3000), "corrupt"),
      "notes.jpg": (b"not a photo, a shopping list\n", "not an image"),
      ".hidden.jpg": (jpeg, "hidden"),
      "big.png": (encode(make_image(colour, 98, size=128), "PNG"), "pixel limit"),
      "bomb.png": (_oversized_png_header(20_000), "decompression bomb"),
  }
  os.makedirs(folder, exist_ok=True)
  for name, (data, _) in files.items():
    with open(os.path.join(folder, name), "wb") as f:
      f.write(data)
  os.symlink(os.path.join(folder, "nowhere.jpg"), os.path.join(folder, "broken.jpg"))
  os.makedirs(os.path.join(folder, "nested"))
  make_image(colour, 97).save(os.path.join(folder, "nested", "deeper.jpg"))
  with open(os.path.join(root, "README.txt"), "w") as f:
    f.write("photos of pets\n")
  expected = {os.path.join(class_name, name): reason for name, (_, reason) in files.items()}
  expected.update({os.path.join(class_name, "broken.jpg"): "broken symlink",
                   os.path.join(class_name, "nested"): "nested folder",
                   "README.txt": "outside any class folder"})
  return expected


def run_ingest(data, output, *flags) -> dict:
  """`headswap ingest`, as a user runs it; returns the newest artifact URIs."""
  from headswap.pipeline import cli, local_runner

  cli.main(["ingest", "--data", str(data), "--output", str(output), *flags])
  return local_runner.last_run_artifacts(local_runner.metadata_path(str(output)))


def read_examples(examples_uri) -> dict:
  """{split: [{feature: value}]}; the image stays bytes, other bytes become str."""
  import tensorflow as tf

  from headswap.components import features

  splits = {}
  for folder in sorted(glob.glob(os.path.join(examples_uri, "Split-*"))):
    rows = splits.setdefault(os.path.basename(folder)[len("Split-"):], [])
    for record in tf.data.TFRecordDataset(glob.glob(os.path.join(folder, "*.gz")),
                                          compression_type="GZIP"):
      example = tf.train.Example.FromString(record.numpy())
      row = {}
      for name, feature in example.features.feature.items():
        value = (feature.bytes_list.value or feature.int64_list.value)[0]
        row[name] = value.decode() if isinstance(value, bytes) and name != features.IMAGE else value
      rows.append(row)
  return splits


def _metadata_store(output):
  from ml_metadata.metadata_store import metadata_store
  from tfx import v1 as tfx

  from headswap.pipeline import local_runner

  return metadata_store.MetadataStore(tfx.orchestration.metadata.sqlite_metadata_connection_config(
      local_runner.metadata_path(str(output))))


def node_states(output) -> dict:
  """{node id: [state of each execution, oldest first]} from the run's MLMD store."""
  from ml_metadata.proto import metadata_store_pb2

  store = _metadata_store(output)
  return {context.name.split(".", 1)[1]: [
      metadata_store_pb2.Execution.State.Name(execution.last_known_state)
      for execution in sorted(store.get_executions_by_context(context.id), key=lambda e: e.id)]
      for context in store.get_contexts_by_type("node")}


def artifact_properties(output, uri) -> dict:
  """The custom properties MLMD holds for the artifact at uri."""
  artifact, = _metadata_store(output).get_artifacts_by_uri(uri)
  return {name: value.string_value or value.int_value
          for name, value in artifact.custom_properties.items()}


def prepare_mock_tfds(name, split_sizes):
  """The metadata of a prepared TFDS dataset, inside tfds.testing.mock_data(data_dir=...).

  Enough for the mock to know the split names; the examples themselves come from the mock.
  """
  import tensorflow_datasets as tfds

  builder = tfds.builder(name)  # the mock puts it under its data_dir
  builder.info.set_splits(tfds.core.SplitDict([
      tfds.core.SplitInfo(name=split, shard_lengths=[size], num_bytes=0)
      for split, size in split_sizes.items()]))
  os.makedirs(builder.data_dir)
  builder.info.write_to_directory(builder.data_dir)


# --- gs:// on a local Cloud Storage emulator (tests/gcs.py) ----------------------------------

@pytest.fixture(scope="session")
def gcs_emulator():
  from tests import gcs

  yield from gcs.running_emulator()


@pytest.fixture
def gcs(gcs_emulator):
  """The emulator, empty: each test starts with a bare bucket."""
  gcs_emulator.wipe()
  return gcs_emulator
