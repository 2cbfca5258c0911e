"""Runs the pipeline on this machine with TFX's LocalDagRunner and SQLite metadata."""

import json
import os
from typing import Dict, List, Optional

import tensorflow as tf
from ml_metadata.metadata_store import metadata_store
from tfx.orchestration import metadata
from tfx.orchestration.local.local_dag_runner import LocalDagRunner

from pipeline.pipeline import PipelineConfig, create_pipeline


def metadata_path(output: str) -> str:
  """The default metadata file: in the output folder, when that is on this machine."""
  return os.path.join(output, "metadata.sqlite")


def run(config: PipelineConfig, metadata_file: str,
        beam_pipeline_args: Optional[List[str]] = None) -> Dict[str, str]:
  """Runs the pipeline; returns the newest artifact URI of each component output.

  metadata_file is ML Metadata's SQLite file, which must be on this machine.
  """
  connection = metadata.sqlite_metadata_connection_config(metadata_file)
  LocalDagRunner().run(
      create_pipeline(config, connection, beam_pipeline_args))
  return latest_artifacts(metadata_file)


def latest_artifacts(metadata_file: str) -> Dict[str, str]:
  """{"<Component>.<output key>": uri} of the newest artifacts, read back from the metadata."""
  connection = metadata.sqlite_metadata_connection_config(metadata_file)
  store = metadata_store.MetadataStore(connection)
  uris = {}
  for artifact in sorted(store.get_artifacts(), key=lambda a: a.id):
    # TFX lays artifacts out as <pipeline root>/<component>/<output key>/<execution id>.
    component, output_key = artifact.uri.rstrip("/").split("/")[-3:-1]
    uris[f"{component}.{output_key}"] = artifact.uri
  return uris


def read_json(path: str):
  with tf.io.gfile.GFile(path) as f:
    return json.load(f)
