"""Tuner and Trainer as Vertex AI custom training jobs (TFX's google_cloud_ai_platform extension).

On Vertex AI Pipelines the pipeline step only launches a job and waits for it; the job runs
the same executor, in the same image, on the machines asked for here. With several Trainer
replicas Vertex sets TF_CONFIG, and trainer/strategy.py trains under
MultiWorkerMirroredStrategy.
"""

import dataclasses
from typing import Any, Dict, Optional

from tfx.dsl.components.base import executor_spec
from tfx.extensions.google_cloud_ai_platform import constants
from tfx.extensions.google_cloud_ai_platform.trainer import component as vertex_trainer
from tfx.extensions.google_cloud_ai_platform.trainer import executor as vertex_trainer_executor

from headswap.tuning import component as tuning_component

Trainer = vertex_trainer.Trainer


@dataclasses.dataclass
class VertexTraining:
  project: str
  region: str
  image: str  # the component image: jobs run the same code as the pipeline steps
  machine_type: str = "n1-standard-8"
  accelerator_type: Optional[str] = None  # e.g. NVIDIA_TESLA_T4; None: CPU only
  accelerator_count: int = 1
  workers: int = 1  # Trainer replicas; the Tuner always runs on one (see Tuner below)
  # The identity the jobs run as: Vertex gives a custom job its project's default compute
  # account, not the pipeline's, unless the job spec names one.
  service_account: Optional[str] = None

  def __post_init__(self):
    if self.workers < 1 or self.accelerator_count < 1:
      raise ValueError(f"workers and accelerator count must be at least 1: {self}")

  def custom_config(self, replicas: int) -> Dict[str, Any]:
    """The custom_config keys the extension's executors read to launch a job."""
    machine = {"machine_type": self.machine_type}
    if self.accelerator_type:
      machine.update(accelerator_type=self.accelerator_type,
                     accelerator_count=self.accelerator_count)
    chief = {"machine_spec": machine, "replica_count": 1,
             "container_spec": {"image_uri": self.image}}
    pools = [chief] + ([{**chief, "replica_count": replicas - 1}] if replicas > 1 else [])
    job_spec = {"worker_pool_specs": pools}
    if self.service_account:
      job_spec["service_account"] = self.service_account
    return {vertex_trainer_executor.TRAINING_ARGS_KEY: {
                "project": self.project, "job_spec": job_spec},
            constants.ENABLE_VERTEX_KEY: True, constants.VERTEX_REGION_KEY: self.region}

  def trainer_config(self) -> Dict[str, Any]:
    return self.custom_config(self.workers)

  def tuner_config(self) -> Dict[str, Any]:
    return self.custom_config(1)


class _TunerJobExecutor(vertex_trainer_executor.GenericExecutor):
  """Runs headswap's Tuner executor (search, best values and summary) as a Vertex job.

  TFX's own cloud Tuner spreads KerasTuner trials over workers with a chief oracle; the
  two-stage search needs stage 1's best head before stage 2 starts, so it runs on one
  (larger, or GPU) machine instead.
  """

  def _GetExecutorClass(self):
    return tuning_component._Executor  # pylint: disable=protected-access


class Tuner(tuning_component.Tuner):
  EXECUTOR_SPEC = executor_spec.ExecutorClassSpec(_TunerJobExecutor)
