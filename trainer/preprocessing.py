"""The one image path shared by training, evaluation and serving.

Bytes in, as ingest stores them (upright RGB JPEG or PNG: decode.upright_rgb, which evaluate,
predict and serve also apply first, because tf.io.decode_image ignores EXIF orientation);
a [size, size, 3] float32 tensor of 0-255 pixels out.
Each backbone scales pixels the way its weights expect inside the model, so nothing
here depends on the backbone but the size.
"""

import tensorflow as tf

from headswap.components import features


def decode_image(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
  image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
  # Rounded as the training cache keeps pixels (uint8, trainer/data.py): served and evaluated
  # models see exactly the pixels they were trained on (unrounded, 2-6 of 199 test
  # predictions changed on cat_breeds).
  image = tf.round(tf.image.resize(image, [image_size, image_size]))  # float32, 0-255
  return tf.ensure_shape(image, [image_size, image_size, 3])


def decode_images(image_bytes: tf.Tensor, image_size: int) -> tf.Tensor:
  """A batch of encoded images [B] to pixels [B, size, size, 3]."""
  return tf.map_fn(lambda one: decode_image(one, image_size), image_bytes,
                   fn_output_signature=tf.TensorSpec([image_size, image_size, 3], tf.float32))


EXAMPLE_SPEC = {
    features.IMAGE: tf.io.FixedLenFeature([], tf.string),
    features.LABEL: tf.io.FixedLenFeature([], tf.int64),
}


def example_images(serialized: tf.Tensor) -> tf.Tensor:
  """Serialized tf.Examples [B] to their encoded images [B]. The label is not read: a model
  also predicts on unlabelled examples."""
  spec = {features.IMAGE: EXAMPLE_SPEC[features.IMAGE]}
  return tf.io.parse_example(serialized, spec)[features.IMAGE]
