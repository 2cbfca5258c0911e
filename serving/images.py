"""A cheap look at encoded image bytes before they join a batch.

PIL parses only the headers here (no pixel decoding), so a bad upload costs microseconds and
fails on its own, instead of failing the model call it would share with other clients.
"""

import io
import warnings

from PIL import Image

from serving.errors import bad_request, too_large

# What tf.io.decode_image, inside the SavedModel, can read.
MODEL_FORMATS = ("JPEG", "PNG", "GIF", "BMP")


def check_image(data: bytes, max_pixels: int) -> None:
  """Raises RequestError unless `data` starts like a JPEG, PNG, GIF or BMP within max_pixels.

  A GIF counts every frame: the model serves the first, but TensorFlow's GIF decoder
  unpacks them all, so a small file of many large frames would exhaust memory."""
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our limit decides
      with Image.open(io.BytesIO(data), formats=MODEL_FORMATS) as image:
        width, height = image.size
        frames = image.n_frames if image.format == "GIF" else 1
  except Image.DecompressionBombError as error:  # PIL's own hard limit, far above ours
    raise too_large(f"image over the pixel limit: {error}") from error
  except Exception as error:  # PIL raises many types on malformed headers
    raise bad_request(f"not a JPEG, PNG, GIF or BMP image ({len(data)} bytes)") from error
  if width * height * frames > max_pixels:
    of_frames = f" in {frames} frames" if frames > 1 else ""
    raise too_large(f"image of {width}x{height} pixels{of_frames} is over the limit of "
                    f"{max_pixels:,} pixels (--max-pixels)")
