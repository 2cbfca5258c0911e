"""`headswap tune` on tiny real TFRecords: the two-stage search in this process, then a chief
with 2 worker processes on loopback sharing the feature cache."""

import glob
import os
import re
import socket
import statistics

import pytest
import tensorflow as tf
from tensorboard.plugins.hparams import plugin_data_pb2

from headswap.components.filesystem import read_json
from headswap.pipeline import cli
from headswap.tuning.space import SearchSpace
from tests.conftest import write_class_folders
from tests.examples import write_examples

BACKBONE = "efficientnet_lite0"
SIZE = 64
HEAD_TRIALS, DEPTH_TRIALS = 4, 2


@pytest.fixture(scope="module")
def job(tmp_path_factory):
  """Tiny examples and the flags of a tiny search (ImageNet weights: features worth a head)."""
  root = tmp_path_factory.mktemp("tuning")
  examples = write_examples(write_class_folders(str(root / "images"), per_class=8),
                            str(root / "examples"))
  flags = ["--examples", examples, "--feature-cache", str(root / "cache"),
           "--backbone", BACKBONE, "--image-size", str(SIZE),
           "--batch-size", "8", "--augment", "", "--max-trials", str(HEAD_TRIALS),
           "--depth-trials", str(DEPTH_TRIALS)]
  return root, flags


def _tune(job, name, *extra):
  root, flags = job
  output = str(root / name)
  cli.main(["tune", *flags, "--output", output, *extra])
  with open(os.path.join(output, "tuning_summary.txt")) as f:
    return read_json(os.path.join(output, "tuning_summary.json")), f.read()


# So few eval images leave the head no room to be beaten by the margin: the depth trials would
# train nothing (test_depth_trials_train_nothing_when_...) unless told to.
TRAIN_DEPTH = "--always-train-depth-trials"


@pytest.fixture(scope="module")
def in_process(job):
  return _tune(job, "in_process", TRAIN_DEPTH)


@pytest.fixture(scope="module")
def distributed(job, in_process):  # after in_process: the feature cache is filled
  return _tune(job, "distributed", "--workers", "2", TRAIN_DEPTH)


def _rows(summary):
  return [row for stage in summary["stages"].values() for row in stage["trials"]]


def test_search_lists_every_trial_and_says_whether_fine_tuning_paid_off(in_process):
  summary, table = in_process
  heads, depth = summary["stages"]["heads"]["trials"], summary["stages"]["depth"]["trials"]
  assert len(heads) == HEAD_TRIALS and len(depth) == DEPTH_TRIALS
  for row in heads + depth:
    assert row["status"] == "COMPLETED"
    assert row["score"] > 0 and 0 <= row["val_accuracy"] <= 1 and row["seconds"] > 0
    assert {"head_units", "dropout", "learning_rate"} <= set(row["hyperparameters"])
    assert f"  {row['trial']:>5}  tuner0" in table
  best = summary["best_hyperparameters"]
  best_head = {name: best[name] for name in ("head_units", "dropout", "learning_rate")}
  assert any(row["hyperparameters"] == best_head and row["score"] == max(r["score"] for r in heads)
             for row in heads)
  for row in depth:  # fine-tuned the best head, its values fixed
    assert row["hyperparameters"]["fine_tune_blocks"] >= 1
    assert {k: row["hyperparameters"][k] for k in best_head} == best_head

  extraction, tuned = summary["feature_extraction"], summary["best_fine_tune"]
  assert extraction["score"] == max(row["score"] for row in heads)  # accuracy over folds
  assert tuned["score"] == max(row["score"] for row in depth)  # accuracy on the eval split
  accuracy, images = extraction["eval_val_accuracy"], extraction["eval_images"]
  # One-sided 5%, Bonferroni-corrected for the best of every epoch of every depth trial.
  z = statistics.NormalDist().inv_cdf(1 - 0.05 / (DEPTH_TRIALS * SearchSpace().depth_epochs))
  assert summary["required_gain"] == pytest.approx(z * (accuracy * (1 - accuracy) / images) ** 0.5)
  paid_off = tuned["score"] > accuracy + summary["required_gain"]
  assert summary["fine_tuning_paid_off"] is paid_off
  assert f"fine-tuning {'paid off' if paid_off else 'did not pay off'}" in table
  assert best["fine_tune_blocks"] == (tuned["fine_tune_blocks"] if paid_off else 0)
  if paid_off:  # phase 2 trains as long as the trial that won, as phase 1 does
    assert best["fine_tune_epochs"] == tuned["epochs"]
  # The Trainer's phase 1 trains the cross-validated epoch count on every training image.
  assert best["stop_early"] is False
  assert best["epochs"] == extraction["epochs"]


def test_depth_trials_train_nothing_when_no_eval_score_could_keep_fine_tuning(job):
  """Without --always-train-depth-trials: a head at eval accuracy p gains at most 1 - p, which
  on these few eval images is not more than the margin, so no depth trial can make fine-tuning
  kept. Each is the head itself, trained zero epochs; the Trainer gets no phase 2."""
  summary, table = _tune(job, "futile")
  extraction, depth = summary["feature_extraction"], summary["stages"]["depth"]["trials"]
  accuracy = extraction["eval_val_accuracy"]
  assert 1 - accuracy <= summary["required_gain"]
  assert len(depth) == DEPTH_TRIALS
  assert all(row["epochs"] == 0 and row["val_accuracy"] == accuracy for row in depth)
  assert not summary["fine_tuning_paid_off"]
  assert summary["best_hyperparameters"]["fine_tune_blocks"] == 0
  assert "fine-tuning not trained" in table


def test_every_trial_reaches_tensorboards_hparams_dashboard(job, in_process):
  summary, _ = in_process
  for stage, content in summary["stages"].items():
    for row in content["trials"]:
      events, = glob.glob(os.path.join(str(job[0] / "in_process"), "tensorboard", stage,
                                       f"trial_{row['trial']}", "events.*"))
      hyperparameters, metrics = {}, {}
      for event in tf.compat.v1.train.summary_iterator(events):
        for value in event.summary.value:
          if value.metadata.plugin_data.plugin_name == "hparams":
            start = plugin_data_pb2.HParamsPluginData.FromString(
                value.metadata.plugin_data.content).session_start_info
            hyperparameters = {name: getattr(v, v.WhichOneof("kind"))
                               for name, v in start.hparams.items()}
          else:
            metrics[value.tag] = float(tf.make_ndarray(value.tensor))
      assert hyperparameters == pytest.approx(row["hyperparameters"])
      assert metrics["val_accuracy"] == pytest.approx(row["val_accuracy"])
      assert metrics["val_loss"] == pytest.approx(row["val_loss"])


def test_features_are_computed_once_however_many_trials(job, in_process, distributed):
  """Pooled features, and each depth's bottom activations, once per split: by the first
  search (the deepest cut's with the pooled features, from one pass over the images), then
  by the supervisor for what was missing; its workers only read the cache."""
  root, _ = job
  first, second = in_process[0]["stages"], distributed[0]["stages"]
  every_depth = SearchSpace().fine_tune_blocks
  first_depths = {max(every_depth)} | {
      row["hyperparameters"]["fine_tune_blocks"] for row in first["depth"]["trials"]}
  assert first["heads"]["feature_files_computed"] == 2  # train and eval
  assert first["depth"]["activation_files_computed"] == 2 * len(first_depths)
  assert second["heads"]["feature_files_computed"] == 0
  assert second["depth"]["activation_files_computed"] == 2 * len(set(every_depth) - first_depths)
  for worker in distributed[0]["workers"].values():
    with open(worker["log"]) as f:
      log = f.read()
    assert "INFO headswap.console" in log  # the worker's whole log (-v: the log's format)
    assert "computing" not in log  # nothing computed (trainer/feature_cache.py logs that)
  assert len(glob.glob(str(root / "cache" / "*.npy"))) == 2 + 2 * len(every_depth)


def test_distributed_search_splits_trials_between_workers(distributed):
  summary, table = distributed
  assert len(summary["stages"]["heads"]["trials"]) == HEAD_TRIALS
  assert len(summary["stages"]["depth"]["trials"]) == DEPTH_TRIALS
  assert all(row["status"] == "COMPLETED" for row in _rows(summary))
  workers = summary["workers"]
  assert set(workers) == {"tuner0", "tuner1"}
  assert all(worker["exit_code"] == 0 and worker["trials"] >= 1 for worker in workers.values())
  assert sum(worker["trials"] for worker in workers.values()) == HEAD_TRIALS + DEPTH_TRIALS
  assert "tuner1" in table


def test_distributed_search_stops_its_chief(job, distributed):
  """Both stages' oracle ports are closed once the search is over."""
  root, _ = job
  heads_port = int(read_json(os.path.join(str(root / "distributed"),
                                          "tuning_summary.json"))["chief"]["port"])
  for port in (heads_port, heads_port + 1):
    with socket.socket() as probe:
      assert probe.connect_ex(("127.0.0.1", port)) != 0


def test_the_log_follows_each_long_step_in_a_few_lines(job, in_process, distributed):
  """Plain progress lines (pytest's capture is no terminal): a handful per step, the trials
  counted where their oracles are; a trial's epochs, a step inside a step, write none."""
  root, _ = job
  logs = {}
  for name in ("in_process", "distributed"):  # the command's log; workers write theirs too
    for path in glob.glob(str(root / name / "logs" / "headswap-*.log")):
      with open(path) as f:
        log = f.read()
      if "no trials left" not in log:  # tuning/jobs.run_worker's last line
        logs[name] = log
  for name, steps in (("in_process", {"head trials": HEAD_TRIALS, "depth trials": DEPTH_TRIALS}),
                      ("distributed", {"head and depth trials": HEAD_TRIALS + DEPTH_TRIALS})):
    for description, total in steps.items():
      lines = [line for line in logs[name].splitlines()
               if f"headswap.console:   {description}: " in line]
      # Fewer trials than tenths: at most a line per trial, and the end line.
      assert 2 <= len(lines) <= 1 + total, lines
      assert f"{description}: done, {total}/{total} trials in " in lines[-1]
    assert "training epochs" not in logs[name]
  # The base's pass over the images, the pooled features first (trainer/feature_cache.py).
  images = re.search(r"outputs \(pooled\): done, (\d+)/(\d+) images in ", logs["in_process"])
  assert images and images[1] == images[2], logs["in_process"]


def test_bad_examples_folder_is_named(tmp_path):
  empty = str(tmp_path / "not_examples")
  os.makedirs(empty)
  with pytest.raises(SystemExit) as exit_info:
    cli.main(["tune", "--examples", empty, "--output", str(tmp_path / "out")])
  assert "Split-train" in str(exit_info.value) and empty in str(exit_info.value)
