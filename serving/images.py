"""Request images, decoded as ingest decodes them before the model sees them.

The SavedModel decodes with tf.io.decode_image, which ignores EXIF orientation, reads no WebP
and unpacks every frame of a GIF at the size of its largest frame. Given what ingest stores
instead (upright RGB JPEG or PNG bytes; a GIF's first frame), it serves a photo as it was
trained, and decodes at most --max-pixels per image.
"""

from headswap.components.image_example_gen import decode
from headswap.serving.errors import bad_request, too_large


def upright_rgb(data: bytes, max_pixels: int) -> bytes:
  """decode.upright_rgb, its refusals as RequestError; takes milliseconds, so call it off the
  event loop."""
  try:
    return decode.upright_rgb(data, max_pixels)
  except decode.OverPixelLimit as error:
    raise too_large(f"image of {len(data):,} bytes: {error}") from error
  except decode.SkipImage as error:
    raise bad_request(f"unusable image of {len(data):,} bytes: {error}") from error
