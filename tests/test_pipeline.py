"""The whole local pipeline, twice: a good model is blessed and pushed, a worse one is not;
the gate's baseline, its floor, and data anomalies that stop a run before it trains.

Real TFX, Beam, TensorFlow, TFMA and KerasTuner on a few dozen 64-px images, with the
real EfficientNet-Lite0 ImageNet weights (so a one-epoch head can separate the classes).
"""

import argparse
import glob
import json
import math
import os
import re
import shutil

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_model_analysis as tfma
from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tensorflow_model_analysis.proto import metrics_for_slice_pb2
from tfx.types import standard_artifacts

from headswap.evaluation.report import natural_key, read_split
from headswap.evaluation.tfma_results import ACCURACY
from headswap.pipeline import cli, flags, local_runner
from headswap.pipeline.baseline import BestBlessedModelStrategy, evaluated_accuracies
from headswap.pipeline.pipeline import PipelineConfig
from headswap.trainer.export import TFLITE_FLOAT16, TFLITE_INT8, ExportedModel
from tests.conftest import CLASS_COLOURS, artifact_properties, node_states, write_class_folders

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
            "--max-trials", "4", "--depth-trials", "2", "--accuracy-threshold", "0.7",
            "--tflite"])
  return str(data), output, local_runner.last_run_artifacts(local_runner.metadata_path(output))


def _versions(output):
  serving = os.path.join(output, "serving", "data")
  return sorted(name for name in os.listdir(serving) if name.isdigit())


def _closing_lines(output, run):
  """A run's console lines after its stages, from its log (OUTPUT/logs holds one per run)."""
  with open(sorted(glob.glob(os.path.join(output, "logs", "headswap-*.log")))[run]) as f:
    return f.read().rsplit("\nexamples: ", 1)[1]


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
  assert "chance for 2 classes: 0.5000" in report and "no baseline" in report
  assert os.path.exists(os.path.join(output, "report", "learning_curves.png"))
  assert f"tensorboard --logdir {artifacts['Trainer.model_run']}/tensorboard" in report
  assert "after phase 1 (frozen base)" in report
  # The shipped phase's accuracy on the test split, from the BulkInferrer's predictions, is
  # TFMA's (and phase 1's too when phase 2 was kept: trainer/export.py).
  accuracy = evaluated_accuracies(artifacts["Evaluator.evaluation"])["candidate"]
  shipped_row, = re.findall(r"<tr><td>after phase \d[^<]*</td><td class='n'>([\d.]+)</td>"
                            r"(?:<td[^>]*>[^<]*</td>){3}<td>shipped</td>", report)
  assert float(shipped_row) == pytest.approx(accuracy, abs=1e-4)
  # The gate scored the user's test split, so the eval split trained the shipped model too.
  assert "8 images (as the test split's Evaluator measured it)" in report
  assert training["hparams"]["fit_eval_split"] and "val_accuracy" not in training["frozen"]
  assert "Both phases trained on the train and eval splits" in report
  # --tflite: both files pushed with the version, and scored on the test split in the report.
  version, = _versions(output)
  assert {TFLITE_FLOAT16, TFLITE_INT8} <= set(os.listdir(os.path.join(output, "serving", "data",
                                                                      version)))
  assert re.search(r"<td>model_int8.tflite \(int8\)</td><td class='n'>[\d.]+</td>"
                   r"<td class='n'>[\d.]+</td>", report)
  # The console's closing lines: the report's numbers for each phase, the pushed version.
  closing = _closing_lines(output, 0)
  shipped = 2 if training.get("fine_tune", {}).get("kept") else 1
  assert re.search(rf"^test accuracy: .*{accuracy:.4f} after phase {shipped}", closing, re.M)
  assert (f"gate: blessed, pushed to {os.path.join(output, 'serving', 'data', version)}\n"
          in closing)


def test_the_shipped_model_fitted_every_photo_but_the_gates_and_predicts_them_as_exported(
    good_run):
  _, _, artifacts = good_run
  with open(os.path.join(artifacts["Trainer.model_run"], "train_predictions.json")) as f:
    predictions = json.load(f)  # computed from the cached features, for the report
  train, held_out = (read_split(artifacts["ImageExampleGen.examples"], split)
                     for split in ("train", "eval"))
  for column in train:
    train[column] += held_out[column]
  names = [name.decode() for name in train["filename"]]
  assert len(names) == 32 and len(held_out["filename"]) > 0  # all of train/, eval included
  assert sorted(predictions["files"]) == sorted(names)
  order = [predictions["files"].index(name) for name in names]
  assert [predictions["labels"][i] for i in order] == train["label"]
  exported = ExportedModel(os.path.join(artifacts["Trainer.model"], "Format-Serving"))
  np.testing.assert_allclose(np.array(predictions["probabilities"])[order],
                             exported.probabilities(train["image"]), atol=0.02)


def _eval_files(examples):
  return {os.path.basename(name.decode()) for name in read_split(examples, "eval")["filename"]}


def test_model_trained_on_swapped_labels_is_not_blessed_and_not_pushed(good_run, tmp_path):
  data, output, artifacts = good_run
  served_before = _versions(output)
  # The same images as images + CSV: eval images (the same ones, split by content hash) keep
  # their labels, every training image gets the other class. The gate must catch the drop.
  relabelled = tmp_path / "relabelled"
  relabelled.mkdir()
  held_out = _eval_files(artifacts["ImageExampleGen.examples"])
  rows = ["filename,label"]
  for path in sorted(glob.glob(os.path.join(data, "train", "*", "*.jpg"))):
    name, label = os.path.basename(path), os.path.basename(os.path.dirname(path))
    shutil.copy(path, relabelled / name)
    rows.append(f"{name},{label if name in held_out else {'cats': 'dogs', 'dogs': 'cats'}[label]}")
  (tmp_path / "labels.csv").write_text("\n".join(rows) + "\n")
  cli.main(["run", "--data", str(relabelled), "--labels", str(tmp_path / "labels.csv"),
            "--name", flags.pipeline_name(argparse.Namespace(name=None, data=data)),
            "--output", output, *TINY, "--no-tune", "--epochs", "3", "--fine-tune-blocks", "0",
            # A high learning rate: early stopping on the (correct) eval split would otherwise
            # keep the barely trained first epoch, which a random head may get right.
            "--learning-rate", "0.1", "--accuracy-threshold", "0"])
  artifacts = local_runner.last_run_artifacts(local_runner.metadata_path(output))
  assert _eval_files(artifacts["ImageExampleGen.examples"]) == held_out
  assert not _blessed(artifacts)
  assert _versions(output) == served_before
  baseline = good_run[2]["Trainer.model"]  # the one blessed model, so the best
  assert artifact_properties(output, artifacts["Evaluator.blessing"])["baseline_model"] == baseline
  with open(os.path.join(output, "report", "index.html")) as f:
    report = f.read()
  assert "NOT blessed" in report
  assert "gate: not blessed, not pushed" in _closing_lines(output, -1)
  accuracy = evaluated_accuracies(good_run[2]["Evaluator.evaluation"])["candidate"]
  assert re.search(f"below the baseline, the most accurate model blessed before "
                   f"\\({re.escape(baseline)}.*\\): {accuracy:.4f}", report), report


def _evaluator_run(store, folder, model, accuracy, blessed):
  """An Evaluator execution in `store` that measured `model`'s accuracy and blessed it or not;
  returns its blessing and evaluation."""
  evaluation, blessing = standard_artifacts.ModelEvaluation(), standard_artifacts.ModelBlessing()
  evaluation.uri, blessing.uri = str(folder / "evaluation"), str(folder / "blessing")
  os.makedirs(evaluation.uri)
  metrics = metrics_for_slice_pb2.MetricsForSlice()
  entry = metrics.metric_keys_and_values.add()
  entry.key.name, entry.key.model_name = ACCURACY, "candidate"
  entry.value.double_value.value = accuracy
  with tf.io.TFRecordWriter(os.path.join(evaluation.uri, "metrics-00000-of-00001.tfrecord")) as f:
    f.write(metrics.SerializeToString())
  blessing.set_int_custom_property("blessed", int(blessed))
  blessing.set_int_custom_property("current_model_id", model.id)
  for artifact in (evaluation, blessing):
    artifact.type_id = store.put_artifact_type(artifact.artifact_type)
  execution = metadata_store_pb2.Execution(
      type_id=store.put_execution_type(metadata_store_pb2.ExecutionType(name="Evaluator")))
  output = metadata_store_pb2.Event(type=metadata_store_pb2.Event.OUTPUT)
  _, (evaluation.id, blessing.id), _ = store.put_execution(
      execution, [(evaluation.mlmd_artifact, output), (blessing.mlmd_artifact, output)], [])
  return blessing, evaluation


def test_baseline_is_the_most_accurate_blessed_model_not_the_latest(tmp_path):
  """Three models, each evaluated: the best is blessed first, a worse one after it, the most
  accurate of all is not blessed."""
  store = metadata_store.MetadataStore(metadata_store_pb2.ConnectionConfig(
      fake_database=metadata_store_pb2.FakeDatabaseConfig()))
  models = []
  for _ in range(3):
    model = standard_artifacts.Model()
    model.type_id = store.put_artifact_type(model.artifact_type)
    model.id, = store.put_artifacts([model.mlmd_artifact])
    models.append(model)
  runs = [_evaluator_run(store, tmp_path / str(i), model, accuracy, blessed)
          for i, (model, accuracy, blessed) in enumerate(zip(models, (0.9, 0.88, 0.95),
                                                             (True, True, False)))]
  resolved = BestBlessedModelStrategy().resolve_artifacts(store, {
      "model": models, "model_blessing": [blessing for blessing, _ in runs],
      "evaluation": [evaluation for _, evaluation in runs]})
  assert resolved == {"model": [models[0]], "model_blessing": [runs[0][0]],
                      "evaluation": [runs[0][1]]}

  none_blessed = BestBlessedModelStrategy().resolve_artifacts(store, {
      "model": models, "model_blessing": [runs[2][0]], "evaluation": [runs[2][1]]})
  assert none_blessed == {"model": [], "model_blessing": [], "evaluation": []}


def test_default_accuracy_floor_is_halfway_from_chance_and_the_flag_overrides_it():
  def floor(**fields):
    return PipelineConfig(name="pets", root="", data="", **fields).accuracy_floor
  assert [floor(num_classes=n) for n in (2, 10, 100)] == pytest.approx([0.75, 0.55, 0.505])
  assert floor(num_classes=2, accuracy_threshold=0.6) == 0.6


def test_anomalies_stop_the_run_before_training_unless_allowed(tmp_path):
  """The test split has no dogs: the ExampleValidator flags the vanished class."""
  data, output = tmp_path / "data", str(tmp_path / "output")
  write_class_folders(str(data / "train"), per_class=8, seed=5)
  write_class_folders(str(data / "test"), per_class=3, seed=6,
                      classes={"cats": CLASS_COLOURS["cats"]})
  with pytest.raises(SystemExit, match="anomalies in the data:\n  test: label_name: .*vanished"
                                       "(.|\n)*--allow-anomalies"):
    cli.main(["run", "--data", str(data), "--output", output, *TINY, "--no-tune"])
  states = node_states(output)
  assert states["AnomaliesGate"] == ["FAILED"]
  assert "Trainer" not in states and "Pusher" not in states

  cli.main(["ingest", "--data", str(data), "--output", output, "--allow-anomalies"])  # no exit
  assert node_states(output)["AnomaliesGate"] == ["FAILED"]  # not part of this run


# Random weights at 32 px: a cheap run whose numbers are still TFMA's to report.
CHEAP = ["--backbone", "efficientnet_lite0", "--weights", "none", "--image-size", "32",
         "--batch-size", "8", "--epochs", "1", "--fine-tune-epochs", "1", "--augment", "",
         "--accuracy-threshold", "0"]


@pytest.fixture(scope="module")
def tuned_then_untuned(tmp_path_factory):
  """A tuned run, then a --no-tune run into the same output: each run's report, as text."""
  root = tmp_path_factory.mktemp("rerun")
  data, output = root / "data", str(root / "output")
  write_class_folders(str(data / "train"), per_class=8, seed=7)
  write_class_folders(str(data / "test"), per_class=3, seed=8)
  reports = []
  for tuning in (["--max-trials", "1", "--depth-trials", "1"], ["--no-tune"]):
    cli.main(["run", "--data", str(data), "--output", output, *CHEAP, *tuning])
    with open(os.path.join(output, "report", "index.html")) as f:
      reports.append(f.read())
  return output, reports


def test_report_shows_this_run_only(tuned_then_untuned):
  output, (tuned, untuned) = tuned_then_untuned
  assert "<h2>Tuning</h2>" in tuned
  assert "<h2>Tuning</h2>" not in untuned
  artifacts = local_runner.last_run_artifacts(local_runner.metadata_path(output))
  assert not any(key.startswith("Tuner.") for key in artifacts)
  assert "ImageExampleGen.examples" in artifacts  # cached in this run, still its output


def test_report_metrics_are_tfmas(tuned_then_untuned):
  output, (_, report) = tuned_then_untuned
  artifacts = local_runner.last_run_artifacts(local_runner.metadata_path(output))
  overall, = [m for m in tfma.load_metrics(artifacts["Evaluator.evaluation"])
              if not m.slice_key.single_slice_keys]
  values = {(e.key.name, e.key.sub_key.class_id.value if e.key.sub_key.HasField("class_id")
             else None): e.value.double_value.value for e in overall.metric_keys_and_values
            # the gate also measured the tuned run's blessed model
            if e.key.model_name == "candidate" and not e.key.is_diff}
  accuracy, = re.findall(r"<data class='accuracy' value='([^']+)'>", report)
  assert float(accuracy) == values[ACCURACY, None]  # exactly: the report computes none itself
  assert f"on {round(values['example_count', None])} images" in report
  shown = {name: [values[metric, class_id] for metric in ("precision", "recall", "f1_score")]
           for class_id, name in enumerate(sorted(CLASS_COLOURS))}
  for name, numbers in shown.items():  # NaN: a class never predicted has no precision
    cells = "".join("<td>-</td>" if math.isnan(n) else f"<td class='n'>{n:.3f}</td>"
                    for n in numbers)
    assert f"<td>{name}</td>{cells}" in report


def test_report_sorts_class_names_as_a_person_does():
  assert sorted(["c10", "c2", "C1", "c1b"], key=natural_key) == ["C1", "c1b", "c2", "c10"]
