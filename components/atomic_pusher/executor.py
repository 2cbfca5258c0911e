"""Pusher executor that publishes a model version atomically (see versions.py)."""

import os
import shutil
from typing import Any, Dict, List

from tfx import types
from tfx.components.pusher import executor as tfx_pusher_executor
from tfx.proto import pusher_pb2
from tfx.types import artifact_utils, standard_component_specs
from tfx.utils import proto_utils

from headswap.components.atomic_pusher.versions import push


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
    version = push(self.GetModelPath(input_dict), base_directory)
    shutil.copytree(self.GetModelPath(input_dict), model_push.uri, dirs_exist_ok=True)
    self._MarkPushed(model_push, pushed_destination=os.path.join(base_directory, version),
                     pushed_version=version)
