"""The whole local pipeline, twice: a good model is blessed and pushed, a worse one is not.

Real TFX, Beam, TensorFlow, TFMA and KerasTuner on a few dozen 64-px images, with the
real EfficientNet-Lite0 ImageNet weights (so a one-epoch head can separate the classes).
"""

import json
import os
import re

import pytest

from pipeline import cli, local_runner
from tests.conftest import write_class_folders

TINY = ["--image-size", "64", "--batch-size", "8", "--fine-tune-epochs", "1",
        "--augment", "flip"]


@pytest.fixture(scope="module")
def good_run(tmp_path_factory):
  root = tmp_path_factory.mktemp("pipeline")
  data = root / "data"
  write_class_folders(str(data / "train"), per_class=16, seed=3)
  write_class_folders(str(data / "test"), per_class=4, seed=4)
  output = str(root / "output")
  cli.main(["run", "--data", str(data), "--output", output, *TINY, "--epochs", "10",
            "--max-trials", "4", "--depth-trials", "2", "--accuracy-threshold", "0.7"])
  return str(data), output, local_runner.latest_artifacts(output)


def _versions(output):
  serving = os.path.join(output, "serving", "data")
  return sorted(name for name in os.listdir(serving) if name.isdigit())


def _blessed(artifacts):
  return os.path.exists(os.path.join(artifacts["Evaluator.blessing"], "BLESSED"))


def test_good_model_is_tuned_blessed_pushed_and_reported(good_run):
  _, output, artifacts = good_run
  assert _blessed(artifacts)
  assert len(_versions(output)) == 1

  with open(os.path.join(artifacts["Tuner.tuner_results"], "tuning_summary.json")) as f:
    tuning = json.load(f)
  assert len(tuning["stages"]["heads"]["trials"]) >= 4
  assert len(tuning["stages"]["depth"]["trials"]) >= 2
  with open(os.path.join(artifacts["Tuner.best_hyperparameters"],
                         "best_hyperparameters.txt")) as f:
    best = json.load(f)["values"]
  with open(os.path.join(artifacts["Trainer.model_run"], "training_summary.json")) as f:
    training = json.load(f)
  # The Tuner's choice reached the Trainer, which reused the Tuner's cached features.
  assert training["hparams"]["head_units"] == best["head_units"]
  assert training["hparams"]["fine_tune_blocks"] == best["fine_tune_blocks"]
  assert tuning["stages"]["heads"]["feature_files_computed"] == 2
  assert training["frozen"]["feature_files_computed"] == 0

  with open(os.path.join(output, "report", "index.html")) as f:
    report = f.read()
  for name in ("cats", "dogs"):
    assert re.search(rf"<td>{name}</td>", report)
  assert "BLESSED" in report
  assert os.path.exists(os.path.join(output, "report", "learning_curves.png"))
  assert os.path.exists(os.path.join(artifacts["TestEvaluator.evaluation"], "metrics"))


def test_worse_model_is_not_blessed_and_not_pushed(good_run):
  data, output, _ = good_run
  served_before = _versions(output)
  # Same pipeline and data, a model that barely trains: the gate must catch the drop.
  cli.main(["run", "--data", data, "--output", output, *TINY, "--no-tune", "--epochs", "1",
            "--learning-rate", "1e-7", "--fine-tune-blocks", "0", "--accuracy-threshold", "0"])
  artifacts = local_runner.latest_artifacts(output)
  assert not _blessed(artifacts)
  assert _versions(output) == served_before
  with open(os.path.join(output, "report", "index.html")) as f:
    assert "NOT blessed" in f.read()
