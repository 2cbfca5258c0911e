"""The compiled Vertex AI pipeline, executed task by task as Vertex's launcher runs it, with its
data on gs:// in the local Cloud Storage emulator (tests/gcs.py).

Each container task runs its command from the spec, in this project's environment (the
image's `python` is the venv's): the executor input is built from the spec's parameters and
the upstream tasks' output artifacts (their executor_output.json, as the launcher reads it),
and the `{{$}}` placeholder is resolved with kfp.local's building blocks. Nothing but the
spec says which executor, module or custom component runs. The data is read from gs://; the
pipeline root is local (see the test for why).

What Vertex resolves itself, and how this test stands in for it:
- The resolver tasks (the latest blessed model as the Evaluator's baseline) are queries on
  Vertex ML Metadata, not containers: a first run finds nothing, so they resolve to no
  artifacts here, as they do on a project's first run.
- ImageExampleGen's preCacheCheck (TFX's file-based ExampleGen driver, which computes the
  span and input fingerprint) runs as its own command first, with the same executor input;
  the executor reads what it wrote from the task's executor_output.json, as on Vertex.
  Vertex's cache lookup on that fingerprint is not reproduced (every task runs).
- Artifact URIs and the job's resource names follow kfp.local's layout under the pipeline
  root, not Vertex's; Vertex ML Metadata records nothing here.
"""

import json
import os
import subprocess
import sys

from google.protobuf import json_format
from kfp.local import executor_input_utils, placeholder_utils
from kfp.pipeline_spec import pipeline_spec_pb2

from tests.conftest import write_class_folders
from tests.test_pipeline import CHEAP

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASK_TIMEOUT_S = 900


def dependency_order(tasks):
  """Task names, every task after those it depends on (the spec lists them unordered)."""
  done, order = set(), []
  while len(order) < len(tasks):
    ready = sorted(name for name, task in tasks.items() if name not in done
                   and set(task.get("dependentTasks", [])) | _producers(task) <= done)
    assert ready, f"a cycle among {sorted(set(tasks) - done)}"
    done.update(ready)
    order.extend(ready)
  return order


def _producers(task):
  return {artifact["taskOutputArtifact"]["producerTask"]
          for artifact in task.get("inputs", {}).get("artifacts", {}).values()}


class Launcher:
  """Runs a compiled PipelineJob's tasks the way Vertex's launcher does, in subprocesses."""

  def __init__(self, job, env, workdir):
    self.spec = job["pipelineSpec"]
    self.root = job["runtimeConfig"]["gcsOutputDirectory"]
    self.env = env
    self.workdir = workdir  # executor_output.json files: local, as the launcher keeps them
    self.run_name = executor_input_utils.get_local_pipeline_resource_name(
        self.spec["pipelineInfo"]["name"])
    self.outputs = {}  # task -> {output key: [RuntimeArtifact as a dict]}

  def run(self):
    tasks = self.spec["root"]["dag"]["tasks"]
    for name in dependency_order(tasks):
      executor = self.spec["deploymentSpec"]["executors"][
          self.spec["components"][tasks[name]["componentRef"]["name"]]["executorLabel"]]
      if "resolver" in executor:  # a Vertex ML Metadata query; a first run finds nothing
        self.outputs[name] = {key: [] for key in executor["resolver"]["outputArtifactQueries"]}
      else:
        self.outputs[name] = self._run_container(name, tasks[name], executor["container"])
    return self.outputs

  def _run_container(self, name, task, container):
    component_name = task["componentRef"]["name"]
    component = json_format.ParseDict(self.spec["components"][component_name],
                                      pipeline_spec_pb2.ComponentSpec())
    outputs_only = pipeline_spec_pb2.ComponentSpec()
    outputs_only.CopyFrom(component)
    outputs_only.ClearField("input_definitions")  # kfp.local builds outputs; inputs below
    task_root = executor_input_utils.construct_local_task_root(self.root, self.run_name, name)
    executor_input = executor_input_utils.executor_input_to_dict(
        executor_input_utils.construct_executor_input(outputs_only, {}, task_root), component)
    for artifacts in executor_input["outputs"].get("artifacts", {}).values():
      for artifact in artifacts["artifacts"]:
        if "://" not in artifact["uri"]:  # the launcher makes local output folders
          os.makedirs(artifact["uri"])
    inputs = task.get("inputs", {})
    # TFX 1.16 compiles parameters as typed constants (intValue, stringValue): the launcher
    # passes those as they are, in `parameters`.
    executor_input["inputs"] = {
        "parameters": {key: value["runtimeValue"]["constantValue"]
                       for key, value in inputs.get("parameters", {}).items()},
        "artifacts": {key: {"artifacts": self.outputs[source["taskOutputArtifact"][
            "producerTask"]][source["taskOutputArtifact"]["outputArtifactKey"]]}
                      for key, source in inputs.get("artifacts", {}).items()}}
    # The driver writes its span and fingerprint to the task's executor_output.json; the
    # executor reads them from there and then overwrites the file with its own output.
    if "preCacheCheck" in container.get("lifecycle", {}):
      self._execute(name, container["lifecycle"]["preCacheCheck"], executor_input)
    written = self._execute(name, container, executor_input).get("artifacts", {})
    # The launcher's artifacts, updated with the URI and metadata the executor reported;
    # their type stays the spec's (executor_output.json carries none).
    return {key: [{**planned, **{field: reported[field] for field in ("uri", "metadata")
                                 if field in reported}}
                  for planned, reported in zip(artifacts["artifacts"], written.get(
                      key, artifacts)["artifacts"])]
            for key, artifacts in executor_input["outputs"].get("artifacts", {}).items()}

  def _execute(self, name, container, executor_input):
    """Runs one command of the spec; returns the ExecutorOutput it wrote, as a dict."""
    output_file = os.path.join(self.workdir, name, "executor_output.json")
    os.makedirs(os.path.dirname(output_file), exist_ok=True)
    executor_input = {**executor_input,
                      "outputs": {**executor_input["outputs"], "outputFile": output_file}}
    command = placeholder_utils.replace_placeholders(
        full_command=[*container["command"], *container.get("args", [])],
        executor_input_dict=executor_input, pipeline_resource_name=self.run_name,
        task_resource_name=name, pipeline_root=self.root)
    assert command[0] == "python", command  # the image's interpreter: here, the venv's
    done = subprocess.run([sys.executable, *command[1:]], cwd=REPO, env=self.env,
                          capture_output=True, text=True, timeout=TASK_TIMEOUT_S, check=False)
    assert done.returncode == 0, f"{name} failed:\n{done.stderr[-6000:]}"
    if not os.path.exists(output_file):
      return {}
    with open(output_file) as f:
      return json.load(f)


# The pipeline root is local: with a gs:// root on the emulator, ImageExampleGen, StatisticsGen,
# SchemaGen, ExampleValidator, AnomaliesGate and the Tuner ran, and the Trainer aborted (SIGABRT)
# reading the Tuner's feature cache: TensorFlow's modular gs:// plugin aborts on any object
# over 256 KiB from this emulator (see tests/gcs.py), and models are larger.
def test_compiled_vertex_pipeline_runs_task_by_task_with_data_on_gs(gcs, tmp_path):
  data = tmp_path / "photos"
  write_class_folders(str(data / "train"), per_class=8, seed=21)
  write_class_folders(str(data / "test"), per_class=3, seed=22)
  data = gcs.upload(str(data), "photos")
  spec_path, root = str(tmp_path / "pipeline.json"), str(tmp_path / "root")
  compiled = subprocess.run(
      [sys.executable, "-m", "headswap.pipeline.cli", "compile", "--target", "vertex", "--output",
       spec_path, "--data", data, "--name", "pets", "--pipeline-root", root,
       "--image", "headswap:test", *CHEAP, "--max-trials", "1", "--depth-trials", "1"],
      cwd=REPO, env=gcs.env, capture_output=True, text=True, check=False)
  assert compiled.returncode == 0, compiled.stderr[-5000:]
  with open(spec_path) as f:
    job = json.load(f)

  outputs = Launcher(job, gcs.env, str(tmp_path / "launcher")).run()

  examples, = outputs["ImageExampleGen"]["examples"]
  assert json.loads(examples["metadata"]["split_names"]) == ["train", "eval", "test"]
  assert json.loads(examples["metadata"]["class_names"]) == ["cats", "dogs"]
  assert outputs["BaselineResolver-model-resolver"]["model"] == []
  blessing, = outputs["Evaluator"]["blessing"]
  assert blessing["metadata"]["blessed"] == 1  # --accuracy-threshold 0
  inferred, = outputs["BulkInferrer"]["inference_result"]
  assert os.listdir(inferred["uri"])
  pushed = [name for _, _, names in os.walk(os.path.join(root, "serving", "pets"))
            for name in names]
  assert "saved_model.pb" in pushed, pushed
