"""The one function that builds headswap's TFX pipeline; runners only choose where it runs."""

import dataclasses
from typing import List, Optional

import tensorflow_data_validation as tfdv
from tensorflow_data_validation.anomalies.proto import custom_validation_config_pb2
from tfx import v1 as tfx
from tfx.orchestration import pipeline as tfx_pipeline

from components import features
from components.image_example_gen.component import (DEFAULT_EVAL_PERCENT, DEFAULT_MAX_PIXELS,
                                                    ImageExampleGen)


@dataclasses.dataclass
class PipelineConfig:
  """Everything a run is parameterised by; the CLI fills it from its flags."""
  name: str
  root: str  # where TFX writes artifacts
  data: str
  labels_csv: Optional[str] = None
  tfds_data_dir: Optional[str] = None
  eval_percent: int = DEFAULT_EVAL_PERCENT
  max_pixels: int = DEFAULT_MAX_PIXELS
  num_classes: Optional[int] = None  # known when the data was listed up front: enables checks
  stages: str = "all"  # "ingest" stops after data validation


def create_pipeline(config: PipelineConfig, metadata_connection_config=None,
                    beam_pipeline_args: Optional[List[str]] = None) -> tfx_pipeline.Pipeline:
  example_gen = ImageExampleGen(config.data, labels_csv=config.labels_csv,
                                eval_percent=config.eval_percent, max_pixels=config.max_pixels,
                                tfds_data_dir=config.tfds_data_dir)
  statistics_gen = tfx.components.StatisticsGen(
      examples=example_gen.outputs["examples"],
      # Raw image bytes make useless statistics: look at what a person can read.
      stats_options=tfdv.StatsOptions(feature_allowlist=features.READABLE))
  schema_gen = tfx.components.SchemaGen(statistics=statistics_gen.outputs["statistics"])
  example_validator = tfx.components.ExampleValidator(
      statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"],
      custom_validation_config=_every_class_present(config.num_classes))
  components = [example_gen, statistics_gen, schema_gen, example_validator]

  return tfx_pipeline.Pipeline(
      pipeline_name=config.name, pipeline_root=config.root, components=components,
      enable_cache=True, metadata_connection_config=metadata_connection_config,
      beam_pipeline_args=beam_pipeline_args or [])


def _every_class_present(num_classes):
  """Flags a split in which a class has vanished (SchemaGen alone would not)."""
  if not num_classes:
    return None
  return custom_validation_config_pb2.CustomValidationConfig(feature_validations=[
      custom_validation_config_pb2.FeatureValidation(
          feature_path={"step": [features.LABEL_NAME]},
          validations=[custom_validation_config_pb2.Validation(
              sql_expression=f"feature.string_stats.unique >= {num_classes}",
              severity="ERROR",
              description=f"A class has vanished: fewer than {num_classes} classes present.")])])
