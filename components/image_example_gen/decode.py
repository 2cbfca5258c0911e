"""Decodes one image file, once, into the tf.Example that the rest of headswap reads.

RGB JPEG and PNG files upright on disk are kept byte for byte. Everything else (GIF,
BMP, WebP, 16-bit or palette or alpha PNG, grayscale, CMYK, EXIF-rotated photos) is
converted to an upright RGB PNG, so later stages decode one of two formats and never
see orientation tags. Anything unusable raises SkipImage with a reason for the report.
upright_rgb gives the same bytes to evaluation, prediction and serving, so a photo is seen
the same everywhere.
"""

import hashlib
import io
import os
import stat
import warnings
from typing import Tuple

import tensorflow as tf
from PIL import Image, ImageOps

from headswap.components import features, filesystem
from headswap.components.image_example_gen.sources import DEFAULT_MAX_FILE_BYTES

KEPT_FORMATS = ("JPEG", "PNG")
EXIF_ORIENTATION = 0x0112
PNG_BIT_DEPTH_OFFSET = 24  # signature (8) + IHDR length and type (8) + width and height (8)


class SkipImage(Exception):
  """This file is left out of the examples; str(self) is the reason."""


class OverPixelLimit(SkipImage):
  """Larger than max_pixels (or PIL's own limit): a server answers 413, not 400."""


def read_bytes(path: str, max_bytes: int = DEFAULT_MAX_FILE_BYTES) -> bytes:
  """The bytes of a regular file or a gs:// object of at most max_bytes, or SkipImage.

  The size is checked before reading, and the read stops at max_bytes + 1, so that neither
  a device such as /dev/zero nor a file that grows after the check can fill the memory.
  """
  too_big = (f"larger than the file size limit of {max_bytes:,} bytes "
             "(raise --max-file-bytes to accept it)")
  read = _read_object if filesystem.is_remote(path) else _read_local_file
  try:
    data = read(path, max_bytes, too_big)
  except OSError as error:
    raise SkipImage(f"unreadable: {error.strerror or error}") from error
  if len(data) > max_bytes:
    raise SkipImage(f"grew while read: {too_big}")
  return data


def _read_local_file(path, max_bytes, too_big) -> bytes:
  """Opened without blocking, so a FIFO cannot hang the run; checked on the open descriptor,
  so what is read is what was checked."""
  descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
  with open(descriptor, "rb") as f:
    status = os.fstat(descriptor)
    if not stat.S_ISREG(status.st_mode):
      raise SkipImage("not a regular file (a FIFO, device or socket)")
    if status.st_size > max_bytes:
      raise SkipImage(f"{status.st_size:,} bytes: {too_big}")
    return f.read(max_bytes + 1)


def _read_object(path, max_bytes, too_big) -> bytes:
  """An object store holds only regular files, but one may be replaced between the size
  check and the read: the read stays bounded."""
  size = filesystem.size(path)
  if size > max_bytes:
    raise SkipImage(f"{size:,} bytes: {too_big}")
  with filesystem.open_file(path) as f:
    return f.read(max_bytes + 1)


def to_example(data: bytes, source: str, label: int, label_name: str,
               max_pixels: int) -> tf.train.Example:
  """Returns the example for one image's bytes, or raises SkipImage."""
  image = _open(data, max_pixels)
  stored, encoded = _upright_rgb(data, image)
  return tf.train.Example(features=tf.train.Features(feature={
      features.IMAGE: _bytes(encoded),
      features.LABEL: _int(label),
      features.LABEL_NAME: _bytes(label_name.encode()),
      features.FILENAME: _bytes(source.encode()),
      features.HEIGHT: _int(stored.height),
      features.WIDTH: _int(stored.width),
      features.CHANNELS: _int(_channels(image)),
      features.FORMAT: _bytes(image.format.lower().encode()),
      features.SHA256: _bytes(hashlib.sha256(data).hexdigest().encode()),
  }))


def upright_rgb(data: bytes, max_pixels: int) -> bytes:
  """The encoded image the model sees: what to_example stores. Raises SkipImage."""
  return _upright_rgb(data, _open(data, max_pixels))[1]


def _open(data: bytes, max_pixels: int) -> Image.Image:
  """The image, its pixels loaded (a GIF's first frame only); raises SkipImage."""
  if not data:
    raise SkipImage("empty file")
  try:
    image = Image.open(io.BytesIO(data))
  except Image.UnidentifiedImageError as error:
    raise SkipImage("not an image") from error
  except Image.DecompressionBombError as error:  # beyond PIL's own limit, checked on open
    raise OverPixelLimit(f"decompression bomb: {error}") from error
  except Exception as error:  # PIL raises many types on malformed headers
    raise SkipImage(f"corrupt image header: {error}") from error
  if image.width * image.height > max_pixels:
    raise OverPixelLimit(f"{image.width}x{image.height} exceeds the pixel limit of "
                         f"{max_pixels:,} (decompression bomb guard; raise --max-pixels to "
                         "accept it)")
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # PIL's own bomb warning: the check above decides
      image.load()  # the full decode: catches truncated and corrupt pixel data
  except Exception as error:
    raise SkipImage(f"truncated or corrupt image data: {error}") from error
  return image


def _upright_rgb(data: bytes, image: Image.Image) -> Tuple[Image.Image, bytes]:
  """(the upright image, its RGB JPEG or PNG bytes): `data` itself if it is that already."""
  if _keep_as_is(data, image):
    return image, data
  upright = ImageOps.exif_transpose(image)  # height and width are those of the upright image
  return upright, _to_rgb_png(upright)


def _keep_as_is(data: bytes, image: Image.Image) -> bool:
  if image.format not in KEPT_FORMATS or image.mode != "RGB":
    return False
  if image.format == "PNG" and data[PNG_BIT_DEPTH_OFFSET] != 8:
    return False  # 16-bit RGB: PIL shows it as RGB, but decoders downstream would not
  return image.getexif().get(EXIF_ORIENTATION, 1) == 1


def _channels(image: Image.Image) -> int:
  if image.mode == "P":  # a palette image is a colour image: count the palette's bands
    return Image.getmodebands(image.palette.mode)
  return len(image.getbands())


def _to_rgb_png(upright: Image.Image) -> bytes:
  if upright.mode in ("I;16", "I;16B", "I;16L", "I"):
    # 16-bit grayscale: PIL's convert("RGB") would clip at 255 instead of scaling.
    upright = upright.point(lambda value: value / 256).convert("L")
  if upright.mode in ("RGBA", "LA", "PA") or "transparency" in upright.info:
    rgba = upright.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    upright = Image.alpha_composite(white, rgba)
  output = io.BytesIO()
  upright.convert("RGB").save(output, format="PNG")
  return output.getvalue()


def _bytes(value: bytes) -> tf.train.Feature:
  return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int(value: int) -> tf.train.Feature:
  return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
