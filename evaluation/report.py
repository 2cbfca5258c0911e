"""OUTPUT/report/index.html: what the run did and how good the model is, without a server.

Sections: the data (ingest report and the ExampleValidator's anomalies), the tuning summary,
learning curves with the fine-tuning marker, the per-class table and confusion matrix on the
held-out split, the most confidently wrong held-out images, the training images whose given
label the model most disagrees with (suspected mislabels), and the gate: its floor, its
baseline, its verdict with its reasons.
"""

import html
import io
import json
import os
from typing import Any, Dict, List, Optional

import matplotlib

matplotlib.use("Agg")  # files only
import matplotlib.pyplot as plt  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import tensorflow as tf  # pylint: disable=wrong-import-position
from PIL import Image  # pylint: disable=wrong-import-position

from components import features  # pylint: disable=wrong-import-position
from components.filesystem import read_json  # pylint: disable=wrong-import-position
from evaluation.predict import Classifier  # pylint: disable=wrong-import-position
from evaluation.tfma_results import candidate_results  # pylint: disable=wrong-import-position

GRID_SIZE = 16
THUMBNAIL = 128


def read_split(examples_uri: str, split: str) -> Dict[str, list]:
  """Encoded images, labels and file names of one split of an Examples artifact."""
  columns = {key: [] for key in (features.IMAGE, features.LABEL, features.FILENAME)}
  for parsed in _parsed_examples(examples_uri, split):
    for key in columns:
      columns[key].append(parsed[key].numpy())
  return columns


def _parsed_examples(examples_uri: str, split: str):
  files = tf.io.gfile.glob(os.path.join(examples_uri, f"Split-{split}", "*"))
  spec = {features.IMAGE: tf.io.FixedLenFeature([], tf.string),
          features.LABEL: tf.io.FixedLenFeature([], tf.int64),
          features.FILENAME: tf.io.FixedLenFeature([], tf.string)}
  for record in tf.data.TFRecordDataset(files, compression_type="GZIP"):
    yield tf.io.parse_single_example(record, spec)


def write_report(folder: str, artifacts: Dict[str, str]) -> str:
  """Writes the report from the newest artifacts of a run; returns index.html's path."""
  tf.io.gfile.makedirs(folder)  # here and below gfile: folder may be gs://
  examples = artifacts["ImageExampleGen.examples"]
  ingest = read_json(os.path.join(examples, features.REPORT_FILE))
  sections = [("Data", _ingest_html(ingest) + _anomalies_html(artifacts))]
  tuning = _read_text(os.path.join(artifacts.get("Tuner.tuner_results", ""),
                                   "tuning_summary.txt"))
  if tuning:
    sections.append(("Tuning", f"<pre>{html.escape(tuning)}</pre>"))
  model_run = artifacts.get("Trainer.model_run")
  if model_run:
    sections.append(("Training", _training_html(model_run, folder)))
  model = artifacts.get("Trainer.model")
  if model:
    # The eval split also steered early stopping and tuning: a test split, if any, is reported.
    held_out, evaluator = ((features.TEST, "TestEvaluator") if features.TEST in ingest["counts"]
                           else (features.EVAL, "Evaluator"))
    results = candidate_results(artifacts[f"{evaluator}.evaluation"], ingest["class_names"])
    classifier = Classifier(os.path.join(model, "Format-Serving"))
    sections.append((f"Results on the {held_out} split",
                     _held_out_html(results, classifier, examples, held_out, folder)))
    sections.append(("Suspected mislabels in the training images",
                     _mislabel_html(model_run, examples, folder)))
  if "Evaluator.blessing" in artifacts:
    sections.append(("Gate", _gate_html(artifacts, len(ingest["class_names"]))))
  path = os.path.join(folder, "index.html")
  with tf.io.gfile.GFile(path, "w") as f:
    f.write("<!doctype html><html><head><meta charset='utf-8'><title>headswap report</title>"
            "<style>body{font-family:sans-serif;max-width:960px;margin:2em auto}"
            "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
            "</style></head><body><h1>headswap report</h1>")
    for title, body in sections:
      f.write(f"<h2>{html.escape(title)}</h2>{body}")
    f.write("</body></html>")
  return path


def _ingest_html(ingest):
  rows = "".join(
      f"<tr><td>{html.escape(split)}</td>" + "".join(f"<td>{count}</td>" for count in
                                                     per_class.values()) + "</tr>"
      for split, per_class in sorted(ingest["counts"].items()))
  header = "".join(f"<th>{html.escape(name)}</th>" for name in ingest["class_names"])
  skipped = "".join(f"<li>{html.escape(item['file'])}: {html.escape(item['reason'])}</li>"
                    for item in ingest["skipped"])
  return (f"<p>{ingest['examples']} examples, {len(ingest['class_names'])} classes, "
          f"{len(ingest['skipped'])} files skipped, "
          f"{len(ingest['duplicates_across_splits'])} exact duplicates across splits.</p>"
          f"<table><tr><th>split</th>{header}</tr>{rows}</table>"
          + (f"<details><summary>skipped files</summary><ul>{skipped}</ul></details>"
             if skipped else ""))


def _anomalies_html(artifacts):
  from components.anomalies import read_anomalies  # pylint: disable=import-outside-toplevel
  found = read_anomalies(artifacts["ExampleValidator.anomalies"])
  if not found:
    return "<p>The ExampleValidator found no anomalies.</p>"
  items = "".join(f"<li>{html.escape(split)}: {html.escape(description)}</li>"
                  for split, descriptions in found.items() for description in descriptions)
  return ("<p><b>The ExampleValidator found anomalies</b>; the run went on because of "
          f"--allow-anomalies:</p><ul>{items}</ul>")


def _training_html(model_run, folder):
  from trainer.task import CURVES_FILE, SUMMARY_FILE  # pylint: disable=import-outside-toplevel
  parts = []
  curves = os.path.join(model_run, CURVES_FILE)
  if tf.io.gfile.exists(curves):
    tf.io.gfile.copy(curves, os.path.join(folder, CURVES_FILE), overwrite=True)
    parts.append(f"<img src='{CURVES_FILE}' alt='learning curves'>")
  summary = read_json(os.path.join(model_run, SUMMARY_FILE))
  if summary:
    parts.append(_phases_html(summary))
    parts.append(f"<pre>{html.escape(json.dumps(summary, indent=2))}</pre>")
  return "".join(parts)


def _phases_html(summary):
  """Each phase's eval-split numbers side by side, and which model was shipped."""
  fine = summary.get("fine_tune")
  rows = [("after phase 1 (frozen base)", summary["frozen"], not fine or not fine["kept"])]
  if fine:
    rows.append((f"after phase 2 (top {fine['blocks']} blocks fine-tuned)", fine, fine["kept"]))
  cells = "".join(f"<tr><td>{name}</td><td>{phase['val_accuracy']:.4f}</td>"
                  f"<td>{phase['val_loss']:.4f}</td><td>{phase['epochs']}</td>"
                  f"<td>{'shipped' if shipped else ''}</td></tr>" for name, phase, shipped in rows)
  return ("<table><tr><th>model</th><th>eval accuracy</th><th>eval loss</th><th>epochs</th>"
          f"<th></th></tr>{cells}</table>")


def _held_out_html(results, classifier, examples, split, folder):
  """TFMA's numbers, and the images the model was most sure of and wrong about."""
  confusion = results["confusion"]
  _confusion_png(confusion, classifier.class_names, os.path.join(folder, "confusion_matrix.png"))
  rows = "".join(f"<tr><td>{html.escape(name)}</td><td>{_number(m.get('precision'))}</td>"
                 f"<td>{_number(m.get('recall'))}</td><td>{_number(m.get('f1_score'))}</td>"
                 f"<td>{support}</td></tr>"
                 for (name, m), support in zip(results["per_class"].items(), confusion.sum(1)))
  # TFMA keeps no per-image output: predicting the split again is the one way to find them.
  columns = read_split(examples, split)
  probabilities = classifier.probabilities(columns[features.IMAGE])
  labels = np.array(columns[features.LABEL], dtype=int)
  predicted = probabilities.argmax(axis=-1)
  wrong = np.flatnonzero(predicted != labels)
  wrong = wrong[np.argsort(-probabilities[wrong].max(axis=-1))][:GRID_SIZE]
  captions = [f"{columns[features.FILENAME][i].decode()}\ntrue {classifier.class_names[labels[i]]}"
              f"\npredicted {classifier.class_names[predicted[i]]} "
              f"{probabilities[i].max():.2f}" for i in wrong]
  grid = _grid_png([columns[features.IMAGE][i] for i in wrong], captions,
                   os.path.join(folder, "confidently_wrong.png"))
  accuracy = results["accuracy"]
  return (f"<p>accuracy <data class='accuracy' value='{accuracy!r}'>{accuracy:.4f}</data> on "
          f"{results['examples']} images (as the {split} split's Evaluator measured it)</p>"
          "<table><tr><th>class</th><th>precision</th><th>recall</th><th>f1</th>"
          f"<th>support</th></tr>{rows}</table>"
          "<h3>Confusion matrix</h3><img src='confusion_matrix.png' alt='confusion matrix'>"
          "<h3>Most confidently wrong</h3>"
          + ("<img src='confidently_wrong.png' alt='wrong predictions'>" if grid
             else "<p>No wrong predictions.</p>"))


def _mislabel_html(model_run, examples, folder):
  from trainer.task import TRAIN_PREDICTIONS_FILE  # pylint: disable=import-outside-toplevel
  predictions = read_json(os.path.join(model_run, TRAIN_PREDICTIONS_FILE))
  if not predictions:
    return "<p>The Trainer wrote no predictions on the training images.</p>"
  class_names, labels = predictions["class_names"], predictions["labels"]
  probabilities = np.array(predictions["probabilities"])
  given = probabilities[np.arange(len(labels)), labels]
  suspects = [i for i in np.argsort(given)[:GRID_SIZE] if given[i] < 0.5]
  files = [predictions["files"][i] for i in suspects]
  images = {}  # only the suspects' encoded images, not the whole split's
  for parsed in _parsed_examples(examples, features.TRAIN):
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

  from pipeline.baseline import evaluated_accuracies
  evaluation = artifacts["Evaluator.evaluation"]
  blessed = tf.io.gfile.exists(os.path.join(artifacts["Evaluator.blessing"], "BLESSED"))
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
  verdict = "BLESSED and pushed" if blessed else "NOT blessed: not pushed"
  items = "".join(f"<li>{html.escape(reason)}</li>" for reason in reasons)
  return (f"<p><b>{verdict}</b></p><p>The gate:</p><ul>"
          + "".join(f"<li>{rule}</li>" for rule in rules) + "</ul>"
          + (f"<p>Failed:</p><ul>{items}</ul>" if items else "<p>Every threshold was met.</p>"))


def _confusion_png(matrix, names, path):
  figure, axis = plt.subplots(figsize=(1.2 * len(names) + 3, 1.2 * len(names) + 2))
  axis.imshow(matrix, cmap="Blues")
  axis.set_xticks(range(len(names)), names, rotation=45, ha="right")
  axis.set_yticks(range(len(names)), names)
  axis.set_xlabel("predicted")
  axis.set_ylabel("true")
  for (row, column), value in np.ndenumerate(matrix):
    axis.text(column, row, str(value), ha="center", va="center",
              color="white" if value > matrix.max() / 2 else "black")
  figure.tight_layout()
  _save_png(figure, path, dpi=100)


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


def _number(value):
  return "-" if value is None else f"{value:.3f}"  # None: a class never predicted


def _save_png(figure, path, dpi):
  with tf.io.gfile.GFile(path, "wb") as f:
    figure.savefig(f, format="png", dpi=dpi)
  plt.close(figure)


def _read_text(path) -> Optional[str]:
  if not path or not tf.io.gfile.exists(path):
    return None
  with tf.io.gfile.GFile(path) as f:
    return f.read()
