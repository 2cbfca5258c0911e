"""Stops a run whose data the ExampleValidator found anomalous, before anything trains on it.

TFX's ExampleValidator only writes its findings down; nothing downstream reads them, so a
vanished class or an unexpected label would otherwise train and ship a model.
"""

import os
from typing import Dict, List

import tensorflow as tf
from tfx.dsl.component.experimental.annotations import InputArtifact
from tfx.dsl.component.experimental.decorators import component
from tfx.types import standard_artifacts

from headswap.components.image_example_gen.sources import IngestError


class AnomaliesFound(IngestError):
  """The data has anomalies; --allow-anomalies lets the run go on regardless."""


def read_anomalies(anomalies_uri: str) -> Dict[str, List[str]]:
  """{split: ["<feature>: <what> (<details>)", ...]} for each split that has anomalies."""
  # pylint: disable=import-outside-toplevel
  from tensorflow_data_validation.utils import anomalies_util

  found = {}
  for folder in sorted(tf.io.gfile.glob(os.path.join(anomalies_uri, "Split-*"))):
    anomalies = anomalies_util.load_anomalies_binary(os.path.join(folder, "SchemaDiff.pb"))
    descriptions = [f"{feature}: {reason.short_description} ({reason.description})"
                    for feature, info in sorted(anomalies.anomaly_info.items())
                    for reason in info.reason]
    if anomalies.HasField("dataset_anomaly_info"):
      descriptions.append(f"the dataset: {anomalies.dataset_anomaly_info.description}")
    if descriptions:
      found[os.path.basename(folder)[len("Split-"):]] = descriptions
  return found


@component
def AnomaliesGate(
    anomalies: InputArtifact[standard_artifacts.ExampleAnomalies]):
  """Raises AnomaliesFound, naming each one, if any split has anomalies."""
  found = read_anomalies(anomalies.uri)
  if found:
    listed = "".join(f"\n  {split}: {description}" for split, descriptions in found.items()
                     for description in descriptions)
    raise AnomaliesFound(f"the ExampleValidator found anomalies in the data:{listed}\n"
                         "Fix the data, or pass --allow-anomalies to train on it regardless.")
