"""Runs the pipeline on this machine with TFX's LocalDagRunner and SQLite metadata."""

import contextlib
import os
from typing import Dict, List, Optional, Tuple

from ml_metadata.metadata_store import metadata_store
from ml_metadata.proto import metadata_store_pb2
from tfx.orchestration import metadata
from tfx.orchestration.local.local_dag_runner import LocalDagRunner

from headswap.pipeline import console
from headswap.pipeline.pipeline import PipelineConfig, create_pipeline


def metadata_path(output: str) -> str:
  """The default metadata file: in the output folder, when that is on this machine."""
  return os.path.join(output, "metadata.sqlite")


_DO_NOT_PACKAGE = "UNSUPPORTED_DO_NOT_PACKAGE_USER_MODULES"  # tfx/components/util/udf_utils.py


def run(config: PipelineConfig, metadata_file: str,
        beam_pipeline_args: Optional[List[str]] = None) -> Dict[str, str]:
  """Runs the pipeline; returns last_run_artifacts: the URIs this run wrote or reused.

  metadata_file is ML Metadata's SQLite file, which must be on this machine.
  """
  connection = metadata.sqlite_metadata_connection_config(metadata_file)
  with _user_modules_unpackaged():
    pipeline = create_pipeline(config, connection, beam_pipeline_args)
  with console.timed_stages():  # one line per component on the console
    LocalDagRunner().run(pipeline)
  return last_run_artifacts(metadata_file)


@contextlib.contextmanager
def _user_modules_unpackaged():
  """Components built in it load their module files from this checkout, as this process
  imports the rest of the code anyway. Else TFX builds a wheel of each module file and pip
  installs it before the Tuner and the Trainer run: ~8 CPU s of subprocesses a run, for nothing
  here. The cache stays correct: custom_config has the fingerprint of the code (pipeline.py)."""
  previous = os.environ.get(_DO_NOT_PACKAGE)
  os.environ[_DO_NOT_PACKAGE] = "1"  # read by TFX's Tuner and Trainer as they are built
  try:
    yield
  finally:
    if previous is None:
      del os.environ[_DO_NOT_PACKAGE]
    else:
      os.environ[_DO_NOT_PACKAGE] = previous


def last_run_artifacts(metadata_file: str) -> Dict[str, str]:
  """{"<node id>.<output key>": uri} of the newest pipeline run in the metadata.

  Only that run's: a node it skipped (--no-tune's Tuner) has no entry, even when an earlier run
  into the same output wrote one.
  """
  store = open_store(metadata_file)
  return {key: artifact.uri for key, artifact in
          outputs_of(store, last_run_executions(store)).items()}


def pushed_destination(metadata_file: str) -> Optional[str]:
  """Where the newest run's Pusher published the model (<base>/<version>); None if it did not
  push (TFX's Pusher marks its artifact either way)."""
  store = open_store(metadata_file)
  pushed = outputs_of(store, last_run_executions(store)).get("Pusher.pushed_model")
  if pushed is None or not pushed.custom_properties["pushed"].int_value:
    return None
  return pushed.custom_properties["pushed_destination"].string_value


def open_store(metadata_file: str, read_only: bool = False) -> metadata_store.MetadataStore:
  connection = metadata.sqlite_metadata_connection_config(metadata_file)
  if read_only:  # a benchmark reads the store of a run it did not start
    connection.sqlite.connection_mode = metadata_store_pb2.SqliteMetadataSourceConfig.READONLY
  return metadata_store.MetadataStore(connection)


NodeExecution = Tuple[str, metadata_store_pb2.Execution]


def last_run_executions(store: metadata_store.MetadataStore) -> List[NodeExecution]:
  """[(node id, execution)] of the newest pipeline run, in start order.

  TFX puts every execution of a run, cached ones too, in that run's "pipeline_run" context.
  """
  runs = store.get_contexts_by_type("pipeline_run")
  if not runs:
    return []
  newest = max(runs, key=lambda context: (context.create_time_since_epoch, context.id))
  node_type = store.get_context_type("node").id
  found = []
  for execution in store.get_executions_by_context(newest.id):
    node, = [context.name for context in store.get_contexts_by_execution(execution.id)
             if context.type_id == node_type]
    found.append((node.split(".")[-1], execution))  # "<pipeline>.<node id>"
  return sorted(found, key=lambda pair: (pair[1].create_time_since_epoch, pair[1].id))


def outputs_of(store: metadata_store.MetadataStore,
               executions: List[NodeExecution]) -> Dict[str, metadata_store_pb2.Artifact]:
  """{"<node id>.<output key>": artifact} the executions output (their OUTPUT events)."""
  node_of = {execution.id: node for node, execution in executions}
  events = [event for event in store.get_events_by_execution_ids(list(node_of))
            if event.type == metadata_store_pb2.Event.OUTPUT]
  artifacts = {artifact.id: artifact
               for artifact in store.get_artifacts_by_id([e.artifact_id for e in events])}
  return {f"{node_of[event.execution_id]}.{event.path.steps[0].key}": artifacts[event.artifact_id]
          for event in events}
