"""Pusher executor that publishes a model version atomically.

TFX's own filesystem Pusher copies files straight into <base>/<version>/, so a crash
mid-copy leaves a half-written version that a model server may try to load. Here the
copy goes to a hidden staging folder and appears under its version number by a single
rename, which is atomic on one filesystem: a server sees all of a version or none.
"""

import os
import shutil
import time
from typing import Any, Dict, List

from tfx import types
from tfx.components.pusher import executor as tfx_pusher_executor
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

STAGING_PREFIX = ".staging-"  # not a number: servers that scan for versions skip it


def stage(model_path: str, base_directory: str) -> str:
  """Copies the model next to the published versions, invisibly; returns the staged path."""
  os.makedirs(base_directory, exist_ok=True)
  for leftover in os.listdir(base_directory):  # an earlier push that died mid-copy
    if leftover.startswith(STAGING_PREFIX):
      shutil.rmtree(os.path.join(base_directory, leftover), ignore_errors=True)
  staged = os.path.join(base_directory, f"{STAGING_PREFIX}{os.getpid()}-{time.time_ns()}")
  shutil.copytree(model_path, staged)
  return staged


def publish(staged: str) -> str:
  """Renames a staged copy to the next version number; returns that version."""
  base_directory = os.path.dirname(staged)
  existing = [int(name) for name in os.listdir(base_directory) if name.isdigit()]
  version = str(max([int(time.time())] + [v + 1 for v in existing]))
  os.rename(staged, os.path.join(base_directory, version))
  return version


class Executor(tfx_pusher_executor.Executor):
  """TFX's Pusher with an atomic filesystem push (see the module docstring)."""

  def Do(self, input_dict: Dict[str, List[types.Artifact]],
         output_dict: Dict[str, List[types.Artifact]], exec_properties: Dict[str, Any]) -> None:
    self._log_startup(input_dict, output_dict, exec_properties)
    model_push = artifact_utils.get_single_instance(
        output_dict[standard_component_specs.PUSHED_MODEL_KEY])
    if not self.CheckBlessing(input_dict):
      self._MarkNotPushed(model_push)
      return
    destination = pusher_pb2.PushDestination()
    proto_utils.json_to_proto(exec_properties[standard_component_specs.PUSH_DESTINATION_KEY],
                              destination)
    base_directory = destination.filesystem.base_directory
    version = publish(stage(self.GetModelPath(input_dict), base_directory))
    shutil.copytree(self.GetModelPath(input_dict), model_push.uri, dirs_exist_ok=True)
    self._MarkPushed(model_push, pushed_destination=os.path.join(base_directory, version),
                     pushed_version=version)
