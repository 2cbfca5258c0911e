"""Tiny generated datasets for real runs of the stack (no mocks)."""

import os

import numpy as np
import pytest
from PIL import Image

# Two classes a small CNN separates in one epoch: warm colours vs cool colours, with noise.
CLASS_COLOURS = {"cats": (200, 80, 40), "dogs": (40, 90, 200)}


def make_image(colour, seed, size=64) -> Image.Image:
  rng = np.random.default_rng(seed)
  pixels = np.clip(rng.normal(colour, 35, size=(size, size, 3)), 0, 255).astype(np.uint8)
  return Image.fromarray(pixels, "RGB")


def write_class_folders(root, per_class=12, classes=CLASS_COLOURS, seed=0, size=64):
  """root/<class>/<class>.<i>.jpg; distinct seeds make every image's content distinct."""
  for class_index, (name, colour) in enumerate(sorted(classes.items())):
    os.makedirs(os.path.join(root, name), exist_ok=True)
    for i in range(per_class):
      image = make_image(colour, seed * 100_000 + class_index * 1000 + i, size)
      image.save(os.path.join(root, name, f"{name}.{i}.jpg"), quality=90)
  return root


@pytest.fixture
def folders_dataset(tmp_path):
  return write_class_folders(str(tmp_path / "data"))


@pytest.fixture
def presplit_dataset(tmp_path):
  root = tmp_path / "presplit"
  write_class_folders(str(root / "train"), per_class=12, seed=1)
  write_class_folders(str(root / "test"), per_class=4, seed=2)
  return str(root)
