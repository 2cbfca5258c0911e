"""The one function that builds headswap's TFX pipeline; runners only choose where it runs."""

import dataclasses
import hashlib
import os
from typing import Any, Dict, List, Optional

import tensorflow_data_validation as tfdv
import tensorflow_model_analysis as tfma
from tensorflow_data_validation.anomalies.proto import custom_validation_config_pb2
from tfx.components import (BulkInferrer, Evaluator, ExampleValidator, Pusher, SchemaGen,
                            StatisticsGen, Trainer)
from tfx.dsl.components.base import executor_spec
from tfx.dsl.components.common.resolver import Resolver
from tfx.dsl.input_resolution.strategies.latest_blessed_model_strategy import \
    LatestBlessedModelStrategy
from tfx.orchestration import pipeline as tfx_pipeline
from tfx.proto import bulk_inferrer_pb2, pusher_pb2, trainer_pb2
from tfx.types import Channel, standard_artifacts

from headswap import components, trainer, tuning
from headswap.components import features, filesystem
from headswap.components.anomalies import AnomaliesGate
from headswap.components.atomic_pusher import executor as atomic_pusher
from headswap.components.image_example_gen.component import ImageExampleGen
from headswap.components.image_example_gen.sources import (DEFAULT_EVAL_PERCENT,
                                                           DEFAULT_MAX_FILE_BYTES,
                                                           DEFAULT_MAX_PIXELS)
from headswap.pipeline import beam_args, gate
from headswap.pipeline.baseline import BestBlessedModelStrategy
from headswap.trainer.export import EXAMPLES_SIGNATURE, PROBABILITIES
from headswap.tuning.component import Tuner as TransferTuner


@dataclasses.dataclass
class PipelineConfig:
  """Everything a run is parameterised by; the CLI fills it from its flags."""
  name: str
  root: str  # where TFX writes artifacts
  data: str
  labels_csv: Optional[str] = None
  file_column: Optional[str] = None  # of labels_csv; None: found by name (sources.py)
  label_column: Optional[str] = None
  allow_outside_root: bool = False  # read symlinks and CSV rows leading outside data
  tfds_data_dir: Optional[str] = None
  eval_percent: int = DEFAULT_EVAL_PERCENT
  max_pixels: int = DEFAULT_MAX_PIXELS
  max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
  num_classes: Optional[int] = None  # known when the data was listed up front: enables checks
  num_images: Optional[int] = None  # ... and then the ingest's Beam workers are sized by it
  stages: str = "all"  # "ingest" stops after data validation
  has_test_split: bool = False  # a user-given test set: the gate's, and the one reported
  hparams: Dict[str, Any] = dataclasses.field(default_factory=dict)  # trainer.hparams.HParams
  tune: bool = True
  search_space: Dict[str, Any] = dataclasses.field(default_factory=dict)  # tuning.space.SearchSpace
  accuracy_threshold: Optional[float] = None  # the gate: a model below it is never pushed...
  max_accuracy_drop: float = gate.MAX_ACCURACY_DROP  # ... nor one this much worse than the best blessed model
  allow_anomalies: bool = False  # train even if the ExampleValidator found anomalies
  serving_dir: str = ""  # Pusher's target: <serving_dir>/<version>/
  tflite: bool = False  # the Trainer also writes .tflite files beside the SavedModel (flags.py)
  # Kubeflow/Vertex: steps run in the component image, so code is imported from the installed
  # package (a local module path means nothing there) and artifacts may be gs:// URIs.
  remote: bool = False
  vertex_training: Optional[Any] = None  # pipeline.vertex_training.VertexTraining: Vertex jobs

  @property
  def feature_cache_dir(self) -> str:
    return os.path.join(self.root, "feature_cache")

  @property
  def accuracy_floor(self) -> float:
    """accuracy_threshold if given, else pipeline/gate.py's default for num_classes."""
    if self.accuracy_threshold is not None:
      return self.accuracy_threshold
    return gate.default_accuracy_floor(self.num_classes)


TRAINER_MODULE = os.path.join(os.path.dirname(trainer.__file__), "tfx_module",
                              "trainer_module.py")
TUNER_MODULE = os.path.join(os.path.dirname(tuning.__file__), "tfx_module", "tuner_module.py")
# The same functions, imported by name (a container has no local module path).
TRAINER_FN, TUNER_FN = "headswap.trainer.task.run_fn", "headswap.tuning.component.tuner_fn"


def create_pipeline(config: PipelineConfig, metadata_connection_config=None,
                    beam_pipeline_args: Optional[List[str]] = None) -> tfx_pipeline.Pipeline:
  example_gen = ImageExampleGen(config.data, labels_csv=config.labels_csv,
                                file_column=config.file_column,
                                label_column=config.label_column,
                                allow_outside_root=config.allow_outside_root,
                                eval_percent=config.eval_percent, max_pixels=config.max_pixels,
                                max_file_bytes=config.max_file_bytes,
                                tfds_data_dir=config.tfds_data_dir)
  statistics_gen = StatisticsGen(
      examples=example_gen.outputs["examples"],
      # Raw image bytes make useless statistics: look at what a person can read.
      stats_options=tfdv.StatsOptions(feature_allowlist=features.READABLE))
  if not beam_pipeline_args:  # given args apply to every step; else one process or many by size
    for component in (example_gen, statistics_gen):
      component.with_beam_pipeline_args(
          beam_args.ingest_beam_args(config.num_images, config.remote))
  schema_gen = SchemaGen(statistics=statistics_gen.outputs["statistics"])
  example_validator = ExampleValidator(
      statistics=statistics_gen.outputs["statistics"], schema=schema_gen.outputs["schema"],
      # TFX 1.16's Kubeflow V2 compiler rejects proto-valued parameters: local runs only.
      custom_validation_config=None if config.remote else _every_class_present(config.num_classes))
  nodes = [example_gen, statistics_gen, schema_gen, example_validator]
  if not config.allow_anomalies:
    nodes.append(AnomaliesGate(anomalies=example_validator.outputs["anomalies"]))
  if config.stages != "ingest":
    training = _training_nodes(config, example_gen, schema_gen)
    if not config.allow_anomalies:
      training[0].add_upstream_node(nodes[-1])  # the Tuner or the Trainer waits for the gate
    nodes += training
  return tfx_pipeline.Pipeline(
      pipeline_name=config.name, pipeline_root=config.root, components=nodes,
      enable_cache=True, metadata_connection_config=metadata_connection_config,
      beam_pipeline_args=beam_pipeline_args or [])


def _training_nodes(config, example_gen, schema_gen):
  """Tuner, Trainer, then the Evaluator's gate against the best blessed model, the Pusher, and
  the BulkInferrer's predictions for the report."""
  splits = dict(examples=example_gen.outputs["examples"], schema=schema_gen.outputs["schema"],
                train_args=trainer_pb2.TrainArgs(splits=[features.TRAIN]),
                eval_args=trainer_pb2.EvalArgs(splits=[features.EVAL]))
  # With a user-given test split the gate scores on it, so the eval split is free to train
  # the shipped model once the Tuner has chosen on it (trainer/hparams.py fit_eval_split).
  gate_split = features.TEST if config.has_test_split else features.EVAL
  hparams = {**config.hparams, "fit_eval_split": config.tune and config.has_test_split}
  shared_config = {"hparams": hparams, "feature_cache_dir": config.feature_cache_dir,
                   "code_fingerprint": _code_fingerprint(trainer, tuning, components)}
  trainer_class, tuner_class = Trainer, TransferTuner
  trainer_jobs, tuner_jobs = {}, {}
  if config.vertex_training:
    from headswap.pipeline import vertex_training  # pylint: disable=import-outside-toplevel
    trainer_class, tuner_class = vertex_training.Trainer, vertex_training.Tuner
    trainer_jobs = config.vertex_training.trainer_config()
    tuner_jobs = config.vertex_training.tuner_config()
  trainer_code, tuner_code = dict(module_file=TRAINER_MODULE), dict(module_file=TUNER_MODULE)
  if config.remote:
    trainer_code, tuner_code = dict(run_fn=TRAINER_FN), dict(tuner_fn=TUNER_FN)
  nodes = []
  if config.tune:
    tuner = tuner_class(**tuner_code, **splits, custom_config={
        **shared_config, "search_space": config.search_space, **tuner_jobs})
    nodes.append(tuner)
  trainer_component = trainer_class(
      **trainer_code, **splits,
      hyperparameters=tuner.outputs["best_hyperparameters"] if config.tune else None,
      custom_config={**shared_config, **trainer_jobs, "tflite": config.tflite})
  # TFX 1.16's Kubeflow V2 compiler knows only the built-in strategies: remote runs compare
  # against the latest blessed model.
  strategy, evaluations = (
      (LatestBlessedModelStrategy, {}) if config.remote else
      (BestBlessedModelStrategy, {"evaluation": Channel(
          type=standard_artifacts.ModelEvaluation)}))
  baseline = Resolver(
      strategy_class=strategy, model=Channel(type=standard_artifacts.Model),
      model_blessing=Channel(type=standard_artifacts.ModelBlessing), **evaluations,
  ).with_id("BaselineResolver")
  evaluator = Evaluator(
      examples=example_gen.outputs["examples"], model=trainer_component.outputs["model"],
      baseline_model=baseline.outputs["model"],
      example_splits=[gate_split], eval_config=eval_config(config))
  pusher = Pusher(
      model=trainer_component.outputs["model"],
      model_blessing=evaluator.outputs["blessing"],
      push_destination=pusher_pb2.PushDestination(
          filesystem=pusher_pb2.PushDestination.Filesystem(base_directory=config.serving_dir)),
      # The atomic publish renames on one local filesystem; TFX's Pusher also writes gs://.
      custom_executor_spec=None if config.remote or filesystem.is_remote(config.serving_dir)
      else executor_spec.ExecutorClassSpec(atomic_pusher.Executor))
  # Per-image predictions on the gate's split for the report's images (TFMA keeps none), blessed
  # or not: the report shows a rejected model's mistakes too.
  inferrer = BulkInferrer(
      examples=example_gen.outputs["examples"], model=trainer_component.outputs["model"],
      data_spec=bulk_inferrer_pb2.DataSpec(example_splits=[gate_split]),
      model_spec=bulk_inferrer_pb2.ModelSpec(model_signature_name=[EXAMPLES_SIGNATURE]))
  return nodes + [trainer_component, baseline, evaluator, pusher, inferrer]


def eval_config(config: PipelineConfig) -> tfma.EvalConfig:
  """Accuracy (gated), per-class precision/recall/F1, AUC for two classes, confusion matrix.

  The exported model is a plain SavedModel to TFMA, so every metric is listed here.
  """
  accuracy = tfma.MetricConfig(class_name="SparseCategoricalAccuracy")
  accuracy.threshold.CopyFrom(tfma.MetricThreshold(
      value_threshold=tfma.GenericValueThreshold(lower_bound={"value": config.accuracy_floor}),
      change_threshold=tfma.GenericChangeThreshold(
          direction=tfma.MetricDirection.HIGHER_IS_BETTER,
          absolute={"value": -config.max_accuracy_drop})))
  # top_k 1: an image counts for its most probable class, as in the accuracy and the confusion
  # matrix; at TFMA's default 0.5 threshold an image whose best class scores below it (common
  # with many classes) would count for none.
  per_class = [tfma.MetricConfig(class_name=name, config='"top_k": 1')
               for name in ("Precision", "Recall", "F1Score")]
  if config.num_classes == 2:
    per_class.append(tfma.MetricConfig(class_name="AUC"))
  return tfma.EvalConfig(
      model_specs=[tfma.ModelSpec(signature_name=EXAMPLES_SIGNATURE, label_key=features.LABEL,
                                  prediction_key=PROBABILITIES)],
      metrics_specs=[
          tfma.MetricsSpec(metrics=[tfma.MetricConfig(class_name="ExampleCount"), accuracy,
                                    tfma.MetricConfig(class_name="MultiClassConfusionMatrixPlot")]),
          tfma.MetricsSpec(binarize=tfma.BinarizationOptions(
              class_ids={"values": list(range(config.num_classes))}),
              metrics=per_class),
      ],
      slicing_specs=[tfma.SlicingSpec()])


def _code_fingerprint(*packages) -> str:
  """Changes with the code a component runs, so TFX's cache never serves stale results."""
  digest = hashlib.sha256()
  for package in packages:
    root = os.path.dirname(package.__file__)
    for folder, _, files in sorted(os.walk(root)):
      for name in sorted(f for f in files if f.endswith(".py")):
        with open(os.path.join(folder, name), "rb") as f:
          digest.update(f.read())
  return digest.hexdigest()[:16]


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
