"""A cheap look at encoded image bytes before they join a batch.

PIL parses only the header here (no pixel decoding), so a bad upload costs microseconds and
fails on its own, instead of failing the model call it would share with other clients.
"""

import io
import warnings

from PIL import Image

from serving.errors import RequestError, bad_request, too_large

# What tf.io.decode_image, inside the SavedModel, can read.
MODEL_FORMATS = ("JPEG", "PNG", "GIF", "BMP")


def check_image(data: bytes, max_pixels: int) -> None:
  """Raises RequestError unless `data` starts like a JPEG, PNG, GIF or BMP within max_pixels."""
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our limit decides
      with Image.open(io.BytesIO(data), formats=MODEL_FORMATS) as image:
        width, height = image.size
  except Image.DecompressionBombError as error:  # PIL's own hard limit, far above ours
    raise too_large(f"image over the pixel limit: {error}") from error
  except Exception as error:  # PIL raises many types on malformed headers
    raise bad_request(f"not a JPEG, PNG, GIF or BMP image ({len(data)} bytes)") from error
  if width * height > max_pixels:
    raise too_large(f"image of {width}x{height} pixels is over the limit of {max_pixels:,} "
                    "pixels (--max-pixels)")


def checked(error: RequestError, index: int) -> RequestError:
  return error.for_image(index)
