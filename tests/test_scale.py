"""Beyond one machine, as far as one machine allows: the Kubeflow/Vertex spec, Beam across
processes, two loopback workers under MultiWorkerMirroredStrategy, and a submit without
credentials. Real TFX compiler, Beam, TensorFlow and google-auth; nothing mocked."""

import dataclasses
import glob
import importlib
import json
import math
import os
import socket
import subprocess
import sys
import time

import pytest
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2
from tfx.dsl.components.base.executor_spec import BeamExecutorSpec

from headswap.components.image_example_gen import sources
from headswap.pipeline import beam_args, cli, flags
from headswap.pipeline.pipeline import PipelineConfig, create_pipeline
from tests.conftest import read_examples, run_ingest, write_class_folders
from tests.examples import write_examples

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE = "europe-west4-docker.pkg.dev/proj/repo/headswap:test"
ROOT = "gs://bucket/headswap-root"
PIPELINE_FLAGS = ["--name", "pets", "--image-size", "64", "--epochs", "3", "--max-trials", "2",
                  "--accuracy-threshold", "0.8"]
VERTEX_JOBS = ["--vertex-jobs", "--project", "proj", "--region", "europe-west4",
               "--machine-type", "n1-highmem-8", "--accelerator-type", "NVIDIA_TESLA_T4",
               "--accelerator-count", "2", "--workers", "3",
               "--service-account", "runner@proj.iam.gserviceaccount.com"]
MULTI_PROCESS = "--direct_running_mode=multi_processing --direct_num_workers=2"
DATAFLOW = ("--runner=DataflowRunner --project=proj --region=europe-west4 "
            "--temp_location=gs://bucket/tmp")
WORKER_TIMEOUT_S = 900
RESULT_MARK = "WORKER_RESULT "


@pytest.fixture(scope="module")
def data(tmp_path_factory):
  root = tmp_path_factory.mktemp("scale_data")
  write_class_folders(str(root / "train"), per_class=6, seed=11)
  write_class_folders(str(root / "test"), per_class=2, seed=12)
  return str(root)


@pytest.fixture(scope="module")
def specs(data, tmp_path_factory):
  """{target: path} of the pipeline compiled by `headswap compile`, and the local pipeline."""
  folder = tmp_path_factory.mktemp("specs")
  paths = {"vertex": str(folder / "pipeline.json"), "kubeflow": str(folder / "pipeline.yaml")}
  common = ["--data", data, *PIPELINE_FLAGS, "--pipeline-root", ROOT, "--image", IMAGE]
  cli.main(["compile", "--target", "vertex", "--output", paths["vertex"], *common, *VERTEX_JOBS])
  cli.main(["compile", "--target", "kubeflow", "--output", paths["kubeflow"], *common,
            f"--beam-args={DATAFLOW}"])
  # What `headswap run` with the same flags would run here, writing to the same root.
  run_args = cli.build_parser().parse_args(["run", "--data", data, *PIPELINE_FLAGS])
  local = flags.pipeline_config(run_args, "all")
  return paths, create_pipeline(dataclasses.replace(local, root=ROOT,
                                                    serving_dir=f"{ROOT}/serving/pets"))


def _parse(path, message):
  with open(path) as f:
    return json_format.ParseDict(yaml.safe_load(f), message)  # JSON is YAML too


def _constant(parameter):
  """The Python value of a task's constant input parameter."""
  value = parameter.runtime_value.constant_value
  return getattr(value, value.WhichOneof("value"))


def _task_parameters(spec, task):
  return {name: _constant(p) for name, p in spec.root.dag.tasks[task].inputs.parameters.items()}


def _container(spec, task):
  executor = spec.components[spec.root.dag.tasks[task].component_ref.name].executor_label
  return spec.deployment_spec.fields["executors"].struct_value.fields[executor]


def test_compiled_spec_holds_the_local_pipeline_its_parameters_image_and_root(specs):
  paths, local = specs
  job = _parse(paths["vertex"], pipeline_spec_pb2.PipelineJob())
  spec = json_format.ParseDict(json_format.MessageToDict(job.pipeline_spec),
                               pipeline_spec_pb2.PipelineSpec())
  assert job.runtime_config.gcs_output_directory == ROOT
  assert spec.pipeline_info.name == "pets"
  # The baseline's resolver (the latest blessed model, remotely) compiles to one task per output.
  assert {task.split("-")[0] for task in spec.root.dag.tasks} == {c.id for c in local.components}

  remote_only = {"Trainer": ("run_fn", "module_file"), "Tuner": ("tuner_fn", "module_file")}
  for component in local.components:
    if component.id == "BaselineResolver":
      continue
    compiled = _task_parameters(spec, component.id)
    expected = {name: value for name, value in component.exec_properties.items()
                if value is not None}
    if component.id in remote_only:  # a container imports the code: no local module path
      remote_name, local_name = remote_only[component.id]
      function = compiled.pop(remote_name)
      module, name = function.rsplit(".", 1)
      assert callable(getattr(importlib.import_module(module), name))
      expected.pop(local_name)
      jobs = json.loads(compiled.pop("custom_config"))
      local_config = json.loads(expected.pop("custom_config"))
      assert jobs.pop("ai_platform_enable_vertex") is True
      assert jobs.pop("ai_platform_vertex_region") == "europe-west4"
      job_spec = jobs.pop("ai_platform_training_args")["job_spec"]
      assert job_spec["service_account"] == "runner@proj.iam.gserviceaccount.com"
      pools = job_spec["worker_pool_specs"]
      assert jobs == local_config
      assert [pool["replica_count"] for pool in pools] == ([1, 2] if component.id == "Trainer"
                                                          else [1])
      for pool in pools:
        assert pool["container_spec"]["image_uri"] == IMAGE
        assert pool["machine_spec"] == {"machine_type": "n1-highmem-8",
                                        "accelerator_type": "NVIDIA_TESLA_T4",
                                        "accelerator_count": 2}
    if component.id == "ExampleValidator":  # TFX 1.16's V2 compiler takes no proto values
      expected.pop("custom_validation_config")
    assert compiled == expected, component.id

  for task in spec.root.dag.tasks:
    container = _container(spec, task).struct_value.fields.get("container")
    if container is None:  # the resolvers run inside Vertex itself
      continue
    assert container.struct_value.fields["image"].string_value == IMAGE
    arguments = [value.string_value for value in container.struct_value.fields["args"].list_value
                 .values]
    module, name = arguments[arguments.index("--executor_class_path") + 1].rsplit(".", 1)
    assert getattr(importlib.import_module(module), name), task


def test_kubeflow_spec_is_the_same_pipeline_spec_with_its_root(specs):
  paths, _ = specs
  kubeflow = _parse(paths["kubeflow"], pipeline_spec_pb2.PipelineSpec())
  vertex = _parse(paths["vertex"], pipeline_spec_pb2.PipelineJob()).pipeline_spec
  assert kubeflow.default_pipeline_root == ROOT
  assert set(kubeflow.root.dag.tasks) == set(vertex["root"]["dag"]["tasks"].keys())
  # Without --vertex-jobs the Trainer runs in its pipeline step, with TFX's own executor.
  trainer = _container(kubeflow, "Trainer").struct_value.fields["container"].struct_value
  assert "tfx.components.trainer.executor.GenericExecutor" in [
      value.string_value for value in trainer.fields["args"].list_value.values]
  assert "ai_platform_training_args" not in _task_parameters(kubeflow, "Trainer")["custom_config"]
  for task in ("ImageExampleGen", "StatisticsGen", "Evaluator"):  # Beam's steps
    container = _container(kubeflow, task).struct_value.fields["container"].struct_value
    arguments = [value.string_value for value in container.fields["args"].list_value.values]
    assert arguments[-len(DATAFLOW.split()):] == DATAFLOW.split(), task


def test_ingest_is_multi_process_by_default_only_for_large_data(tmp_path):
  small = write_class_folders(str(tmp_path / "small"), per_class=2)
  large = tmp_path / "large"
  for name in ("cats", "dogs"):
    (large / name).mkdir(parents=True)
  threshold = math.ceil(beam_args.multi_process_min_images(beam_args.REMOTE_CORES))
  for i in range(threshold):
    (large / ("cats", "dogs")[i % 2] / f"{i}.jpg").touch()  # only counted, never read

  def beam_steps(data, given=None, remote=False):
    config = PipelineConfig(name="pets", root=str(tmp_path / "root"), data=data,
                            stages="ingest", remote=remote,
                            num_images=sources.preflight(data).images)
    return {c.id: c.executor_spec.beam_pipeline_args
            for c in create_pipeline(config, beam_pipeline_args=given).components
            if isinstance(c.executor_spec, BeamExecutorSpec)}

  in_process = {"ImageExampleGen": [], "StatisticsGen": []}
  assert beam_steps(small) == in_process
  assert beam_steps(str(large), remote=True) == {"ImageExampleGen": beam_args.MULTI_PROCESS,
                                                 "StatisticsGen": beam_args.MULTI_PROCESS}
  given = ["--direct_running_mode=in_memory"]
  assert beam_steps(str(large), given, remote=True) == {"ImageExampleGen": given,
                                                        "StatisticsGen": given}
  (large / "cats" / "0.jpg").unlink()
  assert beam_steps(str(large), remote=True) == in_process


def test_multi_process_beam_ingests_the_same_examples_and_statistics(data, tmp_path):
  import tensorflow_data_validation as tfdv

  def logged(output):  # every log line of the command (pipeline/console.py)
    return "".join(open(path).read() for path in glob.glob(str(output / "logs" / "*.log")))

  single = run_ingest(data, tmp_path / "single", "--beam-args=--direct_running_mode=in_memory")
  assert "INFO apache_beam" in logged(tmp_path / "single")
  assert "starting control server" not in logged(tmp_path / "single")
  multi = run_ingest(data, tmp_path / "multi", f"--beam-args={MULTI_PROCESS}")
  # the gRPC link to the worker processes
  assert "starting control server" in logged(tmp_path / "multi")

  def by_file(uri):
    return {split: sorted(rows, key=lambda row: row["filename"])
            for split, rows in read_examples(uri).items()}

  examples = by_file(single["ImageExampleGen.examples"])
  assert sorted(examples) == ["eval", "test", "train"]
  assert by_file(multi["ImageExampleGen.examples"]) == examples

  def statistics(uri):
    summary = {}
    for split in examples:
      stats = tfdv.load_stats_binary(os.path.join(uri, f"Split-{split}", "FeatureStats.pb"))
      dataset, = stats.datasets
      summary[split] = (dataset.num_examples, sorted(
          (str(feature.path.step), feature.string_stats.unique, feature.num_stats.min,
           feature.num_stats.max) for feature in dataset.features))
    return summary

  assert statistics(multi["StatisticsGen.statistics"]) == statistics(
      single["StatisticsGen.statistics"])


def train_one_worker(examples, run_dir):
  """One worker of the loopback cluster (TF_CONFIG set by the test); prints what it did."""
  import numpy as np
  import tensorflow as tf

  from headswap.trainer import train
  from headswap.trainer.hparams import HParams

  hp = HParams(image_size=32, epochs=2, learning_rate=1e-2, fine_tune_blocks=0, batch_size=4,
               augment="", fast_feature_extraction=False)
  run = train.train([os.path.join(examples, "Split-train", "*")],
                    [os.path.join(examples, "Split-eval", "*")], 2, hp,
                    os.path.join(run_dir, "cache"), run_dir)
  print(RESULT_MARK + json.dumps({
      "multi_worker": isinstance(run.classifier.distribute_strategy,
                                 tf.distribute.MultiWorkerMirroredStrategy),
      "replicas": run.summary["replicas"],
      "steps": int(run.classifier.optimizer.iterations.numpy()),
      "history": run.history,
      "weights_sum": float(sum(np.sum(w) for w in run.classifier.get_weights()))}), flush=True)


def run_fn_one_worker(examples, output):
  """One worker running TFX's Trainer executor with run_fn and the default settings (tiny
  images, random weights): each worker checks that the model was exported."""
  import tensorflow as tf
  from tfx.components.trainer import executor
  from tfx.proto import trainer_pb2
  from tfx.types import artifact_utils, standard_artifacts
  from tfx.utils import proto_utils

  examples_artifact = standard_artifacts.Examples()
  examples_artifact.uri = examples
  examples_artifact.split_names = artifact_utils.encode_split_names(["train", "eval"])
  model, model_run = standard_artifacts.Model(), standard_artifacts.ModelRun()
  model.uri, model_run.uri = os.path.join(output, "model"), os.path.join(output, "model_run")
  hparams = {"weights": "none", "image_size": 32, "epochs": 2, "fine_tune_epochs": 1,
             "batch_size": 4, "feature_batch_size": 8}
  executor.GenericExecutor().Do(
      {"examples": [examples_artifact]}, {"model": [model], "model_run": [model_run]},
      {"train_args": proto_utils.proto_to_json(trainer_pb2.TrainArgs(splits=["train"])),
       "eval_args": proto_utils.proto_to_json(trainer_pb2.EvalArgs(splits=["eval"])),
       "run_fn": "headswap.trainer.task.run_fn",
       "custom_config": json.dumps({"hparams": hparams,
                                    "feature_cache_dir": os.path.join(output, "cache")})})
  print(RESULT_MARK + json.dumps({
      "exported": tf.io.gfile.listdir(os.path.join(model.uri, "Format-Serving")),
      "run_files": sorted(tf.io.gfile.listdir(model_run.uri))}), flush=True)


def _free_ports(count):
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(("127.0.0.1", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports


def _loopback_cluster(function, examples, outputs):
  """Runs tests.test_scale.<function>(examples, output) in two workers of a loopback
  MultiWorkerMirroredStrategy cluster; returns what each printed after RESULT_MARK."""
  cluster = {"worker": [f"127.0.0.1:{port}" for port in _free_ports(2)]}
  workers = []
  for index, output in enumerate(outputs):
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
           "TF_CONFIG": json.dumps({"cluster": cluster,
                                    "task": {"type": "worker", "index": index}})}
    code = f"import sys; from tests.test_scale import {function}; {function}(*sys.argv[1:])"
    workers.append(subprocess.Popen(
        [sys.executable, "-c", code, examples, output],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
  printed = []
  try:
    for worker in workers:
      printed.append(worker.communicate(timeout=WORKER_TIMEOUT_S)[0])
  finally:
    for worker in workers:
      worker.kill()
  results = []
  for worker, output in zip(workers, printed):
    assert worker.returncode == 0, output[-3000:]
    # gRPC may log after the result line while the cluster shuts down.
    results.append(json.loads(output.split(RESULT_MARK)[-1].splitlines()[0]))
  return results


def test_two_loopback_workers_train_together_under_multi_worker_mirrored(tmp_path):
  images = write_class_folders(str(tmp_path / "images"), per_class=8, seed=13, size=32)
  examples = write_examples(images, str(tmp_path / "examples"))
  chief, other = _loopback_cluster("train_one_worker", examples,
                                   [str(tmp_path / f"run{index}") for index in range(2)])
  assert chief["multi_worker"] and other["multi_worker"]
  assert chief["replicas"] == other["replicas"] == 2
  assert chief["steps"] == other["steps"] > 0  # in lockstep
  losses = [row["loss"] for row in chief["history"]]
  assert len(losses) == 2 and losses[1] < losses[0]  # it learned
  assert chief["history"] == other["history"]  # metrics all-reduced over both workers
  assert chief["weights_sum"] == pytest.approx(other["weights_sum"], rel=1e-6)  # in sync


def test_submit_without_credentials_fails_fast_with_a_clear_message(specs, tmp_path):
  paths, _ = specs
  home = str(tmp_path / "home")
  env = {key: value for key, value in os.environ.items()
         if key not in ("GOOGLE_APPLICATION_CREDENTIALS", "CLOUDSDK_CONFIG")}
  # No key file, no gcloud login, no metadata server (port 9 refuses at once).
  env.update(HOME=home, CLOUDSDK_CONFIG=os.path.join(home, "gcloud"),
             GCE_METADATA_HOST="127.0.0.1:9", GCE_METADATA_IP="127.0.0.1:9")
  started = time.time()
  result = subprocess.run([sys.executable, "-m", "headswap.pipeline.cli", "submit", "--spec",
                           paths["vertex"], "--project", "proj", "--region", "europe-west4"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert result.returncode != 0
  assert "headswap submit: no Google Cloud credentials" in result.stderr
  assert "gcloud auth application-default login" in result.stderr
  assert "Traceback" not in result.stderr
  # No retry loop: google-cloud clients retry unreachable endpoints for minutes.
  assert time.time() - started < 120


def test_run_fn_exports_from_two_loopback_workers_with_the_defaults(tmp_path):
  """TFX's Trainer executor on each worker, one shared output as on Vertex: both fast paths,
  augmented views and the side-by-side base; every worker passes the executor's check that
  the model exists, and only the chief's export and results are left."""
  images = write_class_folders(str(tmp_path / "images"), per_class=8, seed=17, size=32)
  examples = write_examples(images, str(tmp_path / "examples"))
  chief, other = _loopback_cluster("run_fn_one_worker", examples, [str(tmp_path / "out")] * 2)
  assert chief["exported"] == other["exported"] and "saved_model.pb" in chief["exported"]
  assert {"history.json", "training_summary.json", "tensorboard"} <= set(chief["run_files"])
  assert not [name for name in os.listdir(tmp_path / "out" / "cache") if ".partial" in name]
