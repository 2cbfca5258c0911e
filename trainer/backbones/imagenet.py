"""A backbone with its ImageNet head, and the names of the 1000 ImageNet classes."""

import keras
from tensorflow_datasets.datasets.siscore.labels import IMAGENET_LABELS_LIST

from headswap.trainer.backbones import efficientnet_lite, registry

_LITE = {"efficientnet_lite0": efficientnet_lite.EfficientNetLite0,
         "efficientnet_lite1": efficientnet_lite.EfficientNetLite1,
         "efficientnet_lite2": efficientnet_lite.EfficientNetLite2}


def label(index: int) -> str:
  """ImageNet class name (the first of its synonyms), e.g. 285 -> "Egyptian cat"."""
  return IMAGENET_LABELS_LIST[index].split(",")[0]


def classifier(name: str) -> keras.Model:
  """Raw 0-255 pixels -> 1000 ImageNet probabilities (the head headswap otherwise cuts off)."""
  if name in _LITE:
    return _LITE[name](include_top=True, weights="imagenet")
  registry.get_backbone(name)  # a clear error for unknown names
  raise ValueError(f"imagenet-predict needs ImageNet weights with their head, which only the "
                   f"efficientnet_lite backbones have offline; {name} would download them")
