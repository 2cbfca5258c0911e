"""OUTPUT/report/index.html: what the run did and how good the model is, without a server.

Sections: the data (ingest report and the ExampleValidator's anomalies), the tuning summary,
learning curves with the fine-tuning marker, the per-class table and confusion matrix on the
held-out split, the most confidently wrong held-out images, the training images whose given
label the model most disagrees with (suspected mislabels), the size and held-out accuracy of
the SavedModel and of its .tflite files (with --tflite), and the gate: its floor, its baseline,
its verdict with its reasons.
"""

import dataclasses
import html
import io
import os
import re
from typing import Dict, List, Optional

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import tensorflow as tf  # pylint: disable=wrong-import-position
from PIL import Image  # pylint: disable=wrong-import-position
from tfx.utils import path_utils  # pylint: disable=wrong-import-position

from headswap.components import features, filesystem  # pylint: disable=wrong-import-position
from headswap.components.filesystem import read_json  # pylint: disable=wrong-import-position
from headswap.evaluation.tfma_results import blessed, candidate_results  # pylint: disable=wrong-import-position
from headswap.trainer import data  # pylint: disable=wrong-import-position
from headswap.trainer.export import (EXAMPLES_INPUT, PHASE_1_PROBABILITIES,  # pylint: disable=wrong-import-position
                                     PROBABILITIES, TFLITE_FLOAT16, TFLITE_INT8, TFLiteModel)

GRID_SIZE = 16
THUMBNAIL = 128
MOST_CONFUSED = 15  # pairs listed under the confusion matrix, from 3 classes
CELL_NUMBERS = 20  # classes up to which each matrix cell shows its count
TICK_LABELS = 50  # ... and up to which the axes name each class


def read_split(examples_uri: str, split: str) -> Dict[str, list]:
  """Encoded images, labels and file names of one split of an Examples artifact."""
  columns = {key: [] for key in (features.IMAGE, features.LABEL, features.FILENAME)}
  for parsed in _parsed_examples(examples_uri, split):
    for key in columns:
      columns[key].append(parsed[key].numpy())
  return columns


def read_predictions(inference_uri: str) -> Dict[str, list]:
  """The BulkInferrer's output: per image of the split it ran on, its encoded image, label,
  file name (from the tf.Example it was fed), the model's probabilities and, if phase 2 was
  kept, phase 1's (None otherwise)."""
  from tensorflow_serving.apis import prediction_log_pb2  # pylint: disable=import-outside-toplevel
  columns = {key: [] for key in (features.IMAGE, features.LABEL, features.FILENAME)}
  outputs = {PROBABILITIES: [], PHASE_1_PROBABILITIES: []}
  files = tf.io.gfile.glob(os.path.join(inference_uri, "prediction_logs-*"))
  for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
    predicted = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log
    examples = predicted.request.inputs[EXAMPLES_INPUT].string_val
    for name, batches in outputs.items():
      if name in predicted.response.outputs:  # phase 1's: only if phase 2 was kept
        batches.append(tf.make_ndarray(predicted.response.outputs[name]).reshape(
            len(examples), -1))
    for serialized in examples:
      feature = tf.train.Example.FromString(serialized).features.feature
      columns[features.IMAGE].append(feature[features.IMAGE].bytes_list.value[0])
      columns[features.LABEL].append(feature[features.LABEL].int64_list.value[0])
      columns[features.FILENAME].append(feature[features.FILENAME].bytes_list.value[0])
  for name, batches in outputs.items():
    columns[name] = np.concatenate(batches) if batches else None
  return columns


def _parsed_examples(examples_uri: str, split: str):
  files = tf.io.gfile.glob(features.split_pattern(examples_uri, split))
  spec = {features.IMAGE: tf.io.FixedLenFeature([], tf.string),
          features.LABEL: tf.io.FixedLenFeature([], tf.int64),
          features.FILENAME: tf.io.FixedLenFeature([], tf.string)}
  for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
    yield tf.io.parse_single_example(record, spec)


@dataclasses.dataclass
class Written:
  """The report's index.html, and what the console's closing lines repeat from it."""
  path: str
  split: str  # the gate's split
  accuracy: Dict[int, float]  # on that split, by phase (1, 2), for each phase the run exported
  phase_2_trained: bool  # and not kept when accuracy has no phase 2


def write_report(folder: str, artifacts: Dict[str, str]) -> Written:
  """Writes the report from the newest artifacts of a run."""
  from headswap.trainer.task import SUMMARY_FILE  # pylint: disable=import-outside-toplevel
  tf.io.gfile.makedirs(folder)  # here and below gfile: folder may be gs://
  examples = artifacts["ImageExampleGen.examples"]
  ingest = read_json(os.path.join(examples, features.REPORT_FILE))
  sections = [("Data", _ingest_html(ingest) + _anomalies_html(artifacts))]
  if "Tuner.tuner_results" in artifacts:
    tuning = read_json(os.path.join(artifacts["Tuner.tuner_results"], "tuning_summary.json"))
    sections.append(("Tuning", _tuning_html(tuning, artifacts["Tuner.tuner_results"])))
  # The gate's split: the user-given test split if there is one (pipeline/pipeline.py).
  held_out = features.TEST if features.TEST in ingest["counts"] else features.EVAL
  predictions = (read_predictions(artifacts["BulkInferrer.inference_result"])
                 if "BulkInferrer.inference_result" in artifacts else None)
  model_run = artifacts.get("Trainer.model_run")
  training = model_run and read_json(os.path.join(model_run, SUMMARY_FILE))
  accuracy = (_phase_accuracies(training, predictions)
              if training and predictions is not None else {})
  if model_run:
    sections.append(("Training", _training_html(model_run, training, folder, accuracy,
                                                held_out)))
  if "Trainer.model" in artifacts:
    results = candidate_results(artifacts["Evaluator.evaluation"], ingest["class_names"])
    sections.append((f"Results on the {held_out} split",
                     _held_out_html(results, predictions, ingest["class_names"], held_out,
                                    folder)))
    sections.append(("Suspected mislabels in the training images",
                     _mislabel_html(model_run, examples, folder)))
    model_files = _model_files_html(path_utils.serving_model_path(artifacts["Trainer.model"]),
                                    examples, held_out, results["accuracy"])
    if model_files:
      sections.append(("Model files", model_files))
  if "Evaluator.blessing" in artifacts:
    sections.append(("Gate", _gate_html(artifacts, len(ingest["class_names"]))))
  path = os.path.join(folder, "index.html")
  with tf.io.gfile.GFile(path, "w") as f:
    f.write("<!doctype html><html><head><meta charset='utf-8'><title>headswap report</title>"
            "<style>body{font-family:sans-serif;max-width:960px;margin:2em auto}"
            "table{border-collapse:collapse;margin:0.5em 0}"
            "td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}"
            "td.n{text-align:right;font-variant-numeric:tabular-nums}"
            "img{max-width:100%}.wide{overflow-x:auto}"
            "</style></head><body><h1>headswap report</h1>")
    for title, body in sections:
      f.write(f"<h2>{html.escape(title)}</h2>{body}")
    f.write("</body></html>")
  return Written(path, held_out, accuracy, bool(training and training.get("fine_tune")))


def _ingest_html(ingest):
  splits = sorted(ingest["counts"])
  header = "".join(f"<th>{html.escape(split)}</th>" for split in splits)
  rows = "".join(f"<tr><td>{html.escape(name)}</td>" + "".join(
      f"<td class='n'>{ingest['counts'][split].get(name, 0)}</td>" for split in splits) + "</tr>"
      for name in sorted(ingest["class_names"], key=natural_key))
  skipped = "".join(f"<li>{html.escape(item['file'])}: {html.escape(item['reason'])}</li>"
                    for item in ingest["skipped"])
  return (f"<p>{ingest['examples']} examples, {len(ingest['class_names'])} classes, "
          f"{len(ingest['skipped'])} files skipped, "
          f"{len(ingest['duplicates_across_splits'])} exact duplicates across splits.</p>"
          f"<table><tr><th>class</th>{header}</tr>{rows}</table>"
          + (f"<details><summary>skipped files</summary><ul>{skipped}</ul></details>"
             if skipped else ""))


def _anomalies_html(artifacts):
  from headswap.components.anomalies import read_anomalies  # pylint: disable=import-outside-toplevel
  found = read_anomalies(artifacts["ExampleValidator.anomalies"])
  if not found:
    return "<p>The ExampleValidator found no anomalies.</p>"
  items = "".join(f"<li>{html.escape(split)}: {html.escape(description)}</li>"
                  for split, descriptions in found.items() for description in descriptions)
  return ("<p><b>The ExampleValidator found anomalies</b>; the run went on because of "
          f"--allow-anomalies:</p><ul>{items}</ul>")


def _training_html(model_run, summary, folder, accuracy, split):
  # pylint: disable=import-outside-toplevel
  from headswap.trainer.task import CURVES_FILE
  from headswap.trainer.train import TENSORBOARD_FOLDER
  parts = []
  curves = os.path.join(model_run, CURVES_FILE)
  if tf.io.gfile.exists(curves):
    tf.io.gfile.copy(curves, os.path.join(folder, CURVES_FILE), overwrite=True)
    parts.append(f"<img src='{CURVES_FILE}' alt='learning curves'>")
  tensorboard = os.path.join(model_run, TENSORBOARD_FOLDER)
  if tf.io.gfile.exists(tensorboard):
    parts.append(f"<p>Every step's curves: <code>tensorboard --logdir "
                 f"{html.escape(tensorboard)}</code></p>")
  if summary:
    parts.append(_phases_html(summary, accuracy, split))
    settings = {"replicas": summary["replicas"], "global_batch_size": summary["global_batch_size"],
                **summary["hparams"]}
    parts.append("<h3>Settings</h3>" + _table(["setting", "value"], settings.items()))
  return "".join(parts)


def _tuning_html(summary, results):
  """Each stage's trials, best first, one column per hyperparameter; then the verdict."""
  # pylint: disable=import-outside-toplevel
  from headswap.tuning.summary import TENSORBOARD_FOLDER, best_first
  parts = []
  tensorboard = os.path.join(results, TENSORBOARD_FOLDER)
  if tf.io.gfile.exists(tensorboard):
    parts.append(f"<p>The trials side by side in TensorBoard's HParams dashboard: "
                 f"<code>tensorboard --logdir {html.escape(tensorboard)}</code></p>")
  for stage, content in summary["stages"].items():
    trials = content["trials"]
    names = sorted({name for trial in trials for name in trial["hyperparameters"]})
    rows = [[t["trial"], t["worker"] or "", _number(t["val_loss"], 4),
             _number(t["val_accuracy"], 4), _number(t["epochs"], 0), _number(t["seconds"], 1),
             *[t["hyperparameters"].get(name, "") for name in names],
             "" if t["status"] == "COMPLETED" else t["status"]] for t in best_first(trials)]
    parts.append(f"<h3>{html.escape(stage)}: {len(trials)} trials in {content['seconds']} s, "
                 f"ranked by {html.escape(summary['objective'][stage])}</h3>"
                 + _table(["trial", "worker", "val_loss", "val_accuracy", "best epoch", "seconds",
                           *names, "status"], rows))
  extraction, tuned = summary["feature_extraction"], summary["best_fine_tune"]
  chance = (f"{_number(summary['required_gain'], 4)}, what chance alone adds to the best of "
            f"every epoch of every depth trial on {extraction['eval_images']} images")
  if not tuned:
    verdict = "Fine-tuning did not pay off (not tried)."
  elif not tuned["epochs"]:  # the depth trials trained nothing (tuning/trials.py futile_depth)
    accuracy = extraction["eval_val_accuracy"]
    verdict = (f"Fine-tuning was not trained: the head's eval accuracy {_number(accuracy, 4)} "
               f"leaves {_number(1 - accuracy, 4)} to gain, and to be kept it had to add more "
               f"than {chance}.")
  else:
    paid_off = "paid off" if summary["fine_tuning_paid_off"] else "did not pay off"
    verdict = (f"Fine-tuning {paid_off}: on the eval split, the best fine-tuning reached accuracy "
               f"{_number(tuned['val_accuracy'], 4)} (loss {_number(tuned['val_loss'], 4)}) "
               f"against the head's {_number(extraction['eval_val_accuracy'], 4)} "
               f"({_number(extraction['eval_val_loss'], 4)}); to be kept it had to add more "
               f"than {chance}.")
  parts.append(f"<p>{verdict} The Trainer got:</p>"
               + _table(["hyperparameter", "value"], summary["best_hyperparameters"].items()))
  return "".join(parts)


def _table(header, rows):
  """An HTML table, numbers right-aligned; a wide one scrolls instead of running off the page."""
  head = "".join(f"<th>{html.escape(str(cell))}</th>" for cell in header)
  body = "".join("<tr>" + "".join(_cell(cell) for cell in row) + "</tr>" for row in rows)
  return f"<div class='wide'><table><tr>{head}</tr>{body}</table></div>"


def _cell(value):
  if isinstance(value, float):
    value = f"{value:.4g}"
  text = html.escape(str(value))
  numeric = not isinstance(value, bool) and re.fullmatch(r"-?[\d.]+(e-?\d+)?%?", str(value))
  return f"<td class='n'>{text}</td>" if numeric else f"<td>{text}</td>"


def _phase_accuracies(summary, predictions) -> Dict[int, float]:
  """{phase: accuracy} on the gate's split, from the BulkInferrer's predictions: the shipped
  phase's, and phase 1's too when phase 2 was kept (the export has both: trainer/export.py)."""
  labels = np.array(predictions[features.LABEL])
  shipped = 2 if summary.get("fine_tune") and summary["fine_tune"]["kept"] else 1
  accuracy = {shipped: float((predictions[PROBABILITIES].argmax(-1) == labels).mean())}
  if predictions[PHASE_1_PROBABILITIES] is not None:
    accuracy[1] = float((predictions[PHASE_1_PROBABILITIES].argmax(-1) == labels).mean())
  return accuracy


def _phases_html(summary, accuracy, split):
  """Each phase's accuracy on the gate's split and eval-split numbers side by side, and which
  model was shipped."""
  fine = summary.get("fine_tune")
  kept = bool(fine and fine["kept"])
  rows = [("after phase 1 (frozen base)", summary["frozen"], 1, not kept)]
  if fine:
    rows.append((f"after phase 2 (top {fine['blocks']} blocks fine-tuned)", fine, 2, kept))
  table = _table(["model", f"{split} accuracy", "eval accuracy", "eval loss", "epochs", ""],
                 [[name, _number(accuracy.get(number), 4), _number(phase.get("val_accuracy"), 4),
                   _number(phase.get("val_loss"), 4), phase["epochs"],
                   "shipped" if shipped else ""]
                  for name, phase, number, shipped in rows])
  if fine and not kept:
    table += (f"<p>Phase 2 was not kept (the Tuning section says why; without the Tuner, "
              f"the eval loss above), so its model was never exported: no {split} number.</p>")
  if summary["hparams"].get("fit_eval_split"):
    table += ("<p>Both phases trained on the train and eval splits, for the epoch counts the "
              "Tuner measured on held-out images (see Tuning): no split was left to score them "
              "here; the gate scores the shipped model on the test split.</p>")
  return table


def _held_out_html(results, predictions, names, split, folder):
  """TFMA's numbers, and the images the model was most sure of and wrong about (the
  BulkInferrer's predictions)."""
  order = sorted(range(len(names)), key=lambda i: natural_key(names[i]))
  confusion = results["confusion"]
  rows = [[names[i], *[_number(results["per_class"][names[i]].get(metric), 3)
                       for metric in ("precision", "recall", "f1_score")],
           int(confusion[i].sum())] for i in order]
  matrix_html = _confusion_html(confusion, names, order, folder)
  probabilities = predictions[PROBABILITIES]
  labels = np.array(predictions[features.LABEL], dtype=int)
  predicted = probabilities.argmax(axis=-1)
  wrong = np.flatnonzero(predicted != labels)
  wrong = wrong[np.argsort(-probabilities[wrong].max(axis=-1))][:GRID_SIZE]
  captions = [f"{predictions[features.FILENAME][i].decode()}\ntrue {names[labels[i]]}"
              f"\npredicted {names[predicted[i]]} {probabilities[i].max():.2f}" for i in wrong]
  grid = _grid_png([predictions[features.IMAGE][i] for i in wrong], captions,
                   os.path.join(folder, "confidently_wrong.png"))
  accuracy = results["accuracy"]
  return (f"<p>accuracy <data class='accuracy' value='{accuracy!r}'>{accuracy:.4f}</data> on "
          f"{results['examples']} images (as the {split} split's Evaluator measured it)</p>"
          + _table(["class", "precision", "recall", "f1", "images"], rows)
          + "<h3>Confusion matrix</h3>" + matrix_html
          + "<h3>Most confidently wrong</h3>"
          + ("<img src='confidently_wrong.png' alt='wrong predictions'>" if grid
             else "<p>No wrong predictions.</p>"))


def tflite_accuracies(models: List[TFLiteModel], examples_uri: str, split: str) -> List[float]:
  """Each .tflite model's accuracy on a split's examples, decoded as the Trainer decodes them,
  in one pass over the split."""
  correct, total = np.zeros(len(models)), 0
  pattern = features.split_pattern(examples_uri, split)
  for pixels, label in data.decoded_images([pattern], models[0].image_size).as_numpy_iterator():
    correct += [model.pixel_probabilities([pixels])[0].argmax() == label for model in models]
    total += 1
  return (correct / max(total, 1)).tolist()


def _model_files_html(saved_model, examples, split, saved_model_accuracy):
  """Size and accuracy of the SavedModel and of the .tflite files beside it (the Trainer writes
  them with --tflite); None without them."""
  names = (TFLITE_FLOAT16, TFLITE_INT8)
  if not all(filesystem.exists(os.path.join(saved_model, name)) for name in names):
    return None
  models = [TFLiteModel(os.path.join(saved_model, name)) for name in names]
  accuracies = tflite_accuracies(models, examples, split)
  saved_model_bytes = sum(size for name, size, _ in filesystem.walk_files(saved_model)
                          if name not in names)
  rows = [["SavedModel (float32)", _megabytes(saved_model_bytes),
           _number(saved_model_accuracy, 4)]]
  rows += [[f"{name} ({kind})", _megabytes(model.size_bytes), _number(accuracy, 4)]
           for name, kind, model, accuracy in zip(names, ("float16 weights", "int8"), models,
                                                  accuracies)]
  return ("<p>The .tflite files are pushed with each version, beside its SavedModel; they take "
          "uint8 pixels [1, size, size, 3], decoded and resized as the SavedModel does.</p>"
          + _table(["model", "size (MB)", f"{split} accuracy"], rows))


def _megabytes(size_bytes):
  return f"{size_bytes / 1e6:.1f}"


def _mislabel_html(model_run, examples, folder):
  from headswap.trainer.task import TRAIN_PREDICTIONS_FILE  # pylint: disable=import-outside-toplevel
  predictions = read_json(os.path.join(model_run, TRAIN_PREDICTIONS_FILE))
  if not predictions:
    return "<p>The Trainer wrote no predictions on the training images.</p>"
  class_names, labels = predictions["class_names"], predictions["labels"]
  probabilities = np.array(predictions["probabilities"])
  given = probabilities[np.arange(len(labels)), labels]
  suspects = [i for i in np.argsort(given)[:GRID_SIZE] if given[i] < 0.5]
  files = [predictions["files"][i] for i in suspects]
  images = {}  # only the suspects' encoded images, not the whole splits'
  for split in (features.TRAIN, features.EVAL):  # the Trainer may have fitted on both
    for parsed in _parsed_examples(examples, split):
      name = parsed[features.FILENAME].numpy().decode()
      if name in files:
        images[name] = parsed[features.IMAGE].numpy()
  captions = [f"{predictions['files'][i]}\nlabelled {class_names[labels[i]]} (p {given[i]:.2f})"
              f"\nmodel says {class_names[probabilities[i].argmax()]}" for i in suspects]
  if not _grid_png([images[name] for name in files], captions,
                   os.path.join(folder, "suspected_mislabels.png")):
    return "<p>The model agrees with every training label (p ≥ 0.5).</p>"
  return ("<p>Training images whose given label the trained model finds least likely: check "
          "them for labelling mistakes.</p><img src='suspected_mislabels.png' "
          "alt='suspected mislabels'>")


def _gate_html(artifacts, num_classes):
  """The thresholds and baseline the Evaluator applied (read back from its own output)."""
  # pylint: disable=import-outside-toplevel
  import tensorflow_model_analysis as tfma
  from tensorflow_model_analysis.writers import eval_config_writer

  from headswap.pipeline.baseline import evaluated_accuracies
  evaluation = artifacts["Evaluator.evaluation"]
  eval_config, _, _, model_locations = eval_config_writer.load_eval_run(evaluation)
  threshold, = [metric.threshold for spec in eval_config.metrics_specs
                for metric in spec.metrics if metric.HasField("threshold")]
  accuracies = evaluated_accuracies(evaluation)
  rules = [f"accuracy at least {threshold.value_threshold.lower_bound.value:.4f} (chance for "
           f"{num_classes} classes: {1 / num_classes:.4f}); this model: "
           f"{accuracies['candidate']:.4f}"]
  if "baseline" in model_locations:
    baseline = html.escape(model_locations["baseline"])
    rules.append(f"at most {-threshold.change_threshold.absolute.value:.4f} below the baseline, "
                 f"the most accurate model blessed before ({baseline}): "
                 f"{accuracies['baseline']:.4f}")
  else:
    rules.append("no baseline: no model was blessed before, so only the floor applies")
  result = tfma.load_validation_result(evaluation)
  reasons = [f"{failure.metric_key.name}: {failure.metric_value} ({failure.message})"
             for failing in result.metric_validations_per_slice
             for failure in failing.failures]
  verdict = ("BLESSED and pushed" if blessed(artifacts["Evaluator.blessing"])
             else "NOT blessed: not pushed")
  items = "".join(f"<li>{html.escape(reason)}</li>" for reason in reasons)
  return (f"<p><b>{verdict}</b></p><p>The gate:</p><ul>"
          + "".join(f"<li>{rule}</li>" for rule in rules) + "</ul>"
          + (f"<p>Failed:</p><ul>{items}</ul>" if items else "<p>Every threshold was met.</p>"))


def _confusion_html(confusion, names, order, folder):
  """The matrix as an image in natural class order; from 3 classes, the most-confused pairs."""
  matrix = confusion[np.ix_(order, order)]
  _confusion_png(matrix, [names[i] for i in order], os.path.join(folder, "confusion_matrix.png"))
  parts = ["<img src='confusion_matrix.png' alt='confusion matrix'>"]
  if len(names) > 2:
    mistakes = [(count, true, predicted) for (true, predicted), count in np.ndenumerate(confusion)
                if true != predicted and count]
    top = sorted(mistakes, key=lambda m: (-m[0], natural_key(names[m[1]])))[:MOST_CONFUSED]
    rows = [[names[true], names[predicted], int(count),
             f"{count / confusion[true].sum():.0%}"] for count, true, predicted in top]
    parts.append("<h3>Most confused</h3>" + (
        _table(["true class", "predicted as", "images", "of the true class"], rows)
        if rows else "<p>No mistakes.</p>"))
  return "".join(parts)


def _confusion_png(matrix, names, path):
  """Colour is the share of each true class, so rare classes show as clearly as common ones."""
  count = len(names)
  side = min(3 + 0.45 * count, 12)
  figure, axis = plt.subplots(figsize=(side + 1, side), layout="constrained")
  shares = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
  image = axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
  figure.colorbar(image, ax=axis, shrink=0.6, label="share of the true class")
  if count <= TICK_LABELS:
    size = 10 if count <= CELL_NUMBERS else 6
    axis.set_xticks(range(count), names, rotation=90, fontsize=size)
    axis.set_yticks(range(count), names, fontsize=size)
  else:
    axis.set_xticks([])
    axis.set_yticks([])
  axis.set_xlabel("predicted")
  axis.set_ylabel("true")
  if count <= CELL_NUMBERS:
    for (row, column), value in np.ndenumerate(matrix):
      if not value:
        continue  # blank zeros let the mistakes stand out
      axis.text(column, row, str(value), ha="center", va="center",
                color="white" if shares[row, column] > 0.5 else "black")
  _save_png(figure, path, dpi=80)


def _grid_png(encoded_images: List[bytes], captions: List[str], path: str) -> Optional[str]:
  if not encoded_images:
    return None
  columns = min(4, len(encoded_images))
  rows = (len(encoded_images) + columns - 1) // columns
  figure, axes = plt.subplots(rows, columns, figsize=(3 * columns, 3.8 * rows), squeeze=False,
                              layout="constrained")
  for axis in axes.flat:
    axis.axis("off")
  for axis, encoded, caption in zip(axes.flat, encoded_images, captions):
    image = Image.open(io.BytesIO(encoded)).convert("RGB")
    image.thumbnail((THUMBNAIL * 2, THUMBNAIL * 2))
    axis.imshow(image)
    axis.set_title(caption, fontsize=8)
  _save_png(figure, path, dpi=80)
  return path


def _number(value, digits):
  return "-" if value is None else f"{value:.{digits}f}"  # None: a class never predicted


def natural_key(name: str):
  """Sorts class names as a person does: c2 before c10."""
  return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def _save_png(figure, path, dpi):
  with tf.io.gfile.GFile(path, "wb") as f:
    figure.savefig(f, format="png", dpi=dpi)
  plt.close(figure)
