"""Compiles the same pipeline to a Vertex AI Pipelines job or a Kubeflow Pipelines v2 spec, and
submits a compiled job to Vertex AI."""

import dataclasses
import json
import os
import re
import socket
from typing import TYPE_CHECKING, Any, Dict, List, Optional

import yaml

if TYPE_CHECKING:
  from headswap.pipeline.pipeline import PipelineConfig

VERTEX, KUBEFLOW = "vertex", "kubeflow"
TARGETS = (VERTEX, KUBEFLOW)
PIPELINE_NAME = re.compile(r"[a-z0-9][a-z0-9-]*")  # what both orchestrators accept
REACH_TIMEOUT_S = 10  # to open a connection to Vertex AI: no network fails now, not in minutes


def compile_spec(config: "PipelineConfig", image: str, output: str, target: str = VERTEX,
                 beam_pipeline_args: Optional[List[str]] = None) -> Dict[str, Any]:
  """Writes the compiled pipeline to `output` (local or gs://) and returns it.

  Vertex: a PipelineJob (JSON), its pipeline root in runtimeConfig. Kubeflow: the
  PipelineSpec (YAML, as `kfp` uploads it), its root as defaultPipelineRoot. Every step
  runs in `image`. Compiling needs no network and no credentials.
  """
  # pylint: disable=import-outside-toplevel; submitting needs neither TFX nor TensorFlow
  from tfx import v1 as tfx

  from headswap.pipeline.pipeline import create_pipeline

  if target not in TARGETS:
    raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}")
  if not PIPELINE_NAME.fullmatch(config.name):
    raise ValueError(f"pipeline name {config.name!r} must match [a-z0-9][a-z0-9-]* "
                     "(lower-case letters, digits and dashes); pass --name")
  if target == KUBEFLOW and not output.endswith((".yaml", ".yml")):
    raise ValueError(f"--output {output!r}: Kubeflow Pipelines uploads .yaml files "
                     "(e.g. pipeline.yaml)")
  if config.vertex_training and target != VERTEX:
    raise ValueError("Vertex AI training jobs need --target vertex")
  runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
      config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=image))
  job = runner.run(create_pipeline(dataclasses.replace(config, remote=True),
                                   beam_pipeline_args=beam_pipeline_args), write_out=False)
  if target == KUBEFLOW:
    spec = {**job["pipelineSpec"], "defaultPipelineRoot": config.root}
    text = yaml.safe_dump(spec, sort_keys=False)
  else:
    spec = job
    text = json.dumps(spec, indent=2, sort_keys=True)
  parent = os.path.dirname(output)
  if parent:
    tfx.dsl.io.fileio.makedirs(parent)
  with tfx.dsl.io.fileio.open(output, "w") as f:
    f.write(text)
  return spec


class SubmitError(RuntimeError):
  """Submission to Vertex AI failed before any pipeline ran; the message says why."""


def submit(spec_path: str, project: str, region: str, pipeline_root: Optional[str] = None,
           service_account: Optional[str] = None, display_name: Optional[str] = None) -> str:
  """Submits a compiled Vertex job; returns its resource name. Fails fast, never retries."""
  if not os.path.isfile(spec_path):
    raise SubmitError(f"no compiled pipeline at {spec_path!r}: run `headswap compile "
                      "--target vertex` first")
  import google.auth  # pylint: disable=import-outside-toplevel
  from google.auth import exceptions as auth_exceptions  # pylint: disable=import-outside-toplevel

  try:
    credentials, _ = google.auth.default(
        scopes=["https://www.googleapis.com/auth/cloud-platform"])
  except auth_exceptions.DefaultCredentialsError as error:
    raise SubmitError(
        "no Google Cloud credentials: run `gcloud auth application-default login` or set "
        "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file") from error
  endpoint = f"{region}-aiplatform.googleapis.com"
  try:
    socket.create_connection((endpoint, 443), timeout=REACH_TIMEOUT_S).close()
  except OSError as error:
    raise SubmitError(f"cannot reach Vertex AI at {endpoint}:443 ({error}); check the "
                      "network, the proxy and --region") from error

  from google.cloud import aiplatform  # pylint: disable=import-outside-toplevel
  try:
    aiplatform.init(project=project, location=region, credentials=credentials)
    job = aiplatform.PipelineJob(
        display_name=display_name or os.path.splitext(os.path.basename(spec_path))[0],
        template_path=spec_path, pipeline_root=pipeline_root, project=project, location=region,
        credentials=credentials)
    job.submit(service_account=service_account, create_request_timeout=60)
  except Exception as error:  # permission, quota, a bad spec: all fatal for this submission
    raise SubmitError(f"Vertex AI did not accept the pipeline: {error}") from error
  return job.resource_name
