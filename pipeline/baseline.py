"""The gate's baseline: the blessed model with the best eval accuracy, not the latest one.

Against the latest blessed model, each new model may be up to --max-accuracy-drop worse than
the one before it, and the drops add up run after run; against the best, they cannot.
"""

from typing import Dict, List, Optional

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx import types
from tfx.components.evaluator import constants
from tfx.dsl.components.common import resolver

from headswap.evaluation.tfma_results import ACCURACY, overall_metrics


def evaluated_accuracies(evaluation_uri: str) -> Dict[str, float]:
  """{"candidate": accuracy, "baseline": accuracy if there was one} as the Evaluator measured
  them."""
  return {model: values[ACCURACY, None]
          for model, values in overall_metrics(evaluation_uri).items()
          if (ACCURACY, None) in values}


class BestBlessedModelStrategy(resolver.ResolverStrategy):
  """Resolves the blessed Model whose evaluation measured the highest accuracy (the newest
  of equals), with its ModelBlessing and ModelEvaluation.

  Inputs: `model`, `model_blessing` and `evaluation` channels; a blessing and the evaluation
  behind it are paired by the Evaluator execution that wrote both.
  """

  def resolve_artifacts(
      self, store: metadata_store.MetadataStore, input_dict: Dict[str, List[types.Artifact]]
  ) -> Optional[Dict[str, List[types.Artifact]]]:
    models = {model.id: model for model in input_dict["model"]}
    blessings = [blessing for blessing in input_dict["model_blessing"]
                 if blessing.get_int_custom_property(constants.ARTIFACT_PROPERTY_BLESSED_KEY)
                 == constants.BLESSED_VALUE]
    evaluations = input_dict["evaluation"]
    writer = _writing_execution(store, blessings + evaluations)
    evaluation_of = {writer[evaluation.id]: evaluation for evaluation in evaluations}
    best = None
    for blessing in blessings:
      model = models.get(blessing.get_int_custom_property(
          constants.ARTIFACT_PROPERTY_CURRENT_MODEL_ID_KEY))
      evaluation = evaluation_of.get(writer.get(blessing.id))
      accuracy = (evaluated_accuracies(evaluation.uri).get("candidate")
                  if model and evaluation else None)
      if accuracy is not None and (best is None or (accuracy, model.id) > best[0]):
        best = ((accuracy, model.id), model, blessing, evaluation)
    if best is None:
      return {key: [] for key in input_dict}
    _, model, blessing, evaluation = best
    return {"model": [model], "model_blessing": [blessing], "evaluation": [evaluation]}


def _writing_execution(store, artifacts) -> Dict[int, int]:
  """{artifact id: id of the execution that output it}."""
  events = store.get_events_by_artifact_ids([artifact.id for artifact in artifacts])
  return {event.artifact_id: event.execution_id for event in events
          if event.type == metadata_store_pb2.Event.OUTPUT}
