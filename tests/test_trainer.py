"""The frozen-then-unfrozen schedule and the export, on tiny real TFRecords."""

import glob
import json
import logging
import os
import re

import numpy as np
import pytest
import tensorflow as tf

from headswap.components import features
from headswap.components.progress import PLAIN_STEPS
from headswap.evaluation import report
from headswap.trainer import data, export, feature_cache, preprocessing, train
from headswap.trainer.backbones import registry
from headswap.trainer.hparams import HParams
from tests.conftest import read_examples, write_class_folders
from tests.examples import write_examples

BACKBONE = "efficientnet_lite0"
SIDE_BY_SIDE = "efficientnet_lite0+efficientnet_lite1"
SIZE = 64


@pytest.fixture(scope="module")
def examples(tmp_path_factory):
  root = tmp_path_factory.mktemp("trainer")
  return write_examples(write_class_folders(str(root / "images"), per_class=10),
                        str(root / "examples"))


@pytest.fixture(scope="module")
def initial_weights(tmp_path_factory):
  """A random base saved to a file, so every run starts from the same known weights."""
  path = str(tmp_path_factory.mktemp("weights") / "base.weights.h5")
  registry.build_base(BACKBONE, None, SIZE).save_weights(path)
  return path


def _hparams(weights, **overrides):
  return HParams(**{"backbone": BACKBONE, "weights": weights, "image_size": SIZE, "epochs": 1,
                    "fine_tune_epochs": 1, "batch_size": 8, **overrides})


def _train(examples, hp, tmp_path):
  return train.train([os.path.join(examples, "Split-train", "*")],
                     [os.path.join(examples, "Split-eval", "*")], 2, hp,
                     str(tmp_path / "cache"), str(tmp_path / "run"))


def _base_of(classifier):
  return next(layer for layer in classifier.layers if layer.name not in ("pixels", "head"))


def _weights_of(base):
  return {f"{layer.name}/{i}": w.numpy().copy() for layer in base.layers
          for i, w in enumerate(layer.weights)}


def test_frozen_phase_changes_no_base_weight(examples, initial_weights, tmp_path):
  run = _train(examples, _hparams(initial_weights, fine_tune_blocks=0), tmp_path)
  after = _weights_of(_base_of(run.classifier))
  before = _weights_of(registry.build_base(BACKBONE, initial_weights, SIZE))
  assert [row["phase"] for row in run.history] == ["frozen"]
  assert all(np.array_equal(before[name], after[name]) for name in before)


def test_outputs_from_one_pass_to_the_deepest_cut_equal_direct_ones(examples, initial_weights,
                                                                     tmp_path):
  """Pooled features and a shallower cut's activations computed from the deepest cut's
  activations are what the base gives straight from the images."""
  base = registry.build_base(BACKBONE, initial_weights, SIZE)
  files = [os.path.join(examples, "Split-eval", "*")]
  splits = [feature_cache.Split(files, data.decoded_images(files, SIZE), views=2)]

  def outputs(deepest_cut, cache):
    return feature_cache.FrozenOutputs(base, splits, str(tmp_path / cache), BACKBONE,
                                       initial_weights, 8, deepest_cut, ["flip", "crop"])

  chained, direct = outputs(3, "chained"), outputs(0, "direct")
  for chained_split, direct_split in ((chained.pooled_features(), direct.pooled_features()),
                                      (chained.activations(1), direct.activations(1))):
    (chained_x, chained_y), = chained_split
    (direct_x, direct_y), = direct_split
    np.testing.assert_array_equal(chained_y, direct_y)
    np.testing.assert_allclose(chained_x, direct_x, rtol=1e-4, atol=1e-4)
  # One pass over the images: top3 (from the images), then pooled and top1 from top3.
  assert chained.computed == {feature_cache.POOLED: 1, feature_cache.ACTIVATIONS: 2}
  assert direct.computed == {feature_cache.POOLED: 1, feature_cache.ACTIVATIONS: 1}


@pytest.mark.parametrize("backbone,on_cached_activations", [
    (BACKBONE, True), (BACKBONE, False), (SIDE_BY_SIDE, True)])
def test_fine_tuning_changes_only_the_top_blocks_and_no_bn_statistic(
    examples, tmp_path, backbone, on_cached_activations):
  weights = str(tmp_path / "base.weights.h5")
  registry.build_base(backbone, None, SIZE).save_weights(weights)
  hp = _hparams(weights, backbone=backbone, fine_tune_blocks=1, learning_rate=1e-2,
                fine_tune_learning_rate=1e-2, fast_fine_tuning=on_cached_activations)
  run = _train(examples, hp, tmp_path)
  trained, initial = _base_of(run.classifier), registry.build_base(backbone, weights, SIZE)
  bases = registry.members(trained) or [trained]
  before_bases = registry.members(initial) or [initial]
  after = {f"{base.name}/{name}": w for base in bases for name, w in _weights_of(base).items()}
  before = {f"{base.name}/{name}": w for base in before_bases
            for name, w in _weights_of(base).items()}
  top = {f"{base.name}/{layer.name}" for base in bases
         for block in registry.blocks(base)[-1:] for layer in block}
  changed = {name.rsplit("/", 1)[0] for name in before
             if not np.array_equal(before[name], after[name])}
  bn = {f"{base.name}/{layer.name}" for base in bases for layer in base.layers
        if "BatchNormalization" in type(layer).__name__}

  assert [row["phase"] for row in run.history] == ["frozen", "fine_tune"]
  assert run.history[-1]["epoch"] == 2  # the epoch count continues from phase 1
  assert run.summary["fine_tune"]["on_cached_activations"] == on_cached_activations
  assert changed <= top - bn
  if run.summary["fine_tune"]["kept"]:
    # side by side: the top block of each backbone trained
    assert {name.split("/")[0] for name in changed} == {base.name for base in bases}
  else:
    assert not changed  # worse than phase 1: the phase-1 weights were restored


def test_tuned_phase_one_trains_every_epoch_it_was_given(examples, initial_weights, tmp_path):
  """With the Tuner's cross-validated epoch count (stop_early off) nothing stops phase 1
  on the eval split: it trains that many epochs and keeps the last."""
  run = _train(examples, _hparams(initial_weights, fine_tune_blocks=0, epochs=4,
                                  stop_early=False, patience=1, learning_rate=0.5), tmp_path)
  assert [row["phase"] for row in run.history] == ["frozen"] * 4
  assert run.summary["frozen"]["val_loss"] == run.history[-1]["val_loss"]


def test_training_tells_its_progress_in_a_few_plain_lines_outside_a_console(
    examples, initial_weights, tmp_path, caplog):
  """Library use: no console session, so each long step logs its start, tenths and end."""
  caplog.set_level(logging.INFO, logger="headswap")
  _train(examples, _hparams(initial_weights, stop_early=False, epochs=3, fine_tune_blocks=1,
                            fine_tune_epochs=2), tmp_path)
  lines = [record.getMessage() for record in caplog.records if record.name == "headswap.console"]
  steps = {line.split(": ")[0] for line in lines}
  for step in steps:
    assert len([line for line in lines if line.startswith(f"{step}: ")]) <= 2 + PLAIN_STEPS
  ends = [line for line in lines if ": done, " in line]
  assert [line.split(" in ")[0] for line in ends[-2:]] == [
      "  frozen epochs: done, 3/3 epochs", "  fine_tune epochs: done, 2/2 epochs"]
  # The base's passes over the images, as many as each pass was to go through.
  passes = [re.fullmatch(r"  \S+ outputs .*: done, (\d+)/(\d+) (images|views) in .* s", line)
            for line in ends[:-2]]
  assert passes and all(done and done[1] == done[2] for done in passes), ends


def test_with_the_tuners_epoch_counts_the_eval_split_trains_too(examples, initial_weights,
                                                                tmp_path):
  """fit_eval_split (the gate has a test split): both phases fit train and eval, for the
  epochs given, and phase 2 is kept: the Tuner chose it on held-out images."""
  with pytest.raises(ValueError, match="stop_early"):
    _train(examples, _hparams(initial_weights, fit_eval_split=True), tmp_path)
  run = _train(examples, _hparams(initial_weights, fit_eval_split=True, stop_early=False,
                                  epochs=2, fine_tune_blocks=1, fine_tune_epochs=2), tmp_path)
  assert [row["phase"] for row in run.history] == ["frozen"] * 2 + ["fine_tune"] * 2
  assert not any("val_loss" in row for row in run.history)
  assert run.summary["fine_tune"]["kept"]
  split_sizes = [len(rows) for split, rows in sorted(read_examples(examples).items())]
  assert len(run.train_labels) == sum(split_sizes) == 20 and min(split_sizes) > 0


def test_views_are_the_image_its_mirror_then_the_same_augmented_views_every_time(examples):
  images = data.decoded_images([os.path.join(examples, "Split-eval", "*")], SIZE)
  count = data.count(images)

  def pixels():
    return np.stack([x for x, _ in data.views(images, 3, ["flip", "crop"], seed=5)
                     .as_numpy_iterator()])

  first, again = pixels(), pixels()
  np.testing.assert_array_equal(first, again)  # cacheable
  np.testing.assert_array_equal(first[:count], np.stack([x for x, _ in
                                                          images.as_numpy_iterator()]))
  assert len(first) == 3 * count
  np.testing.assert_array_equal(first[count:2 * count], first[:count, :, ::-1])  # the mirror
  assert all(not np.array_equal(first[i], first[i + 2 * count]) for i in range(count))


def test_default_fine_tuning_trains_on_cached_augmented_views(examples, initial_weights,
                                                              tmp_path):
  """The default fast paths: phase 1 and phase 2 read the bottom's outputs of every view of
  every training image (hp.views), not the unaugmented images alone."""
  hp = _hparams(initial_weights, fine_tune_blocks=1)
  assert hp.fast_fine_tuning and hp.cached_views == HParams().views > 1
  run = _train(examples, hp, tmp_path)
  train_count = len(run.train_labels)
  assert train_count == len(read_examples(examples)["train"])
  rows = sorted(len(feature_cache.read(path)[1])
                for path in glob.glob(str(tmp_path / "cache" / "*")))
  assert hp.views * train_count in rows  # activations and pooled features of the views
  assert run.summary["fine_tune"]["on_cached_activations"]


def test_export_signatures_agree_and_reject_garbage(examples, tmp_path):
  run = _train(examples, _hparams("none", fine_tune_blocks=0), tmp_path)
  path = export.export_classifier(run.classifier, ["cats", "dogs"], run.image_size,
                                  str(tmp_path / "model"))
  loaded = tf.saved_model.load(path)
  records = list(tf.data.TFRecordDataset(
      tf.io.gfile.glob(os.path.join(examples, "Split-eval", "*")), compression_type="GZIP"))
  serialized = tf.stack(records)
  images = tf.io.parse_example(serialized, {features.IMAGE: tf.io.FixedLenFeature([], tf.string)})
  from_images = loaded.signatures[export.SERVING_SIGNATURE](images=images[features.IMAGE])
  from_examples = loaded.signatures[export.EXAMPLES_SIGNATURE](examples=serialized)
  np.testing.assert_allclose(from_images["probabilities"], from_examples["probabilities"],
                             rtol=1e-5)
  assert set(from_images["class_name"].numpy()) <= {b"cats", b"dogs"}
  with open(os.path.join(path, "assets.extra", export.METADATA_FILE)) as f:
    assert json.load(f)["class_names"] == ["cats", "dogs"]
  with pytest.raises(tf.errors.InvalidArgumentError, match="Unknown image file format"):
    loaded.signatures[export.SERVING_SIGNATURE](images=tf.constant([b"not an image"]))


@pytest.mark.parametrize("backbone", [BACKBONE, SIDE_BY_SIDE])
def test_export_gives_each_phases_probabilities_when_phase_2_is_kept(examples, backbone,
                                                                     tmp_path):
  """from_examples also gives phase 1's probabilities: the base as phase 1 left it (frozen: its
  initial weights) under phase 1's head, for the test accuracy after each phase."""
  initial_weights = str(tmp_path / "base.weights.h5")
  registry.build_base(backbone, None, SIZE).save_weights(initial_weights)
  run = _train(examples, _hparams(initial_weights, backbone=backbone, fine_tune_blocks=1,
                                  stop_early=False), tmp_path)  # no early stopping: kept
  assert run.summary["fine_tune"]["kept"]
  path = export.export_classifier(run.classifier, ["cats", "dogs"], run.image_size,
                                  str(tmp_path / "model"), run.both_phases)
  loaded = tf.saved_model.load(path)
  serialized = tf.stack(list(tf.data.TFRecordDataset(
      tf.io.gfile.glob(os.path.join(examples, "Split-eval", "*")), compression_type="GZIP")))
  images = tf.io.parse_example(serialized, {features.IMAGE: tf.io.FixedLenFeature([], tf.string)})
  outputs = loaded.signatures[export.EXAMPLES_SIGNATURE](examples=serialized)
  served = loaded.signatures[export.SERVING_SIGNATURE](images=images[features.IMAGE])
  np.testing.assert_allclose(outputs["probabilities"], served["probabilities"], rtol=1e-5)
  pixels = preprocessing.decode_images(images[features.IMAGE], SIZE)
  phase_1 = run.frozen_head(registry.build_base(backbone, initial_weights, SIZE)(pixels))
  np.testing.assert_allclose(outputs[export.PHASE_1_PROBABILITIES], phase_1, rtol=1e-4,
                             atol=1e-6)
  assert not np.allclose(phase_1, outputs["probabilities"])  # phase 2 changed the model


EVERY_SPLIT_SIZE = """
import json, sys
from headswap.trainer.strategy import configure_cpu_devices
configure_cpu_devices(4)  # before TensorFlow initialises, as the CLI does
import keras, numpy as np, tensorflow as tf
from headswap.trainer import data
from headswap.trainer.hparams import HParams
from headswap.trainer.strategy import mirrored_strategy
from headswap.trainer.train import fit_phase

class NonEmpty(keras.layers.Layer):
  # Fails the step on any CPU if a replica is handed an empty batch.
  def call(self, x):
    tf.debugging.assert_positive(tf.shape(x)[0], message="a replica got an empty batch")
    return x

# One strategy per process: TensorFlow's collectives reject a second one of another size.
replicas = int(sys.argv[1])
strategy = mirrored_strategy(replicas)
seen = []
for per_replica in (2, 4):
  for examples in (1, 3, 5, 13):
    rng = np.random.default_rng(examples)
    features = rng.normal(size=(examples, 8)).astype("float32")
    labels = rng.integers(0, 2, examples)
    with strategy.scope():
      inputs = keras.Input((8,))
      model = keras.Model(inputs, keras.layers.Dense(2, activation="softmax")(NonEmpty()(inputs)))
    history = fit_phase(model, 1e-2, data.examples_of(features, labels),
                        data.examples_of(features, labels), HParams(patience=5),
                        per_replica * replicas, 2, strategy=strategy)
    seen.append([replicas, per_replica, examples, len(history["val_loss"])])
print(json.dumps(seen))
"""


@pytest.mark.parametrize("replicas", [1, 2, 3, 4])
def test_no_replica_gets_an_empty_batch_whatever_the_split_size(replicas):
  """Split sizes that do not divide evenly, some smaller than the replica count: every
  replica gets a share of every step, checked in the graph, so on any CPU."""
  import subprocess
  import sys
  result = subprocess.run([sys.executable, "-c", EVERY_SPLIT_SIZE, str(replicas)],
                          capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  seen = json.loads(result.stdout.strip().splitlines()[-1])
  assert len(seen) == 2 * 4
  assert all(epochs == 2 for *_, epochs in seen)


MIRRORED_TRAINING = """
import json, sys
from headswap.trainer.strategy import configure_cpu_devices
configure_cpu_devices(3)  # before TensorFlow initialises, as the CLI does
import numpy as np
from headswap.trainer import train
from headswap.trainer.hparams import HParams
examples, work, replicas, fast = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "fast"
hp = HParams(backbone="efficientnet_lite0", weights="none", image_size=64, epochs=1,
             fine_tune_epochs=1, fine_tune_blocks=1, batch_size=3, cpu_replicas=replicas,
             fast_feature_extraction=fast, fast_fine_tuning=fast, augment="flip")
run = train.train([examples + "/Split-train/*"], [examples + "/Split-eval/*"], 2, hp,
                  work + "/cache", work + "/run")
kernel = run.classifier.get_layer("head").get_layer("head_softmax").kernel.value
copies = [np.asarray(copy) for copy in kernel.values]
print(json.dumps({"replicas": run.summary["replicas"],
                  "devices": sorted(copy.device for copy in kernel.values),
                  "copies_agree": all(np.array_equal(copies[0], c) for c in copies),
                  "phases": [row["phase"] for row in run.history],
                  "train_predictions": len(run.train_labels)}))
"""


@pytest.mark.parametrize("replicas,paths", [(2, "fast"), (3, "slow")])
def test_training_runs_on_mirrored_replicas(examples, tmp_path, replicas, paths):
  """Both phases, on cached outputs and on images, with splits no global batch divides."""
  import subprocess
  import sys
  splits = read_examples(examples)
  sizes = [len(splits[split]) for split in ("train", "eval")]
  assert all(size % (3 * replicas) for size in sizes), sizes  # a short last batch each
  result = subprocess.run([sys.executable, "-c", MIRRORED_TRAINING, examples, str(tmp_path),
                           str(replicas), paths],
                          capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  assert report["replicas"] == replicas
  assert len(set(report["devices"])) == replicas
  assert report["copies_agree"]  # every replica applied the same all-reduced updates
  assert report["phases"] == ["frozen", "fine_tune"]
  assert report["train_predictions"] == sizes[0]


@pytest.fixture(scope="module")
def tflite_export(examples, tmp_path_factory):
  """A trained classifier's SavedModel with both .tflite files beside it, as run_fn writes it.
  ImageNet weights: a random base gives every image the same probabilities, so int8 could not
  be told from float."""
  tmp_path = tmp_path_factory.mktemp("tflite")
  run = _train(examples, _hparams("imagenet", fine_tune_blocks=0), tmp_path)
  path = export.export_classifier(run.classifier, ["cats", "dogs"], SIZE, str(tmp_path / "model"))
  train_images = data.decoded_images([os.path.join(examples, "Split-train", "*")], SIZE)
  export.export_tflite(run.classifier, ["cats", "dogs"], SIZE, path,
                       (pixels for pixels, _ in train_images.as_numpy_iterator()))
  return path


def test_tflite_files_predict_as_the_saved_model_and_int8_is_smaller(examples, tflite_export):
  rows = read_examples(examples)[features.EVAL]
  images = [row[features.IMAGE] for row in rows]
  expected = export.ExportedModel(tflite_export).probabilities(images)
  float16 = export.TFLiteModel(os.path.join(tflite_export, export.TFLITE_FLOAT16))
  int8 = export.TFLiteModel(os.path.join(tflite_export, export.TFLITE_INT8))
  for model in (float16, int8):
    assert (model.class_names, model.image_size) == (["cats", "dogs"], SIZE)
    details, = tf.lite.Interpreter(model.path).get_input_details()
    assert details["dtype"] == np.uint8 and list(details["shape"]) == [1, SIZE, SIZE, 3]
  np.testing.assert_allclose(float16.probabilities(images), expected, atol=0.01)
  agree = int8.probabilities(images).argmax(-1) == expected.argmax(-1)
  assert agree.mean() >= 0.8, agree
  assert int8.size_bytes < float16.size_bytes
  # The report's scoring reads the split's TFRecords: the float16 model scores as the SavedModel.
  accuracy = (expected.argmax(-1) == [row[features.LABEL] for row in rows]).mean()
  assert report.tflite_accuracies([float16], examples, features.EVAL) == [accuracy]


def test_predict_classifies_with_a_tflite_file_as_with_the_saved_model(tflite_export, tmp_path,
                                                                       capsys):
  from headswap.pipeline import cli

  write_class_folders(str(tmp_path), per_class=1)
  image = str(tmp_path / "cats" / "cats.0.jpg")
  outputs = []
  for model in (tflite_export, os.path.join(tflite_export, export.TFLITE_FLOAT16)):
    cli.main(["predict", "--model", model, "--top-k", "1", image])
    outputs.append(capsys.readouterr().out.splitlines())
  assert outputs[1][0] == image and outputs[1][1].split()[0] == outputs[0][1].split()[0]
  with pytest.raises(SystemExit, match="cannot load"):
    cli.main(["predict", "--model", str(tmp_path / "missing.tflite"), image])
