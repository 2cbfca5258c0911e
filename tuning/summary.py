"""The search's summary: every trial of both stages, the values the Trainer gets and whether
fine-tuning beat feature extraction, as JSON and as a table a person reads top to bottom.
"""

import json
import os
from typing import Any, Dict, List

import tensorflow as tf

from headswap.tuning.oracles import DEPTH, HEADS, StageOracle, Status
from headswap.tuning.space import LOSS, OBJECTIVE
from headswap.tuning.trials import (EPOCHS, EVAL_IMAGES, FROZEN, TransferTuner,
                                    best_hyperparameters, best_trial, metric, paid_off,
                                    required_gain)

TENSORBOARD_FOLDER = "tensorboard"  # in the tuner's results: a run per trial, per stage
_TRIAL_METRICS = ("val_accuracy", LOSS, EPOCHS, "seconds")


def _trial_rows(oracle: StageOracle) -> List[Dict[str, Any]]:
  return [{"trial": trial.trial_id, "worker": oracle.workers.get(trial.trial_id),
           "status": trial.status, "score": trial.score, LOSS: metric(trial, LOSS),
           "val_accuracy": metric(trial, "val_accuracy"), EPOCHS: metric(trial, EPOCHS),
           "seconds": metric(trial, "seconds"),
           "hyperparameters": trial.hyperparameters.values}
          for trial in sorted(oracle.trials.values(), key=lambda t: t.trial_id)]


def summarize(heads: StageOracle, depth: StageOracle,
              computed: Dict[str, float]) -> Dict[str, Any]:
  """Every trial of both stages, and whether fine-tuning beat feature extraction."""
  head_rows, depth_rows = _trial_rows(heads), _trial_rows(depth)
  best_head = best_first(head_rows)[0]
  best_tuned = next(iter(best_first(depth_rows)), None)
  tuned_trial = best_trial(depth)
  return {
      "best_hyperparameters": best_hyperparameters(heads, depth).values,
      "objective": {HEADS: OBJECTIVE.name, DEPTH: OBJECTIVE.name},
      "stages": {
          HEADS: {"trials": head_rows, "seconds": heads.seconds,
                  "feature_files_computed": computed["feature_files_computed"],
                  "feature_seconds": computed["feature_seconds"]},
          DEPTH: {"trials": depth_rows, "seconds": depth.seconds,
                  "activation_files_computed": computed["activation_files_computed"]}},
      # score (val_accuracy) at the trial's best epoch, averaged over the folds of train
      "feature_extraction": {"score": best_head["score"], "epochs": best_head[EPOCHS],
                             "val_accuracy": best_head["val_accuracy"],
                             LOSS: best_head[LOSS],
                             # of the head trained on all of train, on the eval split
                             **{f"eval_{name}": tuned_trial and metric(tuned_trial, frozen)
                                for name, frozen in FROZEN.items()},
                             EVAL_IMAGES: tuned_trial and int(metric(tuned_trial, EVAL_IMAGES))},
      "best_fine_tune": best_tuned and {
          "score": best_tuned["score"], "val_accuracy": best_tuned["val_accuracy"],
          LOSS: best_tuned[LOSS], "epochs": best_tuned[EPOCHS],
          "fine_tune_blocks": best_tuned["hyperparameters"]["fine_tune_blocks"]},
      "fine_tuning_paid_off": bool(tuned_trial and paid_off(tuned_trial)),
      # the eval accuracy fine-tuning had to add to the head's (tuning/trials.py)
      "required_gain": tuned_trial and required_gain(tuned_trial),
  }


def best_first(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
  """Scored trials best first (tuning/trials.py rank), then the unscored ones."""
  scored = [row for row in rows if row["score"] is not None]
  return sorted(scored, key=lambda row: (-row["score"], row[LOSS])) + [
      row for row in rows if row["score"] is None]


def summarize_tuner(tuner: TransferTuner) -> Dict[str, Any]:
  """The summary of a search that one TransferTuner ran in this process."""
  return summarize(tuner.heads_oracle, tuner.oracle, tuner.cache_counts())


def summary_table(summary: Dict[str, Any]) -> str:
  """The summary as a table a person reads top to bottom, best trial of each stage first."""
  lines = []
  for stage, content in summary["stages"].items():
    cache = (f"pooled features: {content['feature_files_computed']} files computed, "
             f"{content['feature_seconds']} s" if stage == HEADS else
             f"bottom activations: {content['activation_files_computed']} files computed")
    lines.append(f"{stage}: {len(content['trials'])} trials in {content['seconds']} s; {cache}")
    lines.append(f"  {'trial':>5}  {'worker':8}  {'val_loss':>8}  {'val_acc':>7}  {'epochs':>6}"
                 f"  {'seconds':>7}  hyperparameters")
    for row in best_first(content["trials"]):
      values = ", ".join(f"{k}={_short(v)}" for k, v in sorted(row["hyperparameters"].items()))
      lines.append(f"  {row['trial']:>5}  {row['worker'] or '-':8}  {_number(row[LOSS]):>8}"
                   f"  {_number(row['val_accuracy']):>7}  {_seconds(row[EPOCHS]):>6}"
                   f"  {_seconds(row['seconds']):>7}  "
                   f"{values}{'' if row['status'] == Status.COMPLETED else ' ' + row['status']}")
  lines.append(_verdict(summary))
  return "\n".join(lines)


def _verdict(summary: Dict[str, Any]) -> str:
  extraction = summary["feature_extraction"]
  measured = (f"feature extraction: val_accuracy {_number(extraction['val_accuracy'])}, "
              f"{LOSS} {_number(extraction[LOSS])} after "
              f"{_seconds(extraction[EPOCHS])} epochs, over the folds of train")
  tuned = summary["best_fine_tune"]
  if not tuned:
    return f"fine-tuning not tried (no depth trial ran): {measured}"
  if not tuned[EPOCHS]:  # the depth trials trained nothing (tuning/trials.py futile_depth)
    return (f"fine-tuning not trained: the head's eval val_accuracy "
            f"{_number(extraction['eval_val_accuracy'])} on {extraction[EVAL_IMAGES]} images "
            f"leaves {_number(1 - extraction['eval_val_accuracy'])}, not more than the "
            f"{_number(summary['required_gain'])} it must add; {measured}")
  verdict = "paid off" if summary["fine_tuning_paid_off"] else "did not pay off"
  blocks = tuned["fine_tune_blocks"]
  return (f"fine-tuning {verdict}: top {blocks} block{'s' * (blocks > 1)} unfrozen reached "
          f"eval val_accuracy {_number(tuned['val_accuracy'])}, {LOSS} "
          f"{_number(tuned[LOSS])}, against the head's {_number(extraction['eval_val_accuracy'])}"
          f", {_number(extraction['eval_val_loss'])} (it must add more than "
          f"{_number(summary['required_gain'])}, what chance adds to the best of every epoch "
          f"of every trial on {extraction[EVAL_IMAGES]} images); {measured}")


def _number(value):
  return "-" if value is None else f"{value:.4f}"


def _seconds(value):
  return "-" if value is None else f"{value:.1f}"


def _short(value):
  return f"{value:.2g}" if isinstance(value, float) else value


def write_summary(summary: Dict[str, Any], folder: str) -> None:
  tf.io.gfile.makedirs(folder)
  with tf.io.gfile.GFile(os.path.join(folder, "tuning_summary.json"), "w") as f:
    json.dump(summary, f, indent=2, default=str)
  with tf.io.gfile.GFile(os.path.join(folder, "tuning_summary.txt"), "w") as f:
    f.write(summary_table(summary) + "\n")
  _write_hparams_logs(summary, os.path.join(folder, TENSORBOARD_FOLDER))


def _write_hparams_logs(summary: Dict[str, Any], folder: str) -> None:
  """Every completed trial for TensorBoard's HParams dashboard: its hyperparameters and
  metrics, one run per trial under <stage>/, where the dashboard compares them side by side."""
  from tensorboard.plugins.hparams import api  # pylint: disable=import-outside-toplevel
  for stage, content in summary["stages"].items():
    scored = [row for row in content["trials"] if row["score"] is not None]
    for row in scored:
      with tf.summary.create_file_writer(
          os.path.join(folder, stage, f"trial_{row['trial']}")).as_default():
        api.hparams(row["hyperparameters"], trial_id=f"{stage}/{row['trial']}")
        for name in _TRIAL_METRICS:
          if row[name] is not None:
            tf.summary.scalar(name, row[name], step=0)
