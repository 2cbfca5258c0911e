"""TF Serving's --model_config_file: a text-format ModelServerConfig naming several models,
  model_config_list {
    config { name: "pets" base_path: "/models/pets" model_platform: "tensorflow"
             version_labels { key: "stable" value: 2 } }
    config { ... }
  }
parsed with TF Serving's own proto, so a file that works here works there.
"""

from typing import List

from google.protobuf import text_format
from tensorflow_serving.config import model_server_config_pb2

from headswap.components import filesystem
from headswap.serving.config import ModelSource


def read(path: str) -> List[ModelSource]:
  """The models `path` lists; ValueError naming the file and the bad setting."""
  with filesystem.open_file(path, "r") as f:
    text = f.read()
  try:
    config = text_format.Parse(text, model_server_config_pb2.ModelServerConfig())
  except text_format.ParseError as error:
    raise ValueError(f"{path}: not a text-format ModelServerConfig: {error}") from error
  if config.WhichOneof("config") != "model_config_list" or not config.model_config_list.config:
    raise ValueError(f"{path}: expected model_config_list {{ config {{ name: ... base_path: ... "
                     "model_platform: \"tensorflow\" }} }}")
  sources = []
  for model in config.model_config_list.config:
    where = f"{path}: model {model.name!r}"
    if not model.name or not model.base_path:
      raise ValueError(f"{where}: every config needs a name and a base_path")
    if model.model_platform not in ("", "tensorflow"):
      raise ValueError(f"{where}: model_platform {model.model_platform!r}: only \"tensorflow\" "
                       "SavedModels are served")
    policy = model.model_version_policy
    if policy.WhichOneof("policy_choice") not in (None, "latest") or (
        policy.latest.num_versions > 1):
      chosen = text_format.MessageToString(policy, as_one_line=True)
      raise ValueError(f"{where}: model_version_policy {{ {chosen} }}: headswap serve serves "
                       "the newest version only (TF Serving's default)")
    if any(source.name == model.name for source in sources):
      raise ValueError(f"{where}: the name is listed twice")
    sources.append(ModelSource(model.name, model.base_path, dict(model.version_labels)))
  return sources
