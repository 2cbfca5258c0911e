"""Compiles the same pipeline to a Kubeflow Pipelines v2 / Vertex AI Pipelines spec, and
submits a compiled spec to Vertex AI."""

import os
from typing import List, Optional

from tfx import v1 as tfx

from pipeline.pipeline import PipelineConfig, create_pipeline


def compile_spec(config: PipelineConfig, image: str, output: str,
                 beam_pipeline_args: Optional[List[str]] = None) -> str:
  """Writes the pipeline spec JSON to `output`; every component runs in `image`."""
  runner = tfx.orchestration.experimental.KubeflowV2DagRunner(
      config=tfx.orchestration.experimental.KubeflowV2DagRunnerConfig(default_image=image),
      output_dir=os.path.dirname(os.path.abspath(output)),
      output_filename=os.path.basename(output))
  runner.run(create_pipeline(config, beam_pipeline_args=beam_pipeline_args))
  return output


class SubmitError(RuntimeError):
  """Submission to Vertex AI failed before any pipeline ran; the message says why."""


def submit(spec_path: str, project: str, region: str, pipeline_root: str,
           service_account: Optional[str] = None) -> str:
  """Submits a compiled spec to Vertex AI Pipelines; returns the job's resource name."""
  import google.auth  # pylint: disable=import-outside-toplevel
  from google.auth import exceptions as auth_exceptions  # pylint: disable=import-outside-toplevel
  from google.cloud import aiplatform  # pylint: disable=import-outside-toplevel

  try:
    credentials, _ = google.auth.default()
  except auth_exceptions.DefaultCredentialsError as error:
    raise SubmitError(
        "no Google Cloud credentials: run `gcloud auth application-default login` or set "
        f"GOOGLE_APPLICATION_CREDENTIALS to a service-account key ({error})") from error
  aiplatform.init(project=project, location=region, credentials=credentials)
  job = aiplatform.PipelineJob(display_name=os.path.basename(spec_path),
                               template_path=spec_path, pipeline_root=pipeline_root)
  try:
    job.submit(service_account=service_account)
  except Exception as error:  # network, permission, quota: all fatal for this submission
    raise SubmitError(f"Vertex AI refused or could not be reached: {error}") from error
  return job.resource_name
